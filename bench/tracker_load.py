#!/usr/bin/env python3
"""Tracker load: one ``p2pdist tracker`` process, 10,000 simulated peer-tasks announcing.

    python bench/tracker_load.py [--peers 500] [--tasks-per-peer 20] [--chunks 64]
                                 [--step-seconds 8] [--src DIR] [--json]

Set-up: the tracker runs as its own process pinned to CPU 0 (``taskset``), listening on
127.0.0.1; this script (the load generator, trio + httpx keep-alive connections) is
pinned to CPU 1. ``--peers`` simulated peers each take part in ``--tasks-per-peer`` tasks
(default 500 x 20 = 10,000 peer-tasks over ``peers*tasks_per_peer/swarm`` tasks of
``--swarm`` peers each). Every peer announces all its tasks in one request, as the real
peer's announcer batches them, with a have-bitmap that grows over the run. First every
peer announces once (warm-up: the tracker learns all 10,000 peer-tasks); then the load
steps through 1, 2, 4, 8, 16, 32 concurrent connections for ``--step-seconds`` each.

Reported per step: task-announces per second (tasks carried by completed requests),
requests per second, p50/p99 request latency. The headline is the best
task-announces/s among the steps whose p99 stays under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > cpu:
        os.sched_setaffinity(0, {cpu})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=500)
    ap.add_argument("--tasks-per-peer", type=int, default=20)
    ap.add_argument("--swarm", type=int, default=50, help="peers per task")
    ap.add_argument("--chunks", type=int, default=64, help="chunks per task (have bitmap length)")
    ap.add_argument("--step-seconds", type=float, default=8.0)
    ap.add_argument("--steps", default="1,2,4,8,16,32")
    ap.add_argument("--src", help="run the tracker from this source tree (PYTHONPATH)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    from p2pdist.wire.tracker import encode_have

    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="p2pload-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
        env["PYTHONSAFEPATH"] = "1"  # else `python -m` run from the checkout imports the checkout
    py = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
    cmd = [py, "-m", "p2pdist", "tracker", "--listen", f"127.0.0.1:{port}", "--data-dir", str(work / "t"),
           "--log-level", "warning"]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0", *cmd]
    log = open(work / "tracker.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                print((work / "tracker.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.05)
        pin(1)
        n_tasks = max(1, args.peers * args.tasks_per_peer // args.swarm)
        rng = random.Random(7)
        task_ids = [f"{rng.getrandbits(256):064x}" for _ in range(n_tasks)]
        # peer p takes part in tasks_per_peer distinct tasks, spread so each task gets ~swarm peers
        membership = [[task_ids[(p * args.tasks_per_peer + k) % n_tasks] for k in range(args.tasks_per_peer)]
                      for p in range(args.peers)]
        held = [[set() for _ in range(args.tasks_per_peer)] for _ in range(args.peers)]

        def body(p: int) -> bytes:
            tasks = []
            for k, tid in enumerate(membership[p]):
                h = held[p][k]
                if len(h) < args.chunks:
                    h.add(rng.randrange(args.chunks))
                done = len(h) >= args.chunks
                tasks.append({"task_id": tid, "have": encode_have(h, done), "complete": done})
            return json.dumps({"peer_id": f"sim-{p}", "addr": f"10.{p // 250}.{p % 250}.1:7401",
                               "zone": f"z{p % 4}", "tasks": tasks}).encode()

        results: list[dict[str, float]] = []

        async def run() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=10, limits=httpx.Limits(max_connections=64)) as client:
                # warm-up: every peer announces once
                for p in range(args.peers):
                    r = await client.post("/api/v1/announce", content=body(p), headers={"content-type": "application/json"})
                    r.raise_for_status()
                nxt = [0]
                for conc in [int(c) for c in args.steps.split(",")]:
                    lat: list[float] = []
                    tasks_done = [0]
                    errors = [0]
                    end = time.monotonic() + args.step_seconds

                    async def worker(end: float = end, lat: list[float] = lat, tasks_done: list[int] = tasks_done,
                                     errors: list[int] = errors) -> None:
                        while time.monotonic() < end:
                            p = nxt[0] % args.peers
                            nxt[0] += 1
                            data = body(p)
                            t = time.perf_counter()
                            try:
                                r = await client.post("/api/v1/announce", content=data,
                                                      headers={"content-type": "application/json"})
                                ok = r.status_code == 200
                            except httpx.HTTPError:
                                ok = False
                            dt = time.perf_counter() - t
                            if ok:
                                lat.append(dt)
                                tasks_done[0] += args.tasks_per_peer
                            else:
                                errors[0] += 1

                    t0 = time.monotonic()
                    async with trio.open_nursery() as n:
                        for _ in range(conc):
                            n.start_soon(worker)
                    el = time.monotonic() - t0
                    lat.sort()
                    res = {"connections": conc, "requests_per_s": round(len(lat) / el, 1),
                           "task_announces_per_s": round(tasks_done[0] / el, 1),
                           "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
                           "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
                           "errors": errors[0]}
                    results.append(res)
                    print(f"[tracker_load] {res}", file=sys.stderr, flush=True)

        trio.run(run)
        good = [r for r in results if r["p99_ms"] is not None and r["p99_ms"] < 100 and r["errors"] == 0]
        best = max(good, key=lambda r: r["task_announces_per_s"]) if good else None
        out = {"peer_tasks": args.peers * args.tasks_per_peer, "peers": args.peers, "tasks": n_tasks,
               "tasks_per_request": args.tasks_per_peer, "steps": results,
               "best_under_p99_100ms": best}
        if args.json:
            print(json.dumps(out, indent=1))
        else:
            print(f"best task-announces/s at p99 < 100 ms: {best}")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
