#!/usr/bin/env python3
"""Fluid simulator of one blob's distribution, driving p2pdist's real engine policies.

    python bench/sim.py --hosts N [--size 256MiB] [--rate 100mbit] [--topology swarm|tree]
                        [--dt 0.02] [--seeds 3] [--json] [--stats] [--src DIR]

What is real: every peer's chunk scheduling is a ``p2pdist.engine.download.DownloadState``
(rarest first, in-flight limits, busy/missing/timeout handling, starvation clocks), and
the tracker's neighbour handout is ``p2pdist.engine.neighbours.choose_neighbours`` over a
``TaskPeers`` fed by simulated announces — the same objects the services pump.

What is modelled (time-stepped, ``--dt`` seconds):

* links: each host has an upload and a download cap; the transfers in flight share
  them max-min fairly (progressive filling — what TCP flows converge to; no slow start,
  no per-packet overhead, zero latency);
* the seed applies the tracker's first-copy rule (``p2pdist.engine.firstcopy``, swarm
  only): while the blob streams in, a chunk it sent goes to no other peer for
  ``seed_grace`` seconds;
* the seed (the tracker) receives the blob from the origin at ``--origin-rate`` and
  publishes each chunk when it is complete (cut-through); peers learn the map at once
  (the long poll);
* the seed hands out fresh chunks (``--fresh``, as shipped; swarm only): each unfinished
  peer keeps one ``/fresh`` long poll open, except while a chunk handed to it arrives,
  and the seed gives each chunk it has never sent, oldest first, to a waiting peer with
  the fewest first copies whenever it has a free upload slot — the tracker's own
  ``FirstCopies.pick``/``give`` and the engine's ``DownloadState.incoming``;
* the map and announce answers list the chunks the seed withholds from the asking peer
  (``--withheld``, as shipped: first copies handed to others within ``seed_grace``), which
  the engine treats as refused without asking (``FirstCopies.withheld``);
* announces: a peer announces ``--min-gap`` after it gains a chunk, else every
  ``--announce-interval`` s (the peer's defaults); the reply's neighbours (with their
  haves as the tracker knows them) become the peer's sources;

* a source with ``--upload-slots`` uploads running answers ``busy``; one not holding the
  chunk answers ``missing``, at once (zero latency: a refused request costs no time here,
  though each is a request the source must answer in a real cluster).

Every knob defaults to the product's own default (``PeerConfig``, ``TrackerConfig``,
``chunk_size_for``, ``DownloadState``'s ``busy_backoff``; back-to-source on, as
shipped), so a run without flags simulates p2pdist as shipped.

Reports per run t_first/t_median/t_last against the Kumar-Ross T_min, like bench/lab.py,
and how much the seed sent (``seed_sent_over_F``). ``--stats`` adds where the time goes:
busy/missing answers and announces per peer, chunk transfer times, how long a chunk takes
from publication to its first holder, half and all peers, per second the seed's and
the peers' link use and how many chunks the unfinished peers trail the seed by, and
while the blob streams in, each peer's free fetch slots by why they are free (no
neighbour holds a chunk it lacks; all that do are busy; the free ones are in its busy
backoff or at their per-source cap; it has not heard that a free one holds it).

``--instant-haves`` is an oracle, not a mechanism: a peer sees its neighbours' new chunks
the step they arrive. It bounds what any faster way of learning them (a have header on
chunk answers, have messages between peers) could gain. ``--have-poll S`` is the peer's
``have_poll_interval`` (off as shipped): each peer asks its neighbours what they hold
every S seconds, and announces and learns the map only every ``--announce-interval``.
``--tracker-rate R`` models a tracker that answers only R announces a second (one core:
about 6,500), which the peers' announce timers otherwise assume unlimited.

Cost: about linear in N (the tracker's swarm answer and the seed's first-copy rule do
not walk every peer); most of it is the peers rescheduling after refused requests.
Measured on a shared 2-core box, one core: N = 16 0.7 s, N = 100 8 s, N = 1,000 about
2 min, N = 10,000 about 30 min per run. ``--dt`` is 0.02 s for every published row.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import inspect
import json
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def parse_size(text: str) -> int:
    units = {"mib": MiB, "gib": 1024 * MiB, "kib": 1024, "": 1}
    t = text.strip().lower()
    for u in sorted(units, key=len, reverse=True):
        if u and t.endswith(u):
            return int(float(t[: -len(u)]) * units[u])
    return int(t)


def parse_rate(text: str) -> float:
    t = text.strip().lower()
    for u, m in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if t.endswith(u):
            return float(t[: -len(u)]) * m
    return float(t)


def maxmin_rates(transfers: dict, up: dict, down: dict) -> dict:
    """Max-min fair rates of ``transfers`` ({(dst, index): [src, remaining]}) under each
    host's upload and download cap, by progressive filling: the link with the smallest
    fair share fixes its flows at that share, which leaves every other link's share the
    same or larger, so a lazy heap of shares gives the order in O(F log L)."""
    flows: dict[tuple[str, str], list] = {}
    for key, tr in transfers.items():
        flows.setdefault(("u", tr[0]), []).append(key)
        flows.setdefault(("d", key[0]), []).append(key)
    cap = {link: (up[link[1]] if link[0] == "u" else down[link[1]]) for link in flows}
    left = {link: len(fs) for link, fs in flows.items()}
    heap = [(cap[link] / left[link], link) for link in flows]
    heapq.heapify(heap)
    rate: dict = {}
    while heap:
        share, link = heapq.heappop(heap)
        if not left[link]:
            continue
        current = max(0.0, cap[link]) / left[link]
        if current > share + 1e-9:
            heapq.heappush(heap, (current, link))
            continue
        for f in flows[link]:
            if f in rate:
                continue
            rate[f] = current
            src = transfers[f][0]
            for other in (("u", src), ("d", f[0])):
                cap[other] -= current
                left[other] -= 1
    return rate


IDLE_REASONS = ("no_neighbour_holds", "holders_busy", "busy_backoff", "per_source_cap", "stale_have", "other")


def simulate(args: argparse.Namespace, seed: int) -> dict:
    from p2pdist.core.errors import ChunkPassedOn
    from p2pdist.engine.download import Done, DownloadState, Expired, Fetch, FetchOrigin, Source
    from p2pdist.engine.firstcopy import FirstCopies
    from p2pdist.engine.neighbours import NeighbourPolicy, TaskPeers, choose_neighbours

    rng = random.Random(seed)
    n = args.hosts
    cs = args.chunk
    total = -(-args.size // cs)
    sizes = [min(cs, args.size - i * cs) for i in range(total)]
    up = {"seed": args.seed_rate / 8}
    down = {"seed": float("inf")}
    names = [f"p{i}" for i in range(n)]
    slow = set(names[n - args.slow:]) if args.slow else set()
    for p in names:
        up[p] = (args.slow_rate if p in slow else args.rate) / 8
        down[p] = args.rate / 8
    slots = {p: args.upload_slots for p in names}
    slots["seed"] = args.seed_upload_slots

    tracker = TaskPeers(ttl=1e9)
    seed_entry = tracker.upsert("seed", "seed", "", set(), False, 0.0, seed=True)
    policy = NeighbourPolicy(args.topology, fanout=args.fanout, swarm_size=args.swarm_size)
    states = {p: DownloadState(total=None, policy="rarest" if args.topology == "swarm" else args.tree_policy,
                               max_in_flight=args.max_in_flight,
                               per_source_in_flight=args.per_source_in_flight,
                               chunk_timeout=args.chunk_timeout, origin_fallback=args.back_to_source,
                               source_wait=args.chunk_timeout, busy_backoff=args.busy_backoff,
                               rng=random.Random(rng.random()))
              for p in names}
    first_copies = FirstCopies(args.seed_grace if args.topology == "swarm" else 0.0)
    held: dict[str, set[int]] = {p: set() for p in names}
    finish: dict[str, float] = {}
    next_announce = {p: rng.uniform(0, 0.05) for p in names}
    gained = {p: False for p in names}
    transfers: dict[tuple[str, int], list] = {}  # (dst, index) -> [src, remaining]
    uploads = {h: 0 for h in up}
    downloads = {h: 0 for h in up}
    published = 0
    origin_bytes_per_s = args.origin_rate / 8
    t = 0.0
    dt = args.dt
    seed_sent = 0.0
    # --stats: where the time goes (off by default; it only reads the run)
    st_bins: list[list[float]] = []  # per second: [t, seed up, peers' up, peers' down, lag mean, lag max, done]
    st_acc = [0.0, 0.0, 0.0, 0]  # seed bytes, peer-upload bytes, peer-download bytes, steps in this bin
    st_xfer: list[float] = []  # durations of completed peer-to-peer transfers
    st_xfer_seed: list[float] = []  # ... from the seed
    st_publish: dict[int, float] = {}
    st_holders = [0] * total
    st_reach: dict[str, dict[int, float]] = {"first": {}, "half": {}, "all": {}}
    st_announces = 0
    st_seed_sends: list[tuple[float, int]] = []
    peer_up_cap = sum(up[p] for p in names)
    # Each state's next_deadline() only changes when one of its methods runs, and every
    # call goes through handle(): cache it there instead of asking every peer every step.
    order = {p: i for i, p in enumerate(names)}
    deadlines: list[tuple[float, int, str]] = []  # heap; stale entries are skipped
    next_dl: dict[str, float | None] = {p: None for p in names}
    frozen: dict[str, frozenset[int]] = {}  # a peer's have as last handed out
    # --instant-haves, --have-poll: each peer's neighbours as last handed out, who lists
    # whom, and what each peer believes its neighbours hold
    listed: dict[str, list] = {}
    listeners: dict[str, set[str]] = {}
    gained_now: set[str] = set()
    view: dict[str, dict[str, frozenset[int] | None]] = {}
    polled: dict[str, set[str]] = {}  # peer -> neighbours whose have it re-read this step
    next_poll = {p: rng.uniform(0, args.have_poll) for p in names} if args.have_poll else {}  # no draws when off
    next_map = dict.fromkeys(names, 0.0)
    st_idle: dict[str, int] = dict.fromkeys(IDLE_REASONS, 0)  # --stats: idle fetch slots by reason
    st_idle_samples = 0

    def handle(p: str, actions: list, now: float) -> None:
        queue = deque(actions)
        st = states[p]
        while queue:
            a = queue.popleft()
            if isinstance(a, Fetch):
                src = a.peer_id
                src_has = (a.index < published) if src == "seed" else (a.index in held[src])
                busy = uploads[src] >= slots[src]
                if src == "seed" and src_has and not busy:  # busy first, as the chunk server
                    try:
                        first_copies.admit(str(a.index), p, now)
                    except ChunkPassedOn:
                        src_has = False
                if not src_has:
                    queue += st.chunk_failed(a.index, src, "missing", now)
                elif busy:
                    queue += st.chunk_failed(a.index, src, "busy", now)
                else:
                    transfers[(p, a.index)] = [src, float(sizes[a.index]), now]
                    uploads[src] += 1
                    downloads[p] += 1
            elif isinstance(a, FetchOrigin):
                # back-to-source: modelled as a transfer from the seed-side origin at origin rate
                transfers[(p, a.index)] = ["origin", float(sizes[a.index]), now]
                downloads[p] += 1
                uploads.setdefault("origin", 0)
                uploads["origin"] += 1
                up.setdefault("origin", args.origin_rate / 8)
            elif isinstance(a, Expired):
                tr = transfers.pop((p, a.index), None)
                if tr is not None:
                    uploads[tr[0]] -= 1
                    downloads[p] -= 1
                queue += st.chunk_failed(a.index, a.peer_id, "timeout", now)
            elif isinstance(a, Done):
                finish.setdefault(p, now)
        nd = st.next_deadline()
        if nd != next_dl[p]:
            next_dl[p] = nd
            if nd is not None:
                heapq.heappush(deadlines, (nd, order[p], p))

    def sources(p: str, entries: list, have: Callable, now: float, parents: set | None = None) -> list:
        """``entries`` as peer ``p``'s sources (Download.on_neighbours): a seed holds every
        listed chunk, less what it withholds from ``p``; the others hold ``have(entry)``."""
        withheld = (frozenset(first_copies.withheld(pub_names, p, now))
                    if args.withheld and args.topology == "swarm" and published < total else frozenset())
        return [Source(e.peer_id, e.peer_id, None if e.seed else have(e), seed=e.seed,
                       fallback=parents is not None and e.peer_id not in parents,
                       withheld=withheld if e.seed else frozenset()) for e in entries]

    def have_of(e) -> frozenset[int]:
        fz = frozen.get(e.peer_id)
        if fz is None or len(fz) != len(e.have):  # haves only grow
            fz = frozen[e.peer_id] = frozenset(e.have)
        return fz


    # the seed hands out fresh chunks (the tracker's /fresh long poll, swarm only): every
    # unfinished peer keeps one poll open, except while a chunk handed to it is arriving
    fresh_on = args.fresh and args.topology == "swarm"
    fresh_from = 0  # chunks before it have all left the seed
    pub_names: list[str] = []  # the chunk names published so far (the tracker's task.chunks)
    receiving_fresh: set[str] = set()

    def hand_out(now: float) -> None:
        nonlocal fresh_from
        while fresh_from < published and uploads["seed"] < slots["seed"]:
            if not first_copies.unsent(str(fresh_from)):
                fresh_from += 1
                continue
            waiting = [p for p in names if p not in finish and p not in receiving_fresh]
            if not waiting:
                return
            host = first_copies.pick(waiting, rng)
            first_copies.give(str(fresh_from), host, now)
            if states[host].incoming(fresh_from, "seed", now):
                transfers[(host, fresh_from)] = ["seed", float(sizes[fresh_from]), now, True]
                uploads["seed"] += 1
                downloads[host] += 1
                receiving_fresh.add(host)
            fresh_from += 1

    def idle_reason(p: str, now: float) -> str:
        """Why peer ``p`` has a fetch slot free, from the whole simulation's truth (the
        engine's private state is read here, never written)."""
        st = states[p]
        lacks = set(range(published)) - held[p] - st._in_flight.keys()
        held_back = st._withheld.get("seed", ())
        holders = [q for q in st._sources
                   if (q == "seed" and any(not first_copies.unsent(str(i)) and i not in held_back for i in lacks))
                   or (q != "seed" and not held[q].isdisjoint(lacks))]
        if not holders:
            return "no_neighbour_holds"
        free = [q for q in holders if uploads[q] < slots[q]]
        if not free:
            return "holders_busy"
        free = [q for q in free if st._cooldown.get(q, now) <= now and q not in st._full]
        if not free:
            return "busy_backoff"
        cap = st.source_cap(len(st._sources))
        free = [q for q in free if st._load.get(q, 0) < cap]
        if not free:
            return "per_source_cap"
        if not any(q == "seed" or (st._sources[q].have is not None and not st._sources[q].have.isdisjoint(lacks))
                   for q in free):
            return "stale_have"
        return "other"

    t_end_limit = args.max_time
    while len(finish) < n and t < t_end_limit:
        t += dt
        # 1. the seed publishes chunks as the origin stream completes them
        arrived = int(min(args.size, t * origin_bytes_per_s) // cs)
        if t * origin_bytes_per_s >= args.size:
            arrived = total
        if arrived > published:
            seed_entry.have.update(range(published, arrived))
            for k in range(published, arrived):
                first_copies.publish(str(k))
                st_publish[k] = t
            published = arrived
            if published == total:
                seed_entry.complete = True
                if not args.drain_fresh:
                    first_copies.retire(str(k) for k in range(total))
            if fresh_on:
                hand_out(t)  # at publication, before any peer learns of the chunk from the map
            first_new = len(pub_names)
            pub_names.extend(str(k) for k in range(first_new, published))
            for p in ([] if args.have_poll else names):  # with have polls: below, at each map poll
                if p not in finish:
                    # the map answer lists what the seed withholds from this peer (as the tracker's)
                    if args.withheld and args.topology == "swarm":
                        states[p].withheld("seed", first_copies.withheld(pub_names, p, t, first_new))
                    handle(p, states[p].map_grew(published, total if published == total else None, t), t)
        if fresh_on:
            hand_out(t)
        if args.drain_fresh and published == total and fresh_from >= total and len(first_copies):
            first_copies.retire(str(k) for k in range(total))  # every chunk has left the seed once
        # 2. move bytes
        done_list = []
        rates = maxmin_rates(transfers, up, down)
        for key, tr in transfers.items():
            src = tr[0]
            rate = rates[key]
            tr[1] -= rate * dt
            if src == "seed":
                seed_sent += rate * dt
            if tr[1] <= 0:
                done_list.append(key)
        if args.stats:
            sb = sum(r for k, r in rates.items() if transfers[k][0] == "seed")
            st_acc[0] += sb * dt
            st_acc[1] += (sum(rates.values()) - sb) * dt
            st_acc[2] += sum(rates.values()) * dt
            st_acc[3] += 1
            if st_acc[3] * dt >= 1.0 - 1e-9:
                span = st_acc[3] * dt
                active = [p for p in names if p not in finish]
                lags = [published - len(held[p]) for p in active] or [0]
                st_bins.append([round(t, 2), round(st_acc[0] / span / up["seed"], 3),
                                round(st_acc[1] / span / peer_up_cap, 3),
                                round(st_acc[2] / span / (n * args.rate / 8), 3),
                                round(statistics.fmean(lags), 1), max(lags), len(finish),
                                published - len(st_reach["first"])])
                st_acc[:] = [0.0, 0.0, 0.0, 0]
        for key in done_list:
            tr = transfers.pop(key)
            src = tr[0]
            dst, idx = key
            if len(tr) > 3:
                receiving_fresh.discard(dst)
            uploads[src] -= 1
            downloads[dst] -= 1
            if fresh_on and src == "seed":
                hand_out(t)  # as the tracker does: a freed slot goes to a waiting peer first
            if args.stats:
                (st_xfer_seed if src == "seed" else st_xfer).append(t - tr[2])
                if src == "seed":
                    st_seed_sends.append((t, idx))
            if idx not in held[dst]:
                held[dst].add(idx)
                gained[dst] = True
                gained_now.add(dst)
                if args.stats:
                    st_holders[idx] += 1
                    for label, need in (("first", 1), ("half", (n + 1) // 2), ("all", n)):
                        if st_holders[idx] == need:
                            st_reach[label][idx] = t
            handle(dst, states[dst].chunk_ok(idx, None if src == "origin" else src, t), t)
        # 3. announces (--tracker-rate: a saturated tracker spaces every peer's announces)
        tracker_gap = (n - len(finish)) / args.tracker_rate if args.tracker_rate else 0.0
        if args.have_poll:
            # the peer polls the map once per announce interval (Download._follow_map): an
            # answer comes as soon as there is news after that
            for p in names:
                if p not in finish and t >= next_map[p] and states[p].n_known < published:
                    if args.withheld and args.topology == "swarm":
                        states[p].withheld("seed", first_copies.withheld(pub_names, p, t, states[p].n_known))
                    handle(p, states[p].map_grew(published, total if published == total else None, t), t)
                    next_map[p] = t + max(args.announce_interval, tracker_gap)
        for p in names:
            if t >= next_announce[p] and (p not in finish or gained[p]):
                tracker.upsert(p, p, "", held[p], len(held[p]) == total, t)  # (upsert copies)
                st_announces += 1
                chosen = choose_neighbours(tracker, p, policy, rng, t)
                parents = set(tracker.parent_of.get(p, ())) if policy.name == "tree" else None
                # as the peer does (Download.on_neighbours): a seed holds every listed chunk
                srcs = sources(p, [e for e in chosen if e.peer_id != p], have_of, t, parents)
                if args.have_poll:  # what a poll told is kept (Download.on_neighbours)
                    old = view.get(p, {})
                    srcs = [s if s.have is None or old.get(s.peer_id) is None
                            else dataclasses.replace(s, have=s.have | old[s.peer_id]) for s in srcs]
                view[p] = {s.peer_id: s.have for s in srcs}
                if p not in finish:
                    handle(p, states[p].set_sources(srcs, t), t)
                if args.instant_haves or args.have_poll:
                    for e in listed.get(p, ()):
                        listeners[e.peer_id].discard(p)
                    listed[p] = [e for e in chosen if e.peer_id != p]
                    for e in listed[p]:
                        listeners.setdefault(e.peer_id, set()).add(p)
                gained[p] = False
                next_announce[p] = t + max(args.announce_interval, tracker_gap)
            elif gained[p] and not args.have_poll and next_announce[p] > t + max(args.min_gap, tracker_gap):
                next_announce[p] = t + max(args.min_gap, tracker_gap)
        if args.instant_haves and gained_now:
            # an oracle, not a mechanism: every peer whose neighbour gained a chunk this
            # step sees its neighbours' current haves at once (no announce lag at all)
            touched = set().union(*(listeners.get(q, ()) for q in gained_now)) - finish.keys()
            for p in sorted(touched, key=order.__getitem__):
                srcs = sources(p, listed[p], lambda e: frozenset(held[e.peer_id]), t)
                handle(p, states[p].set_sources(srcs, t), t)
        gained_now.clear()
        if args.have_poll:
            # each peer asks its listed neighbours (not the seed) what they hold
            for p in names:
                if p not in finish and p in listed and t >= next_poll[p]:
                    next_poll[p] = t + args.have_poll
                    polled[p] = {e.peer_id for e in listed[p] if not e.seed}
            for p in sorted(polled, key=order.__getitem__):
                v = view[p]
                v.update((q, frozenset(held[q])) for q in polled[p])
                srcs = sources(p, listed[p], lambda e, v=v: v[e.peer_id], t)
                handle(p, states[p].set_sources(srcs, t), t)
            polled.clear()
        if args.stats and published < total and round(t / dt) % 10 == 0:
            st_idle_samples += 1
            for p in names:
                if p not in finish and downloads[p] < args.max_in_flight:
                    st_idle[idle_reason(p, t)] += args.max_in_flight - downloads[p]
        # 4. deadlines, in host order (who ticks first may take an upload slot first)
        due = set()
        while deadlines and deadlines[0][0] <= t:
            nd, _, p = heapq.heappop(deadlines)
            if next_dl[p] == nd:
                due.add(p)
        for p in sorted(due, key=order.__getitem__):
            if p not in finish:
                next_dl[p] = None  # handle() pushes whatever comes next, even the same time
                handle(p, states[p].tick(t), t)

    def _stats() -> dict:
        def q(xs: list[float], f: float) -> float:
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, int(f * len(xs)))], 3) if xs else float("nan")

        fails = {r: sum(getattr(s.stats, r) for s in states.values()) / n
                 for r in ("missing", "busy", "timeouts", "errors")}
        delays = {label: [reach[i] - st_publish[i] for i in reach] for label, reach in st_reach.items()}
        return {
            "per_peer": {"announces": round(st_announces / n, 1), **{k: round(v, 1) for k, v in fails.items()},
                         "from_origin": sum(s.stats.from_origin for s in states.values()) / n},
            "transfer_s": {"peer_median": q(st_xfer, 0.5), "peer_p90": q(st_xfer, 0.9),
                           "seed_median": q(st_xfer_seed, 0.5), "seed_p90": q(st_xfer_seed, 0.9)},
            # seconds from a chunk's publication until 1 peer / half / all peers hold it
            "spread_s": {label: {"median": q(d, 0.5), "p90": q(d, 0.9), "max": q(d, 1.0)}
                         for label, d in delays.items()},
            "last_publish": round(max(st_publish.values()), 3),
            # while the blob streams in, sampled every 10 steps: free fetch slots per
            # unfinished peer, by why no fetch runs in them (idle_reason)
            "idle_fetch_slots": {k: round(v / max(1, st_idle_samples) / n, 3) for k, v in st_idle.items()},
            # chunks the seed sent while the blob streamed in, and after; how many of the
            # former were a chunk's first copy
            "seed_sends": {"streaming": sum(1 for ts, _ in st_seed_sends if ts <= max(st_publish.values())),
                           "streaming_first_copies": len({i for ts, i in st_seed_sends
                                                           if ts <= max(st_publish.values())}),
                           "after": sum(1 for ts, _ in st_seed_sends if ts > max(st_publish.values()))},
            # per second: t, seed upload use, peers' upload use, peers' download use,
            # mean and max chunks behind the seed (unfinished peers), peers finished,
            # chunks published that no peer holds yet (the seed's backlog)
            "bins": st_bins,
        }

    f = args.size * 8
    ups = [up[p] * 8 for p in names]
    t_min = max(f / args.seed_rate, f / args.rate, n * f / (args.seed_rate + sum(ups)))
    times = sorted(finish.get(p, float("nan")) for p in names)
    return {"t_first": round(times[0], 3), "t_median": round(statistics.median(times), 3),
            "t_last": round(times[-1], 3), "t_min": round(t_min, 3),
            "last_over_tmin": round(times[-1] / t_min, 3), "median_over_tmin": round(statistics.median(times) / t_min, 3),
            "finished": len(finish), "hosts": n, "seed_upload_bytes": int(seed_sent),
            "seed_sent_over_F": round(seed_sent / args.size, 3),
            **({"stats": _stats()} if args.stats else {})}


