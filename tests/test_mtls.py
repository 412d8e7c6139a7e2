"""mTLS, the second way components authenticate: a client certificate signed by the
cluster CA opens the tracker API and the chunk API as the shared secret does, on the same
port that keeps serving plain HTTP to the mirror's clients, the probes and Prometheus."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import blake3
import httpx
import pytest
import trio
from _certs import CertFiles, TestCA
from _helpers import assert_copy
from cryptography.x509.oid import ExtendedKeyUsageOID

from p2pdist.core.config import PeerConfig, TrackerConfig, load_config
from p2pdist.core.errors import ConfigError, Unauthorized, Unavailable
from p2pdist.core.task import TaskSpec
from p2pdist.core.tls import load_cluster_tls
from p2pdist.net.auth import TOKEN_HEADER
from p2pdist.net.chunkclient import ChunkClient
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster, start_peer

MiB = 1 << 20
SECRET = "cluster-secret-for-mtls-tests"
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def client_context(files: CertFiles | None, ca_path: Path) -> ssl.SSLContext:
    """What an outside caller uses: trusts the cluster CA, presents ``files`` if any."""
    ctx = ssl.create_default_context(cafile=str(ca_path))
    ctx.check_hostname = False
    if files is not None:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def component_urls(c, spec: TaskSpec, chunk: str, scheme: str) -> list[tuple[str, str, object]]:
    tracker = f"{scheme}://{c.tracker.advertise}"
    peer = f"{scheme}://{c.peers[0].advertise}"
    return [
        ("POST", f"{tracker}/api/v1/tasks", {"url": spec.url}),
        ("GET", f"{tracker}/api/v1/tasks/{spec.task_id}/map", None),
        ("POST", f"{tracker}/api/v1/announce", {"peer_id": "x", "addr": "127.0.0.1:1", "tasks": []}),
        ("POST", f"{tracker}/api/v1/heartbeat", {"peer_id": "x", "addr": "127.0.0.1:1", "version": "1"}),
        ("GET", f"{tracker}/chunks/{chunk}", None),
        ("GET", f"{peer}/chunks/{chunk}", None),
        ("GET", f"{peer}/maps/{spec.task_id}", None),
        ("GET", f"{peer}/have/{spec.task_id}", None),
    ]


async def test_mtls_only_cluster_distributes_and_refuses_callers_without_a_certificate(tmp_path, nursery, ca):
    blob = make_blob(5 * 4 * MiB + 1, seed=51)
    origin = StaticOrigin({"b": blob, "v2/": b"{}"})  # "v2/": the mirror's upstream answers its ping
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=3, origin=origin,
                            tracker_overrides=ca.issue("tracker").overrides(),
                            peer_overrides={**ca.issue("peer").overrides(),
                                            "upstreams": (f"docker.io={origin.base_url}",)})
    assert all(p.config.trackers[0].startswith("https://") for p in c.peers)
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    with trio.fail_after(30):
        for p in c.peers:
            await assert_copy(p.start_download(spec), blob, tmp_path)
    cmap = await c.peers[0].start_download(spec).wait()
    # no secret anywhere: the tracker API and the chunks between peers went over mTLS
    assert sum(p.downloads[spec.task_id].stats.bytes_from_peers for p in c.peers) >= len(blob)
    assert origin.bytes_sent == len(blob)

    chunk = cmap.chunks[0]
    no_cert = client_context(None, ca.ca_path)
    member = client_context(ca.issue("operator"), ca.ca_path)
    async with httpx.AsyncClient() as plain, httpx.AsyncClient(verify=no_cert) as tls_no_cert, \
            httpx.AsyncClient(verify=member) as tls_member:
        for client, scheme in ((plain, "http"), (tls_no_cert, "https")):
            for token in (None, "a-guess"):
                headers = {TOKEN_HEADER: token} if token else {}
                for method, url, body in component_urls(c, spec, chunk, scheme):
                    r = await client.request(method, url, json=body, headers=headers)
                    assert r.status_code == 401, (method, url, r.status_code)
                    err = r.json()["errors"][0]
                    assert err["code"] == "UNAUTHORIZED" and "client certificate" in err["message"]
                    assert chunk not in r.text  # never a chunk map, nor a hash of one
        # the open routes: plain HTTP on the same port, and over TLS without a certificate
        for client, scheme in ((plain, "http"), (tls_no_cert, "https")):
            for base in (f"{scheme}://{c.tracker.advertise}", f"{scheme}://{c.peers[0].advertise}"):
                for path in ("/healthz", "/readyz", "/metrics"):
                    assert (await client.get(base + path)).status_code == 200, base + path
            r = await client.get(f"{scheme}://{c.peers[0].advertise}/v2/")
            assert r.status_code == 200 and r.headers["docker-distribution-api-version"] == "registry/2.0"
        # a member's certificate opens every component route
        peer = f"https://{c.peers[0].advertise}"
        r = await tls_member.get(f"{peer}/chunks/{chunk}")
        assert r.status_code == 200 and blake3.blake3(r.content).hexdigest() == chunk
        r = await tls_member.get(f"{peer}/maps/{spec.task_id}")
        assert r.status_code == 200 and r.json()["chunks"] == list(cmap.chunks)
        r = await tls_member.get(f"https://{c.tracker.advertise}/api/v1/tasks/{spec.task_id}/map")
        assert r.status_code == 200 and r.json()["chunks"] == list(cmap.chunks)
        r = await tls_member.get(f"https://{c.tracker.advertise}/chunks/{chunk}")
        assert r.status_code == 200 and blake3.blake3(r.content).hexdigest() == chunk
    nursery.cancel_scope.cancel()


async def test_a_certificate_from_another_ca_is_refused(tmp_path, nursery, ca):
    blob = make_blob(4 * MiB, seed=52)
    other_blob = make_blob(4 * MiB, seed=56)
    origin = StaticOrigin({"b": blob, "c": other_blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=1, origin=origin,
                            tracker_overrides=ca.issue("tracker").overrides(),
                            peer_overrides=ca.issue("peer").overrides())
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    with trio.fail_after(30):
        cmap = await c.peers[0].start_download(spec).wait()
    chunk = cmap.chunks[0]
    # trusts the cluster's servers, but its own certificate comes from elsewhere
    stranger = client_context(TestCA(tmp_path / "other", "some other CA").issue("stranger"), ca.ca_path)
    async with httpx.AsyncClient(verify=stranger) as client:
        with pytest.raises(httpx.TransportError):  # an open route: only the handshake can refuse
            await client.get(f"https://{c.tracker.advertise}/healthz")
        for method, url, body in component_urls(c, spec, chunk, "https"):
            try:
                r = await client.request(method, url, json=body)
            except httpx.TransportError:
                continue  # the handshake was refused
            assert r.status_code == 401, (method, url, r.status_code)
            assert chunk not in r.text
    # the raw chunk path says the same
    chunks = ChunkClient(tls=stranger)
    with pytest.raises((Unavailable, Unauthorized)):
        await chunks.fetch(c.peers[0].advertise, chunk, bytearray(4 * MiB))
    await chunks.aclose()

    # a peer of another cluster (another CA) cannot join: the tracker starts nothing for it,
    # and it gets nothing from the swarm (it goes to the origin on its own, as without a tracker)
    other = TestCA(tmp_path / "other2", "another CA").issue("intruder")
    intruder, _ = await start_peer(nursery, PeerConfig(
        listen="127.0.0.1:0", data_dir=str(tmp_path / "intruder"),
        trackers=(f"https://{c.tracker.advertise}",), **other.overrides()))
    d = intruder.start_download(TaskSpec(origin.url("c"), sha256_digest(other_blob)))
    with trio.fail_after(20):
        await d.finished.wait()
    assert c.tracker.tasks.keys() == {spec.task_id}
    assert d.stats.bytes_from_peers == 0
    nursery.cancel_scope.cancel()


async def test_chunk_client_over_tls_reads_chunks_intact_and_caps_apply(tmp_path, nursery, ca):
    """The TLS fallbacks of both fast paths (pieces instead of sendfile, receive_some
    instead of recv_into) move exact bytes, and both bandwidth caps still pace them."""
    files = ca.issue("peer")
    blob = make_blob(2 * 4 * MiB + 5, seed=53)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    node, _ = await start_peer(nursery, PeerConfig(
        listen="127.0.0.1:0", data_dir=str(tmp_path / "node"), upload_rate=8 * MiB,
        wire_compression="off", **files.overrides()))
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    cmap = await node.start_download(spec).wait()

    tls = load_cluster_tls(str(files.cert), str(files.key), str(files.ca))
    assert tls is not None
    chunks = ChunkClient(tls=tls.client)
    buf = bytearray(4 * MiB)
    for name in cmap.chunks:
        n, enc = await chunks.fetch(node.advertise, name, buf)
        assert enc is None and blake3.blake3(buf[:n]).hexdigest() == name
    with pytest.raises(Unauthorized):  # plain, no secret: the same port refuses
        await ChunkClient().fetch(node.advertise, cmap.chunks[0], buf)
    await chunks.aclose()

    # the upload cap paces the TLS send (a floor, not a timing)
    taker, _ = await start_peer(nursery, PeerConfig(
        listen="127.0.0.1:0", data_dir=str(tmp_path / "taker"), **files.overrides()))
    start = trio.current_time()
    with trio.fail_after(30):
        await assert_copy(taker.start_download(spec, nodes=[node.advertise]), blob, tmp_path)
    assert trio.current_time() - start >= (len(blob) - node.upload_bucket.burst) / (8 * MiB) * 0.95
    assert taker.downloads[spec.task_id].stats.bytes_from_peers == len(blob)

    # the download cap paces the TLS receive
    slow, _ = await start_peer(nursery, PeerConfig(
        listen="127.0.0.1:0", data_dir=str(tmp_path / "slow"), download_rate=6 * MiB,
        wire_compression="off", **files.overrides()))
    start = trio.current_time()
    with trio.fail_after(30):
        await assert_copy(slow.start_download(spec, nodes=[taker.advertise]), blob, tmp_path)
    assert trio.current_time() - start >= (len(blob) - MiB) / (6 * MiB) * 0.95
    nursery.cancel_scope.cancel()


async def test_token_still_works_alongside_tls(tmp_path, nursery, ca):
    blob = make_blob(3 * 4 * MiB, seed=54)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=2, origin=origin,
                            tracker_overrides={**ca.issue("tracker").overrides(), "cluster_secret": SECRET},
                            peer_overrides={**ca.issue("peer").overrides(), "cluster_secret": SECRET})
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    with trio.fail_after(30):
        for p in c.peers:
            cmap = await p.start_download(spec).wait()
    # a peer with only the secret joins over plain HTTP and fetches from the TLS peers
    plain_peer, _ = await start_peer(nursery, PeerConfig(
        listen="127.0.0.1:0", data_dir=str(tmp_path / "plain"), back_to_source=False,
        trackers=(c.tracker_url,), cluster_secret=SECRET))
    with trio.fail_after(30):
        await assert_copy(plain_peer.start_download(spec), blob, tmp_path)
    assert plain_peer.downloads[spec.task_id].stats.bytes_from_peers == len(blob)
    assert origin.bytes_sent == len(blob)

    chunk = cmap.chunks[0]
    member = client_context(ca.issue("operator"), ca.ca_path)
    async with httpx.AsyncClient() as plain, httpx.AsyncClient(verify=member) as tls_member:
        for method, url, body in component_urls(c, spec, chunk, "http"):
            assert (await plain.request(method, url, json=body)).status_code == 401
            r = await plain.request(method, url, json=body, headers={TOKEN_HEADER: SECRET})
            assert r.status_code in (200, 202), (method, url, r.status_code)
            msg = (await plain.request(method, url, json=body, headers={TOKEN_HEADER: "wrong"})).json()
            assert "shared secret" in msg["errors"][0]["message"] and "certificate" in msg["errors"][0]["message"]
        for method, url, body in component_urls(c, spec, chunk, "https"):
            r = await tls_member.request(method, url, json=body)
            assert r.status_code in (200, 202), (method, url, r.status_code)
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("cls", [TrackerConfig, PeerConfig])
def test_tls_config_errors_name_the_key(tmp_path, ca, cls):
    good = ca.issue("c").overrides()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other = TestCA(tmp_path / "other", "other CA")
    server_only = ca.issue("server-only", usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    expired = ca.issue("expired", expired=True)
    cases = [
        ({"tls_cert": good["tls_cert"]}, ["tls_key", "tls_ca"], "missing"),
        ({**good, "tls_key": str(tmp_path / "absent.key")}, ["tls_key"], "cannot read"),
        ({**good, "tls_cert": str(garbage)}, ["tls_cert"], "no PEM certificate"),
        ({**good, "tls_ca": good["tls_key"]}, ["tls_ca"], "no PEM certificate"),
        ({**good, "tls_key": good["tls_cert"]}, ["tls_key"], "no PEM private key"),
        ({**good, "tls_key": str(expired.key)}, ["tls_key"], "not the PEM private key"),
        ({**good, "tls_ca": str(other.ca_path)}, ["tls_cert"], "unable to get local issuer"),
        ({**server_only.overrides()}, ["tls_cert"], "purpose"),
        ({**expired.overrides()}, ["tls_cert"], "expired"),
    ]
    key_body = Path(good["tls_key"]).read_text().splitlines()[1]
    for overrides, keys, reason in cases:
        with pytest.raises(ConfigError) as info:
            load_config(cls, overrides={"data_dir": str(tmp_path), **overrides})
        msg = str(info.value)
        assert all(f"'{k}'" in msg for k in keys) and reason in msg, msg
        assert key_body not in msg  # nothing read from a file goes into a message
    # the same from the environment, as a daemon reads them
    env = {f"P2PDIST_{k.upper()}": v for k, v in good.items()}
    assert load_config(cls, env=env).tls_ca == good["tls_ca"]
    with pytest.raises(ConfigError, match="'tls_cert'"):
        load_config(cls, env={**env, "P2PDIST_TLS_CERT": str(garbage)})


def test_a_peer_with_only_tls_must_reach_its_trackers_over_https(tmp_path, ca):
    files = ca.issue("p").overrides()
    with pytest.raises(ConfigError, match="'trackers'.*https://"):
        load_config(PeerConfig, overrides={**files, "trackers": ["http://127.0.0.1:7400"]})
    assert load_config(PeerConfig, overrides={**files, "trackers": ["https://127.0.0.1:7400"]})
    # with the secret as well a plain tracker URL is fine: the token opens it
    assert load_config(PeerConfig, overrides={**files, "cluster_secret": SECRET,
                                              "trackers": ["http://127.0.0.1:7400"]})


async def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("P2PDIST_")}
    return await trio.run_process([sys.executable, "-m", "p2pdist", *args], capture_stdout=True,
                                  capture_stderr=True, check=False, env={**base, **(env or {})})


async def test_cli_talks_to_an_mtls_cluster_with_the_certificate_from_the_environment(tmp_path, nursery, ca):
    blob = make_blob(2 * 4 * MiB + 3, seed=55)
    origin = StaticOrigin({"b": blob})
    await nursery.start(origin.serve)
    c = await start_cluster(nursery, tmp_path, peers=1, origin=origin,
                            tracker_overrides=ca.issue("tracker").overrides(),
                            peer_overrides=ca.issue("peer").overrides())
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    with trio.fail_after(30):
        await c.peers[0].start_download(spec).wait()
    env = ca.issue("cli").env()
    tracker = f"https://{c.tracker.advertise}"
    digest = str(sha256_digest(blob))

    # get, in process: the tracker over https with our certificate, chunks over TLS
    r = await run_cli("get", origin.url("b"), "-O", str(tmp_path / "via-tracker"), "--digest", digest,
                      "--tracker", tracker, "--data-dir", str(tmp_path / "cache1"), env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "via-tracker").read_bytes() == blob
    # get from a --node peer: its sealed map and its chunks, both over TLS
    r = await run_cli("get", origin.url("b"), "-O", str(tmp_path / "via-node"), "--digest", digest,
                      "--node", c.peers[0].advertise, "--data-dir", str(tmp_path / "cache2"), env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "via-node").read_bytes() == blob
    assert origin.bytes_sent == len(blob)  # neither went back to the origin
    # status over https
    r = await run_cli("status", "--tracker", tracker, "--json", env=env)
    assert r.returncode == 0 and b'"peer0"' in r.stdout, r.stderr.decode()

    # without the certificate the same get is refused by the tracker, naming the way in
    r = await run_cli("get", origin.url("b"), "-O", str(tmp_path / "no"), "--digest", digest,
                      "--tracker", c.tracker_url, "--data-dir", str(tmp_path / "cache3"))
    assert r.returncode == 1 and b"client certificate" in r.stderr and not (tmp_path / "no").exists()
    # a broken $P2PDIST_TLS_* is a configuration error naming the variable
    r = await run_cli("status", "--tracker", tracker, env={**env, "P2PDIST_TLS_KEY": str(tmp_path / "nope")})
    assert r.returncode == 2 and b"$P2PDIST_TLS_KEY" in r.stderr and b"Traceback" not in r.stderr
    nursery.cancel_scope.cancel()


async def test_daemon_with_a_bad_tls_file_names_the_key(tmp_path, ca):
    files = ca.issue("d")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[tracker]\ntls_cert = "{files.cert}"\ntls_key = "{tmp_path / "missing.key"}"\n'
                   f'tls_ca = "{files.ca}"\n')
    r = await run_cli("tracker", "--config", str(cfg), "--listen", "127.0.0.1:0",
                      "--data-dir", str(tmp_path / "t"))
    assert r.returncode == 2, r.stderr.decode()
    assert b"'tls_key'" in r.stderr and b"cannot read" in r.stderr and b"Traceback" not in r.stderr


def test_readme_recipe_makes_certificates_the_components_accept(tmp_path):
    """The openssl commands README.md gives for a cluster CA and component certificates
    produce files both roles load (chain, key match, key usages checked at load)."""
    if not any(os.access(os.path.join(d, "openssl"), os.X_OK) for d in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("openssl is not installed (./dev test installs it)")
    m = re.search(r"<!-- mtls-recipe -->\s*```sh\n(.*?)```", README.read_text(), re.S)
    assert m, "README.md lost its mTLS recipe block"
    subprocess.run(["bash", "-euo", "pipefail", "-c", m[1]], cwd=tmp_path, check=True,
                   capture_output=True, timeout=60)
    files = {"tls_cert": str(tmp_path / "tls.crt"), "tls_key": str(tmp_path / "tls.key"),
             "tls_ca": str(tmp_path / "ca.crt")}
    assert load_config(TrackerConfig, overrides=files).cluster_tls() is not None
    assert load_config(PeerConfig, overrides={**files, "trackers": ["https://p2pdist-tracker:7400"]})
