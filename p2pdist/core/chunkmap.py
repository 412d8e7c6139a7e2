"""Chunk maps: a blob cut into fixed-size chunks, each named by the BLAKE3 of its bytes.

Chunk-size rule (:func:`chunk_size_for`): the smallest power of two from
:data:`MIN_CHUNK_SIZE` (1 MiB) up to :data:`DEFAULT_CHUNK_SIZE` (4 MiB) that cuts the
blob into at most :data:`TARGET_CHUNKS` (256) chunks; past that, 4 MiB, doubling (up to
:data:`MAX_CHUNK_SIZE`, 32 MiB) only when a map would list more than :data:`MAX_CHUNKS`
chunks. So a 256 MiB blob gets 1 MiB chunks, 512 MiB 2 MiB, 1–8 GiB 4 MiB, 20 GiB 16 MiB;
a blob of unknown size 4 MiB.

Why: a swarm passes each chunk on only once it holds (and has checked) all of it, so each
hop costs a chunk's transfer time, and what that adds to the distribution, relative to
the blob's own transfer time, shrinks with the number of chunks, not with their bytes
(bench/sim.py, 100 hosts, 256 MiB: 4 MiB chunks 1.78 × T_min, 1 MiB 1.34 ×). Below
1 MiB, per-chunk costs (a request, a thread hop) start to show; above 4 MiB the peer's
buffers (``max_in_flight`` × chunk size) outgrow its memory budget. Every chunk is
``chunk_size`` bytes except the last, which holds the remainder (a zero-byte blob has no
chunks).

The canonical JSON form (:meth:`ChunkMap.to_json`) has sorted keys, no whitespace and
ASCII only, so equal maps are equal bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from p2pdist.core.digest import Digest, is_hex64
from p2pdist.core.errors import BodyInvalid

MIN_CHUNK_SIZE = 1024 * 1024
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_SIZE = 32 * 1024 * 1024
TARGET_CHUNKS = 256
MAX_CHUNKS = 2048


def chunk_size_for(size: int | None, default: int = DEFAULT_CHUNK_SIZE) -> int:
    """The chunk size for a blob of ``size`` bytes (``None``: unknown, use ``default``)."""
    if size is None:
        return default
    cs = MIN_CHUNK_SIZE
    while cs < default and -(-size // cs) > TARGET_CHUNKS:
        cs *= 2
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
