"""Preheat: ask chosen peers to fetch an image's blobs through the swarm before a rollout.

Peers come from the tracker's ``GET /api/v1/status`` (those that announced lately); the
choice is a pure policy (:func:`choose_peers`: all, N at random, or one zone). Each chosen
peer gets ``POST /api/v1/tasks`` for every blob and is polled (``GET /api/v1/tasks/<id>``)
until it holds them all or a task fails. The tracker's single flight means the registry
still sends each blob about once, however many peers are asked.

Composition root: :func:`preheat`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from p2pdist.core.digest import Digest
from p2pdist.core.errors import BadRequest, P2PError, Unavailable
from p2pdist.core.task import TaskSpec
from p2pdist.peer.localapi import LocalApiClient, task_error
from p2pdist.peer.trackerclient import raise_for_error

POLL_EVERY = 0.5
MAX_POLL_FAILURES = 10


@dataclass(frozen=True)
class PeerInfo:
    peer_id: str
    addr: str
    zone: str


@dataclass
class BlobState:
    size: int | None = None
    held: int = 0
    state: str = "pending"  # pending | running | complete | failed
    error: str | None = None


@dataclass
class PeerProgress:
    peer: PeerInfo
    blobs: dict[Digest, BlobState] = field(default_factory=dict)
    error: str | None = None  # the peer itself failed (unreachable)

    @property
    def done(self) -> bool:
        return self.error is not None or all(b.state in ("complete", "failed") for b in self.blobs.values())

    @property
    def ok(self) -> bool:
        return self.error is None and all(b.state == "complete" for b in self.blobs.values())

    def failures(self) -> list[str]:
        if self.error is not None:
            return [self.error]
        return [f"{d}: {b.error or b.state}" for d, b in self.blobs.items() if b.state != "complete"]


def parse_peers(status: Any) -> list[PeerInfo]:
    """The peers in a tracker's ``/api/v1/status`` document."""
    peers = status.get("peers") if isinstance(status, dict) else None
    if not isinstance(peers, list):
        raise Unavailable("tracker status has no peers list")
    out = []
    for p in peers:
        if isinstance(p, dict) and isinstance(p.get("addr"), str) and p["addr"]:
            out.append(PeerInfo(str(p.get("peer_id", p["addr"])), p["addr"], str(p.get("zone") or "")))
    return out


def choose_peers(peers: Sequence[PeerInfo], *, count: int | None = None, zone: str | None = None,
                 rng: random.Random) -> list[PeerInfo]:
    """All peers (default), ``count`` of them at random, or those in ``zone``."""
    if count is not None and zone is not None:
        raise BadRequest("choose --count or --zone, not both")
    if zone is not None:
        chosen = [p for p in peers if p.zone == zone]
        if not chosen:
            zones = sorted({p.zone or '""' for p in peers})
            raise BadRequest(f"no peer in zone {zone!r} (zones: {', '.join(zones) or 'none'})")
        return chosen
    if count is not None:
        if count <= 0:
            raise BadRequest("--count must be positive")
        if count > len(peers):
            raise BadRequest(f"--count {count}: the tracker knows only {len(peers)} peers")
        return rng.sample(list(peers), count)
    if not peers:
        raise BadRequest("the tracker knows no peers (have they announced yet?)")
    return list(peers)


async def tracker_peers(trackers: Sequence[str], client: httpx.AsyncClient) -> list[PeerInfo]:
    """The peers of the first tracker that answers."""
    last: Exception | None = None
    for url in trackers:
        try:
            r = await client.get(f"{url.rstrip('/')}/api/v1/status")
            raise_for_error(r, f"tracker {url}")
            return parse_peers(r.json())
        except (httpx.HTTPError, ValueError, P2PError) as exc:
            last = exc
    raise Unavailable(f"no tracker answered ({', '.join(trackers)}): {last}")


async def preheat(specs: dict[Digest, TaskSpec], peers: Sequence[PeerInfo], *,
                  on_progress: Callable[[list[PeerProgress]], None] | None = None,
                  client: httpx.AsyncClient | None = None, poll_every: float = POLL_EVERY,
                  timeout: float | None = None, peer_scheme: str = "http") -> list[PeerProgress]:
    """Have every peer in ``peers`` fetch every blob in ``specs``; return each peer's final
    progress (look at ``ok``/``failures()``). Never raises for one peer's failure.
    ``peer_scheme``: https for a cluster with mTLS (``client`` then carries the certificate)."""
    own = client is None
    client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
    progress = [PeerProgress(p, {d: BlobState() for d in specs}) for p in peers]
    try:
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            async with trio.open_nursery() as nursery:
                for pp in progress:
                    nursery.start_soon(_drive, pp, specs, LocalApiClient(f"{peer_scheme}://{pp.peer.addr}", client=client),
                                       poll_every)
                if on_progress is not None:
                    async def report() -> None:
                        while True:
                            on_progress(progress)
                            if all(pp.done for pp in progress):
                                return
                            await trio.sleep(poll_every)
                    nursery.start_soon(report)
        if scope.cancelled_caught:
            for pp in progress:
                for b in pp.blobs.values():
                    if b.state not in ("complete", "failed"):
                        b.state, b.error = "failed", f"not complete after {timeout}s"
        if on_progress is not None:
            on_progress(progress)
        return progress
    finally:
        if own:
            await client.aclose()


async def _drive(pp: PeerProgress, specs: dict[Digest, TaskSpec], api: LocalApiClient, poll_every: float) -> None:
    try:
        for digest, spec in specs.items():
            _apply(pp.blobs[digest], await api.start_task(spec))
    except P2PError as exc:
        pp.error = f"{pp.peer.addr}: {exc}"
        return
    failures = 0
    while not pp.done:
        await trio.sleep(poll_every)
        for digest, spec in specs.items():
            b = pp.blobs[digest]
            if b.state in ("complete", "failed"):
                continue
            try:
                _apply(b, await api.task(spec.task_id))
                failures = 0
            except P2PError as exc:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    pp.error = f"{pp.peer.addr}: {exc}"
                    return


def _apply(b: BlobState, summary: dict[str, Any]) -> None:
    size, held, total = summary.get("size"), summary.get("chunks_held") or 0, summary.get("chunks_total")
    b.size = size if isinstance(size, int) else b.size
    state = summary.get("state")
    if state == "complete":
        b.state, b.held = "complete", b.size or 0
    elif state == "failed":
        err = task_error(summary)
        b.state, b.error = "failed", str(err) if err else "failed"
    else:
        b.state = "running"
        if isinstance(b.size, int) and isinstance(total, int) and total:
            b.held = b.size * held // total
