"""``p2pdist configure docker|containerd [--mirror URL] [--write]``: print (or write) what
wires the runtime on this node to its peer's registry mirror (``p2pdist.shim.configure``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2pdist.core.errors import BadRequest
from p2pdist.shim.configure import (
    DEFAULT_DAEMON_JSON,
    DEFAULT_HOSTS_DIR,
    DEFAULT_MIRROR,
    format_daemon_json,
    format_hosts_toml,
    hosts_toml_path,
    merge_daemon_json,
    parse_mirror,
    read_daemon_json,
    write_atomically,
)
from p2pdist.shim.reference import DOCKER_HUB


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runtime", choices=["docker", "containerd"])
    p.add_argument("--mirror", default=DEFAULT_MIRROR, metavar="URL", help=f"the peer's mirror (default: {DEFAULT_MIRROR})")
    p.add_argument("--write", action="store_true", help="write the file (atomically; daemon.json is merged) instead of printing it")
    p.add_argument("--daemon-json", default=DEFAULT_DAEMON_JSON, metavar="PATH", help=f"dockerd's config (default: {DEFAULT_DAEMON_JSON})")
    p.add_argument("--hosts-dir", default=DEFAULT_HOSTS_DIR, metavar="DIR", help=f"containerd's hosts dir (default: {DEFAULT_HOSTS_DIR})")
    p.add_argument("--registry", default=DOCKER_HUB, metavar="HOST", help="registry to mirror (default: docker.io)")


def run_configure(args: argparse.Namespace) -> int:
    mirror = parse_mirror(args.mirror)
    if args.runtime == "docker":
        if args.registry != DOCKER_HUB:
            raise BadRequest("dockerd's registry-mirrors apply to docker.io only; use containerd for other registries")
        path = Path(args.daemon_json)
        text = format_daemon_json(merge_daemon_json(read_daemon_json(path), mirror))
        if not args.write:
            sys.stdout.write(text)
            print(f"# merge into {path}, then reload dockerd: kill -HUP $(pidof dockerd)", file=sys.stderr)
            return 0
        write_atomically(path, text)
        print(f"wrote {path}; reload dockerd to use it: kill -HUP $(pidof dockerd)", file=sys.stderr)
        return 0
    path = hosts_toml_path(Path(args.hosts_dir), args.registry)
    text = format_hosts_toml(args.registry, mirror)
    if not args.write:
        sys.stdout.write(text)
        print(f"# save as {path}; containerd reads it per pull (CRI: config_path = \"{args.hosts_dir}\","
              " ctr: --hosts-dir)", file=sys.stderr)
        return 0
    write_atomically(path, text)
    print(f"wrote {path}", file=sys.stderr)
    return 0
