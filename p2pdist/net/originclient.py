"""The origin fast path: a plain-HTTP GET whose body is read with ``recv_into`` straight
into the caller's chunk buffers.

httpx reads 64 KiB at a time and copies every piece; on the tracker that capped the
origin fetch near 0.15 GB/s with hashing beside it (bench/pull.py profile). This client
handles exactly the common case — ``http://``, a ``Content-Length`` body, redirects on
the same host — and raises :class:`Fallback` for anything else (https, chunked bodies, a
redirect to another host, where credentials must not follow), so the caller uses httpx.

Errors: a refused or broken connection is :class:`OriginError`; the caller maps statuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import trio

from p2pdist.core.errors import OriginError
from p2pdist.net.http import parse_response_head

MAX_HEAD = 64 * 1024
MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # a stalled origin fails the fetch (httpx's read timeout, the same)


class Fallback(Exception):
    """This request needs the general client."""


class RawResponse:
    def __init__(self, stream: trio.SocketStream, status: int, headers: dict[str, str],
                 pending: bytearray, url: str):
        self.status = status
        self.headers = headers
        self.url = url
        self._stream = stream
        self._pending = pending
        length = headers.get("content-length")
        self.length = int(length) if length is not None and length.isdigit() else None
        self._left = self.length or 0

    async def readinto(self, view: memoryview) -> int:
        """Up to ``len(view)`` body bytes into ``view``; 0 at the end of the body."""
        if self._left == 0 or len(view) == 0:
            return 0
        want = min(len(view), self._left)
        if self._pending:
            n = min(want, len(self._pending))
            view[:n] = self._pending[:n]
            del self._pending[:n]
        else:
            try:
                with trio.fail_after(READ_TIMEOUT):
                    n = await self._stream.socket.recv_into(view, want)
            except OSError as exc:
                raise OriginError(f"origin {self.url} failed mid-transfer: {exc}") from exc
            except trio.TooSlowError as exc:
                raise OriginError(f"origin {self.url} sent nothing for {READ_TIMEOUT:.0f} s") from exc
            if n == 0:
                raise OriginError(f"origin {self.url} closed the connection with {self._left} bytes to go")
        self._left -= n
        return n

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


async def _exchange(url: str, headers: Sequence[tuple[str, str]]) -> RawResponse:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise Fallback()
    host, port = parts.hostname, parts.port or 80
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise OriginError(f"origin {url} unreachable: {exc}") from exc
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        lines = [f"GET {target} HTTP/1.1", f"host: {parts.netloc}", "connection: close"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("host", "connection")]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = bytearray()
        while (end := data.find(b"\r\n\r\n")) < 0:
            if len(data) > MAX_HEAD:
                raise OriginError(f"origin {url} sent a response head over {MAX_HEAD} bytes")
            piece = await stream.receive_some(65536)
            if not piece:
                raise OriginError(f"origin {url} closed the connection before answering")
            data += piece
        try:
            status, hdrs = parse_response_head(bytes(data[:end]))
        except ValueError as exc:
            raise OriginError(f"origin {url} sent a {exc}") from exc
        if "chunked" in hdrs.get("transfer-encoding", "").lower():
            raise Fallback()
        return RawResponse(stream, status, hdrs, bytearray(data[end + 4:]), url)
    except (OSError, trio.BrokenResourceError) as exc:
        await stream.aclose()
        raise OriginError(f"origin {url} failed: {exc}") from exc
    except BaseException:
        await stream.aclose()
        raise


async def raw_get(url: str, headers: Sequence[tuple[str, str]]) -> RawResponse:
    """GET ``url``, following same-host redirects. Raises :class:`Fallback` when the
    general client must do it, :class:`OriginError` when the origin cannot be reached."""
    origin_netloc = urlsplit(url).netloc
    for _ in range(MAX_REDIRECTS + 1):
        r = await _exchange(url, headers)
        if r.status in (301, 302, 303, 307, 308) and "location" in r.headers:
            await r.aclose()
            url = urljoin(url, r.headers["location"])
            if urlsplit(url).netloc != origin_netloc:
                raise Fallback()  # credentials stay with their host; httpx strips them
            continue
        if r.status < 300 and r.length is None:
            await r.aclose()
            raise Fallback()
        return r
    raise OriginError(f"origin {url}: more than {MAX_REDIRECTS} redirects")
