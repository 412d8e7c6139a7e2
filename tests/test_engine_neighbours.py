"""Tracker-side soft state and the tree / swarm neighbour policies."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.engine.neighbours import (
    CANDIDATES,
    NeighbourPolicy,
    PeerEntry,
    TaskPeers,
    choose_neighbours,
)

TREE = NeighbourPolicy("tree", fanout=2)


def make_task(n: int = 0, *, ttl: float = 30.0, seed_have: int = 10, zone: str = "") -> TaskPeers:
    task = TaskPeers(ttl)
    task.upsert("seed", "tracker:1", "", set(range(seed_have)), True, 0.0, seed=True)
    for i in range(n):
        task.upsert(f"p{i}", f"10.0.0.{i}:7000", zone, set(), False, 0.0)
    return task


def ids(entries: list[PeerEntry]) -> list[str]:
    return [e.peer_id for e in entries]


# ---- TaskPeers -------------------------------------------------------------------------


def test_upsert_keeps_have_when_none_and_replaces_otherwise() -> None:
    task = TaskPeers(10.0)
    task.upsert("a", "h:1", "z", {1, 2}, False, 1.0)
    e = task.upsert("a", "h:2", "z", None, False, 2.0)
    assert e.have == {1, 2} and e.addr == "h:2" and e.last_seen == 2.0
    task.upsert("a", "h:2", "z", {7}, True, 3.0)
    assert task.peers["a"].have == {7} and task.peers["a"].complete


def test_add_have_and_availability() -> None:
    task = make_task(2, seed_have=3)
    task.add_have("p0", [0, 5])
    task.add_have("ghost", [1])  # unknown peers are ignored
    assert task.availability() == {0: 2, 1: 1, 2: 1, 5: 1}


def test_expire_drops_stale_peers_but_never_seeds() -> None:
    task = make_task(2, ttl=10.0)
    task.upsert("p1", "h:1", "", None, False, 8.0)
    assert task.expire(10.0) == []  # exactly ttl is not "more than ttl"
    assert task.expire(10.5) == ["p0"]
    assert set(task.peers) == {"seed", "p1"}
    assert task.expire(1000.0) == ["p1"]
    assert set(task.peers) == {"seed"}


def test_remove_forgets_edges() -> None:
    task = make_task(3)
    for p in ("p0", "p1", "p2"):
        choose_neighbours(task, p, TREE, random.Random(0), 0.0)
    task.remove("p0")
    assert "p0" not in task.parent_of
    assert all("p0" not in ps for ps in task.parent_of.values())


# ---- tree ------------------------------------------------------------------------------


def test_tree_first_peers_attach_to_seed_until_fanout() -> None:
    task = make_task(3)
    rng = random.Random(0)
    assert ids(choose_neighbours(task, "p0", TREE, rng, 0.0)) == ["seed"]
    assert ids(choose_neighbours(task, "p1", TREE, rng, 0.0)) == ["seed"]
    # The seed is full (fanout 2): p2 hangs below p0 or p1, and gets the seed as a last
    # resort because its parent is incomplete.
    got = ids(choose_neighbours(task, "p2", TREE, rng, 0.0))
    assert got[0] in {"p0", "p1"} and got[1:] == ["seed"]
    assert task.parent_of["p2"] == [got[0]]


def test_tree_fanout_is_respected_for_many_peers() -> None:
    task = make_task(40)
    rng = random.Random(1)
    for i in range(40):
        choose_neighbours(task, f"p{i}", TREE, rng, 0.0)
    assert max(task.children_count().values()) <= TREE.fanout
    assert all(len(ps) == 1 for ps in task.parent_of.values())


def test_tree_parents_are_sticky() -> None:
    task = make_task(6)
    rng = random.Random(2)
    first = {f"p{i}": choose_neighbours(task, f"p{i}", TREE, rng, 0.0)[0].peer_id for i in range(6)}
    task.add_have("p5", range(10))  # even a better candidate does not steal a child
    again = {f"p{i}": choose_neighbours(task, f"p{i}", TREE, rng, 1.0)[0].peer_id for i in range(6)}
    assert first == again


def test_tree_prefers_same_zone_then_most_complete_then_least_loaded() -> None:
    task = TaskPeers(30.0)
    task.upsert("seed", "t:1", "", set(range(10)), True, 0.0, seed=True)
    task.upsert("far", "f:1", "b", set(range(9)), False, 0.0)
    task.upsert("near_poor", "n:1", "a", {1}, False, 0.0)
    task.upsert("near_rich", "n:2", "a", {1, 2, 3}, False, 0.0)
    task.upsert("me", "m:1", "a", set(), False, 0.0)
    policy = NeighbourPolicy("tree", fanout=4)
    assert ids(choose_neighbours(task, "me", policy, random.Random(0), 0.0))[0] == "near_rich"
    # Equal zone and completeness: the one with fewer children wins.
    task.upsert("near_poor", "n:1", "a", {1, 2, 3}, False, 0.0)
    task.upsert("me2", "m:2", "a", set(), False, 0.0)
    assert ids(choose_neighbours(task, "me2", policy, random.Random(0), 0.0))[0] == "near_poor"


def test_tree_without_zones_the_seed_is_preferred() -> None:
    task = make_task(2)
    task.add_have("p0", range(5))
    assert ids(choose_neighbours(task, "p1", TREE, random.Random(0), 0.0)) == ["seed"]


def test_tree_full_everywhere_attaches_to_least_loaded() -> None:
    task = make_task(2)
    policy = NeighbourPolicy("tree", fanout=1)
    rng = random.Random(0)
    assert ids(choose_neighbours(task, "p0", policy, rng, 0.0)) == ["seed"]
    got = ids(choose_neighbours(task, "p1", policy, rng, 0.0))
    assert got == ["p0", "seed"]  # p0 has capacity; the seed has none
    task.upsert("p2", "h:2", "", set(), False, 0.0)
    # seed and p0 are at fanout, p1 has capacity
    assert ids(choose_neighbours(task, "p2", policy, rng, 0.0))[0] == "p1"
    # Everybody is full now: nobody is starved, the least-loaded node takes one more.
    task.upsert("p3", "h:3", "", set(), False, 0.0)
    got = ids(choose_neighbours(task, "p3", policy, rng, 0.0))
    assert got[0] == "p2"  # the only node with zero children
    assert max(task.children_count().values()) == 1


def test_tree_never_picks_itself_or_a_descendant() -> None:
    task = TaskPeers(30.0)  # no seed: a has to pick from peers below it
    for p in "abc":
        task.upsert(p, f"{p}:1", "", set(), False, 0.0)
    policy = NeighbourPolicy("tree", fanout=4)
    rng = random.Random(0)
    task.parent_of["b"] = ["a"]
    task.parent_of["c"] = ["b"]
    assert choose_neighbours(task, "a", policy, rng, 0.0) == []
    assert "a" not in task.parent_of


def test_tree_alone_gets_nothing_and_seeds_and_complete_peers_need_nobody() -> None:
    task = make_task(1)
    assert choose_neighbours(task, "seed", TREE, random.Random(0), 0.0) == []
    choose_neighbours(task, "p0", TREE, random.Random(0), 0.0)
    task.upsert("p0", "h:0", "", set(range(10)), True, 1.0)
    assert choose_neighbours(task, "p0", TREE, random.Random(0), 1.0) == []
    assert "p0" not in task.parent_of  # its slot at the seed is free again


def test_tree_expired_parent_is_replaced() -> None:
    task = make_task(2, ttl=10.0)
    rng = random.Random(0)
    policy = NeighbourPolicy("tree", fanout=1)
    choose_neighbours(task, "p0", policy, rng, 0.0)
    assert choose_neighbours(task, "p1", policy, rng, 0.0)[0].peer_id == "p0"
    task.upsert("p1", "h:1", "", None, False, 15.0)
    assert task.expire(15.0) == ["p0"]
    assert "p0" not in task.parent_of.get("p1", [])
    assert ids(choose_neighbours(task, "p1", policy, rng, 15.0)) == ["seed"]


def test_tree_complete_parent_needs_no_seed_fallback() -> None:
    task = make_task(2)
    policy = NeighbourPolicy("tree", fanout=1)
    rng = random.Random(0)
    choose_neighbours(task, "p0", policy, rng, 0.0)
    task.upsert("p0", "h:0", "", set(range(10)), True, 1.0)
    assert ids(choose_neighbours(task, "p1", policy, rng, 1.0)) == ["p0"]


def test_tree_two_parents() -> None:
    task = make_task(0)
    policy = NeighbourPolicy("tree", fanout=3, parents=2)
    rng = random.Random(0)
    for i in range(12):  # peers join one after another
        task.upsert(f"p{i}", f"h:{i}", "", set(), False, 0.0)
        got = ids(choose_neighbours(task, f"p{i}", policy, rng, 0.0))
        assert len(task.parent_of[f"p{i}"]) == (1 if i == 0 else 2)
        assert len(set(got)) == len(got)
    assert max(task.children_count().values()) <= 3


def test_tree_second_parent_never_overloads() -> None:
    task = make_task(5)  # all present before anyone asks: later peers find most above them
    policy = NeighbourPolicy("tree", fanout=3, parents=2)
    rng = random.Random(0)
    for i in range(5):
        choose_neighbours(task, f"p{i}", policy, rng, 0.0)
        assert len(task.parent_of[f"p{i}"]) >= 1
    # Only the first parent may exceed fanout (to avoid starving), by at most one here.
    assert max(task.children_count().values()) <= 4


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        NeighbourPolicy("mesh")
    with pytest.raises(ValueError):
        NeighbourPolicy("tree", parents=3)
    with pytest.raises(ValueError):
        NeighbourPolicy("tree", fanout=0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 14), st.sampled_from(["join", "tick", "leave"])), max_size=80
    ),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 1000),
)
def test_tree_stays_acyclic(
    ops: list[tuple[int, str]], fanout: int, parents: int, seed: int
) -> None:
    task = make_task(0, ttl=5.0)
    policy = NeighbourPolicy("tree", fanout=fanout, parents=parents)
    rng = random.Random(seed)
    now = 0.0
    for n, op in ops:
        pid = f"p{n}"
        if op == "join":
            task.upsert(pid, f"h:{n}", "ab"[n % 2], set(range(n % 4)), False, now)
            got = choose_neighbours(task, pid, policy, rng, now)
            assert pid not in ids(got)
        elif op == "tick":
            now += 2.0
            task.expire(now)
        else:
            task.remove(pid)
        for child, ps in task.parent_of.items():
            assert child in task.peers and all(p in task.peers for p in ps)
            assert child not in task.descendants(child)


# ---- swarm -----------------------------------------------------------------------------


def test_swarm_subset_size_and_seeds_always_included() -> None:
    task = make_task(30)
    task.upsert("seed2", "t:2", "", set(range(10)), True, 0.0, seed=True)
    policy = NeighbourPolicy("swarm", swarm_size=8)
    for s in range(20):
        got = ids(choose_neighbours(task, "p0", policy, random.Random(s), 0.0))
        assert len(got) == 10 == len(set(got))
        assert {"seed", "seed2"} <= set(got)
        assert "p0" not in got


def test_swarm_small_task_returns_everyone_else() -> None:
    task = make_task(3)
    task.upsert("p1", "h:1", "", set(range(10)), True, 0.0)  # complete peers are sources too
    got = ids(choose_neighbours(task, "p0", NeighbourPolicy("swarm"), random.Random(0), 0.0))
    assert sorted(got) == ["p1", "p2", "seed"]


def test_swarm_is_deterministic_for_a_seeded_rng() -> None:
    task = make_task(30)
    policy = NeighbourPolicy("swarm", swarm_size=5)
    a = ids(choose_neighbours(task, "p0", policy, random.Random(9), 0.0))
    b = ids(choose_neighbours(task, "p0", policy, random.Random(9), 0.0))
    assert a == b


def test_swarm_prefers_same_zone() -> None:
    task = TaskPeers(30.0)
    task.upsert("me", "m:1", "a", set(), False, 0.0)
    for i in range(10):
        task.upsert(f"a{i}", f"a:{i}", "a", set(), False, 0.0)
        task.upsert(f"b{i}", f"b:{i}", "b", set(), False, 0.0)
    policy = NeighbourPolicy("swarm", swarm_size=4, same_zone_weight=4.0)
    rng = random.Random(42)
    zones = Counter(
        e.zone for _ in range(500) for e in choose_neighbours(task, "me", policy, rng, 0.0)
    )
    share = zones["a"] / (zones["a"] + zones["b"])
    # Uniform sampling would give 0.5; weight 4 gives roughly 0.75 or more.
    assert share > 0.7


def test_swarm_weights_up_peers_holding_what_i_lack() -> None:
    task = TaskPeers(30.0)
    task.upsert("me", "m:1", "", {0, 1}, False, 0.0)
    for i in range(10):
        task.upsert(f"rich{i}", f"r:{i}", "", set(range(10)), False, 0.0)
        task.upsert(f"poor{i}", f"p:{i}", "", {0, 1}, False, 0.0)
    policy = NeighbourPolicy("swarm", swarm_size=4)
    rng = random.Random(5)
    picked = Counter(
        e.peer_id[:4] for _ in range(500) for e in choose_neighbours(task, "me", policy, rng, 0.0)
    )
    assert picked["rich"] > 1.3 * picked["poor"]


def test_swarm_in_a_huge_task_weighs_a_sample_not_everyone() -> None:
    """10,000 peers in one task: an announce compares haves with a bounded sample."""

    class CountingSet(set):
        diffs = 0

        def __sub__(self, other):
            CountingSet.diffs += 1
            return set.__sub__(self, other)

    task = TaskPeers(30.0)
    task.upsert("me", "m:1", "", set(), False, 0.0)
    for i in range(10_000):
        task.upsert(f"p{i}", f"10.1.{i // 250}.{i % 250}:7000", "", set(), False, 0.0).have = CountingSet({i % 64})
    policy = NeighbourPolicy("swarm", swarm_size=8)
    got = choose_neighbours(task, "me", policy, random.Random(1), 0.0)
    assert len(got) == 8 == len({e.peer_id for e in got})
    assert CountingSet.diffs == CANDIDATES * 8
    picks = Counter(e.peer_id for s in range(50) for e in choose_neighbours(task, "me", policy, random.Random(s), 0.0))
    assert len(picks) > 300  # spread over the task, not one corner of it


def test_unknown_me_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        choose_neighbours(make_task(1), "nobody", TREE, random.Random(0), 0.0)


def test_the_trackers_have_encoding_follows_every_change() -> None:
    """tracker.service encodes a neighbour's have once per change, not per answer; a
    change it missed would send peers to ask for chunks that are not there."""
    from p2pdist.tracker.service import _have_text
    from p2pdist.wire.tracker import decode_have, encode_have

    task = TaskPeers(ttl=10.0)
    e = task.upsert("p0", "h:1", "", {0, 1}, False, 0.0)
    first = _have_text(e)
    assert decode_have(first) == {0, 1}
    assert _have_text(e) is first  # cached
    task.add_have("p0", [5])  # grows in place
    assert decode_have(_have_text(e)) == {0, 1, 5}
    task.upsert("p0", "h:1", "", {2, 3, 4}, False, 1.0)  # replaced, same size
    assert decode_have(_have_text(e)) == {2, 3, 4}
    task.upsert("p0", "h:1", "", {2, 3, 4}, True, 2.0)  # complete
    assert _have_text(e) == encode_have((), True) == "all"
