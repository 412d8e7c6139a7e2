"""The raw origin client: the fast path for plain HTTP, httpx for everything else."""

from __future__ import annotations

import pytest
import trio

from p2pdist.backend.origin import HttpOrigin, _HttpxStream, _RawStream, read_full
from p2pdist.core.errors import OriginError, RangeInvalid
from p2pdist.core.task import TaskSpec
from p2pdist.net.http import Request, Response, Router, serve_http
from p2pdist.testing import StaticOrigin, make_blob


async def _serve(nursery, router) -> str:
    port = await nursery.start(serve_http, router, "127.0.0.1", 0)
    return f"http://127.0.0.1:{port}"


async def test_fast_path_reads_whole_bodies_and_ranges(nursery):
    blob = make_blob(3 << 20, seed=1)
    o = StaticOrigin({"b": blob})
    await nursery.start(o.serve)
    origin = HttpOrigin()
    async with origin.open(TaskSpec(o.url("b"))) as stream:
        assert isinstance(stream, _RawStream) and stream.size == len(blob)
        buf = bytearray(len(blob) + 10)
        assert await read_full(stream, memoryview(buf)) == len(blob)
        assert bytes(buf[:len(blob)]) == blob
    async with origin.open(TaskSpec(o.url("b")), 1000, 5000) as stream:
        buf = bytearray(5000)
        assert await read_full(stream, memoryview(buf)) == 5000 and bytes(buf) == blob[1000:6000]
    with pytest.raises(RangeInvalid):
        async with origin.open(TaskSpec(o.url("b")), len(blob) + 1, 10):
            pass
    with pytest.raises(OriginError, match="404"):
        async with origin.open(TaskSpec(o.url("missing"))):
            pass
    await origin.aclose()
    nursery.cancel_scope.cancel()


async def test_redirects_same_host_fast_other_host_via_httpx_without_credentials(nursery):
    blob = make_blob(1 << 20, seed=2)
    seen: list[str | None] = []
    target = Router()

    async def real(request: Request) -> Response:
        seen.append(request.header("authorization"))
        return Response(200, [], blob)

    target.route("GET", "/blob", real)
    other = await _serve(nursery, target)
    front = Router()

    async def same(request: Request) -> Response:
        return Response(307, [("location", "/final")], b"")

    async def final(request: Request) -> Response:
        seen.append(request.header("authorization"))
        return Response(200, [], blob)

    async def away(request: Request) -> Response:
        return Response(307, [("location", f"{other}/blob")], b"")

    front.route("GET", "/same", same)
    front.route("GET", "/final", final)
    front.route("GET", "/away", away)
    base = await _serve(nursery, front)
    origin = HttpOrigin()
    secret = (("authorization", "Bearer secret"),)
    async with origin.open(TaskSpec(f"{base}/same", headers=secret)) as stream:
        assert isinstance(stream, _RawStream)
        buf = bytearray(len(blob))
        await read_full(stream, memoryview(buf))
        assert bytes(buf) == blob
    async with origin.open(TaskSpec(f"{base}/away", headers=secret)) as stream:
        assert isinstance(stream, _HttpxStream)  # another host: the general client, which drops credentials
        buf = bytearray(len(blob))
        await read_full(stream, memoryview(buf))
        assert bytes(buf) == blob
    assert seen == ["Bearer secret", None]
    await origin.aclose()
    nursery.cancel_scope.cancel()


async def test_a_dying_origin_is_an_origin_error(nursery):
    o = StaticOrigin({"b": make_blob(4 << 20, seed=3)}, fail_after=1 << 20, piece=256 << 10)
    await nursery.start(o.serve)
    origin = HttpOrigin()
    with pytest.raises(OriginError):
        async with origin.open(TaskSpec(o.url("b"))) as stream:
            await read_full(stream, memoryview(bytearray(4 << 20)))
    with pytest.raises(OriginError, match="unreachable"):
        async with origin.open(TaskSpec("http://127.0.0.1:9/x")):
            pass
    await origin.aclose()
    nursery.cancel_scope.cancel()


async def test_chunked_bodies_take_the_general_path(nursery):
    router = Router()

    async def chunked(request: Request) -> Response:
        async def body():
            yield b"abc"
            await trio.lowlevel.checkpoint()
            yield b"def"
        return Response(200, [], body())  # no content length: chunked encoding

    router.route("GET", "/c", chunked)
    base = await _serve(nursery, router)
    origin = HttpOrigin()
    async with origin.open(TaskSpec(f"{base}/c")) as stream:
        assert isinstance(stream, _HttpxStream) and stream.size is None
        buf = bytearray(10)
        assert await read_full(stream, memoryview(buf)) == 6 and bytes(buf[:6]) == b"abcdef"
    await origin.aclose()
    nursery.cancel_scope.cancel()
