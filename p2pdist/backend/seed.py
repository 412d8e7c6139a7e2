"""Seeding: stream a blob from its origin once, cut it into chunks, hash and store each.

Used by the tracker (the cluster's seed, single flight per task) and by a peer that cannot
reach any tracker (it then seeds for itself). Each chunk is published through
``on_chunk`` as soon as it is hashed and stored (cut-through), so downloaders start long
before the origin has sent the last byte. Every byte is hashed exactly once by BLAKE3 and
once by sha256 and written, in one worker-thread call per chunk
(``ChunkStore.put_new``), while the next chunk is received.

The returned :class:`ChunkMap` is *sealed*: its sha256 was checked against the expected
digest (or, with none expected, it is the digest). A mismatch raises
:class:`IntegrityError` and nothing is sealed.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Awaitable, Callable

import trio

from p2pdist.backend.origin import Origin, read_full
from p2pdist.core.chunkmap import ChunkMap, chunk_size_for
from p2pdist.core.digest import Digest
from p2pdist.core.errors import IntegrityError, OriginError
from p2pdist.core.task import TaskSpec
from p2pdist.storage.chunkstore import ChunkStore
from p2pdist.storage.direct import aligned_buffer

OnStart = Callable[[int | None, int], None]
OnChunk = Callable[[int, str, int], Awaitable[None] | None]

_BUFFERS = 3


async def seed_from_origin(origin: Origin, spec: TaskSpec, store: ChunkStore, *,
                           on_start: OnStart | None = None, on_chunk: OnChunk | None = None,
                           chunk_size: int | None = None) -> ChunkMap:
    sha = hashlib.sha256()
    names: list[str] = []
    total = 0
    async with origin.open(spec) as stream:
        size = stream.size
        cs = chunk_size or chunk_size_for(size)
        if on_start is not None:
            on_start(size, cs)
        # page aligned, so the store writes them O_DIRECT (storage.direct)
        free_send, free_recv = trio.open_memory_channel[mmap.mmap](_BUFFERS)
        work_send, work_recv = trio.open_memory_channel[tuple[mmap.mmap, int]](_BUFFERS)
        for _ in range(_BUFFERS):
            free_send.send_nowait(aligned_buffer(cs))

        async def consume() -> None:
            async with work_recv:
                async for buf, n in work_recv:
                    view = memoryview(buf)[:n]
                    name = await store.put_new(view, also=sha)  # in order: sha256 sees the blob whole
                    view.release()
                    names.append(name)
                    if on_chunk is not None:
                        res = on_chunk(len(names) - 1, name, n)
                        if res is not None:
                            await res
                    free_send.send_nowait(buf)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            async with work_send:
                while True:
                    buf = await free_recv.receive()
                    fill = await read_full(stream, memoryview(buf))
                    total += fill
                    if fill:
                        await work_send.send((buf, fill))
                    if fill < cs:
                        break
    if size is not None and total != size:
        raise OriginError(f"origin {spec.url} sent {total} of {size} bytes")
    actual = Digest(sha.hexdigest())
    if spec.digest is not None and actual != spec.digest:
        raise IntegrityError(f"origin {spec.url} sent bytes with digest {actual}, expected {spec.digest}")
    return ChunkMap(actual, total, cs, tuple(names))
