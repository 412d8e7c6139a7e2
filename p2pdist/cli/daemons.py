"""``p2pdist tracker`` and ``p2pdist peer``: build the config, run the service until
interrupted."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable, Mapping
from typing import Any

import trio

from p2pdist.cli.logs import setup_logging
from p2pdist.core.config import PeerConfig, TrackerConfig, load_config


async def _run_until_signal(serve: Callable[..., Any], config: Any) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(serve, config)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def run_tracker(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from p2pdist.tracker.service import serve

    cfg = load_config(TrackerConfig, path=args.config, env=env, overrides={
        "listen": args.listen, "data_dir": args.data_dir, "log_level": args.log_level, "log_format": args.log_format,
        "advertise": args.advertise, "topology": args.topology})
    setup_logging(cfg.log_level, cfg.log_format)
    trio.run(_run_until_signal, serve, cfg)
    return 0


def run_peer(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from p2pdist.peer.service import serve

    cfg = load_config(PeerConfig, path=args.config, env=env, overrides={
        "listen": args.listen, "data_dir": args.data_dir, "log_level": args.log_level, "log_format": args.log_format,
        "trackers": args.tracker, "advertise": args.advertise, "zone": args.zone,
        "capacity": args.capacity, "upstreams": args.upstream})
    setup_logging(cfg.log_level, cfg.log_format)
    trio.run(_run_until_signal, serve, cfg)
    return 0
