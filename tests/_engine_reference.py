"""Reference copies of engine code as it was before the simulator's speedups (bench/sim.py
at N = 1,000-10,000), for tests/test_engine_equivalence.py: the faster code must make
exactly the same choices, rng draws included. Copied verbatim; only renamed."""

# ruff: noqa
from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Mapping, Sequence

from p2pdist.core.errors import ChunkPassedOn
from p2pdist.engine.download import Action, Done, DownloadState, Fetch, Source
from p2pdist.engine.neighbours import CANDIDATES, NeighbourPolicy, PeerEntry, TaskPeers, _same_zone
from p2pdist.engine.selection import POLICIES


def old_select_chunks(
    candidates: Sequence[int],
    availability: Mapping[int, int],
    limit: int,
    rng: random.Random,
    *,
    policy: str = "rarest",
) -> list[int]:
    """Return at most ``limit`` distinct indices from ``candidates``, best first.

    ``availability[i]`` is the number of neighbours holding chunk ``i``; a missing key
    means 0. Duplicates in ``candidates`` are ignored. ``limit <= 0`` returns ``[]``.
    For a given ``candidates`` order and ``rng`` state the result is deterministic.

    Raises ValueError for a policy not in :data:`POLICIES`.
    """
    if policy not in POLICIES:
        raise ValueError(policy)
    if limit <= 0 or not candidates:
        return []
    if policy == "sequential":
        return heapq.nsmallest(limit, set(candidates))

    # Walk the holder counts from the rarest up, taking whole levels and sampling only
    # the last, partly used one: linear in the candidates and one rng draw per chosen
    # chunk, instead of a full sort keyed by a random number per candidate.
    unique = list(dict.fromkeys(candidates))
    counts = [availability.get(i, 0) for i in unique]
    chosen: list[int] = []
    for level in sorted(set(counts)):
        bucket = [i for i, c in zip(unique, counts, strict=True) if c == level]
        # rng.sample returns its picks in random order, so even a fully used level is
        # shuffled: no index bias among equally rare chunks.
        chosen.extend(rng.sample(bucket, min(limit - len(chosen), len(bucket))))
        if len(chosen) >= limit:
            break
    return chosen


class OldDownloadState(DownloadState):

    def _recount(self) -> None:
        # Unknown-have sources add the same count to every chunk, which does not change
        # the rarest-first order, so only known haves are counted here.
        avail: dict[int, int] = {}
        for s in self._live_sources():
            if s.have is not None and not s.fallback:
                for i in s.have:
                    avail[i] = avail.get(i, 0) + 1
        self._avail = avail

    def _could_serve(self, s: Source, pending: set[int]) -> set[int]:
        held = pending if s.have is None else pending & s.have
        return held - self._missing.get(s.peer_id, set())

    def _schedule(self, now: float) -> list[Action]:
        actions: list[Action] = []
        self._now = max(self._now, now)
        self._cooldown = {pid: t for pid, t in self._cooldown.items() if t > now}
        pending = self._pending
        if pending:
            live = self._live_sources()
            ready = [s for s in live if s.peer_id not in self._cooldown and s.peer_id not in self._full]

            # Starvation clock: runs while no live source could serve a chunk. A source
            # cooling down after "busy" (or full) still counts (it is alive and will be asked
            # again); busy refusals go to the origin only if busy_attempts is set.
            self._clock_uncovered(self._starving_since, self._uncovered(pending, live), now)
            self._clock_uncovered(self._primary_starving_since,
                                  self._uncovered(pending, [s for s in live if not s.fallback]), now)

            if self.origin_fallback and now >= self._origin_paused_until:
                actions += self._schedule_origin(now, has_live=bool(live))
            actions += self._schedule_peers(now, ready)

        if self.done and not self._done_sent:
            self._done_sent = True
            actions.append(Done())
        return actions

    def _uncovered(self, pending: set[int], sources: list[Source]) -> set[int]:
        """The pending chunks none of ``sources`` could serve."""
        uncovered = pending
        for s in sources:
            if not uncovered:
                break
            miss = self._missing.get(s.peer_id, set())
            if s.have is None:
                uncovered = uncovered & miss
            else:
                uncovered = (uncovered - s.have) | (uncovered & miss)
        return uncovered

    def _schedule_peers(self, now: float, ready: list[Source]) -> list[Action]:
        actions: list[Action] = []
        exhausted = self._exhausted() if self.origin_fallback else set()
        allowed = self._fallback_allowed(now) if any(s.fallback for s in ready) else set()
        cap = self.source_cap(sum(1 for s in ready if not s.fallback))
        policy = "sequential" if all(s.have is None for s in ready) else self.policy
        while self._pending and len(self._in_flight) < self.max_in_flight:
            spare = [s for s in ready if self._load.get(s.peer_id, 0) < cap]
            candidates: set[int] = set()
            for s in spare:
                serve = self._could_serve(s, self._pending)
                candidates |= (serve & allowed) if s.fallback else serve
            # Exhausted chunks belong to the origin; they wait for its capacity.
            candidates -= exhausted
            if not candidates:
                break
            picks = old_select_chunks(
                sorted(candidates),
                self._avail,
                self.max_in_flight - len(self._in_flight),
                self._rng,
                policy=policy,
            )
            assigned = 0
            for i in picks:
                options = [
                    s
                    for s in spare
                    if self._load.get(s.peer_id, 0) < cap
                    and (s.have is None or i in s.have)
                    and i not in self._missing.get(s.peer_id, ())
                    and (not s.fallback or i in allowed)
                ]
                if not options:
                    continue
                tried = self._tried.get(i, set())
                best = min(
                    options,
                    key=lambda s: (
                        s.peer_id in tried,
                        s.fallback,
                        self._load.get(s.peer_id, 0),
                        self._rng.random(),
                    ),
                )
                self._pending.discard(i)
                self._starving_since.pop(i, None)
                self._primary_starving_since.pop(i, None)
                self._in_flight[i] = best.peer_id
                self._load[best.peer_id] = self._load.get(best.peer_id, 0) + 1
                deadline = now + self.chunk_timeout
                self._deadline[i] = deadline
                self._tried.setdefault(i, set()).add(best.peer_id)
                actions.append(Fetch(i, best.peer_id, best.addr, deadline))
                assigned += 1
            if not assigned:
                break
        return actions


