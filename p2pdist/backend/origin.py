"""Origins: where a blob really lives. For now a plain HTTP(S) URL; registries come later
behind the same :class:`Origin` protocol.

Errors: any failure to reach or read the origin is an :class:`OriginError` whose message
names the URL (without credentials, which travel only in headers) and the cause; an HTTP
error status from the origin keeps that status in the message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import httpx

from p2pdist.core.errors import OriginError, RangeInvalid
from p2pdist.core.task import TaskSpec
from p2pdist.net.originclient import Fallback, RawResponse, raw_get

TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)


class OriginStream(Protocol):
    size: int | None

    async def readinto(self, view: memoryview) -> int:
        """Up to ``len(view)`` bytes of the body into ``view``; 0 at its end."""


class Origin(Protocol):
    def open(self, spec: TaskSpec, offset: int = 0, length: int | None = None
             ) -> AbstractAsyncContextManager[OriginStream]: ...


async def read_full(stream: OriginStream, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` (fewer bytes only at the end of the body)."""
    n = 0
    while n < len(view):
        got = await stream.readinto(view[n:])
        if got == 0:
            break
        n += got
    return n


class _HttpxStream:
    """The general path (https, chunked, cross-host redirects): httpx pieces copied out."""

    def __init__(self, response: httpx.Response, url: str, size: int | None):
        self._pieces = response.aiter_raw()
        self._url = url
        self._left = memoryview(b"")
        self.size = size

    async def readinto(self, view: memoryview) -> int:
        if not self._left:
            try:
                self._left = memoryview(await self._pieces.__anext__())
            except StopAsyncIteration:
                return 0
            except httpx.HTTPError as exc:
                raise OriginError(f"origin {self._url} failed mid-transfer: {type(exc).__name__}: {exc}") from exc
        n = min(len(view), len(self._left))
        view[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


class _RawStream:
    """The fast path: the body lands in the caller's buffer by ``recv_into``."""

    def __init__(self, response: RawResponse, size: int | None):
        self._response = response
        self.size = size

    async def readinto(self, view: memoryview) -> int:
        return await self._response.readinto(view)


def _check(url: str, status: int, size: int | None, headers: dict[str, str], length: int | None) -> None:
    if status == 416:
        raise RangeInvalid(f"origin {url} refused range {headers.get('range')}")
    if status >= 400:
        raise OriginError(f"origin {url} answered HTTP {status}")
    if "range" in headers and status != 206:
        raise OriginError(f"origin {url} ignored a Range request (HTTP {status})")
    if length is not None and size is not None and size != length:
        raise OriginError(f"origin {url} sent {size} bytes for a {length}-byte range")


class HttpOrigin:
    """Fetch blobs (or byte ranges of them) from HTTP(S) URLs: plain-HTTP bodies with a
    length by the raw ``recv_into`` client, everything else with one shared httpx client."""

    def __init__(self, client: httpx.AsyncClient | None = None, *, fast_path: bool = True):
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True)
        self._owns_client = client is None
        self._fast_path = fast_path

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    @asynccontextmanager
    async def open(self, spec: TaskSpec, offset: int = 0, length: int | None = None
                   ) -> AsyncIterator[OriginStream]:
        headers = dict(spec.headers)
        headers["accept-encoding"] = "identity"
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["range"] = f"bytes={offset}-{end}"
        if self._fast_path:
            try:
                raw = await raw_get(spec.url, list(headers.items()))
            except Fallback:
                pass
            else:
                try:
                    _check(spec.url, raw.status, raw.length, headers, length)
                    yield _RawStream(raw, raw.length)
                finally:
                    await raw.aclose()
                return
        try:
            async with self._client.stream("GET", spec.url, headers=headers) as response:
                size_s = response.headers.get("content-length")
                size = int(size_s) if size_s and size_s.isdigit() else None
                _check(spec.url, response.status_code, size, headers, length)
                yield _HttpxStream(response, spec.url, size)
        except httpx.HTTPError as exc:
            raise OriginError(f"origin {spec.url} unreachable: {type(exc).__name__}: {exc}") from exc
