"""``p2pdist tracker`` and ``p2pdist peer``: build the config, run the service until
SIGINT/SIGTERM, and reload the config on SIGHUP or when the config file changes.

A reload applies the keys that can change live (``core.config.LIVE_KEYS``: rate limits,
upload slots, log level, neighbour policy …) without dropping transfers; for any other
changed key it logs that a restart is needed and keeps the running value. A reload whose
config is invalid is refused with the reason and changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import trio

from p2pdist.cli.logs import setup_logging
from p2pdist.core.config import PeerConfig, TrackerConfig, load_config
from p2pdist.core.errors import ConfigError

log = logging.getLogger("p2pdist.config")
WATCH_INTERVAL = 2.0


def _mtime(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


async def _run(serve: Callable[..., Any], config: Any, load: Callable[[], Any], path: str | None) -> None:
    async with trio.open_nursery() as nursery:
        service = await nursery.start(serve, config)

        def reload(why: str) -> None:
            try:
                new = load()
            except ConfigError as exc:
                log.error("config reload (%s) refused, nothing changed: %s", why, exc)
                return
            setup_logging(new.log_level, new.log_format)
            restart = service.apply_config(new)
            log.info("config reloaded (%s)", why)
            if restart:
                log.warning("config keys %s changed but need a restart; the running values stay",
                            ", ".join(sorted(restart)))

        async def watch_file() -> None:
            seen = _mtime(path)
            while True:
                await trio.sleep(WATCH_INTERVAL)
                now = _mtime(path)
                if now is not None and now != seen:
                    seen = now
                    reload(f"{path} changed")

        if path is not None:
            nursery.start_soon(watch_file)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reload("SIGHUP")
                    continue
                nursery.cancel_scope.cancel()
                break


def run_tracker(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from p2pdist.tracker.service import serve

    load = partial(load_config, TrackerConfig, path=args.config, env=env, overrides={
        "listen": args.listen, "data_dir": args.data_dir, "log_level": args.log_level,
        "log_format": args.log_format, "advertise": args.advertise, "topology": args.topology})
    cfg = load()
    setup_logging(cfg.log_level, cfg.log_format)
    trio.run(_run, serve, cfg, load, args.config)
    return 0


def run_peer(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from p2pdist.peer.service import serve

    load = partial(load_config, PeerConfig, path=args.config, env=env, overrides={
        "listen": args.listen, "data_dir": args.data_dir, "log_level": args.log_level,
        "log_format": args.log_format, "trackers": args.tracker, "advertise": args.advertise,
        "zone": args.zone, "capacity": args.capacity, "upstreams": args.upstream})
    cfg = load()
    setup_logging(cfg.log_level, cfg.log_format)
    trio.run(_run, serve, cfg, load, args.config)
    return 0
