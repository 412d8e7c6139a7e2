"""One blob's download on one peer: the pump around :class:`engine.download.DownloadState`.

Where the chunk map comes from, in order:
1. the peer's own store (a sealed map whose chunks are all held: nothing to do);
2. a tracker (register, then follow the growing map by long poll — cut-through);
3. ``--node`` peers that hold the sealed map (``GET /maps/<task>``);
4. the origin itself, seeded locally (no tracker reachable, no node knows the task):
   the peer then checks the whole sha256 itself.

Every chunk fetched from a peer or the origin is checked against its BLAKE3 before it is
stored; a blob is complete only when its map is sealed (sha256 checked, here or by the
tracker) and every chunk is held. Readers stream chunks in order as they land
(:meth:`Download.iter_bytes`); the last chunk is released only once the map is sealed, so
a reader never receives a whole blob that later fails its digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import mmap
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
import zstandard

from p2pdist.backend.origin import Origin, read_full
from p2pdist.backend.seed import seed_from_origin
from p2pdist.core.chunkmap import MAX_CHUNK_SIZE, ChunkMap, chunk_count, chunk_span
from p2pdist.core.config import PeerConfig
from p2pdist.core.digest import Digest
from p2pdist.core.errors import (
    Busy,
    ChunkUnknown,
    IntegrityError,
    P2PError,
    TaskFailed,
    TaskUnknown,
    Unavailable,
    error_from_code,
    p2p_error_in,
)
from p2pdist.core.task import TaskSpec
from p2pdist.engine.download import Done, DownloadState, Expired, Fetch, FetchOrigin, Source
from p2pdist.net.auth import token_headers
from p2pdist.net.chunkclient import ChunkClient
from p2pdist.net.http import FileBody
from p2pdist.net.observe import Metrics
from p2pdist.peer.trackerclient import TrackerClient
from p2pdist.storage.chunkstore import ChunkStore
from p2pdist.storage.direct import aligned_buffer
from p2pdist.wire.tracker import MapProgress, Neighbour, decode_have, encode_have

log = logging.getLogger("p2pdist.download")

IN_TURN_WAIT = 0.2  # seconds a landed chunk waits for its turn in a --node sha256 check
FRESH_WAIT = 20  # seconds a /fresh long poll waits at the seed


@dataclass
class DownloadStats:
    bytes_from_peers: int = 0
    bytes_from_origin: int = 0
    chunks_from_peers: int = 0
    chunks_from_origin: int = 0
    chunks_reused: int = 0
    corrupt: int = 0
    bad_sources: dict[str, int] = field(default_factory=dict)


class BufferPool:
    """Reused chunk buffers: the peer's memory for transfers is ``count × chunk_size``.
    Page aligned, so the store writes them O_DIRECT (storage.direct)."""

    def __init__(self, count: int):
        self._free: list[mmap.mmap] = []
        self._sem = trio.Semaphore(count)

    async def get(self, size: int) -> mmap.mmap:
        await self._sem.acquire()
        while self._free:
            buf = self._free.pop()
            if len(buf) >= size:
                return buf
        return aligned_buffer(size)

    def put(self, buf: mmap.mmap) -> None:
        self._free.append(buf)
        self._sem.release()


@dataclass
class Env:
    """What every download of one peer shares."""

    config: PeerConfig
    store: ChunkStore
    origin: Origin
    chunks: ChunkClient
    trackers: TrackerClient | None
    metrics: Metrics
    buffers: BufferPool
    limiter: trio.CapacityLimiter
    request_announce: Callable[[], None]
    peer_id: str
    rng: random.Random
    clock: Callable[[], float] = time.monotonic
    tls: ssl.SSLContext | None = None  # mTLS client context: peers are then dialled over TLS


class Download:
    def __init__(self, env: Env, spec: TaskSpec, *, nodes: Sequence[str] = ()):
        self.env = env
        self.spec = spec
        self.task_id = spec.task_id
        self.nodes = list(nodes)
        self.size: int | None = None
        self.chunk_size: int | None = None
        self.hashes: list[str] = []
        self.total: int | None = None
        self.sealed: ChunkMap | None = None
        self.held: set[int] = set()
        self.error: P2PError | None = None
        self.finished = trio.Event()
        self.stats = DownloadStats()
        self.mode = "starting"
        self.started = env.clock()
        self.ended: float | None = None
        self._changed = trio.Event()
        self._neighbours: list[Source] | None = None
        self._have_text: tuple[tuple[int, bool], str] = ((-1, False), "")  # have_bitmap's cache
        # A --node download checks the blob's sha256 itself, in chunk order (_check_sha256);
        # a chunk that lands in its turn is hashed from its fetch buffer, not read back.
        self._sha: Any = None
        self._sha_next = 0
        self._sha_lock = trio.Lock()
        self._events_send, self._events_recv = trio.open_memory_channel[Any](1000)
        self._state: DownloadState | None = None  # while _schedule runs

    # -- what readers and announcers see ----------------------------------------------------

    @property
    def complete(self) -> bool:
        # In swarm mode the map is sealed (by the tracker) before the chunks are all here:
        # a download cancelled midway has a sealed map and is finished, yet incomplete.
        return (self.sealed is not None and self.finished.is_set() and self.error is None
                and len(self.held) >= self.sealed.n_chunks)

    def have_bitmap(self) -> str:
        """What this peer holds of the blob as the tracker's wire bitmap (its announces,
        and neighbours' have polls); encoded again only when a chunk has landed."""
        key = (len(self.held), self.complete)
        if self._have_text[0] != key:
            self._have_text = (key, encode_have(self.held, self.complete))
        return self._have_text[1]

    def _gained(self) -> None:
        """A chunk landed: announce it soon -- unless neighbours learn of it by asking
        (``have_poll_interval``); announces then keep to ``announce_interval``."""
        if not self.env.config.have_poll_interval:
            self.env.request_announce()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def on_neighbours(self, neighbours: Sequence[Neighbour]) -> None:
        # with have polls, what a poll told may be newer than the tracker's answer: kept
        known = {s.peer_id: s.have for s in self._neighbours or () if s.have is not None
                 } if self.env.config.have_poll_interval else {}
        srcs = []
        for n in neighbours:
            if n.peer_id == self.env.peer_id:
                continue
            # a seed holds every chunk the map lists, including those published after this
            # answer was written: "unknown" (may hold anything known) is exact for it
            have = None if n.seed else decode_have(n.have, self.total)
            if have is not None and n.peer_id in known:
                have |= known[n.peer_id]
            withheld = decode_have(n.withheld, self.total) if n.withheld else None
            srcs.append(Source(n.peer_id, n.addr, frozenset(have) if have is not None else None,
                               fallback=n.fallback, seed=n.seed, withheld=frozenset(withheld or ())))
        self._neighbours = srcs
        self._events_send.send_nowait(("sources", srcs))
        self._notify()

    def summary(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id, "url": self.spec.url,
            "digest": str(self.sealed.digest) if self.sealed else (str(self.spec.digest) if self.spec.digest else None),
            "size": self.size, "chunks_total": self.total, "chunks_held": len(self.held),
            "state": "failed" if self.error else "complete" if self.complete else "running",
            "error": {"code": self.error.code, "message": self.error.message} if self.error else None,
            "mode": self.mode,
            "bytes_from_peers": self.stats.bytes_from_peers, "bytes_from_origin": self.stats.bytes_from_origin,
            "chunks_reused": self.stats.chunks_reused, "corrupt_chunks": self.stats.corrupt,
            "bad_sources": dict(self.stats.bad_sources),
            "seconds": round((self.ended or self.env.clock()) - self.started, 3),
        }

    async def wait(self) -> ChunkMap:
        """Wait for the end; return the sealed map, or raise the download's error."""
        await self.finished.wait()
        if self.error is not None:
            raise self.error
        assert self.sealed is not None
        return self.sealed

    async def wait_size(self) -> int:
        """The blob's size, once the origin or the tracker has told it; raises the
        download's error if it fails first."""
        while self.chunk_size is None or (self.size is None and self.sealed is None):
            if self.error is not None:
                raise self.error
            await self.wait_changed()
        size = self.sealed.size if self.sealed else self.size
        assert size is not None
        return size

    async def iter_spans(self, offset: int = 0, length: int | None = None
                         ) -> AsyncIterator[tuple[str, int, int]]:
        """``(chunk name, start, stop)`` spans covering the blob from ``offset``, in order,
        each yielded once its chunk is held; the last chunk only once the map is sealed
        (its sha256 checked). Raises the download's error if it fails midway."""
        size = await self.wait_size()
        assert self.chunk_size is not None
        end = size if length is None else min(size, offset + length)
        cs = self.chunk_size
        index = offset // cs
        pos = offset
        while pos < end:
            chunk_len = min(cs, size - index * cs)
            last = index * cs + chunk_len >= size
            while not (index in self.held and (not last or self.sealed is not None)):
                if self.error is not None:
                    raise self.error
                await self.wait_changed()
            start = pos - index * cs
            stop = min(chunk_len, end - index * cs)
            yield self.hashes[index], start, stop
            pos = index * cs + stop
            index += 1

    async def iter_bytes(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset``, in order, as chunks land (see :meth:`iter_spans`)."""
        async for name, start, stop in self.iter_spans(offset, length):
            with self.env.store.pinned([name]):
                data = await self.env.store.read(name)
            yield data[start:stop]

    async def iter_files(self, offset: int = 0, length: int | None = None) -> AsyncIterator[FileBody]:
        """As :meth:`iter_bytes`, as file spans the HTTP server sends itself (from a reused
        buffer for the store's O_DIRECT files, else by ``os.sendfile``): no bytes object
        is made. The receiver owns each span's fd (the HTTP server closes it)."""
        async for name, start, stop in self.iter_spans(offset, length):
            fd, _ = self.env.store.open_fd(name)  # an open fd outlives an eviction of its file
            yield FileBody(fd, start, stop - start)

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        env = self.env
        env.metrics.active_tasks.inc()
        try:
            cmap = await env.store.complete_map(self.task_id)
            if cmap is not None:
                self.mode = "cached"
                self._adopt_map(cmap)
                self.stats.chunks_reused = cmap.n_chunks
                return
            if env.trackers is not None:
                try:
                    await env.trackers.register(self.spec)
                except Unavailable as exc:
                    log.warning("task %s: %s; going on without a tracker", self.task_id, exc)
                else:
                    self.mode = "swarm"
                    if await self._run_swarm():
                        return
            if self.nodes:
                cmap = await self._map_from_nodes()
                if cmap is not None:
                    self.mode = "nodes"
                    self._adopt_map(cmap, sealed=False)
                    sources = [Source(f"node:{a}", a, None) for a in self.nodes]
                    async with trio.open_nursery() as nursery:
                        # hash in order as chunks land, on another core, not after the fact
                        nursery.start_soon(self._check_sha256, cmap)
                        await self._schedule(sources_fixed=sources)
                    await self._seal(cmap)
                    return
            self.mode = "origin"
            await self._seed_locally()
        except (P2PError, BaseExceptionGroup) as exc:
            err = p2p_error_in(exc)
            if err is None:
                raise
            self.error = err
            log.warning("task %s failed: %s", self.task_id, err)
        finally:
            self.ended = env.clock()
            env.metrics.active_tasks.dec()
            env.store.unpin(self.hashes)
            self.finished.set()
            self._notify()
            env.request_announce()

    def _adopt_map(self, cmap: ChunkMap, *, sealed: bool = True) -> None:
        self.size, self.chunk_size, self.total = cmap.size, cmap.chunk_size, cmap.n_chunks
        new = list(cmap.chunks[len(self.hashes):])
        self.hashes = list(cmap.chunks)
        self.env.store.pin(new)
        self.held |= {i for i, h in enumerate(cmap.chunks) if self.env.store.has(h)}
        if sealed:
            self.sealed = cmap
        self._notify()

    async def _seal(self, cmap: ChunkMap) -> None:
        await self.env.store.save_map(self.task_id, cmap)
        self.sealed = cmap
        self._notify()

    async def _check_sha256(self, cmap: ChunkMap) -> None:
        """Hash the held chunks of ``cmap`` in order; IntegrityError unless they are the
        blob ``cmap.digest`` names. For maps nobody we trust sealed (a ``--node`` peer's):
        every chunk matching its listed BLAKE3 proves nothing if the list itself lies."""
        sha = hashlib.sha256()
        self._sha, self._sha_next = sha, 0
        try:
            with self.env.store.pinned(cmap.chunks):
                for index, name in enumerate(cmap.chunks):
                    while index not in self.held and self._sha_next <= index:
                        await self.wait_changed()
                    async with self._sha_lock:
                        if self._sha_next == index:  # not hashed as it landed: read it back
                            await self.env.store.feed(name, sha)
                            self._sha_next = index + 1
        finally:
            self._sha = None
        if sha.hexdigest() != cmap.digest.hex:
            raise IntegrityError(f"the chunk map from --node peers for {cmap.digest} lists chunks "
                                 f"whose bytes hash to sha256:{sha.hexdigest()}")

    async def _map_from_nodes(self) -> ChunkMap | None:
        tls = self.env.tls
        scheme = "https" if tls is not None else "http"  # as the chunk client dials the same peers
        async with httpx.AsyncClient(timeout=10.0, headers=token_headers(self.env.config.cluster_secret),
                                     verify=tls if tls is not None else True) as client:
            for addr in self.nodes:
                try:
                    r = await client.get(f"{scheme}://{addr}/maps/{self.task_id}")
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    try:
                        cmap = ChunkMap.from_json(r.content)
                    except P2PError:
                        continue
                    if self.spec.digest is None or cmap.digest == self.spec.digest:
                        return cmap
        return None

    async def _seed_locally(self) -> None:
        """No swarm: stream the origin ourselves, hashing every chunk and the whole sha256."""
        env = self.env

        def on_start(size: int | None, chunk_size: int) -> None:
            self.size, self.chunk_size = size, chunk_size
            self.total = chunk_count(size, chunk_size) if size is not None else None
            env.store.unpin(self.hashes)  # pinned by a swarm attempt that lost its tracker
            self.hashes = []
            self._notify()

        def on_chunk(index: int, name: str, length: int) -> None:
            self.hashes.append(name)
            env.store.pin([name])
            self.held.add(index)
            self.stats.bytes_from_origin += length
            env.metrics.bytes_from_origin.inc(length)
            self._notify()

        cmap = await seed_from_origin(env.origin, self.spec, env.store, on_start=on_start,
                                      on_chunk=on_chunk)
        self.total = cmap.n_chunks
        await self._seal(cmap)

    async def _run_swarm(self) -> bool:
        """Download through the tracker's swarm. Returns False if the tracker was lost before
        the map was sealed (the caller then seeds from the origin itself)."""
        assert self.env.trackers is not None
        lost = False
        async with trio.open_nursery() as nursery:
            map_done = trio.Event()

            async def follow() -> None:
                nonlocal lost
                try:
                    await self._follow_map()
                except Unavailable as exc:
                    if self.sealed is None:
                        log.warning("task %s: tracker lost before the map was sealed: %s", self.task_id, exc)
                        lost = True
                        nursery.cancel_scope.cancel()
                    return
                finally:
                    map_done.set()

            nursery.start_soon(follow)
            fresh = trio.CancelScope()
            nursery.start_soon(self._follow_fresh, fresh)
            polls = trio.CancelScope()
            if self.env.config.have_poll_interval:
                nursery.start_soon(self._poll_haves, polls)
            self.env.request_announce()
            await self._schedule()
            fresh.cancel()  # every chunk is here: wait for no more
            polls.cancel()  # ... and ask the neighbours no more
            await map_done.wait()
        if lost:
            return False
        assert self.sealed is not None
        await self._seal(self.sealed)
        return True

    async def _follow_map(self) -> None:
        assert self.env.trackers is not None
        while self.sealed is None:
            try:
                prog: MapProgress = await self.env.trackers.map_progress(self.task_id, len(self.hashes), 20)
            except TaskUnknown:
                # the task's owner died and its next tracker has not heard of it: register
                # there (it seeds again; chunk hashes are deterministic, so the map agrees)
                log.info("task %s moved to another tracker; registering it there", self.task_id)
                await self.env.trackers.register(self.spec)
                continue
            if prog.error is not None:
                code = prog.error["code"]
                raise error_from_code(code, f"task failed at the tracker: {prog.error['message']}",
                                      422 if code in ("DIGEST_MISMATCH", "TASK_FAILED") else 502)
            if prog.offset > len(self.hashes):
                continue
            # a new owner may repeat hashes we know: they must agree, else the maps differ
            overlap = len(self.hashes) - prog.offset
            if list(prog.chunks[:overlap]) != self.hashes[prog.offset:prog.offset + len(prog.chunks[:overlap])]:
                raise IntegrityError(f"task {self.task_id}: the tracker's chunk map changed midway")
            if self.chunk_size is not None and prog.chunk_size not in (None, self.chunk_size):
                raise IntegrityError(f"task {self.task_id}: the tracker's chunk size changed midway")
            if prog.chunk_size is not None:  # a new owner that has not started yet knows none of these
                self.size, self.chunk_size = prog.size, prog.chunk_size
                self.total = prog.total
            new = list(prog.chunks[overlap:])
            self.hashes.extend(new)
            self.env.store.pin(new)
            for i in range(len(self.hashes) - len(new), len(self.hashes)):
                if self.env.store.has(self.hashes[i]) and i not in self.held:
                    self.held.add(i)
                    self.stats.chunks_reused += 1
            if prog.sealed:
                assert prog.digest is not None and prog.size is not None and prog.chunk_size is not None
                digest = Digest.parse(prog.digest)
                if self.spec.digest is not None and digest != self.spec.digest:
                    raise IntegrityError(f"tracker sealed {digest}, expected {self.spec.digest}")
                self.sealed = ChunkMap(digest, prog.size, prog.chunk_size, tuple(self.hashes))
            self._events_send.send_nowait(("map", prog.withheld))
            self._notify()
            if self.env.config.have_poll_interval and self.sealed is None:
                # a cluster too large for the tracker to follow: one map poll per
                # announce interval, as for the announces (have_poll_interval)
                await trio.sleep(self.env.config.announce_interval)

    async def _schedule(self, sources_fixed: Sequence[Source] | None = None) -> None:
        """Drive the state machine until every chunk is held."""
        env, cfg = self.env, self.env.config
        in_flight: dict[int, trio.CancelScope] = {}
        if sources_fixed is None and not self._neighbours:
            # Before the tracker's first answer naming a source there are none, and the
            # engine would (rightly, for a peer with none) send everything to the origin:
            # wait for one (the seed is always named once the task is registered).
            with trio.move_on_after(cfg.chunk_timeout):
                while not self._neighbours:
                    await self.wait_changed()
        # Built only now, with no await before the first map_grew below: chunks that
        # _follow_map found in the store meanwhile must be in `have`, not fetched again.
        state = DownloadState(
            n_known=len(self.hashes), total=self.total, have=set(self.held),
            policy=cfg.chunk_policy, max_in_flight=cfg.max_in_flight,
            per_source_in_flight=cfg.per_source_in_flight, chunk_timeout=cfg.chunk_timeout,
            peer_attempts=cfg.peer_attempts, origin_fallback=cfg.back_to_source,
            # A chunk no live source can serve (its holders are gone, or the tracker that
            # would name new ones is) goes back to source after a chunk's time, not 30 s.
            source_wait=cfg.chunk_timeout, fallback_wait=cfg.fallback_wait, rng=env.rng)
        self._state = state
        async with trio.open_nursery() as nursery:
            now = env.clock()
            # sources before the map: with a map and no sources the engine goes to the origin
            actions = state.set_sources(sources_fixed if sources_fixed is not None else self._neighbours or [], now)
            actions += state.map_grew(len(self.hashes), self.total, now)
            while True:
                for act in actions:
                    if isinstance(act, Done):
                        nursery.cancel_scope.cancel()
                        return
                    if isinstance(act, Fetch):
                        scope = trio.CancelScope()
                        in_flight[act.index] = scope
                        nursery.start_soon(self._fetch_peer, act, scope)
                    elif isinstance(act, FetchOrigin):
                        scope = trio.CancelScope()
                        in_flight[act.index] = scope
                        nursery.start_soon(self._fetch_origin, act.index, scope)
                    elif isinstance(act, Expired):
                        sc = in_flight.get(act.index)
                        if sc is not None:
                            sc.cancel()
                if self.error is not None:
                    raise self.error
                deadline = state.next_deadline()
                timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - env.clock()))
                event = None
                with trio.move_on_after(timeout):
                    event = await self._events_recv.receive()
                now = env.clock()
                actions = []
                if event is None:
                    actions = state.tick(now)
                    continue
                kind, payload = event
                if kind == "map":
                    # Chunks _follow_map found already in the store (a restarted peer):
                    # tell the engine before it learns their hashes, or it fetches them.
                    reused = [i for i in self.held if i not in in_flight and not state.holds(i)]
                    actions = state.chunks_held(reused, now) if reused else []
                    if payload:  # the seed withholds these from us: not asked, not refused
                        for seed in (s for s in self._neighbours or () if s.seed):
                            state.withheld(seed.peer_id, payload)
                    actions += state.map_grew(len(self.hashes), self.total, now)
                elif kind == "sources":
                    if sources_fixed is None:
                        actions = state.set_sources(payload, now)
                elif kind == "ok":
                    index, source = payload
                    in_flight.pop(index, None)
                    actions = state.chunk_ok(index, source, now)
                elif kind == "failed":
                    index, source, reason, exc = payload
                    in_flight.pop(index, None)
                    if source is None and isinstance(exc, P2PError) and _fatal_origin(exc, state):
                        raise exc
                    actions = state.chunk_failed(index, source, reason, now)
                    if reason == "corrupt":
                        self.stats.corrupt += 1
                        self.stats.bad_sources = dict(state.bad_sources)
                actions += state.tick(now)

    def _expected_len(self, index: int) -> int:
        assert self.chunk_size is not None
        if self.size is None:
            return self.chunk_size
        return chunk_span(index, self.size, self.chunk_size)[1]

    async def _verify_and_store(self, index: int, buf: mmap.mmap, n: int, encoding: str | None) -> int:
        """Check chunk ``index`` against its BLAKE3 and store it: one worker-thread call
        (the store hashes and writes together) for plain bodies; zstd bodies are first
        decompressed, capped at the chunk's length. Raises IntegrityError."""
        name = self.hashes[index]
        expected = self._expected_len(index)
        view = memoryview(buf)[:n]
        if encoding == "zstd":
            def decompress() -> memoryview:
                declared = zstandard.frame_content_size(view)
                if declared < 0 or declared > expected:
                    raise IntegrityError(f"compressed chunk {name[:16]}… declares {declared} bytes, expected {expected}")
                return memoryview(zstandard.ZstdDecompressor().decompress(view, max_output_size=expected))

            view = await trio.to_thread.run_sync(decompress, limiter=self.env.limiter)
        elif encoding not in (None, "identity"):
            raise IntegrityError(f"unknown content-encoding {encoding!r}")
        if len(view) != expected:
            raise IntegrityError(f"chunk {index} ({name[:16]}…) is {len(view)} bytes, expected {expected}")
        await self.env.store.put(name, view)
        return len(view)

    async def _hash_in_turn(self, index: int, data: memoryview) -> None:
        """A --node download's sha256 check takes chunk ``index`` (verified and stored)
        straight from its fetch buffer if it is the chunk the check needs next, waiting a
        moment for the few before it that are landing too (fetches go lowest index
        first, and finish in any order); else the check reads it back from the store
        when its turn comes."""
        if self._sha is None or not self._sha_next <= index < self._sha_next + self.env.config.max_in_flight:
            return
        with trio.move_on_after(IN_TURN_WAIT):
            while self._sha is not None and self._sha_next < index:
                await self.wait_changed()
        async with self._sha_lock:
            if self._sha is not None and self._sha_next == index:
                await trio.to_thread.run_sync(self._sha.update, data, limiter=self.env.limiter)
                self._sha_next = index + 1
                self._notify()

    async def _fetch_peer(self, act: Fetch, scope: trio.CancelScope) -> None:
        env = self.env
        expected = self._expected_len(act.index)
        buf = await env.buffers.get(max(expected, 1))
        try:
            with scope:
                try:
                    n, enc = await env.chunks.fetch(
                        act.addr, self.hashes[act.index], memoryview(buf)[:expected],
                        accept_zstd=env.config.wire_compression == "auto")
                    got = await self._verify_and_store(act.index, buf, n, enc)
                    if enc in (None, "identity"):  # else the buffer holds the compressed bytes
                        await self._hash_in_turn(act.index, memoryview(buf)[:got])
                except P2PError as exc:
                    result = self._landed(act.index, act.peer_id, 0, exc)
                else:
                    result = self._landed(act.index, act.peer_id, got, None)
            if scope.cancelled_caught:
                result = self._landed(act.index, act.peer_id, 0, None, timed_out=True)
        finally:
            env.buffers.put(buf)
        self._events_send.send_nowait(result)

    def _landed(self, index: int, peer_id: str, got: int, exc: P2PError | None, *,
                timed_out: bool = False) -> tuple[str, Any]:
        """Count how a fetch of chunk ``index`` from ``peer_id`` ended (``exc`` None and not
        ``timed_out``: ``got`` bytes verified and stored); the event for the scheduler."""
        env = self.env
        if timed_out:
            env.metrics.chunks_failed.labels("timeout").inc()
            return ("failed", (index, peer_id, "timeout", None))
        if isinstance(exc, IntegrityError):
            env.metrics.chunks_failed.labels("corrupt").inc()
            log.warning("task %s: peer %s served a corrupt chunk %d: dropped", self.task_id, peer_id, index)
            return ("failed", (index, peer_id, "corrupt", exc))
        if isinstance(exc, ChunkUnknown):
            env.metrics.chunk_refusals.labels("missing").inc()
            return ("failed", (index, peer_id, "missing", exc))
        if isinstance(exc, Busy):
            env.metrics.chunk_refusals.labels("busy").inc()
            return ("failed", (index, peer_id, "busy", exc))
        if exc is not None:
            env.metrics.chunks_failed.labels("error").inc()
            return ("failed", (index, peer_id, "error", exc))
        self.held.add(index)
        self.stats.bytes_from_peers += got
        self.stats.chunks_from_peers += 1
        env.metrics.bytes_from_peers.inc(got)
        env.metrics.chunks_verified.inc()
        self._notify()
        self._gained()
        return ("ok", (index, peer_id))

    async def _follow_fresh(self, scope: trio.CancelScope) -> None:
        """Swarm mode, while the blob streams in at the tracker: keep one long poll open
        at the seed for a chunk it has never sent (``/fresh``). The seed hands each fresh
        chunk to one waiting peer the moment it is published, and the swarm passes it on;
        asked for chunk by chunk instead, it idled between a publication and the asks
        (engine.firstcopy). A chunk is taken only if the engine is not fetching it
        already, and verified against its BLAKE3 like any other before it is stored."""
        with scope:
            while self._state is None:
                await self.wait_changed()
            while self.sealed is None:
                seed = next((s for s in self._neighbours or () if s.seed), None)
                if seed is None:
                    await self.wait_changed()
                    continue
                try:
                    if not await self._fresh_once(seed):
                        return
                except ChunkUnknown:
                    return  # a seed that hands out nothing (an older tracker)
                except P2PError as exc:
                    log.debug("task %s: fresh chunks from %s: %s", self.task_id, seed.addr, exc)
                    await trio.sleep(1.0)

    async def _poll_haves(self, scope: trio.CancelScope) -> None:
        """Swarm mode with ``have_poll_interval``: every interval, ask each neighbour that
        is not the seed what it holds (``GET /have/<task>``) and hand the engine what the
        tracker's answers had not said yet. A cluster larger than one tracker core can
        follow announces slowly and learns its neighbours' chunks this way instead
        (bench/RESULTS.md sim, 10,000 peers and one tracker core: 1.89 x T_min without,
        1.49 x with announces and map polls every 2 s). A smaller cluster loses by it:
        a chunk heard of here cannot be fetched before the map names it. A neighbour
        that does not answer in time is asked again next round."""
        every = self.env.config.have_poll_interval

        async def ask(src: Source, polled: dict[str, set[int]]) -> None:
            with trio.move_on_after(max(every, 1.0)):
                try:
                    have = decode_have(await self.env.chunks.fetch_have(src.addr, self.task_id), self.total)
                except P2PError as exc:
                    log.debug("task %s: have poll of %s: %s", self.task_id, src.addr, exc)
                    return
                if have is not None:
                    polled[src.peer_id] = have

        with scope:
            while True:
                await trio.sleep(every)
                asked = [s for s in self._neighbours or () if not s.seed and s.have is not None]
                polled: dict[str, set[int]] = {}
                async with trio.open_nursery() as nursery:
                    for src in asked:
                        nursery.start_soon(ask, src, polled)
                # an announce answer may have replaced the list meanwhile: news goes to it
                srcs, news = [], False
                for src in self._neighbours or ():
                    more = polled.get(src.peer_id)
                    if more is not None and src.have is not None and not more <= src.have:
                        src = dataclasses.replace(src, have=src.have | more)
                        news = True
                    srcs.append(src)
                if news:
                    self._neighbours = srcs
                    self._events_send.send_nowait(("sources", srcs))
                    self._notify()

    async def _fresh_once(self, seed: Source) -> bool:
        """One ``/fresh`` long poll: False once the seed will hand out nothing more. A
        failure before a chunk was taken is raised (the poll failed); after, it is the
        chunk's, reported to the scheduler like a fetch's."""
        env = self.env
        state = self._state
        assert state is not None
        claimed: list[tuple[int, str]] = []
        bufs: list[mmap.mmap] = []
        deadline = trio.CancelScope()  # armed once a chunk is taken: the fetch's deadline

        async def claim(headers: dict[str, str], length: int) -> memoryview:
            index_s, name = headers.get("x-chunk-index", ""), headers.get("x-chunk-name", "")
            if not index_s.isdigit() or len(index_s) > 9 or length > MAX_CHUNK_SIZE:
                raise Unavailable(f"seed {seed.addr} sent a fresh chunk without a valid index or size")
            index = int(index_s)
            if (self.total is not None and index >= self.total) or \
                    (index < len(self.hashes) and self.hashes[index] != name):
                raise Unavailable(f"seed {seed.addr} sent a fresh chunk {index} the map does not list")
            if not state.incoming(index, seed.peer_id, env.clock()):
                raise _NotWanted  # the connection is closed: the seed stops sending it
            claimed.append((index, name))  # taken: from now on its end is reported
            deadline.deadline = trio.current_time() + env.config.chunk_timeout
            bufs.append(await env.buffers.get(max(length, self.chunk_size or 0, 1)))
            return memoryview(bufs[0])[:length]

        try:
            got, failure = 0, None
            with deadline:
                try:
                    n, headers = await env.chunks.fetch_fresh(seed.addr, self.task_id, FRESH_WAIT, claim)
                    if n < 0:
                        return headers.get("x-fresh") != "end"
                    index, name = claimed[0]
                    while index >= len(self.hashes):  # the map's long poll is a moment behind
                        await self.wait_changed()
                    if self.hashes[index] != name:
                        raise IntegrityError(f"seed {seed.addr} sent chunk {index} as {name[:16]}…, "
                                             f"the map lists {self.hashes[index][:16]}…")
                    got = await self._verify_and_store(index, bufs[0], n, headers.get("content-encoding"))
                except _NotWanted:
                    return True
                except P2PError as exc:
                    if not claimed:
                        raise
                    failure = exc
            index = claimed[0][0]
            result = self._landed(index, seed.peer_id, got, failure, timed_out=deadline.cancelled_caught)
            if result[0] == "ok":
                env.metrics.fresh_received.inc()
            self._events_send.send_nowait(result)
            return True
        finally:
            for buf in bufs:
                env.buffers.put(buf)

    async def _fetch_origin(self, index: int, scope: trio.CancelScope) -> None:
        env = self.env
        expected = self._expected_len(index)
        offset = index * (self.chunk_size or 0)
        buf = await env.buffers.get(max(expected, 1))
        result: tuple[str, Any]
        try:
            with scope:
                try:
                    async with env.origin.open(self.spec, offset, expected) as stream:
                        n = await read_full(stream, memoryview(buf)[:expected])
                    self.stats.bytes_from_origin += n
                    env.metrics.bytes_from_origin.inc(n)
                    await self._verify_and_store(index, buf, n, None)
                    await self._hash_in_turn(index, memoryview(buf)[:n])
                except P2PError as exc:
                    result = ("failed", (index, None, "error", exc))
                    env.metrics.chunks_failed.labels("origin").inc()
                else:
                    self.held.add(index)
                    self.stats.chunks_from_origin += 1
                    env.metrics.back_to_source.inc()
                    env.metrics.chunks_verified.inc()
                    result = ("ok", (index, None))
                    self._notify()
                    self._gained()
            if scope.cancelled_caught:
                result = ("failed", (index, None, "timeout", None))
        finally:
            env.buffers.put(buf)
        self._events_send.send_nowait(result)


class _NotWanted(Exception):
    """A fresh chunk this download holds or is fetching already: refused."""


def _fatal_origin(exc: P2PError, state: DownloadState) -> bool:
    """An origin that refuses (4xx) or keeps failing ends the download: the engine itself
    never gives up, so the driver decides."""
    if isinstance(exc, IntegrityError):
        return state.stats.origin_failures >= 3
    if isinstance(exc, TaskUnknown | TaskFailed):
        return True
    return state.stats.origin_failures >= 5

