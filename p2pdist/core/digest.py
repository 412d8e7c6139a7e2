"""Strict parsing of blob digests and chunk names.

Only ``sha256:`` followed by exactly 64 lowercase hex digits is a blob digest; a chunk
name is exactly 64 lowercase hex digits (a BLAKE3-256 hash). Anything else — uppercase,
other algorithms, whitespace, path separators — is refused, so a parsed name is always
safe to use as a file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2pdist.core.errors import DigestInvalid, NameInvalid

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Digest:
    """A blob digest, ``sha256:<64 lowercase hex>``."""

    hex: str
    algorithm: str = "sha256"

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not isinstance(text, str):
            raise DigestInvalid(f"digest must be a string, got {type(text).__name__}")
        algorithm, sep, hexpart = text.partition(":")
        if not sep or algorithm != "sha256":
            raise DigestInvalid(f"unsupported digest {text[:80]!r}: only sha256:<64 hex> is accepted")
        if not _HEX64.fullmatch(hexpart):
            raise DigestInvalid(f"malformed digest {text[:80]!r}: expected sha256: and 64 lowercase hex digits")
        return cls(hexpart)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_chunk_name(text: str) -> str:
    """Return ``text`` if it is a BLAKE3 chunk name (64 lowercase hex), else raise."""
    if not isinstance(text, str) or not _HEX64.fullmatch(text):
        raise NameInvalid(f"malformed chunk name {str(text)[:80]!r}: expected 64 lowercase hex digits")
    return text


def is_hex64(text: str) -> bool:
    return isinstance(text, str) and _HEX64.fullmatch(text) is not None
