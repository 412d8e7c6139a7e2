"""Chunk maps: a blob cut into fixed-size chunks, each named by the BLAKE3 of its bytes.

Chunk-size rule (:func:`chunk_size_for`): 4 MiB by default; for blobs so large that a map
would list more than :data:`MAX_CHUNKS` chunks, the chunk size doubles until it does not,
up to :data:`MAX_CHUNK_SIZE` (32 MiB). A 4 GiB blob therefore keeps 4 MiB chunks (1,024
of them), a 20 GiB blob gets 16 MiB chunks. Every chunk is ``chunk_size`` bytes except
the last, which holds the remainder (a zero-byte blob has no chunks).

The canonical JSON form (:meth:`ChunkMap.to_json`) has sorted keys, no whitespace and
ASCII only, so equal maps are equal bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from p2pdist.core.digest import Digest, is_hex64
from p2pdist.core.errors import BodyInvalid

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_SIZE = 32 * 1024 * 1024
MAX_CHUNKS = 2048


def chunk_size_for(size: int | None, default: int = DEFAULT_CHUNK_SIZE) -> int:
    """The chunk size for a blob of ``size`` bytes (``None``: unknown, use ``default``)."""
    cs = default
    if size is None:
        return cs
    while cs < MAX_CHUNK_SIZE and -(-size // cs) > MAX_CHUNKS:
        cs *= 2
    return cs


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def chunk_span(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """``(offset, length)`` of chunk ``index`` in a blob of ``size`` bytes."""
    offset = index * chunk_size
    if index < 0 or offset >= size:
        raise IndexError(f"chunk {index} is outside a blob of {size} bytes")
    return offset, min(chunk_size, size - offset)


@dataclass(frozen=True, slots=True)
class ChunkMap:
    """The complete, sealed map of one blob: its sha256 was checked against ``digest``."""

    digest: Digest
    size: int
    chunk_size: int
    chunks: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.size < 0 or self.chunk_size <= 0:
            raise BodyInvalid("chunk map: size must be >= 0 and chunk_size > 0")
        if len(self.chunks) != chunk_count(self.size, self.chunk_size):
            raise BodyInvalid(
                f"chunk map: {len(self.chunks)} chunks listed, "
                f"{chunk_count(self.size, self.chunk_size)} expected for {self.size} bytes"
            )
        for c in self.chunks:
            if not is_hex64(c):
                raise BodyInvalid(f"chunk map: malformed chunk hash {str(c)[:80]!r}")

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def span(self, index: int) -> tuple[int, int]:
        return chunk_span(index, self.size, self.chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": str(self.digest),
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
        }

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> ChunkMap:
        if not isinstance(d, dict):
            raise BodyInvalid("chunk map: expected a JSON object")
        try:
            digest, size, chunk_size, chunks = d["digest"], d["size"], d["chunk_size"], d["chunks"]
        except KeyError as exc:
            raise BodyInvalid(f"chunk map: missing field {exc.args[0]!r}") from exc
        if not (_is_int(size) and _is_int(chunk_size) and isinstance(chunks, list)):
            raise BodyInvalid("chunk map: size and chunk_size must be integers, chunks a list")
        return cls(Digest.parse(digest), size, chunk_size, tuple(chunks))

    @classmethod
    def from_json(cls, data: bytes) -> ChunkMap:
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BodyInvalid(f"chunk map: not JSON: {exc}") from exc
        return cls.from_dict(d)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
