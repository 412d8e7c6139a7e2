"""Health, readiness and Prometheus metrics routes shared by every service.

Each service owns its own :class:`CollectorRegistry` (several services may share a
process in tests and in ``p2pdist demo``). Label values never carry credentials: only
fixed words, peer ids and task ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from p2pdist.core.errors import Unavailable
from p2pdist.net.http import Request, Response, Router


class Metrics:
    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes_from_peers = Counter("p2pdist_bytes_from_peers", "Chunk bytes fetched from peers", registry=r)
        self.bytes_from_origin = Counter("p2pdist_bytes_from_origin", "Bytes fetched from the origin", registry=r)
        self.bytes_served = Counter("p2pdist_bytes_served", "Chunk bytes served to peers", registry=r)
        self.chunks_verified = Counter("p2pdist_chunks_verified", "Chunks whose BLAKE3 matched", registry=r)
        self.chunks_failed = Counter("p2pdist_chunks_failed", "Chunk fetches that failed", ["reason"], registry=r)
        self.chunk_refusals = Counter("p2pdist_chunk_refusals", "Chunk asks a source refused (busy, missing)",
                                      ["reason"], registry=r)
        self.asks_refused = Counter("p2pdist_chunk_asks_refused", "Chunk asks this server refused "
                                    "(missing, busy; the seed's first-copy rule: passed_on, reserved)",
                                    ["reason"], registry=r)
        self.fresh_handed = Counter("p2pdist_tracker_fresh_handed", "Fresh chunks the seed handed to a "
                                    "waiting peer (the /fresh long poll)", registry=r)
        self.fresh_received = Counter("p2pdist_fresh_received", "Fresh chunks the seed handed this peer "
                                      "unasked (verified and stored)", registry=r)
        self.back_to_source = Counter("p2pdist_back_to_source", "Chunks fetched back from the origin", registry=r)
        self.active_tasks = Gauge("p2pdist_active_tasks", "Downloads or seedings in progress", registry=r)
        self.upload_slots_in_use = Gauge("p2pdist_upload_slots_in_use", "Chunk uploads in progress", registry=r)
        self.request_seconds = Histogram("p2pdist_request_seconds", "HTTP request latency", ["route"], registry=r)
        self.peers = Gauge("p2pdist_tracker_peers", "Peers known to the tracker", registry=r)
        self.tasks = Gauge("p2pdist_tracker_tasks", "Tasks known to the tracker", registry=r)
        self.stale_peers = Gauge("p2pdist_tracker_stale_peers", "Peers whose heartbeat is late", registry=r)
        self.announces = Counter("p2pdist_tracker_announces", "Task announces handled", registry=r)
        self.mirror_requests = Counter("p2pdist_mirror_requests", "Registry mirror requests",
                                       ["kind", "status"], registry=r)
        self.mirror_blob_bytes = Counter("p2pdist_mirror_blob_bytes", "Blob bytes sent to mirror clients", registry=r)
        self.service = service


def add_health_routes(router: Router, metrics: Metrics, ready: Callable[[], Awaitable[str | None]]) -> None:
    """``ready()`` returns None when ready, else the reason it is not. Also makes the
    router time every request into ``p2pdist_request_seconds{route}``."""

    async def healthz(request: Request) -> Response:
        return Response.json({"status": "ok", "service": metrics.service})

    async def readyz(request: Request) -> Response:
        reason = await ready()
        if reason is not None:
            raise Unavailable(f"not ready: {reason}")
        return Response.json({"status": "ready", "service": metrics.service})

    async def metrics_route(request: Request) -> Response:
        return Response(200, [("content-type", CONTENT_TYPE_LATEST)], generate_latest(metrics.registry))

    router.observe = lambda route, seconds: metrics.request_seconds.labels(route).observe(seconds)
    router.route("GET", "/healthz", healthz)
    router.route("GET", "/readyz", readyz)
    router.route("GET", "/metrics", metrics_route)
