"""Faults on a loopback cluster: dying peers, lying peers, a missing or dying tracker, a
restarted peer, an origin whose bytes do not match their digest.

Whatever breaks, every copy that reports complete is the blob (sha256-checked), and no
store ever holds a byte under a name it does not hash to.
"""

from __future__ import annotations

import socket

import pytest
import trio
from _helpers import MiB, assert_copy, rehash_store

from p2pdist.core.chunkmap import chunk_count, chunk_size_for
from p2pdist.core.config import PeerConfig
from p2pdist.core.errors import IntegrityError
from p2pdist.core.task import TaskSpec
from p2pdist.peer.download import Download
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster, start_peer

FAST = {"chunk_timeout": 2.0}


async def wait_held(d: Download, n: int) -> None:
    while len(d.held) < n and not d.finished.is_set():
        await d.wait_changed()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("topology", ["tree", "swarm"])
async def test_peer_killed_mid_transfer(tmp_path, topology):
    blob = make_blob(15 * 4 * MiB + 3, seed=10)
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=6, topology=topology, origin=origin,
                                peer_overrides=FAST, tracker_overrides={"fanout": 2})
        spec = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(40):
            ds = [p.start_download(spec) for p in c.peers]
            await wait_held(ds[0], 3)
            assert not ds[0].complete, "too late: the victim finished before it was killed"
            c.kill_peer(0)
            for d in ds[1:]:
                await assert_copy(d, blob, tmp_path)
        assert not ds[0].complete
        for i in range(1, 6):
            rehash_store(tmp_path / f"peer{i}")
            assert c.peers[i].store.statistics().pinned_bytes == 0
        nursery.cancel_scope.cancel()


async def _corrupt_store(root) -> int:
    n = 0
    for f in (root / "chunks").glob("*/*"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
        n += 1
    return n


async def test_corrupt_peer_in_swarm_is_dropped(tmp_path):
    blob = make_blob(8 * 4 * MiB + 5, seed=11)
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=4, topology="swarm", origin=origin,
                                peer_overrides=FAST)
        spec = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(40):
            liar = c.peers[0]
            await assert_copy(liar.start_download(spec), blob, tmp_path)
            n_chunks = chunk_count(len(blob), chunk_size_for(len(blob)))
            assert await _corrupt_store(liar.store.root) == n_chunks
            # Wait until the tracker lists the liar as a complete copy.
            entries = c.tracker.tasks[spec.task_id].peers.peers
            while not (entries.get("peer0") and entries["peer0"].complete):
                await trio.sleep(0.02)
            ds = [p.start_download(spec) for p in c.peers[1:]]
            for d in ds:
                await assert_copy(d, blob, tmp_path)
        # Which downloader asks the liar first is the scheduler's random choice; whoever
        # did caught it and dropped it, and somebody did.
        summaries = [d.summary() for d in ds]
        assert sum(s["corrupt_chunks"] for s in summaries) > 0, summaries
        for s in summaries:
            if s["corrupt_chunks"]:
                assert set(s["bad_sources"]) == {"peer0"}, s
        for i in range(1, 4):
            assert rehash_store(tmp_path / f"peer{i}") == n_chunks
        nursery.cancel_scope.cancel()


async def test_corrupt_node_is_dropped_and_origin_used(tmp_path):
    blob = make_blob(6 * 4 * MiB + 5, seed=12)
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=1, origin=origin, peer_overrides=FAST)
        spec = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(30):
            liar = c.peers[0]
            await assert_copy(liar.start_download(spec), blob, tmp_path)
            await _corrupt_store(liar.store.root)
            victim, _ = await start_peer(nursery, PeerConfig(
                listen="127.0.0.1:0", data_dir=str(tmp_path / "victim"), trackers=(),
                peer_id="victim", **FAST))
            d = victim.start_download(spec, nodes=[liar.advertise])
            await assert_copy(d, blob, tmp_path)
        s = d.summary()
        assert s["mode"] == "nodes", s
        assert s["corrupt_chunks"] > 0, s
        assert f"node:{liar.advertise}" in s["bad_sources"], s
        assert s["bytes_from_origin"] >= len(blob) - 0, s  # the only honest source left
        assert rehash_store(tmp_path / "victim") == chunk_count(len(blob), chunk_size_for(len(blob)))
        nursery.cancel_scope.cancel()


