#!/usr/bin/env python3
"""Fluid simulator of one blob's distribution, driving p2pdist's real engine policies.

    python bench/sim.py --hosts N [--size 256MiB] [--rate 100mbit] [--topology swarm|tree]
                        [--dt 0.02] [--seeds 3] [--json] [--src DIR]

What is real: every peer's chunk scheduling is a ``p2pdist.engine.download.DownloadState``
(rarest first, in-flight limits, busy/missing/timeout handling, starvation clocks), and
the tracker's neighbour handout is ``p2pdist.engine.neighbours.choose_neighbours`` over a
``TaskPeers`` fed by simulated announces — the same objects the services pump.

What is modelled (time-stepped, ``--dt`` seconds):

* links: each host has an upload and a download cap; every transfer in flight gets
  ``min(up_src / uploads_at_src, down_dst / downloads_at_dst)`` (equal shares, no TCP
  dynamics, no per-packet overhead, zero latency);
* the seed (the tracker) receives the blob from the origin at ``--origin-rate`` and
  publishes each chunk when it is complete (cut-through); peers learn the map at once
  (the long poll);
* announces: a peer announces ``--min-gap`` (0.2 s) after it gains a chunk, else every
  ``--announce-interval`` s; the reply's neighbours (with their haves as the tracker
  knows them) become the peer's sources;
* a source with ``--upload-slots`` uploads running answers ``busy``; one not holding the
  chunk answers ``missing``; back-to-source is off unless ``--back-to-source``.

Reports per run t_first/t_median/t_last against the Kumar-Ross T_min, like bench/lab.py.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
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


def simulate(args: argparse.Namespace, seed: int) -> dict:
    from p2pdist.engine.download import Done, DownloadState, Expired, Fetch, FetchOrigin, Source
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
                               source_wait=args.chunk_timeout, rng=random.Random(rng.random()))
              for p in names}
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

    def handle(p: str, actions: list, now: float) -> None:
        queue = list(actions)
        while queue:
            a = queue.pop(0)
            st = states[p]
            if isinstance(a, Fetch):
                src = a.peer_id
                src_has = (a.index < published) if src == "seed" else (a.index in held[src])
                if not src_has:
                    queue += st.chunk_failed(a.index, src, "missing", now)
                elif uploads[src] >= slots[src]:
                    queue += st.chunk_failed(a.index, src, "busy", now)
                else:
                    transfers[(p, a.index)] = [src, float(sizes[a.index])]
                    uploads[src] += 1
                    downloads[p] += 1
            elif isinstance(a, FetchOrigin):
                # back-to-source: modelled as a transfer from the seed-side origin at origin rate
                transfers[(p, a.index)] = ["origin", float(sizes[a.index])]
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

    rank = {p: i for i, p in enumerate(names)}
    published_at: dict[int, float] = {}

    def seed_view(p: str, have: set[int], now: float) -> set[int]:
        """--seed-partition (a what-if, not the product): the tracker shows each peer only
        its share of the seed's chunks (index mod N == its rank), plus any chunk no peer
        has held for --partition-grace seconds after it was published, so each fresh
        chunk leaves the seed about once and the peers pass it on."""
        if not args.seed_partition:
            return have
        out = set()
        for k in have:
            if k % n == rank[p]:
                out.add(k)
            elif now - published_at.get(k, now) > args.partition_grace and not any(k in held[q] for q in names):
                out.add(k)
        return out

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
                published_at[k] = t
            published = arrived
            if published == total:
                seed_entry.complete = True
            for p in names:
                if p not in finish:
                    handle(p, states[p].map_grew(published, total if published == total else None, t), t)
        # 2. move bytes
        done_list = []
        for key, tr in transfers.items():
            dst = key[0]
            src = tr[0]
            rate = min(up[src] / max(1, uploads[src]), down[dst] / max(1, downloads[dst]))
            tr[1] -= rate * dt
            if src == "seed":
                seed_sent += rate * dt
            if tr[1] <= 0:
                done_list.append(key)
        for key in done_list:
            src = transfers.pop(key)[0]
            dst, idx = key
            uploads[src] -= 1
            downloads[dst] -= 1
            if idx not in held[dst]:
                held[dst].add(idx)
                gained[dst] = True
            handle(dst, states[dst].chunk_ok(idx, None if src == "origin" else src, t), t)
        # 3. announces
        for p in names:
            if t >= next_announce[p] and (p not in finish or gained[p]):
                tracker.upsert(p, p, "", set(held[p]), len(held[p]) == total, t)
                chosen = choose_neighbours(tracker, p, policy, rng, t)
                parents = set(tracker.parent_of.get(p, ())) if policy.name == "tree" else None
                srcs = [Source(e.peer_id, e.peer_id, frozenset(seed_view(p, e.have, t) if e.seed else e.have),
                               fallback=parents is not None and e.peer_id not in parents)
                        for e in chosen if e.peer_id != p]
                if p not in finish:
                    handle(p, states[p].set_sources(srcs, t), t)
                gained[p] = False
                next_announce[p] = t + args.announce_interval
            elif gained[p] and next_announce[p] > t + args.min_gap:
                next_announce[p] = t + args.min_gap
        # 4. deadlines
        for p in names:
            if p in finish:
                continue
            nd = states[p].next_deadline()
            if nd is not None and nd <= t:
                handle(p, states[p].tick(t), t)

    f = args.size * 8
    ups = [up[p] * 8 for p in names]
    t_min = max(f / args.seed_rate, f / args.rate, n * f / (args.seed_rate + sum(ups)))
    times = sorted(finish.get(p, float("nan")) for p in names)
    return {"t_first": round(times[0], 3), "t_median": round(statistics.median(times), 3),
            "t_last": round(times[-1], 3), "t_min": round(t_min, 3),
            "last_over_tmin": round(times[-1] / t_min, 3), "median_over_tmin": round(statistics.median(times) / t_min, 3),
            "finished": len(finish), "hosts": n, "seed_upload_bytes": int(seed_sent)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--size", type=parse_size, default=256 * MiB)
    ap.add_argument("--chunk", type=parse_size, default=4 * MiB)
    ap.add_argument("--rate", type=parse_rate, default=100e6)
    ap.add_argument("--seed-rate", type=parse_rate)
    ap.add_argument("--origin-rate", type=parse_rate)
    ap.add_argument("--slow", type=int, default=0)
    ap.add_argument("--slow-rate", type=parse_rate, default=20e6)
    ap.add_argument("--topology", choices=["swarm", "tree"], default="swarm")
    ap.add_argument("--tree-policy", default="sequential")
    ap.add_argument("--swarm-size", type=int, default=8)
    ap.add_argument("--fanout", type=int, default=4)
    ap.add_argument("--max-in-flight", type=int, default=16)
    ap.add_argument("--per-source-in-flight", type=int, default=1)
    ap.add_argument("--upload-slots", type=int, default=8)
    ap.add_argument("--seed-upload-slots", type=int, default=2)
    ap.add_argument("--chunk-timeout", type=float, default=30.0)
    ap.add_argument("--back-to-source", action="store_true")
    ap.add_argument("--seed-partition", action="store_true", help="what-if: see seed_view()")
    ap.add_argument("--partition-grace", type=float, default=2.0)
    ap.add_argument("--announce-interval", type=float, default=1.0)
    ap.add_argument("--min-gap", type=float, default=0.2)
    ap.add_argument("--dt", type=float, default=0.02)
    ap.add_argument("--max-time", type=float, default=3600)
    ap.add_argument("--seeds", type=int, default=3, help="runs with different random seeds")
    ap.add_argument("--src", help="import p2pdist from this source tree")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.seed_rate = args.seed_rate or args.rate
    args.origin_rate = args.origin_rate or args.seed_rate
    sys.path.insert(0, str(Path(args.src).resolve()) if args.src else str(ROOT))
    runs = []
    for s in range(args.seeds):
        t0 = time.monotonic()
        r = simulate(args, s)
        r["wall_s"] = round(time.monotonic() - t0, 1)
        runs.append(r)
        print(f"[sim] N={args.hosts} seed {s}: {r}", file=sys.stderr, flush=True)
    out = {"hosts": args.hosts, "topology": args.topology, "runs": runs,
           "t_last_median": statistics.median(r["t_last"] for r in runs),
           "t_median_median": statistics.median(r["t_median"] for r in runs),
           "t_min": runs[0]["t_min"]}
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
