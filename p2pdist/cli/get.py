"""``p2pdist get URL -O FILE``: like dfget.

Through the local peer daemon when one answers (``--daemon``, or the default address),
else in-process: a peer engine with its own store that fetches through ``--tracker``
and ``--node`` peers and falls back to the origin. Exit 0 only with a verified file; the
output appears by an atomic rename, so an existing file is never half-overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path

import httpx
import trio

from p2pdist.core.digest import Digest
from p2pdist.core.errors import BadRequest, IntegrityError, P2PError, Unavailable
from p2pdist.core.task import TaskSpec, normalise_url
from p2pdist.net.auth import token_headers
from p2pdist.peer.localapi import (
    DEFAULT_DAEMON,
    cluster_secret,
    cluster_tls,
    component_verify,
    daemon_alive,
    embedded_peer_config,
    task_error,
)
from p2pdist.peer.trackerclient import raise_for_error


def parse_headers(raw: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for h in raw:
        name, sep, value = h.partition(":")
        if not sep or not name.strip() or any(c in name for c in " \t"):
            raise BadRequest(f"bad header {h!r}: expected 'Name: value'")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def parse_nodes(raw: str | None) -> list[str]:
    if not raw:
        return []
    nodes = [n.strip() for n in raw.split(",") if n.strip()]
    for n in nodes:
        host, sep, port = n.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise BadRequest(f"bad --node {n!r}: expected HOST:PORT")
    return nodes


def progress_bar(total: int | None, enabled: bool, desc: str | None = None,
                 position: int | None = None):  # type: ignore[no-untyped-def]
    """A byte-counting tqdm bar on stderr, or None when disabled (not a terminal)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                dynamic_ncols=True, leave=False, desc=desc, position=position)


def run_get(args: argparse.Namespace) -> int:
    # the one-line error at exit says what failed; engine warnings would only repeat it
    logging.basicConfig(level=logging.ERROR, format="p2pdist: %(name)s: %(message)s")
    normalise_url(args.url)  # a bad URL fails here, before anything else
    digest = Digest.parse(args.digest) if args.digest else None
    spec = TaskSpec(args.url, digest, parse_headers(args.header))
    nodes = parse_nodes(args.node)
    out = Path(args.output)
    if out.is_dir():
        raise BadRequest(f"output {out} is a directory; name a file")
    if not out.parent.exists():
        raise BadRequest(f"output directory {out.parent} does not exist")
    show = not args.no_progress and sys.stderr.isatty()
    daemon = args.daemon
    if daemon is None and not args.tracker and daemon_alive(DEFAULT_DAEMON):
        daemon = DEFAULT_DAEMON
    if daemon is not None:
        got = via_daemon(daemon, spec, nodes, out, show)
    else:
        got = trio.run(in_process, spec, nodes, out, args.tracker or [], args.data_dir, show)
    print(f"{out}: {got} verified ({spec.url})", file=sys.stderr)
    return 0


def via_daemon(daemon: str, spec: TaskSpec, nodes: list[str], out: Path, show: bool) -> Digest:
    """Stream the blob from the daemon into a temp file beside ``out``, hashing as it comes;
    rename only once the digest matches."""
    from p2pdist.wire.tracker import encode_register

    body = encode_register(spec) | {"nodes": nodes}
    base = daemon.rstrip("/")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    sha = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as fh, httpx.Client(
                timeout=httpx.Timeout(10.0, read=None), headers=token_headers(cluster_secret()),
                verify=component_verify(cluster_tls())) as client:
            try:
                with client.stream("POST", f"{base}/api/v1/fetch", json=body) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise_for_error(r, f"daemon {base}")
                    task_id = r.headers.get("x-p2pdist-task-id", spec.task_id)
                    length = r.headers.get("content-length")
                    bar = progress_bar(int(length) if length else None, show)
                    n = 0
                    for piece in r.iter_raw():
                        sha.update(piece)
                        fh.write(piece)
                        n += len(piece)
                        if bar is not None:
                            bar.update(len(piece))
                    if bar is not None:
                        bar.close()
                    if length is not None and n != int(length):
                        raise IntegrityError(f"daemon sent {n} of {length} bytes")
                summary = client.get(f"{base}/api/v1/tasks/{task_id}")
                raise_for_error(summary, f"daemon {base}")
            except httpx.RemoteProtocolError as exc:
                raise _daemon_failure(client, base, spec.task_id) or Unavailable(
                    f"daemon {base} cut the transfer: {exc}") from exc
            except httpx.HTTPError as exc:
                raise Unavailable(f"daemon {base} unreachable: {exc}") from exc
        got = Digest(sha.hexdigest())
        sealed = summary.json().get("digest")
        expected = spec.digest or (Digest.parse(sealed) if sealed else None)
        if expected is None or got != expected:
            raise IntegrityError(f"downloaded bytes have digest {got}, expected {expected}")
        os.replace(tmp, out)
        return got
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _daemon_failure(client: httpx.Client, base: str, task_id: str) -> P2PError | None:
    """Why the daemon cut a transfer: the download's own error, as the daemon reports it."""
    try:
        summary = client.get(f"{base}/api/v1/tasks/{task_id}").json()
    except (httpx.HTTPError, ValueError):
        return None
    return task_error(summary) if isinstance(summary, dict) else None


async def in_process(spec: TaskSpec, nodes: list[str], out: Path, trackers: list[str],
                     data_dir: str | None, show: bool) -> Digest:
    """Run a peer engine in this process just for this download (it serves what it holds
    to the swarm while it runs), then assemble the verified file."""
    from p2pdist.peer import service

    cfg = embedded_peer_config(trackers, data_dir)
    async with trio.open_nursery() as nursery:
        peer = await nursery.start(service.serve, cfg)
        d = peer.start_download(spec, nodes=nodes)
        bar = None
        done = 0
        while not d.finished.is_set():
            if show and bar is None and d.size is not None:
                bar = progress_bar(d.size, True)
            if bar is not None:
                held = min(len(d.held) * (d.chunk_size or 0), d.size or 0)
                bar.update(held - done)
                done = held
            with trio.move_on_after(0.2):
                await d.wait_changed()
        if bar is not None:
            bar.close()
        try:
            cmap = await d.wait()
        except P2PError:
            nursery.cancel_scope.cancel()
            raise
        await peer.store.assemble(cmap, out)
        nursery.cancel_scope.cancel()
    return cmap.digest
