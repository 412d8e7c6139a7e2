"""The tracker: owns each task's chunk map, seeds it from the origin once, hands out
neighbours, and serves chunks itself as the first seed.

State is soft: tasks and peers live in memory and are rebuilt from registrations and
announces after a restart; sealed maps and chunks persist in the tracker's store, so a
restarted tracker re-serves a sealed blob without going back to the origin.

Composition root: :func:`serve`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit

import trio

from p2pdist import __version__
from p2pdist.backend.origin import HttpOrigin, Origin
from p2pdist.backend.seed import seed_from_origin
from p2pdist.core.chunkmap import ChunkMap, chunk_count
from p2pdist.core.config import LIVE_KEYS, TrackerConfig, changed_keys, split_hostport
from p2pdist.core.errors import BadRequest, P2PError, TaskUnknown, p2p_error_in
from p2pdist.core.task import TaskSpec
from p2pdist.engine.firstcopy import FirstCopies
from p2pdist.engine.neighbours import NeighbourPolicy, PeerEntry, TaskPeers, choose_neighbours
from p2pdist.net.auth import ComponentAuth
from p2pdist.net.chunkserver import UploadSlots, make_chunk_handler, make_chunk_sender
from p2pdist.net.http import Request, Response, Router, advertise_addr, serve_http
from p2pdist.net.observe import Metrics, add_health_routes
from p2pdist.storage.chunkstore import ChunkStore
from p2pdist.tracker.ui import PAGE
from p2pdist.wire.tracker import (
    MAX_ANNOUNCE_BYTES,
    MAX_HEARTBEAT_BYTES,
    Announce,
    AnnounceReply,
    Heartbeat,
    MapProgress,
    Neighbour,
    decode_announce,
    decode_have,
    decode_heartbeat,
    decode_register,
    encode_have,
    parse_task_id,
)

log = logging.getLogger("p2pdist.tracker")

SEED_ID = "tracker"
MAX_WAIT = 30.0
MAP_COALESCE = 0.05  # seconds a map long poll gathers further chunks once one is new
# An announce drops a task's peers silent for peer_ttl at most this often: walking every
# peer of a 10,000-peer task on each of their announces was O(N) per answer.
EXPIRE_EVERY = 1.0
# Past this many task-announces a second the tracker nears one core's capacity (about
# 6,500, bench/RESULTS.md tracker_load) and says so, at most once a minute.
ANNOUNCE_WARN_RATE = 5000.0
ANNOUNCE_WARN_EVERY = 60.0


@dataclass
class PeerRecord:
    """What the tracker knows of one peer: where it is, when it last spoke, its last
    heartbeat. A peer whose heartbeat is older than ``stale_after`` is shown as stale."""

    addr: str
    zone: str
    last_seen: float
    last_heartbeat: float | None = None
    heartbeat: Heartbeat | None = None

    def stale(self, now: float, stale_after: float) -> bool:
        return self.last_heartbeat is None or now - self.last_heartbeat > stale_after

    def view(self, peer_id: str, now: float, stale_after: float) -> dict[str, object]:
        hb = self.heartbeat
        out: dict[str, object] = {
            "peer_id": peer_id, "addr": self.addr, "zone": self.zone,
            "last_seen_s": round(now - self.last_seen, 1),
            "last_heartbeat_s": None if self.last_heartbeat is None else round(now - self.last_heartbeat, 1),
            "stale": self.stale(now, stale_after),
        }
        if hb is not None:
            out.update({k: v for k, v in hb.to_dict().items() if k not in ("peer_id", "addr", "zone")})
        return out


@dataclass(eq=False)
class FreshWaiter:
    """One open ``/fresh`` long poll: the host asking, and the chunk handed to it."""

    host: str
    event: trio.Event = field(default_factory=trio.Event)
    got: tuple[int, str] | None = None


class AnnounceLoad:
    """Task-announces answered per second between two :meth:`over` calls (the expirer's),
    from the running total (the ``announces`` metric): the rate when it reaches
    ``ANNOUNCE_WARN_RATE`` and no warning was given within ``ANNOUNCE_WARN_EVERY``
    seconds, else None."""

    def __init__(self, now: float):
        self.total = 0.0
        self.since = now
        self.warned = float("-inf")

    def over(self, now: float, total: float) -> float | None:
        rate = (total - self.total) / max(now - self.since, 1e-9)
        self.total, self.since = total, now
        if rate >= ANNOUNCE_WARN_RATE and now - self.warned >= ANNOUNCE_WARN_EVERY:
            self.warned = now
            return rate
        return None


def _have_text(e: PeerEntry) -> str:
    """``e``'s holdings as the wire bitmap, encoded once per change: an answer lists a
    dozen neighbours, and encoding each again on every announce took an eighth of the
    tracker's time (bench/tracker_load.py). A have only grows in place (its size tells)
    or is replaced (which clears the cache)."""
    key = (len(e.have), e.complete)
    if e.wire_have is None or e.wire_have[0] != key:
        e.wire_have = (key, encode_have(e.have, e.complete))
    return e.wire_have[1]


@dataclass
class TrackerTask:
    task_id: str
    spec: TaskSpec | None  # None: known only from announces (after a tracker restart)
    peers: TaskPeers
    chunk_size: int | None = None
    size: int | None = None
    chunks: list[str] = field(default_factory=list)
    sealed: ChunkMap | None = None
    error: P2PError | None = None
    seeding: bool = False
    origin_bytes: int = 0
    created: float = 0.0
    changed: trio.Event = field(default_factory=trio.Event)
    # peers waiting for a fresh chunk (the /fresh long poll), and the first chunk that
    # may not have left the seed yet (those before it all have)
    waiters: list[FreshWaiter] = field(default_factory=list)
    fresh_from: int = 0
    expired_at: float = float("-inf")  # when its silent peers were last dropped

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @property
    def total(self) -> int | None:
        if self.sealed is not None:
            return self.sealed.n_chunks
        if self.size is not None and self.chunk_size:
            return chunk_count(self.size, self.chunk_size)
        return None

    def progress(self, offset: int) -> MapProgress:
        err = {"code": self.error.code, "message": self.error.message} if self.error else None
        return MapProgress(self.task_id, self.chunk_size, self.size, offset,
                           tuple(self.chunks[offset:]), self.total, self.sealed is not None,
                           str(self.sealed.digest) if self.sealed else None, err)


class Tracker:
    def __init__(self, config: TrackerConfig, store: ChunkStore, origin: Origin, *,
                 advertise: str, metrics: Metrics, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.store = store
        self.origin = origin
        self.advertise = advertise
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.clock = clock
        self.tasks: dict[str, TrackerTask] = {}
        self.policy = NeighbourPolicy(config.topology, fanout=config.fanout, swarm_size=config.swarm_size)
        self.fleet: dict[str, PeerRecord] = {}
        self.load = AnnounceLoad(clock())
        self.slots = UploadSlots(config.upload_slots)
        self.slots.on_release = self._dispatch_waiting
        self._waiting: set[str] = set()  # tasks with peers waiting for a fresh chunk
        metrics.upload_slots_in_use.set_function(lambda: self.slots.in_use)
        self._origin_budget: dict[str, trio.Semaphore] = {}
        self.first_copies = FirstCopies(config.seed_grace)
        self._nursery: trio.Nursery | None = None
        self.tls = config.cluster_tls()  # mTLS on our port: a verified client certificate lets a caller in

    def apply_config(self, new: TrackerConfig) -> set[str]:
        """Apply the live keys (neighbour policy, slots, timings, logging); return the
        changed keys that need a restart."""
        changed = changed_keys(self.config, new)
        restart = changed - LIVE_KEYS[TrackerConfig]
        self.config = dataclasses.replace(self.config, **{k: getattr(new, k) for k in changed - restart})
        self.policy = NeighbourPolicy(self.config.topology, fanout=self.config.fanout,
                                      swarm_size=self.config.swarm_size)
        self.slots.slots = self.config.upload_slots
        self.first_copies.grace = self.config.seed_grace
        return restart

    # -- tasks ----------------------------------------------------------------------------

    def _task(self, task_id: str) -> TrackerTask:
        task = self.tasks.get(task_id)
        if task is None:
            task = TrackerTask(task_id, None, TaskPeers(self.config.peer_ttl), created=self.clock())
            self.tasks[task_id] = task
        return task

    async def register(self, spec: TaskSpec) -> TrackerTask:
        """Single flight: the first registration of a task starts its seeding; later ones
        join it. A failed task is retried by the next registration."""
        task = self._task(spec.task_id)
        if task.spec is None or task.error is not None:
            task.spec = spec
        if task.sealed is not None or task.seeding:
            return task
        task.error = None
        task.seeding = True  # before any await: concurrent registrations must not start a second fetch
        # and the seed is a neighbour from now on: a peer whose registration joined this
        # one may announce before the seeding starts, and with no neighbour at all it
        # would fetch the first chunks from the origin (3-4 a peer in bench/lab.py, N = 16)
        self._seed_entry(task)
        existing = await self.store.complete_map(task.task_id)
        if existing is not None:
            self._adopt(task, existing)
            task.seeding = False
            return task
        task.chunks.clear()
        assert self._nursery is not None
        self._nursery.start_soon(self._seed, task)
        return task

    def _adopt(self, task: TrackerTask, cmap: ChunkMap) -> None:
        task.sealed, task.size, task.chunk_size = cmap, cmap.size, cmap.chunk_size
        task.chunks = list(cmap.chunks)
        seed = self._seed_entry(task)
        seed.have, seed.wire_have = set(range(cmap.n_chunks)), None
        task.notify()

    def _seed_entry(self, task: TrackerTask) -> PeerEntry:
        entry = task.peers.peers.get(SEED_ID)
        if entry is None:
            entry = task.peers.upsert(SEED_ID, self.advertise, "", set(), False, self.clock(), seed=True)
        return entry

    async def _seed(self, task: TrackerTask) -> None:
        assert task.spec is not None
        seed = self._seed_entry(task)
        self.metrics.active_tasks.inc()

        def on_start(size: int | None, chunk_size: int) -> None:
            task.size, task.chunk_size = size, chunk_size
            task.notify()

        def on_chunk(index: int, name: str, length: int) -> None:
            self.store.pin([name])  # while seeding; unpinned once sealed or failed
            task.chunks.append(name)
            task.origin_bytes += length
            self.metrics.bytes_from_origin.inc(length)
            seed.have.add(index)
            self.first_copies.publish(name)
            task.notify()
            self._dispatch(task)

        log.info("seeding task %s from origin", task.task_id)
        try:
            # the back-to-source budget: at most origin_concurrency fetches per origin host
            host = urlsplit(task.spec.url).netloc
            budget = self._origin_budget.setdefault(host, trio.Semaphore(self.config.origin_concurrency))
            async with budget:
                cmap = await seed_from_origin(self.origin, task.spec, self.store,
                                              on_start=on_start, on_chunk=on_chunk)
            await self.store.save_map(task.task_id, cmap)
            task.sealed, task.size = cmap, cmap.size
            seed.complete = True
            log.info("task %s sealed: %s, %d bytes, %d chunks", task.task_id, cmap.digest, cmap.size, cmap.n_chunks)
        except (P2PError, BaseExceptionGroup) as exc:
            err = p2p_error_in(exc)
            if err is None:
                raise
            log.warning("task %s failed: %s", task.task_id, err)
            task.error = err
        finally:
            self.store.unpin(task.chunks)
            self.first_copies.retire(task.chunks)
            task.seeding = False
            self._end_fresh(task)
            self.metrics.active_tasks.dec()
            task.notify()

    async def map_progress(self, task_id: str, known: int, wait: float, host: str | None = None) -> MapProgress:
        task = self.tasks.get(task_id)
        if task is None or task.spec is None:
            raise TaskUnknown(f"no such task {task_id}: register it first")
        with trio.move_on_after(min(wait, MAX_WAIT)):
            while len(task.chunks) <= known and task.sealed is None and task.error is None:
                await task.changed.wait()
        if len(task.chunks) > known and task.sealed is None and task.error is None and wait > 0:
            # coalesce: a long poll answering every 4 MiB chunk costs a round trip each;
            # gathering for a moment more keeps it to a few per second, at a small latency
            with trio.move_on_after(MAP_COALESCE):
                while task.sealed is None and task.error is None:
                    await task.changed.wait()
        prog = task.progress(min(known, len(task.chunks)))
        if host is not None and self.fresh_open(task):
            withheld = self.first_copies.withheld(task.chunks, host, self.clock(), prog.offset)
            prog = dataclasses.replace(prog, withheld=tuple(withheld))
        return prog

    # -- fresh chunks: the seed hands them out ---------------------------------------------

    async def wait_fresh(self, task_id: str, host: str, wait: float) -> tuple[int, str] | None:
        """The long poll behind ``GET /api/v1/tasks/<task>/fresh``: wait up to ``wait``
        seconds for the seed to hand ``host`` a chunk it has never sent (swarm only, while
        the blob streams in). Returns ``(index, name)`` with one of the seed's upload
        slots taken for it (the caller's response releases it), or None: nothing within
        ``wait``, or nothing will come (see :meth:`fresh_open`)."""
        task = self.tasks.get(task_id)
        if task is None or task.spec is None:
            raise TaskUnknown(f"no such task {task_id}: register it first")
        if not self.fresh_open(task):
            return None
        waiter = FreshWaiter(host)
        task.waiters.append(waiter)
        self._waiting.add(task_id)
        self._dispatch(task)
        try:
            with trio.move_on_after(min(wait, MAX_WAIT)):
                await waiter.event.wait()
        except BaseException:
            if waiter.got is not None:
                self.slots.release()
            raise
        finally:
            if waiter.got is None and waiter in task.waiters:
                task.waiters.remove(waiter)
        return waiter.got

    def fresh_open(self, task: TrackerTask) -> bool:
        """Whether the seed's first-copy rule is in force for ``task`` (swarm mode, the
        blob still streaming in): only then does it hand out fresh chunks (a ``/fresh``
        long poll may still get one) and withhold first copies from other hosts."""
        return task.seeding and self.policy.name == "swarm"

    def _dispatch(self, task: TrackerTask) -> None:
        """Hand the oldest chunks the seed has never sent to the waiting hosts with the
        fewest first copies, while upload slots are free."""
        fc = self.first_copies
        while task.waiters:
            while task.fresh_from < len(task.chunks) and not fc.unsent(task.chunks[task.fresh_from]):
                task.fresh_from += 1
            if task.fresh_from >= len(task.chunks) or not self.slots.try_acquire():
                return
            name = task.chunks[task.fresh_from]
            host = fc.pick({w.host for w in task.waiters}, self.rng)
            waiter = next(w for w in task.waiters if w.host == host)
            task.waiters.remove(waiter)
            fc.give(name, host, self.clock())
            waiter.got = (task.fresh_from, name)
            waiter.event.set()
            self.metrics.fresh_handed.inc()
            task.fresh_from += 1

    def _dispatch_waiting(self) -> None:
        for task_id in list(self._waiting):
            task = self.tasks.get(task_id)
            if task is None or not task.waiters:
                self._waiting.discard(task_id)
            else:
                self._dispatch(task)

    def _end_fresh(self, task: TrackerTask) -> None:
        for waiter in task.waiters:
            waiter.event.set()
        task.waiters.clear()
        self._waiting.discard(task.task_id)

    # -- announces ------------------------------------------------------------------------

    def announce(self, ann: Announce, host: str = "") -> AnnounceReply:
        """``host``: the announcing peer's address as the seed sees it (the first-copy
        rule tells hosts apart by it)."""
        now = self.clock()
        self._record(ann.peer_id, ann.addr, ann.zone, now)
        neighbours: dict[str, tuple[Neighbour, ...]] = {}
        for th in ann.tasks:
            task = self._task(th.task_id)
            n = task.total
            have = decode_have(th.have, n) if not th.complete else (set(range(n)) if n is not None else None)
            task.peers.upsert(ann.peer_id, ann.addr, ann.zone, have if have is not None else set(),
                              th.complete, now)
            if now - task.expired_at >= EXPIRE_EVERY:
                task.peers.expire(now)
                task.expired_at = now
            chosen = choose_neighbours(task.peers, ann.peer_id, self.policy, self.rng, now)
            # tree: a seed handed out beside the assigned parents is the last resort only
            parents = set(task.peers.parent_of.get(ann.peer_id, ())) if self.policy.name == "tree" else None
            withheld = (encode_have(self.first_copies.withheld(task.chunks, host, now))
                        if self.fresh_open(task) and any(e.seed for e in chosen) else "")
            neighbours[th.task_id] = tuple(
                Neighbour(e.peer_id, e.addr, e.zone, _have_text(e),
                          fallback=parents is not None and e.peer_id not in parents, seed=e.seed,
                          withheld=withheld if e.seed else "")
                for e in chosen)
            self.metrics.announces.inc()
        return AnnounceReply(self.config.announce_interval, neighbours)

    def _record(self, peer_id: str, addr: str, zone: str, now: float) -> PeerRecord:
        rec = self.fleet.get(peer_id)
        if rec is None:
            rec = self.fleet[peer_id] = PeerRecord(addr, zone, now)
        rec.addr, rec.zone, rec.last_seen = addr, zone, now
        return rec

    def heartbeat(self, hb: Heartbeat) -> None:
        now = self.clock()
        rec = self._record(hb.peer_id, hb.addr, hb.zone, now)
        rec.heartbeat, rec.last_heartbeat = hb, now

    def expire(self) -> None:
        now = self.clock()
        rate = self.load.over(now, self.metrics.registry.get_sample_value("p2pdist_tracker_announces_total") or 0.0)
        if rate is not None:
            log.warning("answering %.0f task-announces a second, near what one tracker core sustains (about 6,500): "
                        "with tasks this large, set the peers' have_poll_interval and a longer announce_interval "
                        "(README, peer settings)", rate)
        for task in self.tasks.values():
            task.peers.expire(now)
        forget_after = max(self.config.peer_ttl, 3 * self.config.stale_after)
        for pid, rec in list(self.fleet.items()):
            if now - rec.last_seen > forget_after:
                del self.fleet[pid]
        self.metrics.peers.set(len(self.fleet))
        self.metrics.stale_peers.set(sum(rec.stale(now, self.config.stale_after) for rec in self.fleet.values()))
        self.metrics.tasks.set(len(self.tasks))

    def status(self) -> dict[str, object]:
        now = self.clock()
        return {
            "service": "tracker", "version": __version__, "topology": self.config.topology,
            "peers": [rec.view(pid, now, self.config.stale_after) for pid, rec in sorted(self.fleet.items())],
            "tasks": [{
                "task_id": t.task_id, "digest": str(t.sealed.digest) if t.sealed else None,
                "size": t.size, "chunks_published": len(t.chunks), "chunks_total": t.total,
                "sealed": t.sealed is not None, "error": t.error.message if t.error else None,
                "origin_bytes": t.origin_bytes,
                "peers": len([p for p in t.peers.peers.values() if not p.seed]),
                "complete_peers": len([p for p in t.peers.peers.values() if p.complete and not p.seed]),
            } for t in self.tasks.values() if t.spec is not None],
        }

    # -- HTTP -----------------------------------------------------------------------------

    def router(self) -> Router:
        r = Router()

        async def register(request: Request) -> Response:
            spec = decode_register(await request.json(64 * 1024))
            task = await self.register(spec)
            return Response.json({"task_id": task.task_id,
                                  "state": "failed" if task.error else "sealed" if task.sealed else "seeding"})

        async def get_map(request: Request) -> Response:
            task_id = parse_task_id(request.params["task_id"])
            known = _int_arg(request, "known", 0)
            wait = float(_int_arg(request, "wait", 0))
            host = request.client[0] if request.client else ""
            return Response.json((await self.map_progress(task_id, known, wait, host)).to_dict())

        send_chunk = make_chunk_sender(self.store, self.slots, on_served=self.metrics.bytes_served.inc)

        async def fresh(request: Request) -> Response:
            task_id = parse_task_id(request.params["task_id"])
            wait = float(_int_arg(request, "wait", 0))
            host = request.client[0] if request.client else ""
            got = await self.wait_fresh(task_id, host, wait)
            if got is None:
                # "end": this task's seed hands out nothing more; else ask again
                task = self.tasks.get(task_id)
                more = task is not None and self.fresh_open(task)
                return Response(204, [("x-fresh", "wait" if more else "end")])
            index, name = got
            return await send_chunk(name, request, [("x-chunk-index", str(index)), ("x-chunk-name", name)])

        async def announce(request: Request) -> Response:
            ann = decode_announce(await request.json(MAX_ANNOUNCE_BYTES))
            host = request.client[0] if request.client else ""
            return Response.json(self.announce(ann, host).to_dict())

        async def status(request: Request) -> Response:
            return Response.json(self.status())

        async def heartbeat(request: Request) -> Response:
            self.heartbeat(decode_heartbeat(await request.json(MAX_HEARTBEAT_BYTES)))
            return Response.json({"stale_after": self.config.stale_after})

        auth = ComponentAuth(self.config.cluster_secret, mtls=self.tls is not None)
        r.route("POST", "/api/v1/tasks", auth.guard(register))
        r.route("GET", "/api/v1/tasks/{task_id}/map", auth.guard(get_map))
        r.route("GET", "/api/v1/tasks/{task_id}/fresh", auth.guard(fresh))
        r.route("POST", "/api/v1/announce", auth.guard(announce))
        r.route("POST", "/api/v1/heartbeat", auth.guard(heartbeat))
        r.route("GET", "/api/v1/status", status)  # the read-only fleet view, as /ui shows it

        async def ui(request: Request) -> Response:
            return Response.text(PAGE, content_type="text/html; charset=utf-8")

        r.route("GET", "/ui", ui)
        def admit(name: str, request: Request) -> None:
            if self.policy.name == "swarm":
                host = request.client[0] if request.client else ""
                self.first_copies.admit(name, host, self.clock())

        r.route("GET", "/chunks/{name}", auth.guard(make_chunk_handler(
            self.store, self.slots, on_served=self.metrics.bytes_served.inc, admit=admit,
            refused=lambda reason: self.metrics.asks_refused.labels(reason).inc())))

        async def ready() -> str | None:
            return None

        add_health_routes(r, self.metrics, ready)
        return r


def _int_arg(request: Request, name: str, default: int) -> int:
    v = request.arg(name)
    if v is None:
        return default
    if not v.isdigit() or len(v) > 12:
        raise BadRequest(f"query parameter {name!r} must be a non-negative integer")
    return int(v)


async def serve(config: TrackerConfig, *, origin: Origin | None = None,
                task_status: trio.TaskStatus[Tracker] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a tracker until cancelled; ``task_status.started(tracker)`` once it listens
    (``tracker.advertise`` holds the bound address)."""
    store = await ChunkStore.open(config.data_dir, capacity=config.capacity, direct_io=config.direct_io)
    own_origin = origin is None
    origin = origin or HttpOrigin()
    host, port = split_hostport(config.listen)
    metrics = Metrics("tracker")
    try:
        async with trio.open_nursery() as nursery:
            tracker = Tracker(config, store, origin, advertise="", metrics=metrics)
            tracker._nursery = nursery
            bound = await nursery.start(partial(serve_http, tracker.router(), host, port,
                                                tls=tracker.tls.server if tracker.tls is not None else None))
            tracker.advertise = advertise_addr(config.listen, bound, config.advertise)

            async def expirer() -> None:
                while True:
                    await trio.sleep(min(5.0, config.peer_ttl / 3))
                    tracker.expire()

            nursery.start_soon(expirer)
            log.info("tracker listening on %s (advertised as %s, topology %s)",
                     config.listen, tracker.advertise, config.topology)
            task_status.started(tracker)
    finally:
        if own_origin:
            with trio.CancelScope(shield=True):
                await origin.aclose()  # type: ignore[attr-defined]
