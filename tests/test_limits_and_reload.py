"""Rate limits and upload slots are enforced; a config reload applies live keys without
dropping transfers and names the ones that need a restart."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import httpx
import pytest
import trio

from p2pdist.core.chunkmap import chunk_size_for
from p2pdist.core.config import PeerConfig, TrackerConfig
from p2pdist.core.errors import Busy, ChunkUnknown
from p2pdist.core.task import TaskSpec
from p2pdist.net.chunkclient import ChunkClient
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster, start_peer

MiB = 1 << 20


async def _seeded_node(tmp_path, nursery, blob, **overrides):
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    node, _ = await start_peer(nursery, PeerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "node"),
                                                   **overrides))
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    cmap = await node.start_download(spec).wait()
    return origin, node, spec, cmap


async def test_upload_cap_holds(tmp_path, nursery):
    blob = make_blob(4 * 4 * MiB, seed=41)
    origin, node, spec, _ = await _seeded_node(tmp_path, nursery, blob, upload_rate=8 * MiB,
                                               wire_compression="off")
    taker, _ = await start_peer(nursery, PeerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "t")))
    start = trio.current_time()
    with trio.fail_after(30):
        await taker.start_download(spec, nodes=[node.advertise]).wait()
    elapsed = trio.current_time() - start
    # 16 MiB at 8 MiB/s with a 1 MiB burst cannot take less than ~1.9 s (a floor, not a timing)
    assert elapsed >= (len(blob) - node.upload_bucket.burst) / (8 * MiB) * 0.95, elapsed
    assert taker.downloads[spec.task_id].stats.bytes_from_peers == len(blob)
    nursery.cancel_scope.cancel()


async def test_download_cap_holds(tmp_path, nursery):
    blob = make_blob(3 * 4 * MiB, seed=42)
    origin, node, spec, _ = await _seeded_node(tmp_path, nursery, blob)
    taker, _ = await start_peer(nursery, PeerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "t"),
                                                    download_rate=6 * MiB, wire_compression="off"))
    start = trio.current_time()
    with trio.fail_after(30):
        await taker.start_download(spec, nodes=[node.advertise]).wait()
    assert trio.current_time() - start >= (len(blob) - MiB) / (6 * MiB) * 0.95
    nursery.cancel_scope.cancel()


def cmap_rate(blob: bytes) -> int:
    """An upload rate at which one chunk of ``blob`` takes 2 s."""
    return chunk_size_for(len(blob)) // 2


async def test_full_upload_slots_answer_busy(tmp_path, nursery):
    blob = make_blob(2 * 4 * MiB, seed=43)
    origin, node, spec, cmap = await _seeded_node(tmp_path, nursery, blob, upload_slots=1,
                                                  upload_rate=cmap_rate(blob))
    client = ChunkClient()
    results: list[object] = []

    async def fetch(name: str) -> None:
        try:
            await client.fetch(node.advertise, name, bytearray(4 * MiB))
            results.append("ok")
        except Busy as exc:
            results.append(exc)

    await fetch(cmap.chunks[0])  # spends the bucket's burst: from here on uploads are paced
    async with trio.open_nursery() as n:
        n.start_soon(fetch, cmap.chunks[0])
        await trio.sleep(0.2)  # that upload holds the only slot (slowed to 2 s a chunk)
        n.start_soon(fetch, cmap.chunks[1])
    assert results.count("ok") == 2 and sum(isinstance(r, Busy) for r in results) == 1
    await client.aclose()
    nursery.cancel_scope.cancel()


async def test_apply_config_changes_live_keys_and_names_the_rest(tmp_path, nursery):
    c = await start_cluster(nursery, tmp_path, peers=1)
    peer, tracker = c.peers[0], c.tracker
    new = dataclasses.replace(peer.config, upload_rate=5 * MiB, upload_slots=3, listen="127.0.0.1:9",
                              chunk_policy="sequential")
    assert peer.apply_config(new) == {"listen"}
    assert peer.upload_bucket.rate == 5 * MiB and peer.slots.slots == 3
    assert peer.config.chunk_policy == "sequential" and peer.config.listen == "127.0.0.1:0"
    tnew = dataclasses.replace(tracker.config, topology="tree", fanout=2, data_dir="/elsewhere")
    assert tracker.apply_config(tnew) == {"data_dir"}
    assert tracker.policy.name == "tree" and tracker.policy.fanout == 2
    nursery.cancel_scope.cancel()


def test_live_keys_name_real_fields():
    from p2pdist.core.config import LIVE_KEYS

    for cls in (TrackerConfig, PeerConfig):
        assert LIVE_KEYS[cls] <= {f.name for f in dataclasses.fields(cls)}


async def test_daemon_reloads_on_file_change_and_sighup_and_refuses_bad_config(tmp_path):
    from test_cli import free_port, wait_healthy

    cfg = tmp_path / "p2pdist.toml"
    port = free_port()
    cfg.write_text(f'[peer]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "d"}"\nupload_slots = 2\n')
    log = tmp_path / "peer.log"
    async with trio.open_nursery() as nursery:
        with open(log, "wb") as fh:
            proc = await nursery.start(lambda task_status: trio.run_process(
                [sys.executable, "-m", "p2pdist", "peer", "--config", str(cfg)], stdout=fh,
                stderr=subprocess.STDOUT, check=False, task_status=task_status))
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, proc)

        async def slots() -> int:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{url}/api/v1/status")).json()["upload_slots"]["total"]

        async def until(pred, timeout=10.0):
            with trio.fail_after(timeout):
                while not await pred():
                    await trio.sleep(0.1)

        assert await slots() == 2
        cfg.write_text(cfg.read_text().replace("upload_slots = 2", "upload_slots = 5"))
        os.utime(cfg, (1, 1))  # a different mtime even within the same second
        await until(lambda: _eq(slots, 5))
        # a bad value is refused: the old one stays, the daemon keeps serving
        cfg.write_text(cfg.read_text().replace("upload_slots = 5", "upload_slots = 'lots'"))
        proc.send_signal(signal.SIGHUP)
        await until(lambda: _contains(log, b"refused"))
        assert await slots() == 5
        # a key that needs a restart is named, and the rest still applies
        cfg.write_text(f'[peer]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "other"}"\nupload_slots = 7\n')
        proc.send_signal(signal.SIGHUP)
        await until(lambda: _eq(slots, 7))
        await until(lambda: _contains(log, b"need a restart"))
        assert b"data_dir" in log.read_bytes() and b"Traceback" not in log.read_bytes()
        proc.send_signal(signal.SIGTERM)


async def _eq(fn, value) -> bool:
    return await fn() == value


async def _contains(path, needle: bytes) -> bool:
    return needle in path.read_bytes()


async def test_back_to_source_budget_per_origin_host(tmp_path, nursery):
    """With origin_concurrency = 1 the tracker fetches one blob at a time from one origin
    host, however many tasks are registered; all of them still complete."""
    blobs = {f"b{i}": make_blob(2 * 4 * MiB + i, seed=60 + i) for i in range(3)}
    origin = StaticOrigin(blobs, piece=256 * 1024)
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=1, origin=origin,
                            tracker_overrides={"origin_concurrency": 1})
    with trio.fail_after(30):
        ds = [c.peers[0].start_download(TaskSpec(origin.url(k), sha256_digest(v))) for k, v in blobs.items()]
        for d in ds:
            await d.wait()
    assert origin.max_streaming == 1
    assert origin.bytes_sent == sum(len(v) for v in blobs.values())
    nursery.cancel_scope.cancel()


async def test_without_a_budget_the_origin_is_asked_in_parallel(tmp_path, nursery):
    blobs = {f"b{i}": make_blob(2 * 4 * MiB + i, seed=70 + i) for i in range(3)}
    origin = StaticOrigin(blobs, piece=256 * 1024)
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=1, origin=origin,
                            tracker_overrides={"origin_concurrency": 3})
    with trio.fail_after(30):
        ds = [c.peers[0].start_download(TaskSpec(origin.url(k), sha256_digest(v))) for k, v in blobs.items()]
        for d in ds:
            await d.wait()
    assert origin.max_streaming > 1  # so the test above measures the budget, not luck
    nursery.cancel_scope.cancel()


async def test_direct_io_off_serves_from_the_page_cache(tmp_path, nursery):
    """direct_io = false (slow network disks): the store keeps the page cache, chunks go
    out by sendfile, and a download through such a node is whole all the same."""
    blob = make_blob(3 * 4 * MiB + 5, seed=43)
    origin, node, spec, _ = await _seeded_node(tmp_path, nursery, blob, direct_io=False)
    assert node.store.direct_io is False
    taker, _ = await start_peer(nursery, PeerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "t")))
    assert taker.store.direct_io is True
    with trio.fail_after(30):
        cmap = await taker.start_download(spec, nodes=[node.advertise]).wait()
    assert [await taker.store.read(n) for n in cmap.chunks] == [await node.store.read(n) for n in cmap.chunks]
    assert b"".join([await taker.store.read(n) for n in cmap.chunks]) == blob
    nursery.cancel_scope.cancel()


async def test_node_download_hashes_chunks_that_land_in_turn_without_reading_them_back(tmp_path, nursery):
    """A --node download checks the blob's sha256 itself; chunks come lowest index first
    from a lone node, so most are hashed from their fetch buffers and few read back."""
    blob = make_blob(12 * 4 * MiB + 7, seed=44)
    origin, node, spec, _ = await _seeded_node(tmp_path, nursery, blob)
    taker, _ = await start_peer(nursery, PeerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "t"),
                                                    wire_compression="off"))
    read_back = []
    real_feed = taker.store.feed

    async def counting_feed(name, hasher):  # type: ignore[no-untyped-def]
        read_back.append(name)
        await real_feed(name, hasher)

    taker.store.feed = counting_feed  # type: ignore[method-assign]
    with trio.fail_after(30):
        d = taker.start_download(spec, nodes=[node.advertise])
        cmap = await d.wait()
    assert d.mode == "nodes" and cmap.digest == sha256_digest(blob)
    assert b"".join([await taker.store.read(n) for n in cmap.chunks]) == blob
    assert len(read_back) < cmap.n_chunks // 2, (len(read_back), cmap.n_chunks)
    nursery.cancel_scope.cancel()


async def test_a_refusal_keeps_the_connection_for_the_next_ask(tmp_path, nursery):
    """A 404 or 503 read to its end leaves a kept-alive connection usable: closing it made
    every refused ask cost a new TCP connection on both sides (the lab's peers refuse
    thousands of asks in a run)."""
    blob = make_blob(2 * MiB, seed=44)
    origin, node, spec, cmap = await _seeded_node(tmp_path, nursery, blob)
    client = ChunkClient()
    accepted: list[object] = []
    real_connect = client._connect

    async def counting_connect(addr: str):
        accepted.append(addr)
        return await real_connect(addr)

    client._connect = counting_connect  # type: ignore[method-assign]
    with pytest.raises(ChunkUnknown):
        await client.fetch(node.advertise, "0" * 64, bytearray(MiB))
    n, _ = await client.fetch(node.advertise, cmap.chunks[0], bytearray(4 * MiB))
    assert n == cmap.span(0)[1]
    assert len(accepted) == 1, "the refusal closed the connection"
    await client.aclose()
    nursery.cancel_scope.cancel()
