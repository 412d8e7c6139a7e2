"""The download state machine: scheduling rules, failure handling, and a property test
that drives it with random events and checks its invariants."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.engine.download import (
    FAILURE_REASONS,
    Action,
    Done,
    DownloadState,
    Expired,
    Fetch,
    FetchOrigin,
    Source,
)


def state(**kw: Any) -> DownloadState:
    kw.setdefault("rng", random.Random(0))
    return DownloadState(**kw)


def src(pid: str, have: range | set[int] | None = None) -> Source:
    return Source(pid, f"{pid}:7000", None if have is None else frozenset(have))


def fetches(actions: list[Action]) -> list[Fetch]:
    return [a for a in actions if isinstance(a, Fetch)]


def origin(actions: list[Action]) -> list[int]:
    return [a.index for a in actions if isinstance(a, FetchOrigin)]


# ---- filling capacity ------------------------------------------------------------------


def test_fills_in_flight_up_to_the_cap() -> None:
    d = state(n_known=20, total=20, max_in_flight=8, per_source_in_flight=2)
    acts = d.set_sources([src(f"s{i}") for i in range(10)], 0.0)
    got = fetches(acts)
    assert len(got) == 8 == len(d.in_flight)
    assert len({f.index for f in got}) == 8
    assert all(f.deadline == 10.0 and f.addr == f"{f.peer_id}:7000" for f in got)


def test_per_source_cap_and_refill_on_success() -> None:
    d = state(n_known=10, total=10, max_in_flight=4, per_source_in_flight=1)
    got = fetches(d.set_sources([src(p) for p in "abcd"], 0.0))
    assert sorted(f.peer_id for f in got) == ["a", "b", "c", "d"]
    more = fetches(d.chunk_ok(got[0].index, got[0].peer_id, 1.0))
    assert [(f.peer_id, f.deadline) for f in more] == [(got[0].peer_id, 11.0)]


def test_few_sources_share_max_in_flight() -> None:
    """A lone source takes all of max_in_flight (the seed of a cold mirror pull, a single
    --node); among several each takes an equal share, and a source that holds nothing
    yet counts too (it will soon; the first peer to ask must not take the seed)."""
    d = state(n_known=10, total=10, max_in_flight=8, per_source_in_flight=2)
    got = fetches(d.set_sources([src("a")], 0.0))
    assert len(got) == 8 and {f.peer_id for f in got} == {"a"}
    d = state(n_known=10, total=10, max_in_flight=6, per_source_in_flight=1)
    got = fetches(d.set_sources([src("a"), src("b", range(5)), src("empty", set())], 0.0))
    per = {p: sum(f.peer_id == p for f in got) for p in ("a", "b", "empty")}
    assert per == {"a": 2, "b": 2, "empty": 0}
    assert d.source_cap(1) == 6 and d.source_cap(4) == 2 and d.source_cap(10) == 1


def test_least_loaded_source_is_preferred() -> None:
    d = state(n_known=6, total=6, per_source_in_flight=3, max_in_flight=4)
    got = fetches(d.set_sources([src("a"), src("b")], 0.0))
    per = {p: sum(f.peer_id == p for f in got) for p in "ab"}
    assert per == {"a": 2, "b": 2}


def test_unknown_have_sources_are_used_and_known_haves_respected() -> None:
    d = state(n_known=4, total=4, per_source_in_flight=4)
    got = fetches(d.set_sources([src("k", {0}), src("u")], 0.0))
    assert {f.index for f in got} == {0, 1, 2, 3}
    assert all(f.peer_id == "u" for f in got if f.index != 0)


def test_rarest_first_within_a_download() -> None:
    d = state(n_known=3, total=3, max_in_flight=1)
    got = fetches(d.set_sources([src("a", {0, 1, 2}), src("b", {0, 1}), src("c", {0})], 0.0))
    assert [f.index for f in got] == [2]


def test_sequential_policy() -> None:
    d = state(n_known=10, total=10, max_in_flight=3, policy="sequential")
    got = fetches(d.set_sources([src("a"), src("b")], 0.0))
    assert sorted(f.index for f in got) == [0, 1, 2]


def test_map_growth_releases_new_chunks_only_once_known() -> None:
    d = state(n_known=0, max_in_flight=8, per_source_in_flight=8)
    assert d.set_sources([src("a")], 0.0) == []
    got = fetches(d.map_grew(2, None, 0.1))
    assert sorted(f.index for f in got) == [0, 1]
    got = fetches(d.map_grew(5, None, 0.2))
    assert sorted(f.index for f in got) == [2, 3, 4]
    assert d.map_grew(3, None, 0.3) == []  # never shrinks
    assert d.n_known == 5


def test_resumed_chunks_are_not_fetched() -> None:
    d = state(n_known=4, total=4, have=[0, 2])
    got = fetches(d.set_sources([src("a")], 0.0))
    assert sorted(f.index for f in got) == [1, 3]


# ---- done ------------------------------------------------------------------------------


def test_done_exactly_once() -> None:
    d = state(n_known=2, total=2)
    got = fetches(d.set_sources([src("a")], 0.0))
    assert d.chunk_ok(got[0].index, "a", 1.0) == []
    assert d.chunk_ok(got[1].index, "a", 1.0) == [Done()]
    assert d.done
    assert d.tick(2.0) == [] and d.chunk_ok(0, "a", 3.0) == []
    assert d.stats.from_peers == 2


def test_done_waits_for_the_final_count() -> None:
    d = state(n_known=1)
    (f,) = fetches(d.set_sources([src("a")], 0.0))
    assert d.chunk_ok(f.index, "a", 1.0) == []  # more chunks may still come
    assert d.map_grew(1, 1, 2.0) == [Done()]


def test_empty_blob_and_fully_held_blob_are_done_at_once() -> None:
    assert state(total=0).tick(0.0) == [Done()]
    assert state(n_known=2, total=2, have=[0, 1]).tick(0.0) == [Done()]


# ---- failures --------------------------------------------------------------------------


def test_corrupt_drops_the_source_forever() -> None:
    d = state(n_known=10, total=10, per_source_in_flight=1, max_in_flight=2)
    got = fetches(d.set_sources([src("bad"), src("good")], 0.0))
    bad = next(f for f in got if f.peer_id == "bad")
    acts = d.chunk_failed(bad.index, "bad", "corrupt", 1.0)
    assert d.bad_sources == {"bad": 1} and d.stats.corrupt == 1
    assert "bad" in d.dropped
    queue = [f for f in got if f.peer_id == "good"] + fetches(acts)
    queue += fetches(d.set_sources([src("bad"), src("good")], 2.0))  # listed again
    asked = []
    while queue:
        f = queue.pop()
        asked.append(f)
        queue += fetches(d.chunk_ok(f.index, f.peer_id, 3.0))
    assert all(f.peer_id == "good" for f in asked)
    assert d.done and bad.index in {f.index for f in asked}


def test_missing_is_no_attempt_toward_the_origin() -> None:
    """A seed that passed a fresh chunk on answers "missing"; so does a peer that lacks
    it. Neither is a failure of the chunk: it waits for a holder (the next announce)
    instead of going back to source, until the starvation clock runs out."""
    d = state(n_known=1, total=1, peer_attempts=2, source_wait=30.0)
    sources = [Source("seed", "seed:1", None, seed=True), src("p")]
    acts = d.set_sources(sources, 0.0)
    for t in (0.1, 0.2):  # each says missing in turn: no origin
        (f,) = fetches(acts)
        acts = d.chunk_failed(f.index, f.peer_id, "missing", t)
        assert not origin(acts)
    assert acts == []  # nobody to ask until the next announce answer
    acts = d.set_sources(sources, 0.5)  # news (unknown haves): both may be asked again
    for t in (0.6, 0.7):
        (f,) = fetches(acts)
        acts = d.chunk_failed(f.index, f.peer_id, "missing", t)
        assert not origin(acts)
    assert d.stats.missing == 4
    assert origin(d.tick(30.6)) == []
    assert origin(d.tick(30.7)) == [0]  # uncovered since 0.7 s: the starvation clock ran out


def test_errors_strike_three_times_then_drop() -> None:
    d = state(n_known=10, total=10, per_source_in_flight=1, max_in_flight=1, peer_attempts=10)
    (f,) = fetches(d.set_sources([src("flaky"), src("ok", {9})], 0.0))
    for n in range(3):
        assert f.peer_id == "flaky"
        assert "flaky" not in d.dropped
        acts = fetches(d.chunk_failed(f.index, "flaky", "error", float(n)))
        if n < 2:
            (f,) = acts
    assert "flaky" in d.dropped
    assert all(a.peer_id == "ok" for a in acts)


def test_missing_marks_the_chunk_until_the_next_have_update() -> None:
    d = state(n_known=2, total=2, max_in_flight=1, peer_attempts=5)
    (f,) = fetches(d.set_sources([src("a", {0, 1})], 0.0))
    first = f.index
    (g,) = fetches(d.chunk_failed(first, "a", "missing", 1.0))
    assert g.index != first  # the other chunk: a is not asked for `first` again
    assert fetches(d.chunk_ok(g.index, "a", 2.0)) == []  # waits: a said it lacks `first`
    assert d.set_sources([src("a", {0, 1})], 3.0) == []  # same have: still missing
    (h,) = fetches(d.set_sources([src("a", {0, 1, 7})], 4.0))  # a have update
    assert h.index == first


def test_timeout_via_tick_retries_another_source_then_the_origin() -> None:
    d = state(n_known=1, total=1, chunk_timeout=5.0, peer_attempts=2)
    (f,) = fetches(d.set_sources([src("a"), src("b")], 0.0))
    assert d.next_deadline() == 5.0
    assert d.tick(4.9) == []
    assert d.tick(5.0) == [Expired(0, f.peer_id)]
    assert d.tick(6.0) == []  # reported once; still in flight until the driver says so
    assert d.next_deadline() is None
    assert d.in_flight == {0: f.peer_id}
    (g,) = fetches(d.chunk_failed(0, f.peer_id, "timeout", 6.0))
    assert g.peer_id != f.peer_id  # an untried source first
    assert d.tick(11.0) == [Expired(0, g.peer_id)]
    assert d.chunk_failed(0, g.peer_id, "timeout", 11.0) == [FetchOrigin(0)]
    assert d.in_flight == {0: None}
    assert d.chunk_ok(0, None, 12.0) == [Done()]
    assert d.stats.timeouts == 2 and d.stats.from_origin == 1


def test_late_success_after_timeout_is_accepted() -> None:
    d = state(n_known=1, total=1, chunk_timeout=1.0)
    (f,) = fetches(d.set_sources([src("a"), src("b")], 0.0))
    d.tick(1.0)
    assert d.chunk_ok(0, f.peer_id, 1.1) == [Done()]
    assert d.chunk_failed(0, f.peer_id, "timeout", 1.2) == []  # stale: ignored


def test_sources_that_may_hold_anything_are_asked_lowest_index_first() -> None:
    """A lone peer behind the seed (or --node peers): availability says nothing, so the
    chunks go in order, for the caller streaming the blob; with a peer whose have is
    known, rarest first (random among equals) as before."""
    seed = Source("tracker", "t:7400", None, seed=True)
    d = state(n_known=64, total=64, max_in_flight=4, per_source_in_flight=1)
    assert sorted(f.index for f in fetches(d.set_sources([seed], 0.0))) == [0, 1, 2, 3]
    assert [f.index for f in fetches(d.chunk_ok(2, "tracker", 0.1))] == [4]
    mixed = state(n_known=64, total=64, max_in_flight=4, per_source_in_flight=1, rng=random.Random(3))
    got = sorted(f.index for f in fetches(mixed.set_sources([seed, src("p", range(64))], 0.0)))
    assert got != [0, 1, 2, 3] and len(got) == 4


def test_busy_cools_the_source_down_without_an_attempt() -> None:
    d = state(n_known=1, total=1, busy_backoff=0.5, peer_attempts=1)
    (f,) = fetches(d.set_sources([src("a")], 0.0))
    assert d.chunk_failed(0, "a", "busy", 1.0) == []  # not an attempt: no origin yet
    assert d.next_deadline() == 1.5
    assert d.tick(1.4) == []
    (g,) = fetches(d.tick(1.5))
    assert g.peer_id == "a"


def test_busy_with_our_fetches_in_flight_asks_again_when_one_ends() -> None:
    """A lone seed whose slots hold our other fetches (and another download's): no
    backoff; the refused chunk goes out again as soon as one of ours there ends."""
    d = state(n_known=5, total=8, max_in_flight=4, per_source_in_flight=1, busy_backoff=0.5)
    seed = Source("tracker", "t:7400", None, seed=True)
    got = fetches(d.set_sources([seed], 0.0))
    assert len(got) == 4
    refused, others = got[0], got[1:]
    assert d.chunk_failed(refused.index, "tracker", "busy", 0.01) == []  # full: nothing more now
    assert d.next_deadline() == 10.0  # no backoff timer, only the fetch deadlines
    assert d.tick(0.02) == []
    again = fetches(d.chunk_ok(others[0].index, "tracker", 0.03))
    assert len(again) == 2 and refused.index in {f.index for f in again}  # the freed slot and the refused one
    assert len(d.in_flight) == 4


def test_busy_with_our_fetches_in_flight_then_failing_still_frees_the_source() -> None:
    d = state(n_known=2, total=2, max_in_flight=2, per_source_in_flight=1)
    a, b = fetches(d.set_sources([Source("tracker", "t:7400", None, seed=True)], 0.0))
    assert d.chunk_failed(a.index, "tracker", "busy", 0.1) == []
    got = fetches(d.chunk_failed(b.index, "tracker", "timeout", 0.2))
    assert sorted(f.index for f in got) == [0, 1]


def test_a_busy_ordinary_peer_cools_down_even_with_our_fetches_in_flight() -> None:
    d = state(n_known=4, total=4, max_in_flight=2, per_source_in_flight=2, busy_backoff=0.5)
    a, b = fetches(d.set_sources([src("p")], 0.0))
    assert d.chunk_failed(a.index, "p", "busy", 0.1) == []
    assert fetches(d.chunk_ok(b.index, "p", 0.2)) == []  # still cooling down
    assert len(fetches(d.tick(0.6))) == 2


def test_endless_busy_ends_at_the_origin() -> None:
    d = state(n_known=1, total=1, busy_backoff=0.5, busy_attempts=3)
    now = 0.0
    acts = d.set_sources([src("a")], now)
    for _ in range(2):
        (f,) = fetches(acts)
        now += 0.1
        assert d.chunk_failed(0, "a", "busy", now) == []
        now = d.next_deadline() or now
        acts = d.tick(now)
    (f,) = fetches(acts)
    assert d.chunk_failed(0, "a", "busy", now) == [FetchOrigin(0)]  # the third refusal


# ---- the origin ------------------------------------------------------------------------


def test_origin_fallback_when_there_are_no_sources() -> None:
    d = state(n_known=10, total=10, origin_in_flight=4)
    assert origin(d.tick(0.0)) == [0, 1, 2, 3]
    assert origin(d.chunk_ok(0, None, 1.0)) == [4]


def test_origin_fallback_when_every_source_is_dropped() -> None:
    d = state(n_known=2, total=2, max_in_flight=1)
    (f,) = fetches(d.set_sources([src("a")], 0.0))
    assert origin(d.chunk_failed(f.index, "a", "corrupt", 1.0)) == [0]


def test_no_origin_when_fallback_is_off() -> None:
    d = state(n_known=3, total=3, origin_fallback=False)
    assert d.tick(0.0) == []
    assert d.next_deadline() is None


def test_chunk_nobody_holds_waits_then_goes_to_origin() -> None:
    d = state(n_known=2, total=2, source_wait=30.0)
    (f,) = fetches(d.set_sources([src("a", {0})], 0.0))
    assert f.index == 0
    assert d.next_deadline() == 10.0  # the fetch's deadline comes first
    d.chunk_ok(0, "a", 1.0)
    assert d.next_deadline() == 30.0  # chunk 1 has waited since t=0
    assert d.tick(29.0) == []
    assert d.tick(30.0) == [FetchOrigin(1)]


def test_a_source_that_gains_the_chunk_stops_the_clock() -> None:
    d = state(n_known=1, total=1, source_wait=30.0)
    assert d.set_sources([src("a", set())], 0.0) == []
    (f,) = fetches(d.set_sources([src("a", {0})], 20.0))
    assert f.index == 0


def test_origin_failure_pauses_the_origin() -> None:
    d = state(n_known=1, total=1, origin_retry=2.0)
    assert d.tick(0.0) == [FetchOrigin(0)]
    assert d.chunk_failed(0, None, "error", 1.0) == []
    assert d.stats.origin_failures == 1
    assert d.next_deadline() == 3.0
    assert d.tick(3.0) == [FetchOrigin(0)]


def test_origin_and_peer_fetches_share_max_in_flight() -> None:
    d = state(n_known=20, total=20, max_in_flight=5, origin_in_flight=4, peer_attempts=1)
    acts = d.set_sources([src("a")], 0.0)
    (f,) = fetches(acts)[:1]
    d.chunk_failed(f.index, "a", "error", 0.0)
    assert len(d.in_flight) <= 5
    assert list(d.in_flight.values()).count(None) == 1


# ---- validation ------------------------------------------------------------------------


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        state(policy="fastest")
    with pytest.raises(ValueError):
        state(max_in_flight=0)
    d = state(n_known=2, total=2)
    with pytest.raises(ValueError):
        d.chunk_failed(0, "a", "weird", 0.0)
    with pytest.raises(ValueError):
        d.map_grew(2, 3, 0.0)
    with pytest.raises(ValueError):
        d.map_grew(5, None, 0.0)
    with pytest.raises(ValueError):
        d.chunk_ok(2, "a", 0.0)


# ---- the property test -----------------------------------------------------------------

SOURCE_HAVES: list[frozenset[int] | None] = [
    None,
    frozenset(range(0, 12, 2)),
    frozenset(range(6)),
    frozenset(),
    frozenset(range(12)),
]

op = st.one_of(
    st.tuples(st.just("ok"), st.integers(0, 20)),
    st.tuples(st.just("fail"), st.integers(0, 20), st.sampled_from(FAILURE_REASONS)),
    st.tuples(st.just("tick"), st.floats(0.0, 15.0)),
    st.tuples(st.just("grow"), st.integers(0, 12)),
    st.tuples(st.just("sources"), st.lists(st.integers(0, len(SOURCE_HAVES) - 1), max_size=4)),
)


class Driver:
    """A model driver: executes actions, checks every invariant as actions arrive."""

    def __init__(self, d: DownloadState, total: int):
        self.d, self.total = d, total
        self.now = 0.0
        self.outstanding: dict[int, str | None] = {}
        self.held: set[int] = set()
        self.bad: set[str] = set()
        self.strikes: dict[str, int] = {}
        self.known = d.n_known
        self.done_count = 0

    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Fetch | FetchOrigin):
                assert a.index not in self.outstanding, "two fetches of one chunk"
                assert a.index not in self.held, "fetched a held chunk"
                assert a.index < self.known, "fetched a chunk whose hash is unknown"
                peer = a.peer_id if isinstance(a, Fetch) else None
                if peer is not None:
                    assert peer not in self.bad, "asked a dropped source"
                    assert self.strikes.get(peer, 0) < 3, "asked a source with three strikes"
                self.outstanding[a.index] = peer
            elif isinstance(a, Expired):
                assert self.outstanding.get(a.index) == a.peer_id
            else:
                assert a == Done()
                self.done_count += 1
                assert self.done_count == 1
                assert self.held == set(range(self.total))
        assert self.d.in_flight == self.outstanding
        sources = list(self.outstanding.values())
        assert len(sources) <= self.d.max_in_flight
        assert sources.count(None) <= self.d.origin_in_flight

    def ok(self, k: int) -> None:
        index = sorted(self.outstanding)[k % len(self.outstanding)]
        peer = self.outstanding.pop(index)
        self.held.add(index)
        self.apply(self.d.chunk_ok(index, peer, self.now))

    def fail(self, k: int, reason: str) -> None:
        index = sorted(self.outstanding)[k % len(self.outstanding)]
        peer = self.outstanding.pop(index)
        if peer is not None:
            if reason == "corrupt":
                self.bad.add(peer)
            elif reason in ("error", "timeout"):
                self.strikes[peer] = self.strikes.get(peer, 0) + 1
        self.apply(self.d.chunk_failed(index, peer, reason, self.now))


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(op, max_size=60),
    policy=st.sampled_from(["rarest", "sequential"]),
    known0=st.integers(0, 12),
    seed=st.integers(0, 2**16),
    per_source=st.integers(1, 3),
    max_in_flight=st.integers(1, 6),
    origin_cap=st.integers(1, 3),
)
def test_random_event_sequences_keep_invariants_and_finish(
    ops: list[tuple[Any, ...]],
    policy: str,
    known0: int,
    seed: int,
    per_source: int,
    max_in_flight: int,
    origin_cap: int,
) -> None:
    total = 12
    d = DownloadState(
        n_known=known0,
        policy=policy,
        max_in_flight=max_in_flight,
        per_source_in_flight=per_source,
        origin_in_flight=origin_cap,
        chunk_timeout=5.0,
        source_wait=20.0,
        rng=random.Random(seed),
    )
    drv = Driver(d, total)
    drv.apply(d.tick(0.0))
    for o in ops:
        kind = o[0]
        if kind == "ok" and drv.outstanding:
            drv.ok(o[1])
        elif kind == "fail" and drv.outstanding:
            drv.fail(o[1], o[2])
        elif kind == "tick":
            drv.now += o[1]
            drv.apply(d.tick(drv.now))
        elif kind == "grow":
            drv.known = max(drv.known, o[1])
            drv.apply(d.map_grew(o[1], None, drv.now))
        elif kind == "sources":
            srcs = [Source(f"s{i}", f"h:{i}", SOURCE_HAVES[i]) for i in o[1]]
            drv.apply(d.set_sources(srcs, drv.now))

    # From here on every fetch succeeds: the download must end with Done.
    drv.known = total
    drv.apply(d.map_grew(total, total, drv.now))
    for _ in range(20 * total + 50):
        if drv.done_count:
            break
        if drv.outstanding:
            drv.ok(0)
            continue
        deadline = d.next_deadline()
        assert deadline is not None, "stuck: nothing in flight and nothing to wait for"
        drv.now = max(drv.now, deadline)
        drv.apply(d.tick(drv.now))
    assert drv.done_count == 1 and d.done
    assert d.have == set(range(total))


def test_fallback_source_waits_for_the_primaries() -> None:
    """A tree child asks its lagging parent, not the seed beside it, until the parent has
    been unable to serve a chunk for fallback_wait seconds."""
    st_ = state(n_known=4, total=4, fallback_wait=2.0, source_wait=30.0)
    parent = src("parent", {0})
    seed = Source("seed", "seed:1", frozenset(range(4)), fallback=True)
    acts = st_.set_sources([parent, seed], 0.0) + st_.tick(0.0)
    assert [(f.index, f.peer_id) for f in fetches(acts)] == [(0, "parent")]
    assert st_.availability == {0: 1, 1: 0, 2: 0, 3: 0}  # the seed does not steer rarest-first
    assert fetches(st_.tick(1.9)) == []
    assert st_.next_deadline() == pytest.approx(2.0)
    late = fetches(st_.tick(2.0))
    assert late and {f.index for f in late} <= {1, 2, 3} and {f.peer_id for f in late} == {"seed"}


def test_a_parent_that_keeps_gaining_chunks_is_waited_for() -> None:
    """A tree parent that lags but progresses keeps its child off the seed; once it
    stops gaining chunks for fallback_wait seconds, the seed is asked."""
    st_ = state(n_known=6, total=6, fallback_wait=2.0, source_wait=60.0)
    seed = Source("seed", "seed:1", frozenset(range(6)), fallback=True)
    got = fetches(st_.set_sources([src("parent", {0}), seed], 0.0))
    assert [(f.index, f.peer_id) for f in got] == [(0, "parent")]
    st_.chunk_ok(0, "parent", 0.5)
    for t, have in ((1.5, {0, 1}), (3.0, {0, 1, 2}), (4.5, {0, 1, 2, 3})):  # one new chunk each 1.5 s
        acts = st_.set_sources([src("parent", have), seed], t) + st_.tick(t)
        assert {f.peer_id for f in fetches(acts)} == {"parent"}
        for f in fetches(acts):
            st_.chunk_ok(f.index, "parent", t)
    assert fetches(st_.tick(6.4)) == []  # 4.5 + 2.0: the parent may still be on its way
    late = fetches(st_.tick(6.5))  # it stalled: chunks 4 and 5 come from the seed
    assert sorted(f.index for f in late) == [4, 5] and {f.peer_id for f in late} == {"seed"}


def test_fallback_source_takes_a_chunk_the_primary_failed() -> None:
    st_ = state(n_known=1, total=1, fallback_wait=60.0)
    parent = src("parent", {0})
    seed = Source("seed", "seed:1", frozenset({0}), fallback=True)
    (first,) = fetches(st_.set_sources([parent, seed], 0.0) + st_.tick(0.0))
    assert first.peer_id == "parent"
    (retry,) = fetches(st_.chunk_failed(0, "parent", "error", 0.1))
    assert retry.peer_id == "seed"


def test_a_busy_seed_never_sends_a_chunk_to_the_origin() -> None:
    """A seed's 503 means "full right now"; the chunk waits for it instead of costing the
    origin another copy (a busy ordinary peer still counts toward busy_attempts)."""
    st_ = state(n_known=1, total=1, busy_attempts=2, busy_backoff=0.1)
    seed = Source("tracker", "t:1", None, seed=True)
    (f,) = fetches(st_.set_sources([seed], 0.0) + st_.tick(0.0))
    now = 0.0
    for _ in range(10):
        acts = st_.chunk_failed(0, "tracker", "busy", now)
        assert origin(acts) == []
        now += 0.2
        acts += st_.tick(now)
        assert origin(acts) == []
        assert [a.peer_id for a in fetches(acts)] == ["tracker"]
    peer_only = state(n_known=1, total=1, busy_attempts=2, busy_backoff=0.1)
    fetches(peer_only.set_sources([src("p1")], 0.0) + peer_only.tick(0.0))
    peer_only.chunk_failed(0, "p1", "busy", 0.0)
    peer_only.tick(0.2)
    assert origin(peer_only.chunk_failed(0, "p1", "busy", 0.2)) == [0]
