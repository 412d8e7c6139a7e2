"""zstd on the chunk wire: used when a chunk compresses, hashes cover the plain bytes,
and decompression is capped at the chunk size."""

from __future__ import annotations

import trio
import zstandard

from p2pdist.core.config import PeerConfig
from p2pdist.core.task import TaskSpec
from p2pdist.net.http import Request, Response, Router, serve_http
from p2pdist.testing import StaticOrigin, sha256_digest, start_cluster, start_peer

MiB = 1 << 20


def compressible(size: int) -> bytes:
    line = b"layer.tar: usr/lib/x86_64-linux-gnu/libfoo.so.1 0644 root root\n"
    return (line * (size // len(line) + 1))[:size]


async def test_compressible_chunks_travel_compressed_and_verify(tmp_path, nursery):
    blob = compressible(6 * 4 * MiB + 5)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=2, origin=origin)
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    with trio.fail_after(30):
        for p in c.peers:
            cmap = await p.start_download(spec).wait()
            out = tmp_path / f"{p.peer_id}.out"
            await p.store.assemble(cmap, out, verify_sha256=True)
            assert out.read_bytes() == blob
    wire = sum(p.env.chunks.bytes_received for p in c.peers)
    from_peers = sum(p.downloads[spec.task_id].stats.bytes_from_peers for p in c.peers)
    assert from_peers >= len(blob)  # every byte came through the swarm…
    assert wire * 5 < from_peers  # …and far fewer crossed the wire
    nursery.cancel_scope.cancel()


async def test_compression_off_sends_plain_bytes(tmp_path, nursery):
    blob = compressible(2 * 4 * MiB)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=1, origin=origin,
                            peer_overrides={"wire_compression": "off"})
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    with trio.fail_after(30):
        await c.peers[0].start_download(spec).wait()
    assert c.peers[0].env.chunks.bytes_received == len(blob)
    nursery.cancel_scope.cancel()


async def test_zstd_bomb_is_refused_and_never_stored(tmp_path, nursery):
    """A node answering with a zstd frame that declares more than a chunk is a bad source;
    the chunk then comes from the origin and the bomb is never decompressed."""
    blob = compressible(4 * MiB)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    digest = sha256_digest(blob)
    # a node that holds the real map but serves a bomb for every chunk
    honest, _ = await start_peer(nursery, PeerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "h")))
    cmap = await honest.start_download(TaskSpec(origin.url("b"), digest)).wait()
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 * MiB))

    router = Router()

    async def maps(request: Request) -> Response:
        return Response(200, [("content-type", "application/json")], cmap.to_json())

    async def chunks(request: Request) -> Response:
        return Response(200, [("content-encoding", "zstd")], bomb)

    router.route("GET", "/maps/{task}", maps)
    router.route("GET", "/chunks/{name}", chunks)
    port = await nursery.start(serve_http, router, "127.0.0.1", 0)
    victim, _ = await start_peer(nursery, PeerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "v")))
    d = victim.start_download(TaskSpec(origin.url("b"), digest), nodes=[f"127.0.0.1:{port}"])
    with trio.fail_after(30):
        got = await d.wait()
    assert got == cmap
    s = d.summary()
    assert s["corrupt_chunks"] >= 1 and f"node:127.0.0.1:{port}" in s["bad_sources"]
    assert s["bytes_from_origin"] == len(blob)
    nursery.cancel_scope.cancel()

