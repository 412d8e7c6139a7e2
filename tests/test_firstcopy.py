"""The seed's first-copy rule (engine.firstcopy): while a blob streams in from the origin,
each chunk leaves the tracker once, and the swarm passes it on."""

from __future__ import annotations

import httpx
import pytest
import trio

from p2pdist.core.chunkmap import DEFAULT_CHUNK_SIZE, chunk_size_for
from p2pdist.core.config import ConfigError, TrackerConfig
from p2pdist.core.errors import ChunkPassedOn, ChunkUnknown
from p2pdist.core.task import TaskSpec
from p2pdist.engine.firstcopy import FirstCopies
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster

CS = DEFAULT_CHUNK_SIZE


def test_a_fresh_chunk_goes_to_one_host_until_the_grace_runs_out() -> None:
    fc = FirstCopies(grace=5.0)
    fc.publish("c0")
    fc.admit("c0", "10.0.0.1", 0.0)
    with pytest.raises(ChunkPassedOn) as err:
        fc.admit("c0", "10.0.0.2", 4.9)
    assert isinstance(err.value, ChunkUnknown) and err.value.status == 404  # peers read it as "missing"
    fc.admit("c0", "10.0.0.1", 4.9)  # the first receiver may retry
    fc.admit("c0", "10.0.0.2", 9.95)  # 5 s after the last send: it may have died with it
    with pytest.raises(ChunkPassedOn):
        fc.admit("c0", "10.0.0.1", 10.0)


def test_first_copies_are_spread_over_the_hosts_asking() -> None:
    fc = FirstCopies(grace=5.0, window=1.0)
    for c in ("c0", "c1", "c2", "c3"):
        fc.publish(c)
    fc.admit("c0", "fast", 0.0)
    fc.admit("c1", "fast", 0.1)  # alone: a single peer's pull is never held back
    with pytest.raises(ChunkPassedOn):
        fc.admit("c1", "slow", 0.2)  # (c1 went to "fast" 0.1 s ago)
    with pytest.raises(ChunkPassedOn, match="fewer") as kept:
        fc.admit("c2", "fast", 0.3)  # "slow" asked too and has none: c2 is kept for it
    assert kept.value.reason == "reserved"
    fc.admit("c2", "slow", 0.4)
    with pytest.raises(ChunkPassedOn, match="fewer"):
        fc.admit("c3", "fast", 0.5)
    fc.admit("c3", "fast", 1.5)  # "slow" has not asked for a second: no longer waited for


def test_unpublished_and_retired_chunks_are_served_freely() -> None:
    fc = FirstCopies(grace=5.0)
    fc.admit("cached", "a", 0.0)
    fc.admit("cached", "b", 0.0)  # not streaming from the origin: no rule
    fc.publish("c1")
    fc.admit("c1", "a", 0.0)
    fc.retire(["c1"])  # the origin stream ended: the end phase needs every holder
    fc.admit("c1", "b", 0.1)
    assert len(fc) == 0


def test_zero_grace_turns_the_rule_off_and_a_negative_one_is_refused() -> None:
    fc = FirstCopies(grace=0.0)
    fc.publish("c")
    fc.admit("c", "a", 1.0)
    fc.admit("c", "b", 1.0)
    with pytest.raises(ConfigError, match="seed_grace"):
        TrackerConfig(seed_grace=-1).validate()


async def _get(url: str, source: str) -> httpx.Response:
    """GET from a given loopback source address: hosts are told apart by address."""
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=source)) as client:
        return await client.get(url)


@pytest.mark.parametrize("topology", ["swarm", "tree"])
async def test_the_tracker_passes_each_fresh_chunk_on_once_in_swarm_mode(tmp_path, nursery, topology):
    blob = make_blob(4 * CS, seed=41)
    origin = StaticOrigin({"b": blob}, piece=CS // 4, delay=0.15)  # ~2.4 s of streaming
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=0, origin=origin, topology=topology,
                            tracker_overrides={"seed_grace": 30.0})
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    task = await c.tracker.register(spec)
    with trio.fail_after(10):
        while not task.chunks:
            await task.changed.wait()
    url = f"{c.tracker_url}/chunks/{task.chunks[0]}"
    assert (await _get(url, "127.0.0.2")).status_code == 200
    second = await _get(url, "127.0.0.3")
    retry = await _get(url, "127.0.0.2")
    assert retry.status_code == 200
    if topology == "swarm":
        assert second.status_code == 404
        assert second.json()["errors"][0]["code"] == "CHUNK_PASSED_ON"
        assert c.tracker.metrics.asks_refused.labels("passed_on")._value.get() == 1  # operators see the rule work
        assert task.sealed is None  # still streaming: the rule was in force
    else:  # each of the seed's tree children roots a subtree and needs every chunk
        assert second.status_code == 200
    with trio.fail_after(20):
        while task.sealed is None:
            await task.changed.wait()
    late = await _get(url, "127.0.0.3")
    assert late.status_code == 200 and late.content == blob[:chunk_size_for(len(blob))]
    nursery.cancel_scope.cancel()
