"""The seed hands out fresh chunks (the tracker's ``/fresh`` long poll): each chunk the
seed has never sent goes, the moment it is published, to a waiting peer, which verifies
it like any other chunk."""

from __future__ import annotations

import random

import httpx
import pytest
import trio
from _helpers import MiB, assert_copy

from p2pdist.core.task import TaskSpec
from p2pdist.engine.download import DownloadState, Fetch
from p2pdist.engine.firstcopy import FirstCopies
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster

BLOB = make_blob(16 * MiB + 777, seed=7)  # 17 chunks of 1 MiB


def _metric(registry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def test_peers_receive_fresh_chunks_while_the_blob_streams_in(tmp_path):
    origin = StaticOrigin({"layer": BLOB}, delay=0.1)  # ~1.7 s of streaming
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=3, origin=origin)
        spec = TaskSpec(origin.url("layer"), sha256_digest(BLOB))
        with trio.fail_after(40):
            ds = [p.start_download(spec) for p in c.peers]
            for d in ds:
                await assert_copy(d, BLOB, tmp_path)
        handed = _metric(c.tracker.metrics.registry, "p2pdist_tracker_fresh_handed_total")
        received = sum(_metric(p.metrics.registry, "p2pdist_fresh_received_total") for p in c.peers)
        # every chunk leaves the seed unasked while it streams: the peers wait at /fresh
        assert handed >= 12, handed
        assert 0 < received <= handed
        assert origin.bytes_sent <= 1.05 * len(BLOB)
        for store in [c.tracker.store, *(p.store for p in c.peers)]:
            assert store.statistics().pinned_bytes == 0, store.root
        nursery.cancel_scope.cancel()


# -- the rule (engine.firstcopy) ----------------------------------------------------------


def test_the_seed_hands_the_oldest_unsent_chunk_to_the_host_with_fewest_first_copies() -> None:
    fc = FirstCopies(grace=5.0)
    for c in ("c0", "c1", "c2", "c3"):
        fc.publish(c)
    assert fc.unsent("c0") and not fc.unsent("never published")
    fc.give("c0", "a", 0.0)
    assert not fc.unsent("c0") and fc.firsts("a") == 1
    assert fc.pick(["a", "b"], random.Random(0)) == "b"
    with pytest.raises(ValueError):
        fc.give("c0", "b", 0.1)  # handed out once
    with pytest.raises(Exception, match="went to another peer"):
        fc.admit("c0", "b", 0.1)  # and not pulled by another within the grace
    # ties go either way, at random
    assert {fc.pick(["b", "c"], random.Random(s)) for s in range(20)} == {"b", "c"}


def test_a_host_handed_fresh_chunks_counts_as_asking_for_the_pull_rule() -> None:
    fc = FirstCopies(grace=5.0, window=1.0)
    for c in ("c0", "c1", "c2", "c3"):
        fc.publish(c)
    fc.give("c0", "waiting", 0.0)
    fc.admit("c1", "puller", 0.1)
    fc.admit("c2", "puller", 0.2)  # 1 each: not fewer
    with pytest.raises(Exception, match="fewer"):
        fc.admit("c3", "puller", 0.3)  # kept for the host waiting at /fresh


# -- the engine: a chunk sent unasked ------------------------------------------------------


def _state(**kw) -> DownloadState:
    kw.setdefault("rng", random.Random(0))
    return DownloadState(max_in_flight=2, per_source_in_flight=1, **kw)


def _fetched(actions) -> list[int]:
    return sorted(a.index for a in actions if isinstance(a, Fetch))


def _drain(st: DownloadState, actions, now: float) -> tuple[list[int], bool]:
    """Complete every fetch the engine asks for; return the chunks it fetched and whether
    it said Done."""
    from p2pdist.engine.download import Done

    fetched, done, queue = [], False, list(actions)
    while queue:
        a = queue.pop(0)
        if isinstance(a, Fetch):
            fetched.append(a.index)
            queue += st.chunk_ok(a.index, a.peer_id, now)
        done |= isinstance(a, Done)
    return fetched, done


def test_an_incoming_chunk_is_not_fetched_elsewhere_and_ends_like_a_fetch() -> None:
    from p2pdist.engine.download import Source

    st = _state(origin_fallback=False)
    st.set_sources([Source("seed", "s:1", None, seed=True), Source("p", "p:1", frozenset(range(4)))], 0.0)
    assert st.incoming(0, "seed", 0.0)
    acts = st.map_grew(4, 4, 0.0)
    assert len(_fetched(acts)) == 1 and 0 not in _fetched(acts)  # it counts toward max_in_flight (2)
    assert not st.incoming(0, "seed", 0.1)  # single flight
    assert not st.incoming(_fetched(acts)[0], "seed", 0.1)  # the engine fetches it already
    fetched, done = _drain(st, acts, 0.2)
    assert sorted(fetched) == [1, 2, 3] and not done  # 0 is still arriving
    rest, done = _drain(st, st.chunk_ok(0, "seed", 0.3), 0.3)
    assert rest == [] and done
    assert st.holds(0) and not st.incoming(0, "seed", 0.4)


