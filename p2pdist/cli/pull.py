"""``p2pdist pull IMAGE``: an image through the swarm into Docker (see ``p2pdist.shim.pull``).

Blobs go through the local peer daemon when one answers (``--daemon``, or the default
address when no ``--tracker`` is given), else through a peer run in this process. One
progress bar per blob on a terminal, nothing otherwise; the result is one line on stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import trio

from p2pdist.backend.registry import Credentials, RegistryClient
from p2pdist.cli.get import progress_bar
from p2pdist.cli.images import image_target
from p2pdist.core.digest import Digest
from p2pdist.peer.localapi import DEFAULT_DAEMON, LocalApiClient, daemon_alive, embedded_peer_config
from p2pdist.shim.loader import DockerLoader
from p2pdist.shim.pull import BlobSource, DaemonSource, PeerSource, PullResult, pull
from p2pdist.shim.reference import (
    ImageReference,
    Platform,
)
from p2pdist.shim.resolve import ResolvedImage, blob_specs, resolve_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="IMAGE[:TAG|@DIGEST], as docker names it")
    p.add_argument("--platform", metavar="OS/ARCH", help="platform to pick from a multi-arch image (default: this machine's)")
    p.add_argument("--registry", action="append", default=[], metavar="HOST=URL",
                   help="where a registry host is served, e.g. docker.io=http://127.0.0.1:5000 (repeatable)")
    p.add_argument("--daemon", metavar="URL", help=f"local peer daemon to fetch through (default: {DEFAULT_DAEMON} when it answers)")
    p.add_argument("--tracker", action="append", metavar="URL", help="tracker URL, when no daemon runs (repeatable)")
    p.add_argument("--docker-host", metavar="URL", help="Docker daemon (default: $DOCKER_HOST or the local socket)")
    p.add_argument("--data-dir", metavar="D", help="chunk store for an in-process peer (default: ~/.cache/p2pdist)")
    p.add_argument("--no-progress", action="store_true", help="never show progress bars")


def run_pull(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, format="p2pdist: %(name)s: %(message)s")
    ref, plat, url, creds = image_target(args)
    daemon = args.daemon
    if daemon is None and not args.tracker and daemon_alive(DEFAULT_DAEMON):
        daemon = DEFAULT_DAEMON
    show = not args.no_progress and sys.stderr.isatty()
    result = trio.run(pull_image, ref, plat, url, creds, daemon, args.tracker or [], args.data_dir,
                      args.docker_host, show)
    what = ", ".join(result.names) or ref.familiar_name
    how = "already present, nothing fetched" if not result.fetched else f"loaded {result.bytes_streamed} bytes"
    print(f"{what}: {result.image_id} ({how})")
    return 0


async def pull_image(ref: ImageReference, plat: Platform, url: str, creds: Credentials, daemon: str | None,
                     trackers: list[str], data_dir: str | None, docker_host: str | None,
                     show: bool) -> PullResult:
    limiter = trio.CapacityLimiter(2)
    # connect first: an unreachable Docker fails before anything is fetched
    loader = await trio.to_thread.run_sync(lambda: DockerLoader(docker_host), limiter=limiter)
    registry = RegistryClient(url)
    bars = _Bars(show)
    try:
        image = await resolve_image(registry, ref, plat, creds)

        async def specs_for(img: ResolvedImage) -> dict[Digest, Any]:
            return await blob_specs(registry, img, creds)

        async def run(source: BlobSource) -> PullResult:
            return await pull(image, specs_for, source, loader, limiter=limiter,
                              on_progress=bars.update if show else None)

        if daemon is not None:
            client = LocalApiClient(daemon)
            try:
                return await run(DaemonSource(client))
            finally:
                await client.aclose()
        from p2pdist.peer import service

        async with trio.open_nursery() as nursery:
            peer = await nursery.start(service.serve, embedded_peer_config(trackers, data_dir))
            result = await run(PeerSource(peer))
            nursery.cancel_scope.cancel()
        return result
    finally:
        bars.close()
        await registry.aclose()
        await trio.to_thread.run_sync(loader.close, limiter=limiter)


class _Bars:
    """One tqdm bar per blob, named like docker names layers (12 hex digits)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[Digest, Any] = {}

    def update(self, progress: dict[Digest, tuple[int, int | None]]) -> None:
        for digest, (held, size) in progress.items():
            bar = self.bars.get(digest)
            if bar is None:
                bar = progress_bar(size, self.enabled, desc=digest.hex[:12], position=len(self.bars))
                if bar is None:
                    return
                self.bars[digest] = bar
            if size is not None and bar.total != size:
                bar.total = size
            bar.update(held - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
