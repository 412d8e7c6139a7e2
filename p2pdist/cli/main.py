"""The ``p2pdist`` command line: argument parsing, progress and output only.

Exit codes: 0 success; 1 the operation failed (the message names why); 2 bad usage or
bad configuration. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from p2pdist import __version__
from p2pdist.core.errors import ConfigError, P2PError, p2p_error_in

DEFAULT_DAEMON = "http://127.0.0.1:7401"
DEFAULT_TRACKER = "http://127.0.0.1:7400"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="TOML config file ([tracker] or [peer] section)")
    p.add_argument("--listen", metavar="H:P", help="address to listen on")
    p.add_argument("--data-dir", metavar="D", help="where chunks and chunk maps are kept")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"], help="json: one object per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pdist", description="Peer-to-peer distribution of container layers and large blobs.")
    parser.add_argument("--version", action="version", version=f"p2pdist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tracker", help="run a tracker")
    _common(p)
    p.add_argument("--advertise", metavar="H:P", help="address peers use to fetch chunks from this tracker")
    p.add_argument("--topology", choices=["tree", "swarm"])

    p = sub.add_parser("peer", help="run a peer daemon (chunk server, local API)")
    _common(p)
    p.add_argument("--tracker", action="append", metavar="URL", help="tracker URL (repeatable: fail-over order)")
    p.add_argument("--advertise", metavar="H:P", help="address other peers use to reach this one")
    p.add_argument("--zone", help="locality label (rack, zone) for neighbour choice")
    p.add_argument("--capacity", metavar="SIZE", help="store capacity, e.g. 20GiB (LRU eviction past it)")
    p.add_argument("--upstream", action="append", metavar="HOST=URL",
                   help="registry mirror upstream, e.g. docker.io=http://127.0.0.1:5101 (repeatable; the first is the default)")

    p = sub.add_parser("get", help="download a URL through the swarm (dfget-style)")
    p.add_argument("url")
    p.add_argument("-O", "--output", required=True, metavar="FILE", help="where to write the verified file")
    p.add_argument("--digest", metavar="sha256:HEX", help="expected digest of the whole file")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'K: V'", help="header sent to the origin (repeatable)")
    p.add_argument("--node", metavar="H:P,…", help="peers to fetch from directly, comma-separated")
    p.add_argument("--daemon", metavar="URL", help=f"local peer daemon to go through (default: {DEFAULT_DAEMON} when it answers)")
    p.add_argument("--tracker", action="append", metavar="URL", help="tracker URL, when no daemon runs (repeatable)")
    p.add_argument("--data-dir", metavar="D", help="chunk store for an in-process download (default: ~/.cache/p2pdist)")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    from p2pdist.cli import configure, preheat, pull

    pull.add_arguments(sub.add_parser("pull", help="fetch an image through the swarm and load it into Docker"))
    preheat.add_arguments(sub.add_parser("preheat", help="have peers fetch an image's layers ahead of a rollout"))
    configure.add_arguments(sub.add_parser("configure", help="wire dockerd or containerd to the peer's registry mirror"))

    p = sub.add_parser("status", help="cluster view from a tracker")
    p.add_argument("--tracker", default=DEFAULT_TRACKER, metavar="URL")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the embedded default: tracker + origin + N peers on loopback")
    p.add_argument("--peers", type=int, default=8, metavar="N")
    p.add_argument("--size", default="256MiB", metavar="SIZE")
    p.add_argument("--topology", choices=["tree", "swarm"], default="swarm")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tracker":
            from p2pdist.cli.daemons import run_tracker

            return run_tracker(args, os.environ)
        if args.command == "peer":
            from p2pdist.cli.daemons import run_peer

            return run_peer(args, os.environ)
        if args.command == "get":
            from p2pdist.cli.get import run_get

            return run_get(args)
        if args.command == "pull":
            from p2pdist.cli.pull import run_pull

            return run_pull(args)
        if args.command == "preheat":
            from p2pdist.cli.preheat import run_preheat

            return run_preheat(args)
        if args.command == "configure":
            from p2pdist.cli.configure import run_configure

            return run_configure(args)
        if args.command == "status":
            from p2pdist.cli.status import run_status

            return run_status(args)
        if args.command == "demo":
            from p2pdist.cli.demo import run_demo

            return run_demo(args)
    except ConfigError as exc:
        print(f"p2pdist: configuration error: {exc}", file=sys.stderr)
        return 2
    except (P2PError, OSError, BaseExceptionGroup) as exc:
        err = p2p_error_in(exc) or _os_error_in(exc)
        if err is None:
            raise
        print(f"p2pdist: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("p2pdist: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")


def _os_error_in(exc: BaseException) -> OSError | None:
    """An OSError (a port in use, a directory not writable) at the top is the user's to fix."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _os_error_in(exc.exceptions[0])
    return None
