"""File bodies: sendfile for plain fds, reused aligned buffers for O_DIRECT fds (the chunk
store's), any span of the file, many at once."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio

from p2pdist.net import http as nethttp
from p2pdist.net.http import FileBody, Request, Response, Router, serve_http
from p2pdist.storage.direct import is_direct


def _body_server(path: Path, direct: bool) -> Router:
    r = Router()

    async def handle(request: Request) -> Response:
        offset, count = int(request.params["offset"]), int(request.params["count"])
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0))
        assert is_direct(fd) == direct
        return Response(200, [], FileBody(fd, offset, count))

    r.route("GET", "/f/{offset}/{count}", handle)
    return r


@pytest.mark.parametrize("direct", [True, False])
async def test_file_spans_arrive_whole_from_any_offset(tmp_path: Path, nursery: trio.Nursery, direct: bool) -> None:
    data = os.urandom((9 << 20) + 1234)  # more than one FILE_PIECE, not block aligned
    path = tmp_path / "blob"
    path.write_bytes(data)
    port = await nursery.start(serve_http, _body_server(path, direct), "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        for offset, count in [(0, len(data)), (1, 5000), (4095, (4 << 20) + 2), (len(data) - 7, 7), (0, 0)]:
            r = await c.get(f"/f/{offset}/{count}")
            assert r.status_code == 200
            assert r.content == data[offset:offset + count], (offset, count)


async def test_more_direct_senders_than_kept_buffers_do_not_wait(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that stop reading hold their buffers; the others are served all the same."""
    monkeypatch.setattr(nethttp, "FILE_BUFFERS", 2)
    data = os.urandom(32 << 20)  # more than loopback's socket buffers take
    path = tmp_path / "blob"
    path.write_bytes(data)
    port = await nursery.start(serve_http, _body_server(path, True), "127.0.0.1", 0)
    got: list[bytes] = []
    url = f"/f/0/{len(data)}"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        async with c.stream("GET", url) as stalled1, c.stream("GET", url) as stalled2:
            async def fetch() -> None:
                got.append((await c.get(url)).content)

            with trio.fail_after(20):
                async with trio.open_nursery() as n:
                    for _ in range(3):
                        n.start_soon(fetch)
            assert stalled1.status_code == stalled2.status_code == 200
    assert got == [data] * 3


def _stream_server(path: Path, direct: bool, spans: list[tuple[int, int]], fail_after: int | None = None) -> Router:
    """A streamed body as the mirror sends a blob: a file span per chunk, bytes between."""
    r = Router()

    async def handle(request: Request) -> Response:
        async def body():
            for n, (offset, count) in enumerate(spans):
                if fail_after is not None and n == fail_after:
                    from p2pdist.core.errors import Unavailable
                    raise Unavailable("the download failed")
                yield b"<"
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0))
                yield FileBody(fd, offset, count)
                yield b">"
        length = None if fail_after is not None else sum(c + 2 for _, c in spans)
        return Response(200, [], body(), content_length=length)

    r.route("GET", "/s", handle)
    return r


@pytest.mark.parametrize("direct", [True, False])
async def test_a_streamed_body_of_many_file_spans_arrives_in_order(tmp_path: Path, nursery: trio.Nursery,
                                                                   direct: bool) -> None:
    """The mirror's blob stream: spans read one piece ahead of the socket, in order, every
    byte once; a span longer than a read piece and unaligned spans included."""
    data = os.urandom((11 << 20) + 333)
    path = tmp_path / "blob"
    path.write_bytes(data)
    spans = [(0, 4 << 20), (4 << 20, 4 << 20), (8 << 20, len(data) - (8 << 20)), (5, 9 << 20), (17, 3), (0, 0)]
    port = await nursery.start(serve_http, _stream_server(path, direct, spans), "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        r = await c.get("/s")
    assert r.status_code == 200
    assert r.content == b"".join(b"<" + data[o:o + n] + b">" for o, n in spans)


async def test_a_streamed_body_that_fails_midway_cuts_the_connection(tmp_path: Path, nursery: trio.Nursery) -> None:
    data = os.urandom(8 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    port = await nursery.start(serve_http, _stream_server(path, True, [(0, 4 << 20), (4 << 20, 4 << 20)], fail_after=1),
                               "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        with pytest.raises(httpx.RemoteProtocolError):  # chunked body never terminated: not a whole blob
            await c.get("/s")