def test_an_incoming_chunk_beyond_the_map_stays_out_of_the_pending_set_until_it_fails() -> None:
    from p2pdist.engine.download import Source

    st = _state(origin_fallback=False)
    st.set_sources([Source("seed", "s:1", None, seed=True)], 0.0)
    assert st.incoming(5, "seed", 0.0)  # the map's long poll is a moment behind
    fetched, done = _drain(st, st.map_grew(6, 6, 0.0), 0.1)
    assert sorted(fetched) == [0, 1, 2, 3, 4] and not done
    # the transfer broke: the engine asks for it itself
    fetched, done = _drain(st, st.chunk_failed(5, "seed", "error", 0.2), 0.3)
    assert fetched == [5] and done
    with pytest.raises(ValueError):
        _state(total=4).incoming(4, "seed", 0.0)


# -- the tracker's /fresh route ------------------------------------------------------------


async def _fresh(url: str, source: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=source),
                                 timeout=30) as client:
        return await client.get(url)


async def test_the_tracker_hands_each_waiting_host_its_own_fresh_chunk(tmp_path, nursery):
    blob = make_blob(6 * MiB, seed=43)
    origin = StaticOrigin({"b": blob}, delay=0.3)  # ~1.8 s of streaming, 1 MiB chunks
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=0, origin=origin)
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    task = await c.tracker.register(spec)
    url = f"{c.tracker_url}/api/v1/tasks/{spec.task_id}/fresh?wait=10"
    got: dict[str, httpx.Response] = {}

    async def poll(host: str) -> None:
        got[host] = await _fresh(url, host)

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(poll, "127.0.0.2")
            n.start_soon(poll, "127.0.0.3")
    indices = set()
    for r in got.values():
        assert r.status_code == 200, r.text
        i = int(r.headers["x-chunk-index"])
        assert r.headers["x-chunk-name"] == task.chunks[i]
        assert r.content == blob[i * MiB:(i + 1) * MiB]
        indices.add(i)
    assert indices == {0, 1}  # oldest first, one host each
    # a pull of a chunk handed out is refused to the other host within the grace
    other = await _fresh(f"{c.tracker_url}/chunks/{task.chunks[0]}", "127.0.0.4")
    assert other.status_code == 404
    with trio.fail_after(20):
        while task.sealed is None:
            await task.changed.wait()
    end = await _fresh(url, "127.0.0.2")  # streamed in: nothing more will be handed out
    assert end.status_code == 204 and end.headers["x-fresh"] == "end"
    assert (await _fresh(f"{c.tracker_url}/api/v1/tasks/{'0' * 64}/fresh", "127.0.0.2")).status_code == 404
    assert (await _fresh(f"{c.tracker_url}/api/v1/tasks/{spec.task_id}/fresh?wait=x", "127.0.0.2")).status_code == 400
    nursery.cancel_scope.cancel()


async def test_an_ask_refused_busy_leaves_the_chunk_for_the_hand_out(tmp_path, nursery):
    # The seed checks for a free slot before the first-copy rule records a chunk as sent:
    # an ask it refuses busy must not take a fresh chunk out of the hand-out queue
    # (bench/sim.py: over half the fresh chunks at N = 100 went that way, then sat until
    # their asker came back).
    blob = make_blob(6 * MiB, seed=46)
    origin = StaticOrigin({"b": blob}, delay=0.3)
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=0, origin=origin, tracker_overrides={"upload_slots": 1})
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    task = await c.tracker.register(spec)
    assert c.tracker.slots.try_acquire()  # the seed's only slot is taken
    with trio.fail_after(20):
        while not task.chunks:
            await task.changed.wait()
    busy = await _fresh(f"{c.tracker_url}/chunks/{task.chunks[0]}", "127.0.0.3")
    assert busy.status_code == 503
    c.tracker.slots.release()
    with trio.fail_after(20):
        handed = await _fresh(f"{c.tracker_url}/api/v1/tasks/{spec.task_id}/fresh?wait=10", "127.0.0.2")
    assert handed.status_code == 200 and handed.headers["x-chunk-index"] == "0"
    nursery.cancel_scope.cancel()


async def test_a_tree_seed_hands_out_nothing(tmp_path, nursery):
    blob = make_blob(3 * MiB, seed=44)
    origin = StaticOrigin({"b": blob}, delay=0.3)
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=0, origin=origin, topology="tree")
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    await c.tracker.register(spec)
    with trio.fail_after(5):
        r = await _fresh(f"{c.tracker_url}/api/v1/tasks/{spec.task_id}/fresh?wait=10", "127.0.0.2")
    assert r.status_code == 204 and r.headers["x-fresh"] == "end"
    nursery.cancel_scope.cancel()


# -- the seed says what it withholds -------------------------------------------------------


