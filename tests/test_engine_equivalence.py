"""The engine's faster code paths (made for bench/sim.py at 1,000-10,000 hosts, which the
real tracker needs as much) make exactly the choices the plain code made: the same
actions, the same rng draws, the same refusals, over random event sequences.

The plain code is kept verbatim in tests/_engine_reference.py."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from p2pdist.core.errors import ChunkPassedOn
from p2pdist.engine.download import DownloadState, Expired, Fetch, FetchOrigin, Source
from p2pdist.engine.firstcopy import FirstCopies
from p2pdist.engine.neighbours import NeighbourPolicy, TaskPeers, choose_neighbours
from p2pdist.engine.selection import select_chunks

sys.path.insert(0, str(Path(__file__).parent))
from _engine_reference import (  # noqa: E402
    OldDownloadState,
    OldFirstCopies,
    old_choose_swarm,
    old_select_chunks,
)


@pytest.mark.parametrize("seed", range(300))
def test_select_chunks_matches_the_plain_version(seed: int) -> None:
    r = random.Random(seed)
    candidates = [r.randrange(60) for _ in range(r.randrange(0, 80))]
    avail = {i: r.randrange(4) for i in range(60) if r.random() < 0.7}
    limit = r.randrange(-1, 10)
    for policy in ("rarest", "sequential"):
        a, b = random.Random(seed), random.Random(seed)
        assert select_chunks(candidates, avail, limit, a, policy=policy) == \
            old_select_chunks(candidates, avail, limit, b, policy=policy)
        assert a.random() == b.random()


@pytest.mark.parametrize("seed", range(150))
def test_download_state_matches_the_plain_version(seed: int) -> None:
    r = random.Random(seed)
    total = r.randrange(1, 40)
    kw = dict(policy=r.choice(["rarest", "sequential"]), max_in_flight=r.randrange(1, 7),
              per_source_in_flight=r.randrange(1, 3), chunk_timeout=3.0, source_wait=r.choice([2.0, 30.0]),
              origin_fallback=r.random() < 0.6, origin_in_flight=r.randrange(1, 4))
    new = DownloadState(rng=random.Random(seed), **kw)
    old = OldDownloadState(rng=random.Random(seed), **kw)
    now, known = 0.0, 0
    in_flight: dict[int, str | None] = {}
    peers = [f"p{i}" for i in range(6)]
    haves = {p: set() for p in peers}

    def both(method: str, *args) -> None:
        a, b = getattr(new, method)(*args), getattr(old, method)(*args)
        assert a == b, (method, args)
        for act in a:
            if isinstance(act, Fetch):
                in_flight[act.index] = act.peer_id
            elif isinstance(act, FetchOrigin):
                in_flight[act.index] = None
            elif isinstance(act, Expired):
                in_flight.pop(act.index, None)
                both("chunk_failed", act.index, act.peer_id, "timeout", now)

    for _ in range(r.randrange(20, 200)):
        op = r.random()
        if op < 0.15 and known < total:
            known = min(total, known + r.randrange(1, 8))
            both("map_grew", known, total if known == total and r.random() < 0.7 else None, now)
        elif op < 0.35:
            for p in peers:
                haves[p] |= {r.randrange(total) for _ in range(r.randrange(3))}
            srcs = [Source(p, p, frozenset(haves[p]), fallback=r.random() < 0.15)
                    for p in peers if r.random() < 0.7]
            if r.random() < 0.8:
                srcs.append(Source("seed", "seed", None, seed=True))
            both("set_sources", srcs, now)
        elif op < 0.6 and in_flight:
            i = r.choice(sorted(in_flight))
            src = in_flight.pop(i)
            both("chunk_ok", i, src, now)
        elif op < 0.85 and in_flight:
            i = r.choice(sorted(in_flight))
            src = in_flight.pop(i)
            reason = r.choice(["missing", "missing", "busy", "busy", "timeout", "error", "corrupt"])
            if src is not None or reason not in ("missing", "busy"):
                both("chunk_failed", i, src, reason, now)
        else:
            now += r.choice([0.05, 0.3, 1.0, 4.0])
            both("tick", now)
        assert new.next_deadline() == old.next_deadline()
        assert new.availability == old.availability
        assert new.stats == old.stats and new.have == old.have


@pytest.mark.parametrize("seed", range(60))
def test_swarm_neighbours_match_the_plain_version(seed: int) -> None:
    r = random.Random(seed)
    task = TaskPeers(ttl=10.0)
    policy = NeighbourPolicy("swarm", swarm_size=r.choice([2, 4, 8]))
    a, b = random.Random(seed), random.Random(seed)
    now = 0.0
    for step in range(150):
        now += 0.1
        op = r.random()
        pid = f"p{r.randrange(120)}"
        if op < 0.05:
            task.upsert(f"s{r.randrange(2)}", "seed", "", set(range(step)), False, now, seed=True)
        elif op < 0.08:
            task.remove(pid)
        elif op < 0.1:
            task.expire(now + r.choice([0, 5, 20]))
        else:
            task.upsert(pid, pid, r.choice(["", "z1", "z2"]), {r.randrange(50) for _ in range(r.randrange(30))},
                        False, now, seed=False if r.random() < 0.1 else None)
            assert choose_neighbours(task, pid, policy, a, now) == old_choose_swarm(task, task.peers[pid], policy, b)
        assert a.random() == b.random()


@pytest.mark.parametrize("seed", range(100))
def test_first_copies_match_the_plain_version(seed: int) -> None:
    r = random.Random(seed)
    window = r.choice([0.0, 0.5, 1.0])
    new, old = FirstCopies(5.0, window), OldFirstCopies(5.0, window)
    now, chunk = 0.0, 0
    hosts = [f"h{i}" for i in range(r.choice([1, 3, 30]))]
    for _ in range(400):
        op = r.random()
        if op < 0.1:
            new.publish(f"c{chunk}")
            old.publish(f"c{chunk}")
            chunk += 1
        elif op < 0.12:
            names = [f"c{i}" for i in range(chunk) if r.random() < 0.5]
            new.retire(names)
            old.retire(names)
        else:
            # the clock mostly runs forward; sometimes it goes back (a test's made-up times)
            now += r.choice([0.0, 0.01, 0.2, 0.7, 2.0]) if r.random() < 0.97 else -1.0
            name, host = f"c{r.randrange(chunk + 1)}", r.choice(hosts)
            outcome = []
            for fc in (new, old):
                try:
                    fc.admit(name, host, now)
                    outcome.append(None)
                except ChunkPassedOn as e:
                    outcome.append(str(e).split("…")[1][:20])
            assert outcome[0] == outcome[1]
        assert len(new) == len(old)
