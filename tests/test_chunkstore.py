from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import blake3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdist.core.chunkmap import ChunkMap
from p2pdist.core.digest import Digest
from p2pdist.core.errors import (
    ChunkUnknown,
    IntegrityError,
    NameInvalid,
    P2PError,
    StoreFull,
)
from p2pdist.storage import chunkstore
from p2pdist.storage.chunkstore import ChunkStore
from p2pdist.storage.direct import ALIGN, aligned_buffer, is_direct, read_span


def name_of(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def blob_map(blob: bytes, chunk_size: int) -> tuple[ChunkMap, list[bytes]]:
    pieces = [blob[i : i + chunk_size] for i in range(0, len(blob), chunk_size)]
    cmap = ChunkMap(
        Digest(hashlib.sha256(blob).hexdigest()),
        len(blob),
        chunk_size,
        tuple(name_of(p) for p in pieces),
    )
    return cmap, pieces


def final_files(root: Path) -> set[str]:
    return {p.name for p in (root / "chunks").glob("*/*")}


def tmp_files(root: Path) -> list[Path]:
    return list((root / "tmp").iterdir())


def data(tag: str, size: int = 100) -> bytes:
    return (tag.encode() * size)[:size]


# -- put / read ---------------------------------------------------------------------------


async def test_put_read_roundtrip(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    d = os.urandom(5000)
    n = name_of(d)
    assert not store.has(n)
    assert await store.put(n, d) is True
    assert store.has(n)
    assert store.size_of(n) == 5000
    assert store.used == 5000
    assert await store.read(n) == d
    assert (tmp_path / "chunks" / n[:2] / n).read_bytes() == d
    assert await store.put(n, d) is False
    assert store.used == 5000
    assert tmp_files(tmp_path) == []


async def test_put_accepts_buffers_and_big_chunks(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    big = os.urandom(3 << 20)
    assert await store.put(name_of(big), memoryview(big)) is True
    small = bytearray(b"xyz" * 10)
    assert await store.put(name_of(bytes(small)), small) is True
    assert await store.read(name_of(big)) == big
    empty = b""
    assert await store.put(name_of(empty), empty) is True
    assert await store.read(name_of(empty)) == b""


async def test_wrong_hash_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    claimed = name_of(b"the real bytes")
    with pytest.raises(IntegrityError):
        await store.put(claimed, b"other bytes")
    assert not store.has(claimed)
    assert store.used == 0
    assert final_files(tmp_path) == set()
    assert tmp_files(tmp_path) == []
    assert store.statistics().reserved == 0


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "a" * 63, "g" * 64, "", "a" * 64 + "/"])
async def test_bad_chunk_names_are_refused(tmp_path: Path, bad: str) -> None:
    store = await ChunkStore.open(tmp_path)
    with pytest.raises(NameInvalid):
        await store.put(bad, b"x")
    with pytest.raises(NameInvalid):
        await store.read(bad)
    with pytest.raises(NameInvalid):
        store.open_fd(bad)


async def test_put_new_names_the_chunk(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    d = b"streamed and hashed by the tracker"
    assert await store.put_new(d) == name_of(d)
    assert await store.read(name_of(d)) == d
    assert await store.put_new(d) == name_of(d)  # held already: nothing written again
    assert len(store) == 1 and store.used == len(d)
    assert tmp_files(tmp_path) == []


async def test_read_and_open_fd_of_absent_chunk(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    with pytest.raises(ChunkUnknown):
        await store.read("0" * 64)
    with pytest.raises(ChunkUnknown):
        store.open_fd("0" * 64)


async def test_open_fd_gives_the_bytes(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    d = os.urandom(70_000)
    await store.put(name_of(d), d)
    fd, size = store.open_fd(name_of(d))
    try:
        assert size == len(d)
        assert is_direct(fd) == store.direct_io
        buf = aligned_buffer(size + 2 * ALIGN)
        assert read_span(fd, buf, 0, size + 1) == d
        assert read_span(fd, buf, 4097, 10_000) == d[4097:14_097]
    finally:
        os.close(fd)


# -- direct I/O ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, (3 << 20) + 123, 4 << 20])
@pytest.mark.parametrize("aligned", [True, False])
async def test_direct_io_round_trips_any_length_and_buffer(tmp_path: Path, size: int, aligned: bool) -> None:
    """The block-aligned head of an aligned buffer goes O_DIRECT, the tail (or a misaligned
    buffer) through the page cache; the file holds exactly the bytes either way."""
    store = await ChunkStore.open(tmp_path)
    assert store.direct_io  # ext4/xfs/tmpfs on a recent kernel all take O_DIRECT
    d = os.urandom(size)
    if aligned:
        buf = aligned_buffer(size + ALIGN)
        buf[:size] = d
        view = memoryview(buf)[:size]
    else:
        view = memoryview(bytearray(b"x" + d))[1:]
    assert await store.put(name_of(d), view) is True
    path = tmp_path / "chunks" / name_of(d)[:2] / name_of(d)
    assert path.read_bytes() == d
    fd, got = store.open_fd(name_of(d))
    try:
        assert got == size
        out = aligned_buffer(size + 2 * ALIGN)
        for offset, want in [(0, size), (1, size), (size // 2, size), (max(size - 1, 0), 5)]:
            assert read_span(fd, out, offset, want) == d[offset:offset + want]
    finally:
        os.close(fd)


@pytest.mark.parametrize("direct_io", [True, False])
async def test_feed_hands_the_bytes_to_a_hasher(tmp_path: Path, direct_io: bool) -> None:
    store = await ChunkStore.open(tmp_path, direct_io=direct_io)
    for size in (0, 5000, 4 << 20, (5 << 20) + 3):  # the last is bigger than the reused buffers
        d = os.urandom(size)
        await store.put(name_of(d), d)
        sha = hashlib.sha256()
        await store.feed(name_of(d), sha)
        assert sha.digest() == hashlib.sha256(d).digest()
        assert await store.read(name_of(d)) == d
    with pytest.raises(ChunkUnknown):
        await store.feed("0" * 64, hashlib.sha256())


async def test_direct_io_off_keeps_the_page_cache(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path, direct_io=False)
    assert not store.direct_io
    d = os.urandom(10_000)
    await store.put(name_of(d), d)
    fd, _ = store.open_fd(name_of(d))
    try:
        assert not is_direct(fd)
        assert os.pread(fd, 20_000, 0) == d
    finally:
        os.close(fd)


async def test_a_file_system_refusing_o_direct_uses_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path, flags, *a):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", no_direct)
    store = await ChunkStore.open(tmp_path)
    assert not store.direct_io
    d = os.urandom(10_000)
    assert await store.put(name_of(d), d)
    assert await store.read(name_of(d)) == d
    assert tmp_files(tmp_path) == []


async def test_chunk_removed_behind_the_stores_back_is_forgotten(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    d = b"soon gone"
    await store.put(name_of(d), d)
    os.unlink(tmp_path / "chunks" / name_of(d)[:2] / name_of(d))
    with pytest.raises(ChunkUnknown):
        await store.read(name_of(d))
    assert not store.has(name_of(d))
    assert store.used == 0


async def test_prefix_directory_removed_behind_the_stores_back_is_made_again(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    assert len(list((tmp_path / "chunks").iterdir())) == 256  # all made at open
    d = b"lands in a prefix directory someone removed"
    (tmp_path / "chunks" / name_of(d)[:2]).rmdir()
    assert await store.put(name_of(d), d) is True
    assert await store.read(name_of(d)) == d
    assert tmp_files(tmp_path) == []


async def test_delete(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    d = b"delete me"
    await store.put(name_of(d), d)
    await store.delete(name_of(d))
    assert not store.has(name_of(d))
    assert store.used == 0
    assert final_files(tmp_path) == set()
    await store.delete(name_of(d))  # absent: no-op


# -- restart ------------------------------------------------------------------------------


async def test_restart_keeps_chunks_index_and_lru_order(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    chunks = [data(t) for t in "abc"]
    for c in chunks:
        await store.put(name_of(c), c)
    # LRU order after a restart comes from mtimes: make 'b' the oldest, then 'c', then 'a'.
    for c, mtime in zip(chunks, (3_000, 1_000, 2_000), strict=True):
        n = name_of(c)
        os.utime(tmp_path / "chunks" / n[:2] / n, (mtime, mtime))

    again = await ChunkStore.open(tmp_path, capacity=300)
    assert all(again.has(name_of(c)) for c in chunks)
    assert again.used == 300
    assert again.size_of(name_of(chunks[0])) == 100
    assert await again.read(name_of(chunks[2])) == chunks[2]  # touch 'c'
    d = data("d")
    await again.put(name_of(d), d)
    assert not again.has(name_of(chunks[1]))  # 'b' oldest by mtime
    assert again.has(name_of(chunks[0])) and again.has(name_of(chunks[2]))


async def test_open_removes_leftover_temp_files_and_ignores_strangers(tmp_path: Path) -> None:
    await ChunkStore.open(tmp_path)
    d = b"half written when the power went"
    (tmp_path / "tmp" / f"{name_of(d)}.abcd.tmp").write_bytes(d[:5])
    stranger = tmp_path / "chunks" / "ab" / "not-a-chunk"
    stranger.parent.mkdir(exist_ok=True)  # (open makes every prefix directory)
    stranger.write_bytes(b"?")
    store = await ChunkStore.open(tmp_path)
    assert tmp_files(tmp_path) == []
    assert not store.has(name_of(d))
    assert len(store) == 0
    assert stranger.exists()


async def test_open_with_lower_capacity_evicts_oldest(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    chunks = [data(t) for t in "abc"]
    for i, c in enumerate(chunks):
        await store.put(name_of(c), c)
        n = name_of(c)
        os.utime(tmp_path / "chunks" / n[:2] / n, (1000 + i, 1000 + i))
    again = await ChunkStore.open(tmp_path, capacity=200)
    assert again.used == 200
    assert not again.has(name_of(chunks[0]))
    assert len(final_files(tmp_path)) == 2


# -- eviction and pins --------------------------------------------------------------------


async def test_lru_eviction_order(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path, capacity=300)
    a, b, c, d, e = (data(t) for t in "abcde")
    for x in (a, b, c):
        await store.put(name_of(x), x)
    await store.read(name_of(a))  # a is now the most recent: b is the oldest
    await store.put(name_of(d), d)
    assert [store.has(name_of(x)) for x in (a, b, c, d)] == [True, False, True, True]
    store.touch(name_of(c))
    fd, _ = store.open_fd(name_of(a))  # open_fd touches too: order now d, c, a
    os.close(fd)
    await store.put(name_of(e), e)
    assert not store.has(name_of(d))
    assert store.used == 300
    assert final_files(tmp_path) == {name_of(x) for x in (a, c, e)}


async def test_pinned_chunks_are_never_evicted(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path, capacity=300)
    a, b, c, d = (data(t) for t in "abcd")
    for x in (a, b, c):
        await store.put(name_of(x), x)
    with store.pinned([name_of(a), name_of(b)]):
        await store.put(name_of(d), d)  # a, b pinned: c goes though it is newer
        assert store.has(name_of(a)) and store.has(name_of(b)) and not store.has(name_of(c))
        store.pin([name_of(d)])
        with pytest.raises(StoreFull) as info:
            await store.put(name_of(c), c)
        assert str(tmp_path) in str(info.value)
        assert "300 pinned" in str(info.value)
        assert store.used == 300 and store.statistics().reserved == 0
        store.unpin([name_of(d)])
        await store.put(name_of(c), c)  # d evictable again
        assert not store.has(name_of(d))


async def test_pins_are_refcounted_and_may_precede_the_chunk(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path, capacity=200)
    a, b, c = (data(t) for t in "abc")
    store.pin([name_of(a)])
    store.pin([name_of(a)])
    await store.put(name_of(a), a)
    await store.put(name_of(b), b)
    store.unpin([name_of(a)])
    await store.put(name_of(c), c)  # a still pinned once: b goes
    assert store.has(name_of(a)) and not store.has(name_of(b))
    store.unpin([name_of(a)])
    await store.put(name_of(b), b)  # a is the oldest and unpinned now
    assert not store.has(name_of(a))


async def test_chunk_bigger_than_capacity(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path, capacity=50)
    with pytest.raises(StoreFull, match="100 bytes needed"):
        await store.put(name_of(data("a")), data("a"))
    assert final_files(tmp_path) == set() and tmp_files(tmp_path) == []


async def test_concurrent_puts_never_overshoot_capacity(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path, capacity=10_000)
    blobs = [os.urandom(1000) for _ in range(40)]

    async with trio.open_nursery() as nursery:
        for b in blobs + blobs[:10]:  # some duplicates race each other
            nursery.start_soon(store.put, name_of(b), b)
    assert store.used <= 10_000
    assert store.statistics().reserved == 0
    on_disk = final_files(tmp_path)
    assert on_disk == {n for n in (name_of(b) for b in blobs) if store.has(n)}
    assert store.used == sum(store.size_of(n) or 0 for n in on_disk)
    assert tmp_files(tmp_path) == []


# -- a full disk --------------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
async def test_disk_full_midway_leaves_no_partial_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    store = await ChunkStore.open(tmp_path)
    d = os.urandom(200_000)
    real_write_all = chunkstore._write_all

    def write_half_then_fail(fd: int, view: memoryview) -> None:
        real_write_all(fd, view[: len(view) // 2])
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(chunkstore, "_write_all", write_half_then_fail)
    with pytest.raises(StoreFull) as info:
        await store.put(name_of(d), d)
    assert str(tmp_path) in str(info.value)
    assert not store.has(name_of(d))
    assert final_files(tmp_path) == set()
    assert tmp_files(tmp_path) == []
    assert store.used == 0 and store.statistics().reserved == 0

    monkeypatch.setattr(chunkstore, "_write_all", real_write_all)
    assert await store.put(name_of(d), d) is True


async def test_other_write_errors_are_not_store_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await ChunkStore.open(tmp_path)

    def fail(fd: int, view: memoryview) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(chunkstore, "_write_all", fail)
    with pytest.raises(P2PError) as info:
        await store.put(name_of(b"x"), b"x")
    assert not isinstance(info.value, StoreFull)
    assert str(tmp_path) in str(info.value)
    assert tmp_files(tmp_path) == [] and final_files(tmp_path) == set()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_real_full_disk_raises_store_full(tiny_tmpfs: Path) -> None:
    store = await ChunkStore.open(tiny_tmpfs)  # no capacity: only the disk limits it
    a, b = os.urandom(700 << 10), os.urandom(700 << 10)
    assert await store.put(name_of(a), a)
    with pytest.raises(StoreFull) as info:
        await store.put(name_of(b), b)
    assert str(tiny_tmpfs) in str(info.value)
    assert not store.has(name_of(b))
    assert final_files(tiny_tmpfs) == {name_of(a)}
    assert tmp_files(tiny_tmpfs) == []
    assert await store.read(name_of(a)) == a

    await store.delete(name_of(a))
    assert await store.put(name_of(b), b)
    assert await store.read(name_of(b)) == b


# -- maps ---------------------------------------------------------------------------------


async def test_save_and_load_map(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    blob = os.urandom(10_000)
    cmap, pieces = blob_map(blob, 4096)
    task_id = cmap.digest.hex
    assert await store.load_map(task_id) is None
    await store.save_map(task_id, cmap)
    assert (tmp_path / "maps" / f"{task_id}.json").read_bytes() == cmap.to_json()
    assert await store.load_map(task_id) == cmap
    url_task = "u" + "0123456789" * 4
    await store.save_map(url_task, cmap)
    assert await (await ChunkStore.open(tmp_path)).load_map(url_task) == cmap
    assert tmp_files(tmp_path) == []

    assert store.missing(cmap) == [0, 1, 2]
    assert await store.complete_map(task_id) is None
    await store.put(name_of(pieces[1]), pieces[1])
    assert store.missing(cmap) == [0, 2]
    for p in pieces:
        await store.put(name_of(p), p)
    assert store.missing(cmap) == []
    assert await store.complete_map(task_id) == cmap
    assert await store.complete_map("f" * 64) is None


@pytest.mark.parametrize(
    "bad",
    ["", "../" + "a" * 61, "a" * 63 + ".", "A" * 64, "a" * 65, "u" + "a" * 39, "x" * 41, "u/" + "a" * 39,
     "a" * 32 + "." + "a" * 31, "u" + "a" * 40 + "\n"],
)
async def test_bad_task_ids_are_refused(tmp_path: Path, bad: str) -> None:
    store = await ChunkStore.open(tmp_path)
    cmap, _ = blob_map(b"x", 4)
    with pytest.raises(NameInvalid):
        await store.save_map(bad, cmap)
    with pytest.raises(NameInvalid):
        await store.load_map(bad)
    assert list((tmp_path / "maps").iterdir()) == []


async def test_damaged_map_reads_as_absent(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path)
    (tmp_path / "maps" / f"{'a' * 64}.json").write_bytes(b'{"digest": 1')
    assert await store.load_map("a" * 64) is None
    assert not (tmp_path / "maps" / f"{'a' * 64}.json").exists()


# -- assemble -----------------------------------------------------------------------------


async def stored_blob(store: ChunkStore, size: int, chunk_size: int) -> tuple[ChunkMap, bytes]:
    blob = os.urandom(size)
    cmap, pieces = blob_map(blob, chunk_size)
    for p in pieces:
        await store.put(name_of(p), p)
    return cmap, blob


def part_files(d: Path) -> list[Path]:
    return list(d.glob(".*.part"))


@pytest.mark.parametrize("verify", [False, True])
async def test_assemble_writes_the_blob(tmp_path: Path, verify: bool) -> None:
    store = await ChunkStore.open(tmp_path / "store")
    cmap, blob = await stored_blob(store, 50_000, 16_384)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    progress: list[int] = []
    await store.assemble(cmap, dest, verify_sha256=verify, on_progress=progress.append)
    assert dest.read_bytes() == blob
    assert progress == [16_384, 32_768, 49_152, 50_000]
    assert part_files(dest.parent) == []
    assert store.statistics().pinned_bytes == 0


async def test_assemble_without_kernel_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await ChunkStore.open(tmp_path / "store")
    cmap, blob = await stored_blob(store, 30_000, 8192)

    def no_copy_file_range(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", no_copy_file_range)
    await store.assemble(cmap, tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == blob


async def test_assemble_empty_blob(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path / "store")
    cmap, _ = blob_map(b"", 4096)
    await store.assemble(cmap, tmp_path / "empty", verify_sha256=True)
    assert (tmp_path / "empty").read_bytes() == b""


async def test_assemble_sha256_mismatch_keeps_previous_dest(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path / "store")
    cmap, _ = await stored_blob(store, 20_000, 8192)
    lying = ChunkMap(Digest("0" * 64), cmap.size, cmap.chunk_size, cmap.chunks)
    dest = tmp_path / "blob"
    dest.write_bytes(b"the previous, good file")
    with pytest.raises(IntegrityError):
        await store.assemble(lying, dest, verify_sha256=True)
    assert dest.read_bytes() == b"the previous, good file"
    assert part_files(tmp_path) == []
    await store.assemble(lying, dest)  # without verification the map is trusted (sealed)
    assert len(dest.read_bytes()) == 20_000


async def test_assemble_missing_chunk(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path / "store")
    cmap, _ = await stored_blob(store, 20_000, 8192)
    await store.delete(cmap.chunks[1])
    dest = tmp_path / "blob"
    dest.write_bytes(b"old")
    with pytest.raises(ChunkUnknown):
        await store.assemble(cmap, dest)
    assert dest.read_bytes() == b"old"
    assert part_files(tmp_path) == []


async def test_assemble_chunk_vanishing_midway(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path / "store")
    cmap, _ = await stored_blob(store, 20_000, 8192)
    last = cmap.chunks[2]

    def remove_last(done: int) -> None:
        if done == 8192:
            os.unlink(tmp_path / "store" / "chunks" / last[:2] / last)

    with pytest.raises(ChunkUnknown):
        await store.assemble(cmap, tmp_path / "blob", on_progress=remove_last)
    assert not (tmp_path / "blob").exists()
    assert part_files(tmp_path) == []
    assert not store.has(last)


async def test_assemble_map_with_wrong_lengths(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path / "store")
    cmap, _ = await stored_blob(store, 20_000, 8192)
    wrong = ChunkMap(cmap.digest, 3 * 8000, 8000, cmap.chunks)
    with pytest.raises(IntegrityError):
        await store.assemble(wrong, tmp_path / "blob")
    assert part_files(tmp_path) == []


async def test_assemble_cancelled_leaves_nothing(tmp_path: Path) -> None:
    store = await ChunkStore.open(tmp_path / "store")
    cmap, _ = await stored_blob(store, 20_000, 8192)
    with trio.CancelScope() as scope:
        await store.assemble(cmap, tmp_path / "blob", on_progress=lambda done: scope.cancel())
    assert scope.cancelled_caught
    assert not (tmp_path / "blob").exists()
    assert part_files(tmp_path) == []


# -- property: the index always mirrors the disk ------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 7), st.integers(1, 300)),
        st.tuples(st.just("read"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("pin"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("unpin"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("delete"), st.integers(0, 7), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, capacity=st.integers(0, 1000))
async def test_index_mirrors_disk_and_respects_capacity_and_pins(
    ops: list[tuple[str, int, int]], capacity: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        store = await ChunkStore.open(root, capacity=capacity)
        contents = {i: data(f"chunk-{i}-", 0) for i in range(8)}
        pins: dict[str, int] = {}
        for op, i, size in ops:
            if op == "put":
                # Same slot may be given new content: each (slot, size) is a distinct chunk.
                contents[i] = data(f"chunk-{i}-{size}-", size)
            blob = contents[i]
            n = name_of(blob)
            if op == "put":
                held_pinned = {p for p in pins if store.has(p)}
                try:
                    await store.put(n, blob)
                except StoreFull:
                    assert not store.has(n)
                assert held_pinned <= {p for p in pins if store.has(p)}
            elif op == "read":
                if store.has(n):
                    assert await store.read(n) == blob
                else:
                    with pytest.raises(ChunkUnknown):
                        await store.read(n)
            elif op == "pin":
                store.pin([n])
                pins[n] = pins.get(n, 0) + 1
            elif op == "unpin" and pins.get(n):
                store.unpin([n])
                pins[n] -= 1
                if not pins[n]:
                    del pins[n]
            elif op == "delete":
                await store.delete(n)
                assert not store.has(n)

            on_disk = {p.name: p.stat().st_size for p in (root / "chunks").glob("*/*")}
            assert on_disk == {k: store.size_of(k) for k in on_disk}
            assert len(on_disk) == len(store)
            assert store.used == sum(on_disk.values()) <= capacity
            assert tmp_files(root) == []
        reopened = await ChunkStore.open(root, capacity=capacity)
        assert reopened.used == store.used and len(reopened) == len(store)