def test_withheld_lists_the_first_copies_gone_to_other_hosts_within_the_grace() -> None:
    fc = FirstCopies(grace=5.0)
    names = ["c0", "c1", "c2", "c3"]
    for c in names:
        fc.publish(c)
    fc.give("c0", "a", 0.0)
    fc.admit("c2", "b", 1.0)
    assert fc.withheld(names, "b", 2.0) == [0]  # its own first copy is not withheld from b
    assert fc.withheld(names, "c", 2.0) == [0, 2]
    assert fc.withheld(names, "c", 2.0, start=1) == [2]
    assert fc.withheld(names, "c", 5.5) == [2]  # c0's grace ran out: it may be sent again
    fc.retire(names)
    assert fc.withheld(names, "c", 5.5) == []  # streamed in: served freely


def test_a_source_that_withholds_chunks_is_not_asked_for_them() -> None:
    from p2pdist.engine.download import Source

    st = DownloadState(max_in_flight=4, per_source_in_flight=1, origin_fallback=False, rng=random.Random(0))
    st.set_sources([Source("seed", "s:1", None, seed=True, withheld=frozenset({0, 1})),
                    Source("p", "p:1", frozenset({0}))], 0.0)
    asked = {(a.index, a.peer_id) for a in st.map_grew(4, 4, 0.0) if isinstance(a, Fetch)}
    assert (0, "seed") not in asked and (1, "seed") not in asked
    assert (0, "p") in asked
    # the map answer's list, before the chunks are revealed
    st2 = DownloadState(max_in_flight=4, per_source_in_flight=4, origin_fallback=False, rng=random.Random(0))
    st2.set_sources([Source("seed", "s:1", None, seed=True)], 0.0)
    st2.withheld("seed", [1, 2])
    assert sorted(a.index for a in st2.map_grew(4, 4, 0.0) if isinstance(a, Fetch)) == [0, 3]
    # the next source list is the news: what it does not list may be asked for again
    assert sorted(a.index for a in st2.set_sources([Source("seed", "s:1", None, seed=True)], 0.1)
                  if isinstance(a, Fetch)) == [1, 2]


async def test_map_and_announce_answers_list_what_the_seed_withholds_from_the_asker(tmp_path, nursery):
    from p2pdist.wire.tracker import AnnounceReply, MapProgress, decode_have

    blob = make_blob(6 * MiB, seed=45)
    origin = StaticOrigin({"b": blob}, delay=0.4)
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=0, origin=origin)
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    await c.tracker.register(spec)
    with trio.fail_after(20):
        first = await _fresh(f"{c.tracker_url}/api/v1/tasks/{spec.task_id}/fresh?wait=10", "127.0.0.2")
    assert first.status_code == 200 and first.headers["x-chunk-index"] == "0"
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.3")) as other:
        prog = MapProgress.from_dict((await other.get(
            f"{c.tracker_url}/api/v1/tasks/{spec.task_id}/map?known=0")).json())
        assert 0 in prog.withheld
        ann = {"peer_id": "p3", "addr": "127.0.0.3:1", "tasks": [{"task_id": spec.task_id, "have": ""}]}
        reply = AnnounceReply.from_dict((await other.post(f"{c.tracker_url}/api/v1/announce", json=ann)).json())
        (seed,) = [n for n in reply.neighbours[spec.task_id] if n.seed]
        assert 0 in decode_have(seed.withheld)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")) as same:
        prog = MapProgress.from_dict((await same.get(
            f"{c.tracker_url}/api/v1/tasks/{spec.task_id}/map?known=0")).json())
        assert 0 not in prog.withheld  # the host it went to may ask again (a retried transfer)
    nursery.cancel_scope.cancel()


def test_a_map_answer_naming_chunks_it_does_not_carry_is_refused() -> None:
    from p2pdist.core.errors import BodyInvalid
    from p2pdist.wire.tracker import MapProgress

    good = MapProgress("a" * 64, 1024, 4096, 2, ("b" * 64, "c" * 64), 4, withheld=(3,))
    assert MapProgress.from_dict(good.to_dict()) == good
    for bad in ([1], [4], ["3"], [True], "3"):
        with pytest.raises(BodyInvalid):
            MapProgress.from_dict({**good.to_dict(), "withheld": bad})


def test_a_withheld_chunk_waits_for_the_swarm_and_never_goes_back_to_source() -> None:
    """The seed holds it and sends it again once its grace runs out: the starvation
    clock (source_wait, then the origin) is for chunks nobody holds. Counting withheld
    chunks as lacking sent 1.3 x the blob back to source in bench/lab.py (N = 16)."""
    from p2pdist.engine.download import FetchOrigin, Source

    st = DownloadState(max_in_flight=4, per_source_in_flight=4, source_wait=1.0, rng=random.Random(0))
    st.set_sources([Source("seed", "s:1", None, seed=True, withheld=frozenset({0}))], 0.0)
    first = st.map_grew(2, 2, 0.0)
    assert [a.index for a in first if isinstance(a, Fetch)] == [1]
    assert not [a for a in st.tick(5.0) if isinstance(a, FetchOrigin)]
    # the next source list does not withhold it: asked for at once
    assert [a.index for a in st.set_sources([Source("seed", "s:1", None, seed=True)], 5.1)
            if isinstance(a, Fetch)] == [0]
