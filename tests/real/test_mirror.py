"""The registry mirror with the real registry, dockerd, containerd and skopeo."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import trio

from p2pdist.testing import start_cluster
from p2pdist.testing_real import (
    auth_headers,
    ctr_image_ids,
    ctr_pull,
    push_built,
    read_dir_image,
    skopeo_copy,
    write_hosts_toml,
    write_registries_conf,
)

pytestmark = pytest.mark.real


def served_blobs(peer, status: str = "200") -> float:
    return peer.metrics.registry.get_sample_value(
        "p2pdist_mirror_requests_total", {"kind": "blob", "status": status}) or 0.0


async def mirror_cluster(nursery, tmp_path, registry, peers: int = 1, **peer_overrides):
    return await start_cluster(nursery, tmp_path / "cluster", peers=peers, peer_overrides={
        "upstreams": (f"docker.io={registry.url}",), **peer_overrides})


async def test_docker_pull_goes_through_the_mirror_and_runs(tmp_path, nursery, registry, dockerd, images):
    ref = await push_built(registry, "library/bb", "v1", images.busybox)
    big = await push_built(registry, "library/big", "v1", images.big)
    c = await mirror_cluster(nursery, tmp_path, registry)
    peer = c.peers[0]
    await dockerd.set_mirrors([f"http://{peer.advertise}"])
    for r in (ref, big):
        mark = registry.mark()
        await dockerd.docker_cli("pull", f"docker.io/{r.repo}:v1")
        # dockerd falls back to Docker Hub silently: prove every blob came through the peer
        for digest in r.blob_digests:
            assert registry.blob_gets(digest, since=mark, ok_only=True) == 1, digest
        image = await dockerd.api(dockerd.client.images.get, f"{r.repo}:v1")
        assert image.id == r.config_digest
    assert served_blobs(peer) >= len(ref.blob_digests) + len(big.blob_digests)
    out = await dockerd.docker_cli("run", "--rm", "--network", "none", "docker.io/library/bb:v1",
                                   "/bin/busybox", "echo", "hello from the swarm")
    assert b"hello from the swarm" in out.stdout
    nursery.cancel_scope.cancel()


async def test_second_node_takes_layers_from_the_first_peer(tmp_path, nursery, registry, dockerd, images):
    ref = await push_built(registry, "library/multi", "v1", images.multi)
    c = await mirror_cluster(nursery, tmp_path, registry, peers=2)
    first, second = c.peers
    await dockerd.set_mirrors([f"http://{first.advertise}"])
    await dockerd.docker_cli("pull", "docker.io/library/multi:v1")
    await dockerd.docker_cli("rmi", "docker.io/library/multi:v1")
    await dockerd.set_mirrors([f"http://{second.advertise}"])
    await dockerd.docker_cli("pull", "docker.io/library/multi:v1")
    for digest in ref.blob_digests:
        assert registry.blob_gets(digest, ok_only=True) == 1, digest  # the registry sent each blob once
    got = second.downloads
    assert sum(d.stats.bytes_from_peers for d in got.values()) > 0
    assert sum(d.stats.bytes_from_origin for d in got.values()) == 0
    nursery.cancel_scope.cancel()


async def test_containerd_pulls_through_the_mirror_with_ns(tmp_path, nursery, registry, containerd, images):
    ref = await push_built(registry, "library/oci", "v1", images.oci_multi)
    c = await mirror_cluster(nursery, tmp_path, registry)
    hosts = tmp_path / "hosts"
    write_hosts_toml(hosts, f"http://{c.peers[0].advertise}")
    await ctr_pull(containerd.sock, "docker.io/library/oci:v1", hosts)
    ids = await ctr_image_ids(containerd.sock)
    assert ids["docker.io/library/oci:v1"] == ref.manifest_digest
    assert served_blobs(c.peers[0]) >= len(ref.blob_digests)
    for digest in ref.blob_digests:
        assert registry.blob_gets(digest, ok_only=True) == 1
    nursery.cancel_scope.cancel()


async def test_skopeo_copies_through_the_mirror(tmp_path, nursery, registry, images):
    ref = await push_built(registry, "library/multiarch", "v1", images.multiarch)
    c = await mirror_cluster(nursery, tmp_path, registry)
    conf = tmp_path / "registries.conf"
    write_registries_conf(conf, c.peers[0].advertise)
    await skopeo_copy("docker://docker.io/library/multiarch:v1", tmp_path / "out", conf, arch="arm64")
    got = read_dir_image(tmp_path / "out")
    assert set(got["blobs"]) == set(ref.children["linux/arm64"].blob_digests)
    assert served_blobs(c.peers[0]) >= len(got["blobs"])
    nursery.cancel_scope.cancel()


async def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_basic_auth_private_layer_is_never_served_to_anonymous(tmp_path, nursery, basic_registry, images):
    ref = await push_built(basic_registry, "library/secret", "v1", images.single)
    c = await mirror_cluster(nursery, tmp_path, basic_registry)
    base = f"http://{c.peers[0].advertise}/v2/library/secret"
    layer = ref.layer_digests[0]
    async with httpx.AsyncClient(timeout=30) as client:
        alice = await _basic("alice", "alice-secret")
        r = await client.get(f"{base}/manifests/v1", headers={**alice, "accept": ref.media_type})
        assert r.status_code == 200 and r.headers["docker-content-digest"] == ref.manifest_digest
        r = await client.get(f"{base}/blobs/{layer}", headers=alice)
        assert r.status_code == 200 and len(r.content) == images.single.layers[0].size
        # the layer now sits on this very peer; an anonymous client still gets the challenge
        for headers in ({}, await _basic("alice", "wrong")):
            r = await client.get(f"{base}/blobs/{layer}", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].lower().startswith("basic")
            assert len(r.content) < 1000
            r = await client.get(f"{base}/manifests/v1", headers=headers)
            assert r.status_code == 401
        r = await client.get(f"http://{c.peers[0].advertise}/v2/")
        assert r.status_code == 401 and "www-authenticate" in r.headers
    nursery.cancel_scope.cancel()


async def test_token_auth_private_image_through_the_mirror(tmp_path, nursery, token_registry, images):
    """The client does the bearer flow against the realm the mirror relays, as dockerd does;
    the mirror forwards its token and never answers a challenge for anyone."""
    ref = await push_built(token_registry, "private/app", "v1", images.multi)
    c = await mirror_cluster(nursery, tmp_path, token_registry)
    peer = c.peers[0]
    mirror = f"http://{peer.advertise}"
    async with httpx.AsyncClient(timeout=60) as client:
        alice = await auth_headers(client, mirror, "private/app", ("alice", "alice-secret"), actions="pull")
        assert alice["Authorization"].startswith("Bearer ")
        r = await client.get(f"{mirror}/v2/private/app/manifests/v1", headers={**alice, "accept": ref.media_type})
        assert r.status_code == 200 and r.headers["docker-content-digest"] == ref.manifest_digest
        for digest in ref.blob_digests:
            r = await client.get(f"{mirror}/v2/private/app/blobs/{digest}", headers=alice)
            assert r.status_code == 200 and f"sha256:{hashlib.sha256(r.content).hexdigest()}" == digest
        assert served_blobs(peer) >= len(ref.blob_digests)
        # every layer is on this peer now; without a token, or with a token for another
        # repository, the answer is the registry's challenge and no byte of the layer
        anon = await auth_headers(client, mirror, "private/app", None, actions="pull")
        other = await auth_headers(client, mirror, "library/other", ("alice", "alice-secret"), actions="pull")
        for headers in ({}, anon, other):
            for digest in ref.layer_digests:
                r = await client.get(f"{mirror}/v2/private/app/blobs/{digest}", headers=headers)
                assert r.status_code == 401, headers
                assert r.headers["www-authenticate"].lower().startswith("bearer")
                assert len(r.content) < 1000
            r = await client.get(f"{mirror}/v2/private/app/manifests/v1", headers=headers)
            assert r.status_code == 401
    for digest in ref.blob_digests:
        assert token_registry.blob_gets(digest, ok_only=True) == 1
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path, status, code", [
    ("/v2/Bad_Repo/manifests/v1", 400, "NAME_INVALID"),
    ("/v2/library/x/manifests/bad tag", 400, "TAG_INVALID"),
    ("/v2/library/x/blobs/sha256:123", 400, "DIGEST_INVALID"),
    ("/v2/library/x/blobs/md5:" + "0" * 32, 400, "DIGEST_INVALID"),
    ("/v2/library/x/blobs/sha256:" + "a" * 64, 404, "BLOB_UNKNOWN"),
    ("/v2/library/nothing/manifests/v1", 404, "MANIFEST_UNKNOWN"),
    ("/v2/library/x/manifests/v1?ns=quay.io", 404, "NAME_UNKNOWN"),
    ("/v2/%2e%2e/%2e%2e/etc/passwd/manifests/v1", 400, "NAME_INVALID"),
    ("/v2/library%2F..%2F..%2Fx/blobs/sha256:" + "a" * 64, 400, "NAME_INVALID"),
])
async def test_mirror_bad_input(tmp_path, nursery, registry, path, status, code):
    c = await mirror_cluster(nursery, tmp_path, registry)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{c.peers[0].advertise}{path}")
        assert r.status_code == status, r.text
        assert r.json()["errors"][0]["code"] == code
        assert (await client.get(f"http://{c.peers[0].advertise}/v2/")).status_code == 200
    nursery.cancel_scope.cancel()


async def _slow_proxy(target: str, *, delay: float = 0.01,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A TCP forwarder to ``target`` (host:port) that paces the answers (about 6 MB/s),
    so "the upstream dies mid-blob" is a certainty, not a race with a fast loopback."""
    host, port = target.rsplit(":", 1)

    async def pump(src, dst, pace: bool) -> None:
        async for data in src:
            await dst.send_all(data)
            if pace:
                await trio.sleep(delay)
        await dst.aclose()

    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(host, int(port))
        async with client, upstream, trio.open_nursery() as n:
            n.start_soon(pump, client, upstream, False)
            n.start_soon(pump, upstream, client, True)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_upstream_dying_mid_blob_never_yields_a_complete_blob(tmp_path, nursery, registry, images):
    ref = await push_built(registry, "library/big", "v1", images.big)
    upstream_alive = trio.CancelScope()

    async def proxy(task_status=trio.TASK_STATUS_IGNORED):
        with upstream_alive:
            await _slow_proxy(registry.host, task_status=task_status)

    port = await nursery.start(proxy)
    c = await start_cluster(nursery, tmp_path / "cluster", peers=1, peer_overrides={
        "upstreams": (f"docker.io=http://127.0.0.1:{port}",), "back_to_source": False})
    peer = c.peers[0]
    layer = ref.layer_digests[0]
    size = images.big.layers[0].size
    got = 0
    async with httpx.AsyncClient(timeout=30) as client:
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", f"http://{peer.advertise}/v2/library/big/blobs/{layer}") as r:
                assert r.status_code == 200 and int(r.headers["content-length"]) == size
                async for piece in r.aiter_raw():
                    got += len(piece)
                    if got >= 8 << 20:
                        upstream_alive.cancel()  # the upstream disappears mid-blob
        assert got < size
    task_id = layer.split(":")[1]
    assert await peer.store.complete_map(task_id) is None
    with trio.fail_after(10):
        while c.tracker.tasks[task_id].error is None:
            await trio.sleep(0.05)
    assert c.tracker.tasks[task_id].sealed is None
    nursery.cancel_scope.cancel()
