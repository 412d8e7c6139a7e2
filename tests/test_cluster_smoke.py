import trio

from p2pdist.core.task import TaskSpec
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster


async def test_smoke_swarm(tmp_path):
    blob = make_blob(10 * 4 * 1024 * 1024 + 123)
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.serve)
        c = await start_cluster(nursery, tmp_path, peers=3, origin=origin)
        spec = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(30):
            ds = [p.start_download(spec) for p in c.peers]
            for d in ds:
                cmap = await d.wait()
                print(d.summary())
                out = tmp_path / f"out-{d.env.peer_id}"
                await d.env.store.assemble(cmap, out, verify_sha256=True)
                assert out.read_bytes() == blob
        print("origin sent", origin.bytes_sent)
        nursery.cancel_scope.cancel()
