"""seed_from_origin: sha256 in order beside BLAKE3 + writes of several chunks at once;
chunks are published in order however their writes finish, and a wrong digest seals
nothing."""

from __future__ import annotations

import random
from pathlib import Path

import blake3
import pytest
import trio

from p2pdist.backend.origin import HttpOrigin
from p2pdist.backend.seed import seed_from_origin
from p2pdist.core.errors import IntegrityError
from p2pdist.core.task import TaskSpec
from p2pdist.storage.chunkstore import ChunkStore
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest

CS = 64 * 1024


class ShuffledStore:
    """A real store whose writes finish in a random order."""

    def __init__(self, store: ChunkStore, rng: random.Random):
        self.store, self.rng = store, rng
        self.in_flight = self.most_in_flight = 0

    async def put_new(self, data: memoryview) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await trio.sleep(self.rng.random() * 0.01)
        try:
            return await self.store.put_new(data)
        finally:
            self.in_flight -= 1


async def test_chunks_are_published_in_order_while_written_out_of_order(tmp_path: Path, nursery) -> None:
    blob = make_blob(40 * CS + 123, seed=5)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    store = ShuffledStore(await ChunkStore.open(tmp_path), random.Random(1))
    published: list[tuple[int, str, int]] = []

    def on_chunk(index: int, name: str, length: int) -> None:
        assert store.store.has(name)  # stored before it is published
        published.append((index, name, length))

    http = HttpOrigin()
    try:
        cmap = await seed_from_origin(http, TaskSpec(origin.url("b"), sha256_digest(blob)), store,  # type: ignore[arg-type]
                                      on_chunk=on_chunk, chunk_size=CS)
    finally:
        await http.aclose()
    pieces = [blob[i:i + CS] for i in range(0, len(blob), CS)]
    assert cmap.digest == sha256_digest(blob) and cmap.size == len(blob)
    assert list(cmap.chunks) == [blake3.blake3(p).hexdigest() for p in pieces]
    assert published == [(i, cmap.chunks[i], len(p)) for i, p in enumerate(pieces)]
    assert store.most_in_flight > 1  # writes overlapped
    for name, piece in zip(cmap.chunks, pieces, strict=True):
        assert await store.store.read(name) == piece


async def test_a_wrong_digest_is_refused_after_every_chunk_is_hashed(tmp_path: Path, nursery) -> None:
    blob = make_blob(10 * CS, seed=6)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    http = HttpOrigin()
    try:
        with pytest.raises(IntegrityError):
            await seed_from_origin(http, TaskSpec(origin.url("b"), sha256_digest(b"other")),
                                   await ChunkStore.open(tmp_path), chunk_size=CS)
    finally:
        await http.aclose()
