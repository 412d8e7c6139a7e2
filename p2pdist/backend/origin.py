"""Origins: where a blob really lives. For now a plain HTTP(S) URL; registries come later
behind the same :class:`Origin` protocol.

Errors: any failure to reach or read the origin is an :class:`OriginError` whose message
names the URL (without credentials, which travel only in headers) and the cause; an HTTP
error status from the origin keeps that status in the message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import httpx

from p2pdist.core.errors import OriginError, RangeInvalid
from p2pdist.core.task import TaskSpec

TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)


class OriginStream(Protocol):
    size: int | None

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class Origin(Protocol):
    def open(self, spec: TaskSpec, offset: int = 0, length: int | None = None
             ) -> AsyncIterator[OriginStream]: ...


class _HttpStream:
    def __init__(self, response: httpx.Response, url: str, size: int | None):
        self._response = response
        self._url = url
        self.size = size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._response.aiter_raw():
                yield piece
        except httpx.HTTPError as exc:
            raise OriginError(f"origin {self._url} failed mid-transfer: {type(exc).__name__}: {exc}") from exc


class HttpOrigin:
    """Fetch blobs (or byte ranges of them) from HTTP(S) URLs with one shared httpx client."""

    def __init__(self, client: httpx.AsyncClient | None = None):
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True)
        self._owns_client = client is None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    @asynccontextmanager
    async def open(self, spec: TaskSpec, offset: int = 0, length: int | None = None
                   ) -> AsyncIterator[_HttpStream]:
        headers = dict(spec.headers)
        headers["accept-encoding"] = "identity"
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["range"] = f"bytes={offset}-{end}"
        try:
            async with self._client.stream("GET", spec.url, headers=headers) as response:
                if response.status_code == 416:
                    raise RangeInvalid(f"origin {spec.url} refused range {headers.get('range')}")
                if response.status_code >= 400:
                    raise OriginError(f"origin {spec.url} answered HTTP {response.status_code}")
                wanted_range = "range" in headers
                if wanted_range and response.status_code != 206:
                    raise OriginError(f"origin {spec.url} ignored a Range request (HTTP {response.status_code})")
                size_s = response.headers.get("content-length")
                size = int(size_s) if size_s and size_s.isdigit() else None
                if length is not None and size is not None and size != length:
                    raise OriginError(f"origin {spec.url} sent {size} bytes for a {length}-byte range")
                yield _HttpStream(response, spec.url, size)
        except httpx.HTTPError as exc:
            raise OriginError(f"origin {spec.url} unreachable: {type(exc).__name__}: {exc}") from exc