def old_choose_swarm(
    task: TaskPeers, me: PeerEntry, policy: NeighbourPolicy, rng: random.Random
) -> list[PeerEntry]:
    seeds = [e for e in task.peers.values() if e.seed and e.peer_id != me.peer_id]
    others = [e for e in task.peers.values() if not e.seed and e.peer_id != me.peer_id]
    if len(others) > CANDIDATES * policy.swarm_size:
        # A large swarm: weigh a uniform sample, not everyone. Comparing haves with all
        # 10,000 peers of a task on each of their announces would cost the tracker
        # O(N) set differences per announce, O(N²) per round.
        others = rng.sample(others, CANDIDATES * policy.swarm_size)
    if len(others) > policy.swarm_size:
        useful = [len(e.have - me.have) for e in others]
        most = max(useful) or 1
        # Weighted sampling without replacement (Efraimidis–Spirakis: the k largest
        # u ** (1/w) keys). A peer holding what we lack counts up to twice as much —
        # "a bit": zone dominates, since cross-zone traffic is what costs money.
        keyed = []
        for e, u in zip(others, useful, strict=True):
            w = (policy.same_zone_weight if _same_zone(e, me) else 1.0) * (1.0 + u / most)
            keyed.append((rng.random() ** (1.0 / w), e))
        keyed.sort(key=lambda kv: kv[0], reverse=True)
        others = [e for _, e in keyed[: policy.swarm_size]]
    return others + seeds


class OldFirstCopies:
    def __init__(self, grace: float, window: float = 1.0):
        self.grace = grace
        self.window = window
        # chunk name -> (when, to whom) it was last sent, or None: published, not sent yet
        self._fresh: dict[str, tuple[float, str] | None] = {}
        self._asked: dict[str, float] = {}  # host -> when it last asked for a fresh chunk
        self._firsts: dict[str, int] = {}  # host -> first copies it received while blobs stream in

    def publish(self, name: str) -> None:
        """``name`` arrived from the origin; its blob is still streaming."""
        self._fresh.setdefault(name, None)

    def retire(self, names: Iterable[str]) -> None:
        """The origin stream of the blob holding ``names`` ended: serve them freely."""
        for name in names:
            self._fresh.pop(name, None)
        if not self._fresh:  # nothing streams in any more: the next stream starts even
            self._asked.clear()
            self._firsts.clear()

    def admit(self, name: str, host: str, now: float) -> None:
        """Record that ``name`` goes to ``host`` now, or raise :class:`ChunkPassedOn` if
        another host received it less than ``grace`` seconds ago, or — a chunk never sent
        yet — if another host asking within ``window`` seconds has had fewer first copies."""
        if name not in self._fresh or self.grace <= 0:
            return
        self._asked[host] = now
        sent = self._fresh[name]
        if sent is not None and sent[1] != host and now - sent[0] < self.grace:
            raise ChunkPassedOn(f"chunk {name[:16]}… went to another peer {now - sent[0]:.1f} s ago; "
                                "fetch it from the swarm")
        if sent is None:
            mine = self._firsts.get(host, 0)
            for other, asked in list(self._asked.items()):
                if now - asked >= self.window:
                    del self._asked[other]  # keeps the table as small as the hosts asking now
                elif self._firsts.get(other, 0) < mine:
                    raise ChunkPassedOn(f"chunk {name[:16]}… is kept for a peer that has received "
                                        "fewer of the seed's first copies; fetch others from the swarm")
            self._firsts[host] = mine + 1
        self._fresh[name] = (now, host)

    def __len__(self) -> int:
        return len(self._fresh)