async def test_node_with_forged_map_never_completes_wrong_bytes(tmp_path):
    """A --node peer that serves a chunk map claiming the wanted digest but listing the
    chunks of another blob: each chunk matches its (forged) hash, so only the whole-blob
    sha256 can tell. The download must not seal it."""
    wanted = make_blob(2 * 4 * MiB + 1, seed=13)
    other = make_blob(2 * 4 * MiB + 1, seed=14)
    origin = StaticOrigin({"wanted": wanted, "other": other})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=1, origin=origin, peer_overrides=FAST)
        liar = c.peers[0]
        spec = TaskSpec(origin.url("wanted"), sha256_digest(wanted))
        with trio.fail_after(30):
            other_d = liar.start_download(TaskSpec(origin.url("other"), sha256_digest(other)))
            cmap = await other_d.wait()
            forged = type(cmap)(sha256_digest(wanted), cmap.size, cmap.chunk_size, cmap.chunks)
            await liar.store.save_map(spec.task_id, forged)
            victim, _ = await start_peer(nursery, PeerConfig(
                listen="127.0.0.1:0", data_dir=str(tmp_path / "victim"), trackers=(),
                peer_id="victim", **FAST))
            d = victim.start_download(spec, nodes=[liar.advertise])
            await d.finished.wait()
        if d.error is None:
            # Acceptable only if what was sealed really is the wanted blob.
            await assert_copy(d, wanted, tmp_path)
        else:
            assert isinstance(d.error, IntegrityError), d.error
            assert await victim.store.complete_map(spec.task_id) is None
        nursery.cancel_scope.cancel()


async def test_tracker_unreachable_falls_back_to_origin(tmp_path):
    blob = make_blob(3 * 4 * MiB + 17, seed=15)
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.serve)
        peer, _ = await start_peer(nursery, PeerConfig(
            listen="127.0.0.1:0", data_dir=str(tmp_path / "p"), peer_id="lonely",
            trackers=(f"http://127.0.0.1:{closed_port()}",), **FAST))
        spec = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(30):
            d = peer.start_download(spec)
            await assert_copy(d, blob, tmp_path)
        s = d.summary()
        assert s["mode"] == "origin", s
        assert s["bytes_from_origin"] == len(blob), s
        assert origin.bytes_sent == len(blob)
        nursery.cancel_scope.cancel()


async def test_tracker_killed_while_seeding(tmp_path):
    blob = make_blob(10 * 4 * MiB + 1, seed=16)
    origin = StaticOrigin({"b": blob}, piece=1 * MiB, delay=0.05)  # 2 s of seeding: time to kill the tracker midway
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=4, origin=origin, peer_overrides=FAST)
        spec = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(40):
            ds = [p.start_download(spec) for p in c.peers]
            await wait_held(ds[0], 2)
            assert c.tracker.tasks[spec.task_id].sealed is None, "too late: already sealed"
            c.kill_tracker()
            for d in ds:
                await assert_copy(d, blob, tmp_path)
        for i, p in enumerate(c.peers):
            rehash_store(tmp_path / f"peer{i}")
            # Nothing stays pinned (unevictable) once the downloads are over.
            assert p.store.statistics().pinned_bytes == 0, p.peer_id
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("topology", ["tree", "swarm"])
async def test_tracker_killed_after_sealing(tmp_path, topology):
    blob = make_blob(15 * 4 * MiB + 1, seed=17)
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=5, origin=origin, topology=topology,
                                peer_overrides=FAST)
        spec = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(40):
            ds = [p.start_download(spec) for p in c.peers]
            while ds[0].sealed is None:
                await ds[0].wait_changed()
            assert c.tracker.tasks[spec.task_id].sealed is not None
            assert not all(d.finished.is_set() for d in ds), "too late: all done already"
            c.kill_tracker()
            for d in ds:
                await assert_copy(d, blob, tmp_path)
        nursery.cancel_scope.cancel()


