"""What a task is: one blob to distribute, named by its digest or, failing that, its URL.

A :class:`TaskSpec` carries the origin URL, the expected digest (if known) and the
headers to send to the origin. Headers may hold credentials: they are never part of the
task id, never logged (``__repr__`` hides them) and never put in a chunk map.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from p2pdist.core.digest import Digest
from p2pdist.core.errors import BadRequest

MAX_URL_LENGTH = 8192


def normalise_url(url: str) -> str:
    """Lower-case scheme and host, drop the fragment and a default port; refuse non-HTTP."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise BadRequest("bad URL: must be a string of at most 8192 characters", code="URL_INVALID")
    try:  # urlsplit raises ValueError on a malformed [IPv6] host
        parts = urlsplit(url.strip())
        hostname = parts.hostname
    except ValueError as exc:
        raise BadRequest(f"bad URL {url[:200]!r}: {exc}", code="URL_INVALID") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not hostname:
        raise BadRequest(f"bad URL {url[:200]!r}: expected http:// or https:// with a host", code="URL_INVALID")
    host = hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"bad URL {url[:200]!r}: {exc}", code="URL_INVALID") from exc
    if port is not None and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username or parts.password:
        raise BadRequest("bad URL: credentials in the URL are refused; pass them as a header", code="URL_INVALID")
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


@dataclass(frozen=True)
class TaskSpec:
    url: str
    digest: Digest | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def task_id(self) -> str:
        return task_id_for(self.url, self.digest)


def task_id_for(url: str, digest: Digest | None) -> str:
    """Digest hex when the digest is known (so every URL of one blob shares a task), else a
    hash of the normalised URL prefixed ``u`` (never 64 bare hex, so never a digest)."""
    if digest is not None:
        return digest.hex
    return "u" + hashlib.sha256(normalise_url(url).encode()).hexdigest()[:40]
