#!/usr/bin/env python3
"""Peak RSS of one peer while it serves one 1 GiB blob and downloads another at once.

    python bench/rss.py [--size 1GiB] [--json] [--no-record]

Peer P first fetches blob X (untimed warm-up, so it holds X). Then, at the same time, a
second peer Q fetches X from P (P serves) and P fetches blob Y through the swarm (the
tracker seeds Y from the origin; P downloads, verifies and stores it). P's VmRSS (with
any children) is sampled every 20 ms; the target is the DaemonSet limit, 128 MiB. Page
cache of the written blobs is not RSS; a container's memory limit counts it too, but the
kernel reclaims it under the limit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer import (  # noqa: E402 - the shared process/nginx/RSS helpers of bench/
    Procs,
    RssSampler,
    free_port,
    machine_info,
    make_blob,
    p2pdist_bin,
    parse_size,
    record,
    start_nginx,
    start_task,
    wait_ready,
    wait_task,
)

MARKS = ("<!-- bench:rss:start -->", "<!-- bench:rss:end -->")
LIMIT_MIB = 128


def run(size: int, work: Path, procs: Procs) -> dict[str, object]:
    www = work / "www"
    www.mkdir()
    dx = make_blob(www / "x.bin", size)
    dy = make_blob(www / "y.bin", size)
    base, _ = start_nginx(procs, work, www)
    exe = p2pdist_bin()
    tport, pport, qport = free_port(), free_port(), free_port()
    tracker = procs.start("tracker", [exe, "tracker", "--listen", f"127.0.0.1:{tport}",
                                      "--data-dir", str(work / "t")])
    wait_ready(procs, "tracker", tracker, f"http://127.0.0.1:{tport}/healthz")
    tracker_url = f"http://127.0.0.1:{tport}"
    p = procs.start("peer-p", [exe, "peer", "--listen", f"127.0.0.1:{pport}", "--data-dir",
                               str(work / "p"), "--tracker", tracker_url])
    # Q has no tracker: it takes X from P alone (P's chunk map and chunks), so P serves it all
    q = procs.start("peer-q", [exe, "peer", "--listen", f"127.0.0.1:{qport}", "--data-dir", str(work / "q")])
    wait_ready(procs, "peer-p", p, f"http://127.0.0.1:{pport}/healthz")
    wait_ready(procs, "peer-q", q, f"http://127.0.0.1:{qport}/healthz")
    api_p, api_q = f"http://127.0.0.1:{pport}", f"http://127.0.0.1:{qport}"
    start_task(api_p, {"url": f"{base}/x.bin", "digest": dx})
    wait_task(api_p, dx.split(":")[1], timeout=600)
    with RssSampler({"p": p.pid, "q": q.pid}) as rss:
        t0 = time.monotonic()
        start_task(api_q, {"url": f"{base}/x.bin", "digest": dx, "nodes": [f"127.0.0.1:{pport}"]})
        start_task(api_p, {"url": f"{base}/y.bin", "digest": dy})
        sq = wait_task(api_q, dx.split(":")[1], timeout=600)
        sp = wait_task(api_p, dy.split(":")[1], timeout=600)
        seconds = time.monotonic() - t0
    return {
        "blob_bytes": size, "seconds": round(seconds, 2),
        "peak_rss_mib_serving_and_downloading": round(rss.peak_mib("p"), 1),
        "peak_rss_mib_other_peer": round(rss.peak_mib("q"), 1),
        "served_to_q_bytes": sq["bytes_from_peers"], "p_downloaded_bytes": sp["bytes_from_peers"] + sp["bytes_from_origin"],
        "both_complete": sq["state"] == "complete" and sp["state"] == "complete",
        "limit_mib": LIMIT_MIB, "samples": rss.samples,
    }


def render(r: dict[str, object], command: str) -> str:
    m = machine_info()
    ok = r["both_complete"] and float(r["peak_rss_mib_serving_and_downloading"]) <= LIMIT_MIB  # type: ignore[arg-type]
    return f"""{MARKS[0]}
## rss: one peer serving a blob and downloading another at once

{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Two blobs of {r['blob_bytes']:,} bytes. Machine: nproc {m.get('nproc')}; {m.get('cpu', '')}.

Command: `{command}`

| peer P serves X to Q while fetching Y | value |
|---|---|
| peak RSS of P (MiB) | **{r['peak_rss_mib_serving_and_downloading']}** |
| peak RSS of Q (MiB) | {r['peak_rss_mib_other_peer']} |
| both transfers complete and verified | {r['both_complete']} |
| bytes P served to Q / P downloaded | {r['served_to_q_bytes']:,} / {r['p_downloaded_bytes']:,} |
| wall time (s) | {r['seconds']} |

Target: P's RSS ≤ {LIMIT_MIB} MiB (the DaemonSet limit) — **{'met' if ok else 'NOT met'}**. RSS is VmRSS of the
peer process sampled every 20 ms ({r['samples']} samples); page cache of written blobs is not counted.
{MARKS[1]}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="p2pdist-rss-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        procs = Procs(work / "logs")
        try:
            r = run(size, work, procs)
        finally:
            procs.stop_all()
    command = "python bench/rss.py" + ("" if args.size == "1GiB" else f" --size {args.size}")
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(render(r, command))
    if not args.no_record:
        record(render(r, command), *MARKS)
    return 0 if r["both_complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