def main() -> int:
    sys.path.insert(0, str(ROOT))
    src = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--src=")), None)
    if "--src" in sys.argv[:-1]:
        src = sys.argv[sys.argv.index("--src") + 1]
    if src:
        sys.path.insert(0, str(Path(src).resolve()))
    from p2pdist.core.chunkmap import chunk_size_for
    from p2pdist.core.config import PeerConfig, TrackerConfig
    from p2pdist.engine.download import DownloadState
    from p2pdist.peer.service import MIN_ANNOUNCE_GAP
    peer, tracker = PeerConfig(), TrackerConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--size", type=parse_size, default=256 * MiB)
    ap.add_argument("--chunk", type=parse_size, help="chunk size (default: the tracker's, chunk_size_for(--size))")
    ap.add_argument("--rate", type=parse_rate, default=100e6)
    ap.add_argument("--seed-rate", type=parse_rate)
    ap.add_argument("--origin-rate", type=parse_rate)
    ap.add_argument("--slow", type=int, default=0)
    ap.add_argument("--slow-rate", type=parse_rate, default=20e6)
    ap.add_argument("--topology", choices=["swarm", "tree"], default="swarm")
    ap.add_argument("--tree-policy", default="sequential")
    ap.add_argument("--swarm-size", type=int, default=tracker.swarm_size)
    ap.add_argument("--fanout", type=int, default=tracker.fanout)
    ap.add_argument("--max-in-flight", type=int, default=peer.max_in_flight)
    ap.add_argument("--per-source-in-flight", type=int, default=peer.per_source_in_flight)
    ap.add_argument("--upload-slots", type=int, default=peer.upload_slots)
    ap.add_argument("--seed-upload-slots", type=int, default=tracker.upload_slots)
    ap.add_argument("--seed-grace", type=float, default=tracker.seed_grace)
    ap.add_argument("--chunk-timeout", type=float, default=peer.chunk_timeout)
    ap.add_argument("--busy-backoff", type=float,
                    default=inspect.signature(DownloadState).parameters["busy_backoff"].default,
                    help="how long a peer skips a source that answered busy (the engine's default)")
    ap.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="the seed hands fresh chunks to the peers waiting for one (the tracker's "
                         "/fresh long poll, as shipped); --no-fresh: only asked for, chunk by chunk")
    ap.add_argument("--drain-fresh", action="store_true",
                    help="not the product's behaviour (a screen, RESULTS.md): keep the first-copy rule and the "
                         "hand-out going after the stream ends, until every chunk has left the seed once")
    ap.add_argument("--withheld", action=argparse.BooleanOptionalAction, default=True,
                    help="the map and announce answers list what the seed withholds from each peer "
                         "(as shipped); --no-withheld: peers learn it from refused asks")
    ap.add_argument("--instant-haves", action="store_true",
                    help="not a mechanism (a screen, RESULTS.md): a peer sees its neighbours' new chunks the step "
                         "they arrive, with no announce lag -- the bound on any faster way of learning them")
    ap.add_argument("--have-poll", type=float, default=peer.have_poll_interval, metavar="S",
                    help="the peer's have_poll_interval: every S seconds a peer asks each neighbour what it "
                         "holds, and announces and polls the map only every --announce-interval (0: off)")
    ap.add_argument("--tracker-rate", type=float, default=0.0, metavar="R",
                    help="announces per second the tracker answers: a saturated tracker spaces each unfinished "
                         "peer's announces to (unfinished peers) / R seconds (0: no limit, as before)")
    ap.add_argument("--back-to-source", action=argparse.BooleanOptionalAction, default=peer.back_to_source)
    ap.add_argument("--announce-interval", type=float, default=peer.announce_interval)
    ap.add_argument("--min-gap", type=float, default=MIN_ANNOUNCE_GAP)
    ap.add_argument("--dt", type=float, default=0.02)
    ap.add_argument("--max-time", type=float, default=3600)
    ap.add_argument("--seeds", type=int, default=3, help="runs with different random seeds")
    ap.add_argument("--first-seed", type=int, default=0, help="the first of them (to add runs to earlier ones)")
    ap.add_argument("--src", help="import p2pdist from this source tree")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--stats", action="store_true",
                    help="add where the time goes to each run (utilisation per second, spread delays, failures)")
    args = ap.parse_args()
    args.chunk = args.chunk or chunk_size_for(args.size)
    args.seed_rate = args.seed_rate or args.rate
    args.origin_rate = args.origin_rate or args.seed_rate
    runs = []
    for s in range(args.first_seed, args.first_seed + args.seeds):
        t0 = time.monotonic()
        r = simulate(args, s)
        r["wall_s"] = round(time.monotonic() - t0, 1)
        runs.append(r)
        brief = {k: v for k, v in r.items() if k != "stats"}
        print(f"[sim] N={args.hosts} seed {s}: {brief}", file=sys.stderr, flush=True)
        if "stats" in r:
            print(f"[sim]   stats: {json.dumps({k: v for k, v in r['stats'].items() if k != 'bins'})}",
                  file=sys.stderr, flush=True)
    out = {"hosts": args.hosts, "topology": args.topology, "runs": runs,
           "t_last_median": statistics.median(r["t_last"] for r in runs),
           "t_median_median": statistics.median(r["t_median"] for r in runs),
           "t_min": runs[0]["t_min"]}
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
