"""The chunk fast path, server side: ``GET /chunks/<blake3>`` answered with the chunk's file
(the HTTP server reads the store's ``O_DIRECT`` fd into a reused buffer, or uses
``os.sendfile`` when the store keeps the page cache).

- 404 ``CHUNK_UNKNOWN`` when the chunk is not held; 400 ``NAME_INVALID`` for a malformed name.
- 503 ``BUSY`` when every upload slot is taken, so the asker goes to another neighbour
  at once instead of queueing here.
- zstd on the wire when the asker sends ``Accept-Encoding: zstd`` and the chunk compresses
  well (judged on a 64 KiB sample, remembered per chunk). Hashes always cover the
  uncompressed bytes; the asker caps decompression at the chunk size.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import trio
import zstandard

from p2pdist.core.digest import parse_chunk_name
from p2pdist.core.errors import Busy, ChunkPassedOn, ChunkUnknown, P2PError
from p2pdist.net.http import FileBody, Handler, Request, Response
from p2pdist.net.throttle import TokenBucket
from p2pdist.storage.chunkstore import ChunkStore
from p2pdist.storage.direct import ALIGN, AlignedBuffers, aligned_buffer, read_span

SAMPLE = 64 * 1024
MIN_RATIO = 1.25
_MEMO = 4096


class UploadSlots:
    """A counter of concurrent uploads that refuses instead of queueing. ``on_release``,
    if set, is called after each release (the tracker hands a freed slot to a peer
    waiting for a fresh chunk)."""

    def __init__(self, slots: int):
        self.slots = slots
        self.in_use = 0
        self.on_release: Callable[[], None] | None = None

    @property
    def full(self) -> bool:
        return self.in_use >= self.slots

    def try_acquire(self) -> bool:
        if self.full:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1
        if self.on_release is not None:
            self.on_release()


# The fd may be the store's O_DIRECT one: reads go through read_span into aligned buffers,
# reused for the per-chunk sample (a fresh mapping each is fresh memory each).
_samples = AlignedBuffers(SAMPLE + 2 * ALIGN, keep=4)


def _compressible(fd: int, size: int) -> bool:
    buf = _samples.get()
    try:
        sample = read_span(fd, buf, 0, min(SAMPLE, size))
        if len(sample) < 4096:
            return False
        return len(zstandard.ZstdCompressor(level=1).compress(sample)) * MIN_RATIO <= len(sample)
    finally:
        _samples.put(buf)


def _compress_file(fd: int, size: int) -> bytes:
    data = read_span(fd, aligned_buffer(size + 2 * ALIGN), 0, size)
    return zstandard.ZstdCompressor(level=1, write_content_size=True).compress(data)


async def _paced(body: bytes, throttle: TokenBucket) -> AsyncIterator[bytes]:
    view = memoryview(body)
    for i in range(0, len(body), 256 * 1024):
        piece = view[i:i + 256 * 1024]
        yield bytes(piece)
        await throttle.consume(len(piece))


def make_chunk_handler(store: ChunkStore, slots: UploadSlots, *, compression: bool = True,
                       on_served: Callable[[int], None] | None = None,
                       limiter: trio.CapacityLimiter | None = None,
                       throttle: TokenBucket | None = None,
                       admit: Callable[[str, Request], None] | None = None,
                       refused: Callable[[str], None] | None = None) -> Handler:
    """``admit(name, request)``, if given, may refuse a chunk by raising (the seed's
    first-copy rule, engine.firstcopy) once a slot is known to be free, before it is
    taken. ``refused(reason)`` is told of every refusal: ``missing``, ``busy``, or the
    first-copy rule's ``passed_on`` and ``reserved``."""
    send = make_chunk_sender(store, slots, compression=compression, on_served=on_served,
                             limiter=limiter, throttle=throttle)

    def refuse(reason: str, exc: P2PError) -> P2PError:
        if refused is not None:
            refused(reason)
        return exc

    async def handle(request: Request) -> Response:
        name = parse_chunk_name(request.params["name"])
        if not store.has(name):
            raise refuse("missing", ChunkUnknown(f"chunk {name} is not held"))
        # Busy before admit: the first-copy rule records an admitted chunk as sent, so a
        # fresh chunk admitted and then refused busy would leave the seed's hand-out
        # queue with no byte sent (bench/sim.py: 138 of 256 fresh chunks at N = 100 did,
        # before this order). Nothing awaits between the check and the acquire.
        if slots.full:
            raise refuse("busy", Busy(f"all {slots.slots} upload slots are in use"))
        if admit is not None:
            try:
                admit(name, request)
            except ChunkPassedOn as exc:
                raise refuse(exc.reason, exc) from None
        acquired = slots.try_acquire()
        assert acquired
        return await send(name, request)

    return handle


ChunkSender = Callable[..., Awaitable[Response]]


def make_chunk_sender(store: ChunkStore, slots: UploadSlots, *, compression: bool = True,
                      on_served: Callable[[int], None] | None = None,
                      limiter: trio.CapacityLimiter | None = None,
                      throttle: TokenBucket | None = None) -> ChunkSender:
    """``await send(name, request, headers=())``: the response carrying held chunk
    ``name``, for a caller that has taken one of ``slots`` for it (released when the
    response is over, or at once if making it fails)."""
    memo: OrderedDict[str, bool] = OrderedDict()

    async def send(name: str, request: Request, headers: Sequence[tuple[str, str]] = ()) -> Response:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                slots.release()
                store.unpin([name])

        store.pin([name])
        try:
            fd, size = store.open_fd(name)
        except BaseException:
            release()
            raise
        try:
            wants_zstd = compression and "zstd" in (request.header("accept-encoding") or "")
            if wants_zstd and size >= 4096:
                verdict = memo.get(name)
                if verdict is None:
                    verdict = await trio.to_thread.run_sync(_compressible, fd, size, limiter=limiter)
                    memo[name] = verdict
                    if len(memo) > _MEMO:
                        memo.popitem(last=False)
                if verdict:
                    body = await trio.to_thread.run_sync(_compress_file, fd, size, limiter=limiter)
                    os.close(fd)
                    if on_served:
                        on_served(size)
                    return Response(200, [("content-type", "application/octet-stream"),
                                          ("content-encoding", "zstd"), *headers],
                                    _paced(body, throttle) if throttle is not None else body,
                                    content_length=len(body), on_close=release)
            if on_served:
                on_served(size)
            return Response(200, [("content-type", "application/octet-stream"), *headers],
                            FileBody(fd, 0, size, throttle), on_close=release)
        except BaseException:
            os.close(fd)
            release()
            raise

    return send
