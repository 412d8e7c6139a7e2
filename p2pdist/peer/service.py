"""The peer daemon: chunk server, download engine, local API.

HTTP surface (one port):

    GET  /chunks/<blake3>        chunk fast path (sendfile; 404 absent; 503 slots full)
    GET  /maps/<task>            a sealed chunk map this peer holds completely
    POST /api/v1/fetch           {url, digest?, headers?, nodes?} -> the blob's bytes, in
                                 order, streamed as chunks land (the CLI's daemon path)
    POST /api/v1/tasks           {url, digest?, headers?} -> start a download, return at once
    GET  /api/v1/tasks/<task>    a download's progress and where its bytes came from
    GET  /api/v1/status          this peer: id, version, tasks
    GET  /healthz /readyz /metrics

Composition root: :func:`serve`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import secrets
import socket
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from p2pdist import __version__
from p2pdist.backend.origin import HttpOrigin, Origin
from p2pdist.backend.registry import RegistryClient
from p2pdist.core.config import LIVE_KEYS, PeerConfig, changed_keys, split_hostport
from p2pdist.core.errors import BadRequest, BlobUnknown, P2PError, TaskUnknown, Unavailable
from p2pdist.core.task import TaskSpec
from p2pdist.net.auth import ComponentAuth, token_headers
from p2pdist.net.chunkclient import ChunkClient
from p2pdist.net.chunkserver import UploadSlots, make_chunk_handler
from p2pdist.net.http import Request, Response, Router, advertise_addr, serve_http
from p2pdist.net.observe import Metrics, add_health_routes
from p2pdist.net.throttle import TokenBucket
from p2pdist.peer.download import BufferPool, Download, Env
from p2pdist.peer.trackerclient import TrackerClient
from p2pdist.proxy.mirror import Mirror
from p2pdist.storage.chunkstore import ChunkStore
from p2pdist.wire.tracker import (
    Announce,
    Heartbeat,
    TaskHave,
    decode_register,
    parse_task_id,
)

log = logging.getLogger("p2pdist.peer")

MIN_ANNOUNCE_GAP = 0.1
_NODE = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,300}")


class Peer:
    def __init__(self, config: PeerConfig, store: ChunkStore, origin: Origin, *,
                 advertise: str, metrics: Metrics, rng: random.Random | None = None):
        self.config = config
        self.store = store
        self.advertise = advertise
        self.metrics = metrics
        self.peer_id = config.peer_id or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.downloads: dict[str, Download] = {}
        self.slots = UploadSlots(config.upload_slots)
        metrics.upload_slots_in_use.set_function(lambda: self.slots.in_use)
        self.upload_bucket = TokenBucket(config.upload_rate)
        self.download_bucket = TokenBucket(config.download_rate)
        self._started = time.monotonic()
        self._last_vitals = (self._started, sum(os.times()[:2]), 0.0, 0.0)
        self._announce_now = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.tls = config.cluster_tls()  # mTLS: to every peer and https:// tracker, and on our port
        client_tls = self.tls.client if self.tls is not None else None
        self.trackers = (TrackerClient(config.trackers, headers=token_headers(config.cluster_secret),
                                       tls=client_tls)
                         if config.trackers else None)
        self.env = Env(
            config=config, store=store, origin=origin,
            chunks=ChunkClient(headers=token_headers(config.cluster_secret), throttle=self.download_bucket,
                               tls=client_tls),
            trackers=self.trackers, metrics=metrics,
            buffers=BufferPool(config.max_in_flight + 2), limiter=trio.CapacityLimiter(4),
            request_announce=self._announce_now.set, peer_id=self.peer_id,
            rng=rng or random.Random(), tls=client_tls)
        self.registries = {host: RegistryClient(url) for host, url in config.upstream_map().items()}
        self.mirror = Mirror(self.registries, self.start_download, metrics,
                             auth_ttl=config.auth_cache_ttl, tag_ttl=config.tag_cache_ttl) if self.registries else None

    # -- downloads ------------------------------------------------------------------------

    def start_download(self, spec: TaskSpec, *, nodes: Sequence[str] = ()) -> Download:
        """Single flight per task: join the running (or completed) download, or start one."""
        d = self.downloads.get(spec.task_id)
        if d is not None and d.error is None:
            return d
        d = Download(self.env, spec, nodes=nodes)
        self.downloads[spec.task_id] = d
        assert self._nursery is not None
        self._nursery.start_soon(d.run)
        return d

    async def announcer(self) -> None:
        """One loop announces every task this peer takes part in (batched), fast while a
        download runs, and hands each download its neighbours."""
        assert self.trackers is not None
        interval = 5.0
        while True:
            self._announce_now = trio.Event()
            self.env.request_announce = self._announce_now.set
            tasks = [TaskHave(d.task_id, d.have_bitmap(), d.complete)
                     for d in self.downloads.values() if d.error is None and d.mode in ("swarm", "cached", "nodes", "origin")
                     and (d.hashes or d.complete)]
            running = any(not d.finished.is_set() for d in self.downloads.values())
            waiting = [d for d in self.downloads.values() if d.mode == "swarm" and not d.finished.is_set()]
            for d in waiting:
                if not any(t.task_id == d.task_id for t in tasks):
                    tasks.append(TaskHave(d.task_id, "", False))
            # announce even with no tasks: an idle peer must still be listed by the tracker
            # (``preheat`` picks its targets from the tracker's peer list)
            try:
                reply = await self.trackers.announce(Announce(self.peer_id, self.advertise, self.config.zone, tuple(tasks)))
            except P2PError as exc:
                log.warning("announce failed: %s", exc)
            else:
                interval = reply.interval
                for tid, ns in reply.neighbours.items():
                    d = self.downloads.get(tid)
                    if d is not None and not d.finished.is_set():
                        d.on_neighbours(ns)
            wait = self.config.announce_interval if running else interval
            with trio.move_on_after(wait):
                await self._announce_now.wait()
            await trio.sleep(MIN_ANNOUNCE_GAP)

    def apply_config(self, new: PeerConfig) -> set[str]:
        """Apply what can change while running (``LIVE_KEYS``) without dropping transfers;
        return the changed keys that need a restart (their old values stay in force).
        Downloads already running keep the limits they started with."""
        changed = changed_keys(self.config, new)
        restart = changed - LIVE_KEYS[PeerConfig]
        merged = dataclasses.replace(self.config, **{k: getattr(new, k) for k in changed - restart})
        self.config = self.env.config = merged
        self.upload_bucket.rate = merged.upload_rate
        self.download_bucket.rate = merged.download_rate
        self.slots.slots = merged.upload_slots
        if self.mirror is not None:
            self.mirror.auth_ttl, self.mirror.tag_ttl = merged.auth_cache_ttl, merged.tag_cache_ttl
        return restart

    def vitals(self, now: float) -> Heartbeat:
        """This peer as its heartbeat reports it; rates are averaged since the last call."""
        cpu = sum(os.times()[:2])
        sent = self._counter("p2pdist_bytes_served_total")
        got = self._counter("p2pdist_bytes_from_peers_total") + self._counter("p2pdist_bytes_from_origin_total")
        last_now, last_cpu, last_sent, last_got = self._last_vitals
        dt = max(now - last_now, 1e-6)
        self._last_vitals = (now, cpu, sent, got)
        stats = self.store.statistics()
        return Heartbeat(
            self.peer_id, self.advertise, __version__, self.config.zone,
            uptime_s=round(now - self._started, 1), cpu_percent=round(100 * (cpu - last_cpu) / dt, 1),
            rss_bytes=_rss_bytes(), disk_used_bytes=stats.used, disk_quota_bytes=stats.capacity,
            upload_bps=round((sent - last_sent) / dt), download_bps=round((got - last_got) / dt),
            active_tasks=sum(1 for d in self.downloads.values() if not d.finished.is_set()))

    def _counter(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0

    async def heartbeater(self) -> None:
        """Report this peer to the tracker every ``heartbeat_interval`` (the first at once)."""
        assert self.trackers is not None
        while True:
            try:
                await self.trackers.heartbeat(self.vitals(time.monotonic()))
            except P2PError as exc:
                log.warning("heartbeat failed: %s", exc)
            await trio.sleep(self.config.heartbeat_interval)

    def status(self) -> dict[str, Any]:
        stats = self.store.statistics()
        return {"service": "peer", "peer_id": self.peer_id, "version": __version__,
                "addr": self.advertise, "zone": self.config.zone,
                "uptime_s": round(time.monotonic() - self._started, 1), "rss_bytes": _rss_bytes(),
                "store": {"chunks": stats.chunks, "used": stats.used, "capacity": stats.capacity},
                "upload_slots": {"in_use": self.slots.in_use, "total": self.slots.slots},
                "tasks": [d.summary() for d in self.downloads.values()]}

    # -- HTTP -----------------------------------------------------------------------------

    def router(self) -> Router:
        r = Router()

        def spec_and_nodes(body: Any) -> tuple[TaskSpec, list[str]]:
            spec = decode_register(body)
            nodes = body.get("nodes", []) if isinstance(body, dict) else []
            if not isinstance(nodes, list) or len(nodes) > 64 or not all(
                    isinstance(n, str) and _valid_node(n) for n in nodes):
                raise BadRequest("nodes must be a list of at most 64 HOST:PORT strings", code="BODY_INVALID")
            return spec, nodes

        async def fetch(request: Request) -> Response:
            spec, nodes = spec_and_nodes(await request.json(64 * 1024))
            d = self.start_download(spec, nodes=nodes)
            size = await d.wait_size()
            return Response(200, [("content-type", "application/octet-stream"),
                                  ("x-p2pdist-task-id", d.task_id)],
                            d.iter_files(), content_length=size)

        async def start(request: Request) -> Response:
            spec, nodes = spec_and_nodes(await request.json(64 * 1024))
            return Response.json(self.start_download(spec, nodes=nodes).summary(), 202)

        async def task(request: Request) -> Response:
            d = self.downloads.get(parse_task_id(request.params["task_id"]))
            if d is None:
                raise TaskUnknown(f"this peer has no task {request.params['task_id']}")
            return Response.json(d.summary())

        async def get_map(request: Request) -> Response:
            task_id = parse_task_id(request.params["task_id"])
            cmap = await self.store.complete_map(task_id)
            if cmap is None:
                raise BlobUnknown(f"this peer holds no complete blob for task {task_id}")
            return Response(200, [("content-type", "application/json")], cmap.to_json())

        async def get_have(request: Request) -> Response:
            # a neighbour's have poll (have_poll_interval): what this peer holds of a task
            task_id = parse_task_id(request.params["task_id"])
            d = self.downloads.get(task_id)
            if d is None or d.error is not None:
                raise TaskUnknown(f"this peer has no task {task_id}")
            return Response.json({"have": d.have_bitmap()})

        async def status(request: Request) -> Response:
            return Response.json(self.status())

        auth = ComponentAuth(self.config.cluster_secret, mtls=self.tls is not None)
        r.route("GET", "/chunks/{name}", auth.guard(make_chunk_handler(
            self.store, self.slots, compression=self.config.wire_compression == "auto",
            on_served=self.metrics.bytes_served.inc, throttle=self.upload_bucket,
            refused=lambda reason: self.metrics.asks_refused.labels(reason).inc())))
        r.route("GET", "/maps/{task_id}", auth.guard(get_map))
        r.route("GET", "/have/{task_id}", auth.guard(get_have))
        # the local API: the CLI on this node, or the operator's tools with the secret or a certificate
        r.route("POST", "/api/v1/fetch", auth.guard(fetch, allow_loopback=True))
        r.route("POST", "/api/v1/tasks", auth.guard(start, allow_loopback=True))
        r.route("GET", "/api/v1/tasks/{task_id}", auth.guard(task, allow_loopback=True))
        r.route("GET", "/api/v1/status", auth.guard(status, allow_loopback=True))

        async def ready() -> str | None:
            try:
                await trio.Path(self.store.root, "tmp").stat()
            except OSError as exc:
                return f"store not usable: {exc.strerror}"
            if self.trackers is None or self.config.back_to_source:
                return None
            try:
                await self.trackers.status()
            except Unavailable:
                return "no tracker reachable and back_to_source is off"
            return None

        if self.mirror is not None:
            self.mirror.add_routes(r)
        add_health_routes(r, self.metrics, ready)
        return r


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _valid_node(n: str) -> bool:
    return _NODE.fullmatch(n) is not None and n.rpartition(":")[2].isdigit()


async def serve(config: PeerConfig, *, origin: Origin | None = None,
                task_status: trio.TaskStatus[Peer] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a peer until cancelled; ``task_status.started(peer)`` once it listens."""
    store = await ChunkStore.open(config.data_dir, capacity=config.capacity, direct_io=config.direct_io)
    own_origin = origin is None
    origin = origin or HttpOrigin()
    host, port = split_hostport(config.listen)
    peer = Peer(config, store, origin, advertise="", metrics=Metrics("peer"))
    try:
        async with trio.open_nursery() as nursery:
            peer._nursery = nursery
            bound = await nursery.start(partial(serve_http, peer.router(), host, port,
                                                tls=peer.tls.server if peer.tls is not None else None))
            peer.advertise = advertise_addr(config.listen, bound, config.advertise)
            if peer.trackers is not None:
                nursery.start_soon(peer.announcer)
                nursery.start_soon(peer.heartbeater)
            log.info("peer %s listening on %s (advertised as %s)", peer.peer_id, config.listen, peer.advertise)
            task_status.started(peer)
    finally:
        with trio.CancelScope(shield=True):
            await peer.env.chunks.aclose()
            if peer.trackers is not None:
                await peer.trackers.aclose()
            for registry in peer.registries.values():
                await registry.aclose()
            if own_origin:
                await origin.aclose()  # type: ignore[attr-defined]
