"""A content-addressed chunk store on disk.

Layout under ``root``::

    chunks/<first 2 hex>/<64 hex>   verified chunks, named by the BLAKE3 of their bytes
    tmp/                            writes in progress; emptied on open
    maps/<task id>.json             sealed chunk maps, canonical JSON

Invariants this module keeps:

* A file under a final name was hashed (or handed in already verified) *before* it was
  renamed there, so it is trusted on restart without re-hashing. Writes are always
  ``tmp/<unique>`` → ``os.replace``; a crash or a full disk leaves at most a temp file,
  which the next :meth:`ChunkStore.open` removes.
* The in-memory index ``{name: size}`` (an ``OrderedDict``, least recently used first)
  mirrors ``chunks/``. It is changed only under ``_lock``, because puts update it from a
  worker thread while the trio thread reads and touches it.
* ``used + reserved <= capacity``: a put reserves its bytes (evicting unpinned chunks,
  oldest first) before writing, so concurrent puts cannot overshoot the capacity.
* Pinned names (refcounted) are never evicted. A name may be pinned before its chunk
  lands, which reserves it from eviction the moment it does.

Chunk bytes bypass the page cache (``O_DIRECT``, :mod:`p2pdist.storage.direct`): written
from the caller's buffer, and :meth:`ChunkStore.open_fd` hands out ``O_DIRECT`` fds that
the HTTP server reads into its own aligned buffers instead of ``os.sendfile``. A GiB
stored no longer takes a GiB of page cache, which on this kind of VM costs 1.5–2.5 CPU-s
per GiB to touch. ``direct_io=False``, or a file system that refuses ``O_DIRECT``, keeps
the page cache.

Durability: chunks are not fsynced before their rename (fdatasync halves write speed
here, perf-facts). A crashed *process* leaves only whole files under final names; after a
*power loss* a renamed file may be short or empty. A peer re-serving one is caught by
every receiver's BLAKE3 check and dropped as a bad source, so no corrupt byte travels on,
but the node itself should wipe its store after an unclean host reboot.

Blocking file work runs in ``trio.to_thread.run_sync`` under the store's
``CapacityLimiter``, at least a whole chunk per call. Maps are tiny and not counted
against the capacity.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import blake3
import trio

from p2pdist.core.chunkmap import DEFAULT_CHUNK_SIZE, ChunkMap
from p2pdist.core.digest import is_hex64, parse_chunk_name
from p2pdist.core.errors import (
    BodyInvalid,
    ChunkUnknown,
    IntegrityError,
    NameInvalid,
    P2PError,
    StoreFull,
)
from p2pdist.storage.direct import (
    ALIGN,
    AlignedBuffers,
    aligned_buffer,
    is_direct,
    read_span,
    write_direct_head,
)

__all__ = ["ChunkStore", "StoreStatistics", "Buffer"]

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
T = TypeVar("T")

# Read/write piece size for copies that must pass through user space (sha256, fallback).
_COPY_PIECE = 4 << 20
# The two shapes core.task.task_id_for produces: a digest hex, or 'u' + 40 hex of a URL.
# Strict, so a task id is always a safe file name (no separators, no dots).
_TASK_ID = re.compile(r"[0-9a-f]{64}|u[0-9a-f]{40}")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# copy_file_range refuses some pairs of files (other filesystem on old kernels, special
# files); these mean "copy by hand", not "the copy failed".
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM)


class _Hasher(Protocol):
    def update(self, data: memoryview, /) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    chunks: int
    used: int
    reserved: int
    pinned_bytes: int
    capacity: int | None


def parse_task_id(task_id: str) -> str:
    """Return ``task_id`` if it is a task id (64 hex, or ``u`` + 40 hex), else raise NameInvalid."""
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
        raise NameInvalid(
            f"malformed task id {str(task_id)[:80]!r}: expected 64 lowercase hex digits or 'u' + 40"
        )
    return task_id


class ChunkStore:
    """Verified chunks on disk, evicted least-recently-used first past ``capacity``.

    Create with :meth:`open`. Errors: :class:`NameInvalid` for a malformed chunk name or
    task id, :class:`ChunkUnknown` for a chunk not held, :class:`IntegrityError` for bytes
    that do not match their name, :class:`StoreFull` when there is no room (capacity or
    disk); other OS failures surface as :class:`P2PError` naming the path.
    """

    root: Path
    capacity: int | None

    def __init__(
        self,
        root: Path,
        *,
        capacity: int | None,
        limiter: trio.CapacityLimiter,
        index: OrderedDict[str, int],
        direct_io: bool = False,
    ) -> None:
        """Use :meth:`open`; this only wires up an already scanned index."""
        self.root = root
        self.capacity = capacity
        self._limiter = limiter
        self._chunks_dir = root / "chunks"
        self._tmp_dir = root / "tmp"
        self._maps_dir = root / "maps"
        self._lock = threading.Lock()
        self._index = index
        self._used = sum(index.values())
        self._reserved = 0
        self._pins: dict[str, int] = {}
        # O_DIRECT on chunk files (only if the file system takes it: probed at open)
        self.direct_io = direct_io
        self._odirect = os.O_DIRECT if direct_io else 0
        self._buffers = AlignedBuffers(DEFAULT_CHUNK_SIZE + 2 * ALIGN, keep=2)  # for read() and feed()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        root: Path | str,
        *,
        capacity: int | None = None,
        limiter: trio.CapacityLimiter | None = None,
        direct_io: bool = True,
    ) -> ChunkStore:
        """Open (creating if needed) the store at ``root``.

        Removes temp files left by a crash and indexes the chunks already there, oldest
        mtime first. If they exceed ``capacity`` (it was lowered), the oldest are evicted.
        ``direct_io``: chunk bytes bypass the page cache where the file system allows it.
        Raises ValueError for a negative capacity, P2PError if ``root`` is unusable.
        """
        if capacity is not None and capacity < 0:
            raise ValueError(f"capacity must be >= 0 or None, got {capacity}")
        root = Path(root).absolute()
        limiter = limiter if limiter is not None else trio.CapacityLimiter(4)
        try:
            index = await trio.to_thread.run_sync(_prepare, root, capacity, limiter=limiter)
            if direct_io:
                direct_io = await trio.to_thread.run_sync(_takes_direct_io, root / "tmp", limiter=limiter)
        except OSError as exc:
            raise P2PError(f"cannot open chunk store at {root}: {exc}") from exc
        return cls(root, capacity=capacity, limiter=limiter, index=index, direct_io=direct_io)

    # -- queries (trio thread, no I/O) ---------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self._index

    def size_of(self, name: str) -> int | None:
        return self._index.get(name)

    @property
    def used(self) -> int:
        """Bytes held in verified chunks (not counting writes in progress)."""
        return self._used

    def __len__(self) -> int:
        return len(self._index)

    def statistics(self) -> StoreStatistics:
        with self._lock:
            return StoreStatistics(
                chunks=len(self._index),
                used=self._used,
                reserved=self._reserved,
                pinned_bytes=self._pinned_bytes_locked(),
                capacity=self.capacity,
            )

    def missing(self, chunk_map: ChunkMap) -> list[int]:
        """Indices of ``chunk_map``'s chunks not held, in order."""
        index = self._index
        return [i for i, name in enumerate(chunk_map.chunks) if name not in index]

    def touch(self, name: str) -> None:
        """Mark ``name`` most recently used (no-op if not held)."""
        with self._lock:
            if name in self._index:
                self._index.move_to_end(name)

    # -- pins ----------------------------------------------------------------------------

    def pin(self, names: Iterable[str]) -> None:
        """Protect ``names`` from eviction until a matching :meth:`unpin` (refcounted).

        Names need not be held yet. Raises NameInvalid (pinning nothing) for a bad name.
        """
        names = [parse_chunk_name(n) for n in names]
        with self._lock:
            for n in names:
                self._pins[n] = self._pins.get(n, 0) + 1

    def unpin(self, names: Iterable[str]) -> None:
        """Undo one :meth:`pin` of each of ``names``; unpinning an unpinned name is a no-op."""
        with self._lock:
            for n in names:
                count = self._pins.get(n, 0)
                if count <= 1:
                    self._pins.pop(n, None)
                else:
                    self._pins[n] = count - 1

    @contextmanager
    def pinned(self, names: Iterable[str]) -> Iterator[None]:
        """Pin ``names`` for the duration of the ``with`` block."""
        names = list(names)
        self.pin(names)
        try:
            yield
        finally:
            self.unpin(names)

    # -- chunks --------------------------------------------------------------------------

    async def put(self, name: str, data: Buffer) -> bool:
        """Store ``data`` as chunk ``name`` after checking that BLAKE3(data) == name.

        Returns False (writing nothing, not looking at ``data``) if the chunk is already
        held. Raises NameInvalid for a malformed name, IntegrityError (nothing written) if
        the hash differs, StoreFull if there is no room: the capacity is taken by pinned
        chunks, or the disk is full. Never leaves a partial file under a final name.
        """
        return await self._put(name, data, verify=True)

    async def put_new(self, data: Buffer) -> str:
        """Store ``data`` under its BLAKE3, which is returned (bytes straight from their
        origin, named here), hashing and writing in one worker-thread call. Raises as
        :meth:`put`; storing nothing if the chunk is held."""
        view = memoryview(data).cast("B")
        return await self._run(self._put_new_sync, view)

    def _put_new_sync(self, view: memoryview) -> str:
        name = blake3.blake3(view).hexdigest()
        self._put_sync(name, view, False)
        return name

    async def _put(self, name: str, data: Buffer, *, verify: bool) -> bool:
        parse_chunk_name(name)
        if name in self._index:
            self.touch(name)
            return False
        view = memoryview(data).cast("B")
        return await self._run(self._put_sync, name, view, verify)

    def _put_sync(self, name: str, view: memoryview, verify: bool) -> bool:
        """Worker thread: hash, reserve room, write temp, rename. One call per chunk."""
        if verify:
            # One thread per chunk: chunks in flight already hash in parallel, and blake3's
            # own pool (max_threads=AUTO) spins between chunks (~17k sched_yield per GiB)
            # on cores that dockerd needs.
            actual = blake3.blake3(view).hexdigest()
            if actual != name:
                raise IntegrityError(f"chunk {name}: content hashes to {actual} ({view.nbytes} bytes)")
        size = view.nbytes
        if not self._reserve(name, size):
            return False
        tmp = self._tmp_dir / f"{name}.{secrets.token_hex(8)}.tmp"
        final = self._chunk_path(name)
        committed = False
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | self._odirect, 0o644)
                try:
                    _write_all(fd, view)
                finally:
                    os.close(fd)
            except OSError as exc:
                _unlink_quietly(tmp)
                if exc.errno in _NO_SPACE:
                    raise StoreFull(
                        f"store at {self.root} is full: no space left on disk writing "
                        f"chunk {name} ({size} bytes)"
                    ) from exc
                raise P2PError(f"store at {self.root}: writing chunk {name} failed: {exc}") from exc
            with self._lock:
                self._reserved -= size
                committed = True
                if name in self._index:
                    # A concurrent put of the same chunk won; its file has the same bytes.
                    _unlink_quietly(tmp)
                    self._index.move_to_end(name)
                    return False
                try:
                    try:
                        os.replace(tmp, final)
                    except FileNotFoundError:
                        # open made every prefix directory; this one was removed behind our back
                        final.parent.mkdir(exist_ok=True)
                        os.replace(tmp, final)
                except OSError as exc:
                    _unlink_quietly(tmp)
                    raise P2PError(f"store at {self.root}: storing chunk {name} failed: {exc}") from exc
                self._index[name] = size
                self._used += size
            return True
        finally:
            if not committed:
                with self._lock:
                    self._reserved -= size

    def _reserve(self, name: str, size: int) -> bool:
        """Reserve ``size`` bytes for ``name``, evicting unpinned chunks oldest first.

        Returns False if ``name`` landed meanwhile. Raises StoreFull, evicting nothing, if
        even evicting every unpinned chunk would not make room.
        """
        with self._lock:
            if name in self._index:
                self._index.move_to_end(name)
                return False
            if self.capacity is not None:
                short = self._used + self._reserved + size - self.capacity
                if short > 0:
                    victims: list[str] = []
                    freed = 0
                    for victim, vsize in self._index.items():
                        if freed >= short:
                            break
                        if victim not in self._pins:
                            victims.append(victim)
                            freed += vsize
                    if freed < short:
                        raise StoreFull(
                            f"store at {self.root} is full: {size} bytes needed, "
                            f"{self._pinned_bytes_locked()} pinned, {self._reserved} being written, "
                            f"capacity {self.capacity}"
                        )
                    # Unlinked under the lock so a concurrent put of a victim's name cannot
                    # have its fresh file removed by this eviction.
                    for victim in victims:
                        self._forget_locked(victim)
                        _unlink_quietly(self._chunk_path(victim))
                    log.debug("evicted %d chunks (%d bytes) from %s", len(victims), freed, self.root)
            self._reserved += size
            return True

    async def read(self, name: str) -> bytes:
        """The bytes of chunk ``name``; marks it recently used. Raises ChunkUnknown if not held."""
        return await self._use_bytes(name, bytes)

    async def feed(self, name: str, hasher: _Hasher) -> None:
        """Feed chunk ``name``'s bytes to ``hasher`` in one worker-thread call, through a
        reused buffer (no copy of the chunk is made); as :meth:`read` otherwise."""
        await self._use_bytes(name, hasher.update)

    async def _use_bytes(self, name: str, use: Callable[[memoryview], T]) -> T:
        parse_chunk_name(name)
        if name not in self._index:
            raise ChunkUnknown(f"chunk {name} is not held")
        result = await self._run(self._use_bytes_sync, name, use)
        self.touch(name)
        return result

    def _use_bytes_sync(self, name: str, use: Callable[[memoryview], T]) -> T:
        """Worker thread: chunk ``name`` read (past the page cache with ``direct_io``)
        into a reused buffer, handed to ``use``, which must not keep the view."""
        try:
            fd = os.open(self._chunk_path(name), os.O_RDONLY | os.O_CLOEXEC | self._odirect)
        except FileNotFoundError as exc:
            self._lost(name)
            raise ChunkUnknown(f"chunk {name} is not held") from exc
        try:
            size = os.fstat(fd).st_size
            pooled = size + 2 * ALIGN <= self._buffers.size
            buf = self._buffers.get() if pooled else aligned_buffer(size + 2 * ALIGN)
            try:
                return use(read_span(fd, buf, 0, size))
            finally:
                if pooled:
                    self._buffers.put(buf)
        finally:
            os.close(fd)

    def open_fd(self, name: str) -> tuple[int, int]:
        """``(fd, size)``: chunk ``name`` opened read-only to be sent as a ``FileBody``
        (``O_DIRECT`` with ``direct_io``: read it with :func:`storage.direct.read_span`, not
        ``os.pread``/``sendfile``); the caller closes fd.

        Marks it recently used. Raises ChunkUnknown if not held. The open fd keeps the bytes
        alive even if the chunk is evicted, but pin it while serving anyway.
        """
        parse_chunk_name(name)
        if name not in self._index:
            raise ChunkUnknown(f"chunk {name} is not held")
        try:
            fd = os.open(self._chunk_path(name), os.O_RDONLY | os.O_CLOEXEC | self._odirect)
        except FileNotFoundError as exc:
            self._lost(name)
            raise ChunkUnknown(f"chunk {name} is not held") from exc
        try:
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        self.touch(name)
        return fd, size

    async def delete(self, name: str) -> None:
        """Remove chunk ``name`` (pinned or not); a no-op if it is not held."""
        parse_chunk_name(name)
        await self._run(self._delete_sync, name)

    def _delete_sync(self, name: str) -> None:
        with self._lock:
            if self._forget_locked(name):
                _unlink_quietly(self._chunk_path(name))

    # -- maps ----------------------------------------------------------------------------

    async def save_map(self, task_id: str, chunk_map: ChunkMap) -> None:
        """Persist ``chunk_map`` as ``maps/<task_id>.json`` (temp → rename).

        Raises NameInvalid for a malformed task id, StoreFull if the disk is full.
        """
        parse_task_id(task_id)
        await self._run(self._save_map_sync, task_id, chunk_map.to_json())

    def _save_map_sync(self, task_id: str, body: bytes) -> None:
        tmp = self._tmp_dir / f"map-{task_id}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, memoryview(body))
            finally:
                os.close(fd)
            os.replace(tmp, self._map_path(task_id))
        except OSError as exc:
            _unlink_quietly(tmp)
            if exc.errno in _NO_SPACE:
                raise StoreFull(f"store at {self.root} is full: cannot save map {task_id}") from exc
            raise P2PError(f"store at {self.root}: saving map {task_id} failed: {exc}") from exc

    async def load_map(self, task_id: str) -> ChunkMap | None:
        """The map saved for ``task_id``, or None. Raises NameInvalid for a malformed id.

        A map file that does not parse (it can only have been damaged outside this store)
        is removed, logged and reported as None, so the caller fetches it afresh.
        """
        parse_task_id(task_id)
        return await self._run(self._load_map_sync, task_id)

    def _load_map_sync(self, task_id: str) -> ChunkMap | None:
        path = self._map_path(task_id)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return ChunkMap.from_json(body)
        except (BodyInvalid, P2PError) as exc:
            log.warning("removing unreadable chunk map %s: %s", path, exc)
            _unlink_quietly(path)
            return None

    async def complete_map(self, task_id: str) -> ChunkMap | None:
        """The saved map for ``task_id`` if every one of its chunks is held, else None."""
        chunk_map = await self.load_map(task_id)
        if chunk_map is None or self.missing(chunk_map):
            return None
        return chunk_map

    # -- assembling a blob ---------------------------------------------------------------

    async def assemble(
        self,
        chunk_map: ChunkMap,
        dest: Path | str,
        *,
        verify_sha256: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Write the blob ``chunk_map`` describes to ``dest``, atomically.

        The bytes go to ``.<dest name>.p2pdist-<random>.part`` beside ``dest`` and are
        renamed over it only once complete (and, with ``verify_sha256``, once their sha256
        matches ``chunk_map.digest``), so an existing ``dest`` is never half-overwritten.
        The chunks are pinned while copying. ``on_progress(bytes_done)`` is called in the
        trio thread after each chunk.

        Raises ChunkUnknown if a chunk is not held, IntegrityError if the sha256 (or a
        chunk's length) is wrong, StoreFull if ``dest``'s disk is full; the temp file is
        removed in every failure, including cancellation.
        """
        dest = Path(dest)
        absent = self.missing(chunk_map)
        if absent:
            raise ChunkUnknown(
                f"cannot assemble {chunk_map.digest}: {len(absent)} of {chunk_map.n_chunks} "
                f"chunks not held (first: #{absent[0]} {chunk_map.chunks[absent[0]]})"
            )
        tmp = dest.parent / f".{dest.name}.p2pdist-{secrets.token_hex(6)}.part"
        hasher = hashlib.sha256() if verify_sha256 else None
        with self.pinned(chunk_map.chunks):
            try:
                fd = await self._run(
                    os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
                )
            except OSError as exc:
                raise P2PError(f"cannot create {tmp}: {exc}") from exc
            done = False
            try:
                written = 0
                for i, name in enumerate(chunk_map.chunks):
                    _, length = chunk_map.span(i)
                    await self._run(self._append_chunk, fd, name, length, hasher, dest)
                    self.touch(name)
                    written += length
                    if on_progress is not None:
                        on_progress(written)
                fd, closing = -1, fd
                await self._run(os.close, closing)
                if hasher is not None and hasher.hexdigest() != chunk_map.digest.hex:
                    raise IntegrityError(
                        f"blob {chunk_map.digest}: assembled bytes hash to sha256:{hasher.hexdigest()}"
                    )
                await self._run(os.replace, tmp, dest)
                done = True
            finally:
                if fd >= 0:
                    os.close(fd)
                if not done:
                    _unlink_quietly(tmp)

    def _append_chunk(
        self, out: int, name: str, length: int, hasher: _Hasher | None, dest: Path
    ) -> None:
        """Worker thread: append chunk ``name`` (``length`` bytes expected) to fd ``out``."""
        try:
            src = os.open(self._chunk_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            self._lost(name)
            raise ChunkUnknown(f"cannot assemble into {dest}: chunk {name} is not held") from exc
        try:
            if hasher is None:
                copied = _copy_kernel(src, out, length)
            else:
                copied = _copy_hashing(src, out, length, hasher)
            if copied == length and os.read(src, 1):
                copied += 1  # longer than the map says
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise StoreFull(f"no space left on disk writing {dest}") from exc
            raise P2PError(f"writing {dest} failed: {exc}") from exc
        finally:
            os.close(src)
        if copied != length:
            raise IntegrityError(
                f"cannot assemble into {dest}: chunk {name} is not the {length} bytes its map says"
            )

    # -- internals -----------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _chunk_path(self, name: str) -> Path:
        return self._chunks_dir / name[:2] / name

    def _map_path(self, task_id: str) -> Path:
        return self._maps_dir / f"{task_id}.json"

    def _forget_locked(self, name: str) -> bool:
        size = self._index.pop(name, None)
        if size is None:
            return False
        self._used -= size
        return True

    def _lost(self, name: str) -> None:
        """A chunk's file vanished behind our back (removed outside the store): drop it."""
        with self._lock:
            if self._forget_locked(name):
                log.warning("chunk %s vanished from %s; forgetting it", name, self.root)

    def _pinned_bytes_locked(self) -> int:
        index = self._index
        return sum(index.get(n, 0) for n in self._pins)


# -- worker-thread helpers -------------------------------------------------------------


def _prepare(root: Path, capacity: int | None) -> OrderedDict[str, int]:
    """Create the layout, clear ``tmp/``, and index ``chunks/`` by mtime (oldest first)."""
    chunks_dir, tmp_dir, maps_dir = root / "chunks", root / "tmp", root / "maps"
    for d in (chunks_dir, tmp_dir, maps_dir):
        d.mkdir(parents=True, exist_ok=True)
    # all 256 prefix directories now, so a put makes none (a mkdir per chunk, and an
    # inode to allocate for most of a fresh store's first 256 chunks)
    for i in range(256):
        try:
            (chunks_dir / f"{i:02x}").mkdir(exist_ok=True)
        except FileExistsError:
            log.warning("leaving unexpected file %s", chunks_dir / f"{i:02x}")
    for entry in os.scandir(tmp_dir):
        # Only we write here, and nothing is in flight before open returns.
        if entry.is_dir(follow_symlinks=False):
            log.warning("leaving unexpected directory %s", entry.path)
            continue
        _unlink_quietly(Path(entry.path))
    found: list[tuple[float, str, int]] = []
    for sub in os.scandir(chunks_dir):
        if not (sub.is_dir(follow_symlinks=False) and len(sub.name) == 2):
            continue
        for entry in os.scandir(sub.path):
            # Anything but a well-named regular file in the right prefix directory is not
            # ours; leave it alone rather than guess.
            if not (is_hex64(entry.name) and entry.name[:2] == sub.name):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            found.append((st.st_mtime, entry.name, st.st_size))
    found.sort()
    index: OrderedDict[str, int] = OrderedDict((name, size) for _, name, size in found)
    if capacity is not None:
        used = sum(index.values())
        while used > capacity and index:
            name, size = index.popitem(last=False)
            _unlink_quietly(chunks_dir / name[:2] / name)
            used -= size
    return index


def _takes_direct_io(tmp_dir: Path) -> bool:
    """Whether files under ``tmp_dir`` open with ``O_DIRECT`` (tmpfs and some others refuse)."""
    probe = tmp_dir / f"direct-probe.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        log.info("%s does not take O_DIRECT: chunks go through the page cache", tmp_dir.parent)
        return False
    os.close(fd)
    _unlink_quietly(probe)
    return True


def _write_all(fd: int, view: memoryview) -> None:
    """Write all of ``view`` to ``fd`` (os.write may write less than asked). On an
    ``O_DIRECT`` fd the block-aligned head goes straight from the buffer to the disk, the
    rest through the page cache (:func:`storage.direct.write_direct_head`)."""
    if is_direct(fd):
        view = write_direct_head(fd, view)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _copy_kernel(src: int, out: int, length: int) -> int:
    """Copy up to ``length`` bytes src → out in the kernel where possible; bytes copied."""
    copied = 0
    while copied < length:
        try:
            n = os.copy_file_range(src, out, length - copied)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            return copied + _copy_hashing(src, out, length - copied, None)
        if n == 0:
            break
        copied += n
    return copied


def _copy_hashing(src: int, out: int, length: int, hasher: _Hasher | None) -> int:
    """Copy up to ``length`` bytes src → out through a buffer, feeding ``hasher``."""
    buf = bytearray(min(_COPY_PIECE, max(length, 1)))
    view = memoryview(buf)
    copied = 0
    while copied < length:
        n = os.readv(src, [view[: min(len(buf), length - copied)]])
        if n == 0:
            break
        if hasher is not None:
            hasher.update(view[:n])
        _write_all(out, view[:n])
        copied += n
    return copied


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
