"""Have polls (``have_poll_interval``): peers ask their neighbours what they hold, so a
cluster too large for its tracker to follow can announce seldom and still share.

In-process cluster on loopback (real sockets, the real tracker and peers). The test that
matters makes the tracker useless as a source of news -- peers announce once at the start,
when nobody holds anything, and again at the end -- so every byte the peers pass among
themselves was found through a have poll.
"""

from __future__ import annotations

import httpx
import trio
from _helpers import MiB, assert_copy, bytes_served

from p2pdist.core.config import ConfigError, PeerConfig
from p2pdist.core.task import TaskSpec
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster
from p2pdist.wire.tracker import decode_have

BLOB = make_blob(24 * MiB + 4321, seed=7)


def test_negative_interval_is_refused() -> None:
    try:
        PeerConfig(have_poll_interval=-1).validate()
    except ConfigError as exc:
        assert "have_poll_interval" in str(exc)
    else:
        raise AssertionError("a negative have_poll_interval was accepted")


async def test_peers_share_through_have_polls_alone(tmp_path) -> None:
    origin = StaticOrigin({"layer": BLOB})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=5, origin=origin,
                                peer_overrides={"have_poll_interval": 0.05, "announce_interval": 60.0})
        spec = TaskSpec(origin.url("layer"), sha256_digest(BLOB))
        with trio.fail_after(60):
            ds = [p.start_download(spec) for p in c.peers]
            for d in ds:
                await assert_copy(d, BLOB, tmp_path)
        summaries = [d.summary() for d in ds]
        assert all(s["mode"] == "swarm" for s in summaries), summaries
        assert origin.bytes_sent <= 1.05 * len(BLOB)
        # the tracker heard each peer about twice (start and end), not at every chunk
        announces = c.tracker.metrics.registry.get_sample_value("p2pdist_tracker_announces_total")
        assert announces is not None and announces <= 4 * len(c.peers), announces
        c.tracker.expire()  # reads that metric for its load warning (none at this rate)
        # ... so what the peers served each other, they found by asking each other
        assert sum(bytes_served(p) for p in c.peers) >= len(BLOB) / 2, [bytes_served(p) for p in c.peers]
        nursery.cancel_scope.cancel()


async def test_the_have_route(tmp_path) -> None:
    origin = StaticOrigin({"layer": BLOB})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=1, origin=origin)
        peer = c.peers[0]
        spec = TaskSpec(origin.url("layer"), sha256_digest(BLOB))
        async with httpx.AsyncClient(base_url=f"http://{peer.advertise}") as client:
            r = await client.get(f"/have/{spec.task_id}")
            assert r.status_code == 404 and r.json()["errors"][0]["code"] == "TASK_UNKNOWN"
            r = await client.get("/have/not-a-task")
            assert r.status_code == 400 and r.json()["errors"][0]["code"] == "NAME_INVALID"
            d = peer.start_download(spec)
            with trio.fail_after(30):
                await d.wait()
            r = await client.get(f"/have/{spec.task_id}")
            assert r.status_code == 200
            assert decode_have(r.json()["have"], d.total) == set(range(d.total))
            # the chunk client reads the same answer
            assert await peer.env.chunks.fetch_have(peer.advertise, spec.task_id) == r.json()["have"]
        nursery.cancel_scope.cancel()


def test_the_tracker_says_when_it_nears_one_cores_capacity() -> None:
    """The operator's cue for have_poll_interval: the tracker's own announce rate."""
    from p2pdist.tracker.service import ANNOUNCE_WARN_EVERY, ANNOUNCE_WARN_RATE, AnnounceLoad

    load = AnnounceLoad(0.0)
    total = ANNOUNCE_WARN_RATE * 5 - 1  # just under the rate over 5 s
    assert load.over(5.0, total) is None
    total += ANNOUNCE_WARN_RATE * 5
    assert load.over(10.0, total) == ANNOUNCE_WARN_RATE
    total += ANNOUNCE_WARN_RATE * 10  # still high, but warned a moment ago
    assert load.over(15.0, total) is None
    total += ANNOUNCE_WARN_RATE * ANNOUNCE_WARN_EVERY
    assert load.over(15.0 + ANNOUNCE_WARN_EVERY, total) == ANNOUNCE_WARN_RATE
