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
