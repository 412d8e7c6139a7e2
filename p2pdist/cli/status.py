"""``p2pdist status``: the cluster as one tracker sees it."""

from __future__ import annotations

import argparse
import json

import httpx

from p2pdist.core.errors import Unavailable
from p2pdist.core.sizes import format_size
from p2pdist.peer.localapi import cluster_tls, component_verify
from p2pdist.peer.trackerclient import raise_for_error


def format_status(st: dict) -> str:  # type: ignore[type-arg]
    lines = [f"tracker {st.get('version', '?')}  topology={st.get('topology', '?')}  "
             f"peers={len(st.get('peers', []))}  tasks={len(st.get('tasks', []))}", ""]
    lines.append(f"{'PEER':<24} {'ADDRESS':<22} {'ZONE':<10} {'VERSION':<8} {'CPU%':>5} {'RSS':>10} "
                 f"{'DISK':>10} {'UP/s':>10} {'DOWN/s':>10} {'TASKS':>5} HEALTH")
    for p in st.get("peers", []):
        health = "stale" if p.get("stale") else "ok"
        if p.get("version") is None:
            lines.append(f"{p['peer_id']:<24} {p['addr']:<22} {p['zone'] or '-':<10} {'?':<8} "
                         f"{'':>5} {'':>10} {'':>10} {'':>10} {'':>10} {'':>5} {health} (no heartbeat yet)")
            continue
        lines.append(f"{p['peer_id']:<24} {p['addr']:<22} {p['zone'] or '-':<10} {p['version']:<8} "
                     f"{p['cpu_percent']:>5.1f} {format_size(p['rss_bytes']):>10} {format_size(p['disk_used_bytes']):>10} "
                     f"{format_size(p['upload_bps']):>10} {format_size(p['download_bps']):>10} "
                     f"{p['active_tasks']:>5} {health}")
    lines.append("")
    lines.append(f"{'TASK':<18} {'SIZE':>10} {'CHUNKS':>11} {'STATE':<8} {'PEERS':>5} {'DONE':>5} {'ORIGIN':>10}")
    for t in st.get("tasks", []):
        state = "failed" if t["error"] else "sealed" if t["sealed"] else "seeding"
        size = format_size(t["size"]) if t["size"] is not None else "?"
        chunks = f"{t['chunks_published']}/{t['chunks_total'] if t['chunks_total'] is not None else '?'}"
        lines.append(f"{t['task_id'][:16]:<18} {size:>10} {chunks:>11} {state:<8} {t['peers']:>5} "
                     f"{t['complete_peers']:>5} {format_size(t['origin_bytes']):>10}")
        if t["error"]:
            lines.append(f"  error: {t['error']}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    url = args.tracker.rstrip("/")
    try:
        # an https:// tracker of a cluster with mTLS is verified against its CA ($P2PDIST_TLS_*)
        r = httpx.get(f"{url}/api/v1/status", timeout=5.0, verify=component_verify(cluster_tls()))
    except httpx.HTTPError as exc:
        raise Unavailable(f"tracker {url} unreachable: {exc}") from exc
    raise_for_error(r, f"tracker {url}")
    st = r.json()
    print(json.dumps(st, indent=2) if args.json else format_status(st))
    return 0
