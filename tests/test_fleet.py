"""Heartbeats and the fleet view: `status`, `/api/v1/status` and the `/ui` page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
import trio

from p2pdist import __version__
from p2pdist.cli.status import format_status
from p2pdist.core.chunkmap import chunk_count, chunk_size_for
from p2pdist.core.errors import BodyInvalid
from p2pdist.core.task import TaskSpec
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster
from p2pdist.wire.tracker import decode_heartbeat

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


async def wait_for(pred, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


async def test_heartbeats_fill_the_fleet_view_and_silent_peers_go_stale(tmp_path, nursery):
    blob = make_blob(3 * 4 * 1024 * 1024 + 1, seed=9)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=3, origin=origin,
                            peer_overrides={"heartbeat_interval": 0.1, "zone": "rack-a"},
                            tracker_overrides={"stale_after": 0.6})
    await c.peers[0].start_download(TaskSpec(origin.url("b"), sha256_digest(blob))).wait()
    fleet = c.tracker.fleet
    await wait_for(lambda: len(fleet) == 3 and all(r.heartbeat for r in fleet.values())
                   and fleet["peer0"].heartbeat.disk_used_bytes >= len(blob))
    st = c.tracker.status()
    by_id = {p["peer_id"]: p for p in st["peers"]}
    assert set(by_id) == {"peer0", "peer1", "peer2"}
    p0 = by_id["peer0"]
    assert p0["version"] == __version__ and p0["zone"] == "rack-a" and not p0["stale"]
    assert p0["rss_bytes"] > 10 * 1024 * 1024 and p0["disk_used_bytes"] >= len(blob)
    assert p0["uptime_s"] > 0 and p0["addr"] == c.peers[0].advertise
    table = format_status(st)
    assert "peer0" in table and "rack-a" in table and __version__ in table

    c.tracker.expire()
    assert c.tracker.metrics.registry.get_sample_value("p2pdist_tracker_stale_peers") == 0
    c.kill_peer(2)
    await wait_for(lambda: c.tracker.status()["peers"][2]["stale"], timeout=5)
    assert not c.tracker.status()["peers"][0]["stale"]
    c.tracker.expire()
    assert c.tracker.metrics.registry.get_sample_value("p2pdist_tracker_stale_peers") == 1
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("body", [
    {"peer_id": "p", "addr": "127.0.0.1:1", "version": "1"} | {"cpu_percent": -1},
    {"peer_id": "p", "addr": "127.0.0.1:1", "version": "1", "rss_bytes": "big"},
    {"peer_id": "p", "addr": "127.0.0.1:1", "version": "1 2"},
    {"peer_id": "p/../x", "addr": "127.0.0.1:1", "version": "1"},
    {"peer_id": "p", "addr": "127.0.0.1:1", "version": "1", "disk_quota_bytes": True},
    [],
])
def test_bad_heartbeats_are_refused(body):
    with pytest.raises(BodyInvalid):
        decode_heartbeat(body)


async def test_heartbeat_endpoint_answers_bad_input_with_400(tmp_path, nursery):
    c = await start_cluster(nursery, tmp_path, peers=0)
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{c.tracker_url}/api/v1/heartbeat", json={"peer_id": "x"})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "BODY_INVALID"
        assert (await client.get(f"{c.tracker_url}/healthz")).status_code == 200
    nursery.cancel_scope.cancel()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.real
async def test_ui_page_renders_the_fleet_in_headless_chromium(tmp_path, nursery):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (./dev test installs it)")
    blob = make_blob(2 * 4 * 1024 * 1024, seed=5)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=2, origin=origin,
                            peer_overrides={"heartbeat_interval": 0.2})
    for p in c.peers:
        await p.start_download(TaskSpec(origin.url("b"), sha256_digest(blob))).wait()
    await wait_for(lambda: all(r.heartbeat for r in c.tracker.fleet.values()) and len(c.tracker.fleet) == 2)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "tracker-ui.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000",
             "--window-size=1200,700"]
    url = f"{c.tracker_url}/ui"
    dom = await trio.run_process([browser, *flags, "--dump-dom", url], capture_stdout=True,
                                 capture_stderr=True, env={**os.environ, "HOME": str(tmp_path)})
    html = dom.stdout.decode()
    assert "peer0" in html and "peer1" in html, html[:2000]
    assert "sealed" in html and "2 peers" in html
    await trio.run_process([browser, *flags, f"--screenshot={shot}", url], capture_stdout=True,
                           capture_stderr=True, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.stat().st_size > 5000
    print(f"screenshot: {shot}")
    nursery.cancel_scope.cancel()


async def test_probes_and_metrics(tmp_path, nursery):
    """/healthz is liveness; /readyz says whether a peer can do its job; /metrics has the
    dashboard's series."""
    from p2pdist.core.config import PeerConfig
    from p2pdist.testing import start_peer

    blob = make_blob(2 * 4 * 1024 * 1024, seed=6)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=1, origin=origin)
    await c.peers[0].start_download(TaskSpec(origin.url("b"), sha256_digest(blob))).wait()
    lonely, _ = await start_peer(nursery, PeerConfig(
        listen="127.0.0.1:0", data_dir=str(tmp_path / "lonely"), trackers=("http://127.0.0.1:9",),
        back_to_source=False))
    async with httpx.AsyncClient() as client:
        peer = f"http://{c.peers[0].advertise}"
        assert (await client.get(f"{peer}/healthz")).status_code == 200
        assert (await client.get(f"{peer}/readyz")).status_code == 200
        assert (await client.get(f"{c.tracker_url}/readyz")).status_code == 200
        r = await client.get(f"http://{lonely.advertise}/readyz")
        assert r.status_code == 503 and "no tracker" in r.json()["errors"][0]["message"]
        assert (await client.get(f"http://{lonely.advertise}/healthz")).status_code == 200
        text = (await client.get(f"{peer}/metrics")).text
        for series in ("p2pdist_bytes_from_peers_total", "p2pdist_bytes_from_origin_total",
                       "p2pdist_bytes_served_total", "p2pdist_chunks_verified_total",
                       "p2pdist_back_to_source_total", "p2pdist_active_tasks",
                       "p2pdist_upload_slots_in_use", 'p2pdist_request_seconds_bucket{le="0.005",route="/healthz"}'):
            assert series in text, series
        n_chunks = chunk_count(len(blob), chunk_size_for(len(blob)))
        assert f"p2pdist_chunks_verified_total {n_chunks:.1f}" in text
        ttext = (await client.get(f"{c.tracker_url}/metrics")).text
        for series in ("p2pdist_tracker_peers", "p2pdist_tracker_tasks", "p2pdist_tracker_announces_total",
                       "p2pdist_bytes_served_total"):
            assert series in ttext, series
    nursery.cancel_scope.cancel()
