"""``p2pdist preheat IMAGE``: have peers fetch an image's blobs ahead of a rollout
(``p2pdist.shim.preheat``). Progress: a bar per peer on a terminal, else one line per peer
at the end. Exit 1 naming every peer and blob that did not make it."""

from __future__ import annotations

import argparse
import logging
import random
import sys
from typing import Any

import httpx
import trio

from p2pdist.backend.registry import RegistryClient
from p2pdist.cli.get import progress_bar
from p2pdist.cli.images import image_target
from p2pdist.core.errors import TaskFailed
from p2pdist.net.auth import token_headers
from p2pdist.peer.localapi import cluster_secret, cluster_tls, component_verify
from p2pdist.shim.preheat import PeerProgress, choose_peers, preheat, tracker_peers
from p2pdist.shim.resolve import blob_specs, resolve_image

DEFAULT_TRACKER = "http://127.0.0.1:7400"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="IMAGE[:TAG|@DIGEST], as docker names it")
    p.add_argument("--platform", metavar="OS/ARCH", help="platform to pick from a multi-arch image (default: this machine's)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--all", action="store_true", help="every peer the tracker knows (default)")
    who.add_argument("--count", type=int, metavar="N", help="N peers picked at random")
    who.add_argument("--zone", metavar="Z", help="the peers in zone Z")
    p.add_argument("--tracker", action="append", metavar="URL", help=f"tracker URL (repeatable; default {DEFAULT_TRACKER})")
    p.add_argument("--registry", action="append", default=[], metavar="HOST=URL",
                   help="where a registry host is served, e.g. docker.io=http://10.0.0.5:5000 (repeatable)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS", help="give up after this long (default 3600)")
    p.add_argument("--no-progress", action="store_true", help="never show progress bars")


def run_preheat(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, format="p2pdist: %(name)s: %(message)s")
    ref, plat, url, creds = image_target(args)
    show = not args.no_progress and sys.stderr.isatty()
    trackers = args.tracker or [DEFAULT_TRACKER]
    tls = cluster_tls()  # with mTLS, peers' local APIs are called over TLS with our certificate

    async def main() -> list[PeerProgress]:
        registry = RegistryClient(url)
        try:
            image = await resolve_image(registry, ref, plat, creds)
            specs = await blob_specs(registry, image, creds)
        finally:
            await registry.aclose()
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), headers=token_headers(cluster_secret()),
                                     verify=component_verify(tls)) as client:
            peers = choose_peers(await tracker_peers(trackers, client), count=args.count, zone=args.zone,
                                 rng=random.Random())
            print(f"preheating {ref} ({len(specs)} blobs, {sum(b.size for b in image.blobs)} bytes)"
                  f" on {len(peers)} peers", file=sys.stderr)
            bars = _Bars(show)
            try:
                return await preheat(specs, peers, client=client, timeout=args.timeout,
                                     on_progress=bars.update if show else None,
                                     peer_scheme="https" if tls is not None else "http")
            finally:
                bars.close()

    results = trio.run(main)
    for pp in results:
        held = sum(1 for b in pp.blobs.values() if b.state == "complete")
        print(f"{pp.peer.addr} ({pp.peer.peer_id}): {held}/{len(pp.blobs)} blobs"
              + ("" if pp.ok else " FAILED"))
    failed = [pp for pp in results if not pp.ok]
    if failed:
        detail = "; ".join(f"{pp.peer.addr}: {', '.join(pp.failures())}" for pp in failed)
        raise TaskFailed(f"preheat failed on {len(failed)} of {len(results)} peers: {detail}")
    return 0


class _Bars:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def update(self, progress: list[PeerProgress]) -> None:
        for pp in progress:
            total = sum(b.size or 0 for b in pp.blobs.values())
            held = sum(b.held for b in pp.blobs.values())
            bar = self.bars.get(pp.peer.addr)
            if bar is None:
                bar = progress_bar(total or None, self.enabled, desc=pp.peer.addr, position=len(self.bars))
                if bar is None:
                    return
                self.bars[pp.peer.addr] = bar
            if total and bar.total != total:
                bar.total = total
            bar.update(held - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

