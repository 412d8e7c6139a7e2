"""``p2pdist demo``: the embedded default. An origin serving a generated blob, a tracker
and N peers, all on loopback in this process; the blob goes to every peer, every copy is
checked against the blob's sha256, and a report is printed."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from p2pdist.core.errors import BadRequest
from p2pdist.core.sizes import format_size, parse_size
from p2pdist.core.task import TaskSpec
from p2pdist.peer.service import Peer
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster

MAX_DEMO_SIZE = 8 << 30
MAX_DEMO_PEERS = 64


async def _copy_digest(peer: Peer, chunks: tuple[str, ...]) -> str:
    """sha256 of the blob as this peer holds it, read back from its store."""
    sha = hashlib.sha256()
    for name in chunks:
        data = await peer.store.read(name)
        await trio.to_thread.run_sync(sha.update, data)
    return "sha256:" + sha.hexdigest()


async def demo(n_peers: int, size: int, topology: str, root: Path,
               progress: bool) -> dict[str, Any]:
    blob = make_blob(size, seed=1)
    digest = sha256_digest(blob)
    origin = StaticOrigin({"demo/blob": blob})
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.serve)
        cluster = await start_cluster(nursery, root, peers=n_peers, topology=topology, origin=origin)
        spec = TaskSpec(origin.url("demo/blob"), digest)
        t0 = time.monotonic()
        downloads = [p.start_download(spec) for p in cluster.peers]
        finish: list[float | None] = [None] * n_peers
        async with trio.open_nursery() as waiters:
            for i, d in enumerate(downloads):
                async def wait(i: int = i, d: Any = d) -> None:
                    await d.finished.wait()
                    finish[i] = time.monotonic() - t0
                waiters.start_soon(wait)
            if progress:
                waiters.start_soon(_show_progress, downloads, finish)
        seconds = time.monotonic() - t0
        copies = []
        for peer, d in zip(cluster.peers, downloads, strict=True):
            ok = d.complete and d.sealed is not None
            got = await _copy_digest(peer, d.sealed.chunks) if ok and d.sealed else None
            copies.append((peer, d, got))
        nursery.cancel_scope.cancel()
    completed = sum(1 for _, d, _ in copies if d.complete)
    verified = completed == n_peers and all(got == str(digest) for _, _, got in copies)
    return {
        "peers": n_peers,
        "completed": completed,
        "verified": verified,
        "digest": str(digest),
        "blob_bytes": size,
        "origin_bytes": origin.bytes_sent,
        "bytes_from_peers": sum(d.stats.bytes_from_peers for _, d, _ in copies),
        "bytes_from_origin_by_peers": sum(d.stats.bytes_from_origin for _, d, _ in copies),
        "seconds": round(seconds, 3),
        "topology": topology,
        "per_peer": [{
            "peer_id": p.peer_id, "state": d.summary()["state"], "finish_s": round(f, 3) if f else None,
            "bytes_from_peers": d.stats.bytes_from_peers, "bytes_from_origin": d.stats.bytes_from_origin,
            "verified": got == str(digest),
            "error": d.error.message if d.error else None,
        } for (p, d, got), f in zip(copies, finish, strict=True)],
    }


async def _show_progress(downloads: list[Any], finish: list[float | None]) -> None:
    while not all(f is not None for f in finish):
        total = sum(d.total or 0 for d in downloads) or 1
        held = sum(len(d.held) for d in downloads)
        done = sum(1 for f in finish if f is not None)
        print(f"\r  {held * 100 // total:3d}% of chunks held, {done}/{len(downloads)} peers done",
              end="", file=sys.stderr, flush=True)
        await trio.sleep(0.25)
    print("\r" + " " * 60 + "\r", end="", file=sys.stderr)


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"p2pdist demo: {r['peers']} peers, {format_size(r['blob_bytes'])} blob, {r['topology']} topology",
        f"  completed        {r['completed']}/{r['peers']}",
        f"  verified         {'yes, every copy matches ' + r['digest'][:19] + '…' if r['verified'] else 'NO'}",
        f"  time             {r['seconds']:.2f} s",
        f"  origin sent      {format_size(r['origin_bytes'])} "
        f"({r['origin_bytes'] / max(r['blob_bytes'], 1):.2f}x the blob)",
        f"  from peers       {format_size(r['bytes_from_peers'])}",
    ]
    for p in r["per_peer"]:
        mark = "ok" if p["verified"] else f"FAILED {p['error'] or ''}"
        lines.append(f"    {p['peer_id']:<8} {p['finish_s'] or 0:6.2f} s  "
                     f"peers {format_size(p['bytes_from_peers']):>10}  origin {format_size(p['bytes_from_origin']):>10}  {mark}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise BadRequest(f"--size: {exc}") from exc
    if not 0 < size <= MAX_DEMO_SIZE:
        raise BadRequest(f"--size must be between 1 byte and {format_size(MAX_DEMO_SIZE)}")
    if not 1 <= args.peers <= MAX_DEMO_PEERS:
        raise BadRequest(f"--peers must be between 1 and {MAX_DEMO_PEERS}")
    root = Path(tempfile.mkdtemp(prefix="p2pdist-demo-"))
    try:
        report = trio.run(demo, args.peers, size, args.topology, root,
                          not args.json and sys.stderr.isatty())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["verified"] else 1
