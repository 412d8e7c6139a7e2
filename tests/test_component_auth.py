"""The tracker API and the chunk API answer only holders of the cluster's shared secret."""

from __future__ import annotations

import httpx
import pytest
import trio

from p2pdist.core.config import PeerConfig
from p2pdist.core.errors import Unauthorized
from p2pdist.core.task import TaskSpec
from p2pdist.net.auth import TOKEN_HEADER, ComponentAuth
from p2pdist.net.http import Request, Response
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster, start_peer

SECRET = "cluster-secret-for-tests"
MiB = 1 << 20


async def test_cluster_with_a_secret_distributes_and_refuses_strangers(tmp_path, nursery):
    blob = make_blob(5 * 4 * MiB + 1, seed=31)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=3, origin=origin,
                            peer_overrides={"cluster_secret": SECRET},
                            tracker_overrides={"cluster_secret": SECRET})
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    with trio.fail_after(30):
        for p in c.peers:
            cmap = await p.start_download(spec).wait()
    assert sum(p.downloads[spec.task_id].stats.bytes_from_peers for p in c.peers) >= len(blob)
    assert origin.bytes_sent == len(blob)

    chunk = cmap.chunks[0]
    peer = f"http://{c.peers[0].advertise}"
    refused = [
        ("POST", f"{c.tracker_url}/api/v1/tasks", {"url": origin.url("b")}),
        ("GET", f"{c.tracker_url}/api/v1/tasks/{spec.task_id}/map", None),
        ("POST", f"{c.tracker_url}/api/v1/announce", {"peer_id": "x", "addr": "127.0.0.1:1", "tasks": []}),
        ("POST", f"{c.tracker_url}/api/v1/heartbeat", {"peer_id": "x", "addr": "127.0.0.1:1", "version": "1"}),
        ("GET", f"{c.tracker_url}/chunks/{chunk}", None),
        ("GET", f"{peer}/chunks/{chunk}", None),
        ("GET", f"{peer}/maps/{spec.task_id}", None),
        ("GET", f"{peer}/have/{spec.task_id}", None),
    ]
    async with httpx.AsyncClient() as client:
        for token in (None, "wrong-secret"):
            headers = {TOKEN_HEADER: token} if token else {}
            for method, url, body in refused:
                r = await client.request(method, url, json=body, headers=headers)
                assert r.status_code == 401, (method, url, r.status_code)
                assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
                assert chunk not in r.text  # nothing of the map in a refusal
        for url in (f"{c.tracker_url}/healthz", f"{c.tracker_url}/metrics", f"{c.tracker_url}/api/v1/status",
                    f"{peer}/healthz", f"{peer}/readyz", f"{peer}/metrics"):
            assert (await client.get(url)).status_code == 200, url
        ok = await client.get(f"{peer}/chunks/{chunk}", headers={TOKEN_HEADER: SECRET})
        assert ok.status_code == 200 and len(ok.content) == cmap.chunk_size
        ok = await client.get(f"{peer}/maps/{spec.task_id}", headers={TOKEN_HEADER: SECRET})
        assert ok.status_code == 200 and ok.json()["chunks"] == list(cmap.chunks)
    nursery.cancel_scope.cancel()


async def test_a_peer_without_the_secret_cannot_join(tmp_path, nursery):
    blob = make_blob(4 * MiB, seed=32)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=0, origin=origin,
                            tracker_overrides={"cluster_secret": SECRET})
    stranger, _ = await start_peer(nursery, PeerConfig(
        listen="127.0.0.1:0", data_dir=str(tmp_path / "s"), trackers=(c.tracker_url,), back_to_source=False))
    d = stranger.start_download(TaskSpec(origin.url("b"), sha256_digest(blob)))
    with trio.fail_after(10):
        await d.finished.wait()
    assert isinstance(d.error, Unauthorized)
    assert origin.bytes_sent == 0  # the tracker started nothing for a stranger
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("client, token, allowed", [
    (("127.0.0.1", 5000), None, True),
    (("::1", 5000), None, True),
    (("10.1.2.3", 5000), None, False),
    (("10.1.2.3", 5000), SECRET, True),
    (None, None, False),
])
async def test_local_api_guard_lets_loopback_through(client, token, allowed):
    async def ok(request: Request) -> Response:
        return Response.json({"ok": True})

    guarded = ComponentAuth(SECRET).guard(ok, allow_loopback=True)
    headers = [(TOKEN_HEADER, token)] if token else []
    request = Request("GET", "/api/v1/status", headers, client, body=b"")
    if allowed:
        assert (await guarded(request)).status == 200
    else:
        with pytest.raises(Unauthorized):
            await guarded(request)


async def test_cli_get_through_a_tracker_with_the_secret_from_the_environment(tmp_path, nursery):
    """The CLI reads P2PDIST_CLUSTER_SECRET as the daemons do; without it the tracker refuses."""
    import os

    from test_cli import run_cli

    blob = make_blob(2 * 4 * MiB + 3, seed=33)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=1, origin=origin,
                            peer_overrides={"cluster_secret": SECRET},
                            tracker_overrides={"cluster_secret": SECRET})
    digest = str(sha256_digest(blob))
    os.environ["P2PDIST_CLUSTER_SECRET"] = SECRET
    try:
        r = await run_cli("get", origin.url("b"), "-O", str(tmp_path / "ok"), "--digest", digest,
                          "--tracker", c.tracker_url, "--data-dir", str(tmp_path / "cache1"))
    finally:
        del os.environ["P2PDIST_CLUSTER_SECRET"]
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "ok").read_bytes() == blob
    r = await run_cli("get", origin.url("b"), "-O", str(tmp_path / "no"), "--digest", digest,
                      "--tracker", c.tracker_url, "--data-dir", str(tmp_path / "cache2"))
    assert r.returncode == 1 and b"secret" in r.stderr and not (tmp_path / "no").exists()
    nursery.cancel_scope.cancel()