async def test_restarted_peer_resumes_from_verified_chunks(tmp_path):
    blob = make_blob(12 * 4 * MiB + 9, seed=18)
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=1, origin=origin, peer_overrides=FAST)
        spec = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(30):
            first = c.peers[0].start_download(spec)
            await wait_held(first, 6)
            assert not first.complete, "too late: finished before the kill"
            c.kill_peer(0)
            await first.finished.wait()
        assert not first.complete
        root = tmp_path / "peer0"
        task = c.tracker.tasks[spec.task_id]
        with trio.fail_after(30):
            while task.sealed is None:  # the tracker may still be seeding (cut-through)
                await task.changed.wait()
        cmap = task.sealed
        on_disk = [root / "chunks" / n[:2] / n for n in set(cmap.chunks)]
        on_disk = [f for f in on_disk if f.exists()]
        assert len(on_disk) >= 6
        held_bytes = sum(f.stat().st_size for f in on_disk)
        assert not list((root / "maps").iterdir()), "no map may be saved for a partial blob"
        with trio.fail_after(30):
            again, _ = await start_peer(nursery, c.peers[0].config)
            second = again.start_download(spec)
            await assert_copy(second, blob, tmp_path)
        s = second.summary()
        assert s["chunks_reused"] >= 6, s
        assert s["bytes_from_peers"] + s["bytes_from_origin"] <= len(blob) - held_bytes, s
        rehash_store(root)
        nursery.cancel_scope.cancel()


async def test_origin_digest_mismatch_fails_everywhere(tmp_path):
    blob = make_blob(3 * 4 * MiB + 2, seed=19)
    wrong = sha256_digest(b"not these bytes")
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        c = await start_cluster(nursery, tmp_path, peers=3, origin=origin, peer_overrides=FAST)
        spec = TaskSpec(origin.url("b"), wrong)
        with trio.fail_after(30):
            ds = [p.start_download(spec) for p in c.peers]
            for d in ds:
                with pytest.raises(IntegrityError):
                    await d.wait()
                s = d.summary()
                assert s["state"] == "failed" and s["error"]["code"] == "DIGEST_MISMATCH", s
        assert c.tracker.tasks[spec.task_id].error is not None
        assert await c.tracker.store.load_map(spec.task_id) is None
        for p in c.peers:
            assert await p.store.load_map(spec.task_id) is None
            rehash_store(p.store.root)
        # The peers and the tracker are still alive: the right digest now works.
        good = TaskSpec(origin.url("b"), sha256_digest(blob))
        with trio.fail_after(30):
            await assert_copy(c.peers[0].start_download(good), blob, tmp_path)
        nursery.cancel_scope.cancel()


async def test_origin_digest_mismatch_without_tracker(tmp_path):
    blob = make_blob(2 * 4 * MiB + 2, seed=20)
    origin = StaticOrigin({"b": blob})
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.serve)
        peer, _ = await start_peer(nursery, PeerConfig(
            listen="127.0.0.1:0", data_dir=str(tmp_path / "p"), peer_id="alone", **FAST))
        spec = TaskSpec(origin.url("b"), sha256_digest(b"something else"))
        with trio.fail_after(30):
            d = peer.start_download(spec)
            with pytest.raises(IntegrityError):
                await d.wait()
        assert d.summary()["error"]["code"] == "DIGEST_MISMATCH"
        assert await peer.store.load_map(spec.task_id) is None
        nursery.cancel_scope.cancel()
