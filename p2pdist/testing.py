"""Public fixtures: an embedded origin and an in-process cluster on loopback.

Used by the tests and by ``p2pdist demo``. Everything listens on 127.0.0.1 port 0 and is
started with ``nursery.start`` — no sleeps as synchronisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import trio

from p2pdist.core.config import PeerConfig, TrackerConfig
from p2pdist.core.digest import Digest
from p2pdist.core.errors import BlobUnknown, OriginError
from p2pdist.net.http import Request, Response, Router, parse_range, serve_http
from p2pdist.peer import service as peer_service
from p2pdist.peer.service import Peer
from p2pdist.tracker import service as tracker_service
from p2pdist.tracker.service import Tracker


def make_blob(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (BLAKE3's extendable output: GB/s)."""
    return blake3.blake3(seed.to_bytes(8, "little")).digest(length=size)


def sha256_digest(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


@dataclass
class StaticOrigin:
    """An HTTP origin serving blobs from memory, with Range, counting every byte sent."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    bytes_sent: int = 0
    requests: int = 0
    port: int = 0
    piece: int = 1 << 20
    fail_after: int | None = None  # cut every response after this many bytes (a dying origin)
    delay: float = 0.0  # pause after each piece: a slow origin, so a test can act mid-seeding
    streaming: int = 0  # bodies being sent right now
    max_streaming: int = 0  # the most sent at once

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def router(self) -> Router:
        r = Router()

        async def blob(request: Request) -> Response:
            self.requests += 1
            data = self.blobs.get(request.params["path"])
            if data is None:
                raise BlobUnknown(f"no blob at {request.path}")
            rng = parse_range(request.header("range"), len(data))
            start, length = rng if rng else (0, len(data))
            headers = [("content-type", "application/octet-stream"), ("accept-ranges", "bytes")]
            status = 200
            if rng:
                status = 206
                headers.append(("content-range", f"bytes {start}-{start + length - 1}/{len(data)}"))
            if request.method == "HEAD":
                return Response(status, headers, b"", content_length=length)
            return Response(status, headers, self._pieces(data, start, length), content_length=length)

        r.route(["GET", "HEAD"], "/{path:.+}", blob)
        return r

    async def _pieces(self, data: bytes, start: int, length: int) -> AsyncIterator[bytes]:
        view = memoryview(data)
        pos, end, sent = start, start + length, 0
        self.streaming += 1
        self.max_streaming = max(self.max_streaming, self.streaming)
        try:
            while pos < end:
                n = min(self.piece, end - pos)
                if self.fail_after is not None and sent + n > self.fail_after:
                    raise OriginError("origin cut on purpose")
                self.bytes_sent += n
                sent += n
                yield bytes(view[pos:pos + n])
                pos += n
                if self.delay:
                    await trio.sleep(self.delay)
                else:
                    await trio.lowlevel.checkpoint()
        finally:
            self.streaming -= 1

    async def serve(self, *, task_status: trio.TaskStatus[StaticOrigin] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve_http, self.router(), "127.0.0.1", 0)
            task_status.started(self)


@dataclass
class Cluster:
    origin: StaticOrigin
    tracker: Tracker
    peers: list[Peer]
    tracker_scope: trio.CancelScope
    peer_scopes: list[trio.CancelScope]

    @property
    def tracker_url(self) -> str:
        """Plain HTTP: a tracker with TLS speaks both on its port."""
        return f"http://{self.tracker.advertise}"

    def kill_peer(self, i: int) -> None:
        self.peer_scopes[i].cancel()

    def kill_tracker(self) -> None:
        self.tracker_scope.cancel()


async def _scoped(scope: trio.CancelScope, fn, *args, task_status=trio.TASK_STATUS_IGNORED, **kw):  # type: ignore[no-untyped-def]
    with scope:
        await fn(*args, task_status=task_status, **kw)


async def start_peer(nursery: trio.Nursery, config: PeerConfig) -> tuple[Peer, trio.CancelScope]:
    scope = trio.CancelScope()
    peer = await nursery.start(_scoped, scope, peer_service.serve, config)
    return peer, scope


async def start_cluster(nursery: trio.Nursery, root: Path, *, peers: int = 6, topology: str = "swarm",
                        origin: StaticOrigin | None = None, peer_overrides: dict | None = None,
                        tracker_overrides: dict | None = None) -> Cluster:
    origin = origin or StaticOrigin()
    if not origin.port:
        await nursery.start(origin.serve)
    tcfg = TrackerConfig(listen="127.0.0.1:0", data_dir=str(root / "tracker"), topology=topology,
                         **(tracker_overrides or {}))
    tscope = trio.CancelScope()
    tracker = await nursery.start(_scoped, tscope, tracker_service.serve, tcfg)
    plist, scopes = [], []
    # peers with mTLS reach a tracker with it over TLS
    scheme = "https" if tracker.tls is not None and (peer_overrides or {}).get("tls_ca") else "http"
    for i in range(peers):
        pcfg = PeerConfig(listen="127.0.0.1:0", data_dir=str(root / f"peer{i}"),
                          trackers=(f"{scheme}://{tracker.advertise}",), peer_id=f"peer{i}",
                          **(peer_overrides or {}))
        p, s = await start_peer(nursery, pcfg)
        plist.append(p)
        scopes.append(s)
    return Cluster(origin, tracker, plist, tscope, scopes)
