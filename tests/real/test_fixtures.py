"""The real-component fixtures work against the real daemons, with no p2pdist in between:
images pushed offline to the CNCF registry come back unchanged through skopeo, ctr and
dockerd; the busybox image runs; the multi-arch index resolves per platform; basic and
token auth refuse anonymous clients and accept the right credentials."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from p2pdist.testing_real import (
    ALL_MANIFEST_TYPES,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ComponentMissing,
    Containerd,
    Dockerd,
    ImageCache,
    Registry,
    TestImages,
    auth_headers,
    ctr_image_ids,
    ctr_pull,
    layer_tar,
    libtrust_key_id,
    parse_www_authenticate,
    push_built,
    push_image,
    read_dir_image,
    require_binaries,
    require_root,
    skopeo_copy,
    start_dockerd,
    write_hosts_toml,
    write_registries_conf,
)

pytestmark = pytest.mark.real

SINGLE_PLATFORM = ["single", "multi", "oci_single", "oci_multi", "big", "busybox", "oci_busybox"]


async def push_all(reg: Registry, images: TestImages, names=SINGLE_PLATFORM):  # type: ignore[no-untyped-def]
    return {n: await push_built(reg, f"library/{n.replace('_', '-')}", "v1", getattr(images, n))
            for n in names}


def test_images_are_deterministic(images: TestImages, tmp_path: Path) -> None:
    """Rebuilding in a fresh cache gives the same digests (fixed mtimes, gzip mtime 0, seeds)."""
    again = ImageCache(tmp_path / "again")
    assert again.build([layer_tar({"a": b"1"})]).manifest == again.build([layer_tar({"a": b"1"})]).manifest
    rebuilt = TestImages(again)
    for name in ("single", "oci_multi", "multiarch"):
        assert getattr(rebuilt, name).manifest.digest == getattr(images, name).manifest.digest
    big = images.big
    assert big.layers[0].size >= 100 * 1024 * 1024
    assert big.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar"


def test_libtrust_key_id_format() -> None:
    kid = libtrust_key_id(b"any der bytes")
    groups = kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 and g.isupper() or g.isdigit() for g in groups)


async def test_registry_push_and_access_log(registry: Registry, images: TestImages) -> None:
    ref = await push_built(registry, "library/single", "v1", images.single)
    layer = ref.layer_digests[0]
    mark = registry.mark()
    assert registry.blob_gets(layer) == 0
    async with httpx.AsyncClient() as c:
        for accept, want in ((DOCKER_MANIFEST, DOCKER_MANIFEST), (",".join(ALL_MANIFEST_TYPES), DOCKER_MANIFEST)):
            r = await c.get(f"{registry.url}/v2/library/single/manifests/v1", headers={"Accept": accept})
            assert r.status_code == 200 and r.headers["content-type"] == want
            assert r.headers["docker-content-digest"] == ref.manifest_digest
        r = await c.get(f"{registry.url}/v2/library/single/blobs/{layer}")
        assert r.status_code == 200 and len(r.content) == images.single.layers[0].size
        r = await c.get(f"{registry.url}/v2/library/single/blobs/{layer}", headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and len(r.content) == 10
        r = await c.head(f"{registry.url}/v2/library/single/blobs/{layer}")
        assert r.headers["docker-content-digest"] == layer
        r = await c.get(f"{registry.url}/v2/library/other/blobs/{layer}")
        assert r.status_code == 404
    assert registry.blob_gets(layer, since=mark) == 3  # 200, 206 and the wrong-repo 404
    assert registry.blob_gets(layer, since=mark, ok_only=True) == 2
    assert registry.blob_bytes_sent(layer, since=mark) >= images.single.layers[0].size + 10
    # pushing again uploads nothing new
    await push_built(registry, "library/single", "v1", images.single)
    assert not [e for e in registry.requests("PUT", since=mark) if "/blobs/" in e.path]


async def test_push_image_from_layers(registry: Registry, tmp_path: Path) -> None:
    tar = layer_tar({"hello.txt": b"hello\n"})
    cache = ImageCache(tmp_path / "c")
    a = await push_image(registry, "adhoc/one", "v1", [tar], media="oci", cache=cache)
    b = await push_image(registry, "adhoc/one", "v2", [tar], media="oci")
    assert a.manifest_digest == b.manifest_digest and a.media_type == OCI_MANIFEST
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{registry.url}/v2/adhoc/one/manifests/v2", headers={"Accept": OCI_MANIFEST})
        assert json.loads(r.content)["layers"][0]["digest"] == a.layer_digests[0]


async def test_skopeo_copies_every_image(registry: Registry, images: TestImages, tmp_path: Path) -> None:
    refs = await push_all(registry, images)
    for name, ref in refs.items():
        out = tmp_path / name
        mark = registry.mark()
        await skopeo_copy(f"docker://{ref.name}", out)
        got = read_dir_image(out)
        assert got["manifest_digest"] == ref.manifest_digest, name
        assert set(got["blobs"]) == set(ref.blob_digests), name
        for d in ref.blob_digests:
            assert registry.blob_gets(d, since=mark, ok_only=True) == 1, name


async def test_ctr_pulls_every_image(registry: Registry, images: TestImages, containerd: Containerd) -> None:
    refs = await push_all(registry, images)
    for ref in refs.values():
        await ctr_pull(containerd.sock, ref.name, plain_http=True)
    have = await ctr_image_ids(containerd.sock)
    assert {r.name: r.manifest_digest for r in refs.values()}.items() <= have.items()


async def test_docker_pulls_and_runs(registry: Registry, images: TestImages, dockerd: Dockerd) -> None:
    refs = await push_all(registry, images)
    for name, ref in refs.items():
        mark = registry.mark()
        await dockerd.docker_cli("pull", ref.name)
        img = await dockerd.api(dockerd.client.images.get, ref.name)
        assert img.id == ref.config_digest, name
        assert f"{ref.registry}/{ref.repo}@{ref.manifest_digest}" in img.attrs["RepoDigests"], name
        for d in ref.layer_digests:
            assert registry.blob_gets(d, since=mark, ok_only=True) == 1, name
    for name in ("busybox", "oci_busybox"):
        res = await dockerd.docker_cli("run", "--rm", "--network", "none", refs[name].name, "/bin/busybox", "true")
        assert res.returncode == 0
        res = await dockerd.docker_cli("run", "--rm", "--network", "none", refs[name].name,
                                       "/bin/busybox", "echo", "hi")
        assert res.stdout == b"hi\n"
    # the image's own Cmd
    res = await dockerd.docker_cli("run", "--rm", "--network", "none", refs["busybox"].name)
    assert res.returncode == 0


@pytest.mark.parametrize("media", ["docker", "oci"])
async def test_multiarch_resolves_per_platform(registry: Registry, images: TestImages, containerd: Containerd,
                                               tmp_path: Path, media: str) -> None:
    index = images.multiarch if media == "docker" else images.oci_multiarch
    ref = await push_built(registry, f"library/multiarch-{media}", "v1", index)
    assert set(ref.children) == {"linux/amd64", "linux/arm64"}
    list_type = DOCKER_LIST if media == "docker" else OCI_INDEX
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{registry.url}/v2/{ref.repo}/manifests/v1", headers={"Accept": ",".join(ALL_MANIFEST_TYPES)})
        assert r.headers["content-type"] == list_type
        assert r.headers["docker-content-digest"] == ref.manifest_digest
    for arch in ("amd64", "arm64"):
        child = ref.children[f"linux/{arch}"]
        out = tmp_path / arch
        await skopeo_copy(f"docker://{ref.name}", out, arch=arch)
        got = read_dir_image(out)
        assert got["manifest_digest"] == child.manifest_digest
        assert set(got["blobs"]) == set(child.blob_digests)
    mark = registry.mark()
    await ctr_pull(containerd.sock, ref.name, plain_http=True, platform="linux/arm64")
    arm, amd = ref.children["linux/arm64"], ref.children["linux/amd64"]
    assert registry.blob_gets(arm.layer_digests[0], since=mark) == 1
    assert registry.blob_gets(amd.layer_digests[0], since=mark) == 0
    assert (await ctr_image_ids(containerd.sock))[ref.name] == ref.manifest_digest


async def test_docker_pull_platform(registry: Registry, images: TestImages, dockerd: Dockerd) -> None:
    ref = await push_built(registry, "library/multiarch", "v1", images.multiarch)
    await dockerd.docker_cli("pull", "--platform", "linux/arm64", ref.name)
    img = await dockerd.api(dockerd.client.images.get, ref.name)
    assert img.id == ref.children["linux/arm64"].config_digest


async def test_basic_auth_registry(basic_registry: Registry, images: TestImages, tmp_path: Path) -> None:
    reg = basic_registry
    ref = await push_built(reg, "team/app", "v1", images.single)  # pushes as the first user
    url = f"{reg.url}/v2/team/app/manifests/v1"
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{reg.url}/v2/")
        assert r.status_code == 401
        assert parse_www_authenticate(r.headers["www-authenticate"]) == ("basic", {"realm": "basic-realm"})
        r = await c.get(url, headers={"Accept": DOCKER_MANIFEST})
        assert r.status_code == 401
        r = await c.get(url, headers={"Accept": DOCKER_MANIFEST}, auth=("alice", "wrong"))
        assert r.status_code == 401
        for user, pw in reg.users.items():
            r = await c.get(url, headers={"Accept": DOCKER_MANIFEST}, auth=(user, pw))
            assert r.status_code == 200 and r.headers["docker-content-digest"] == ref.manifest_digest
    with pytest.raises(RuntimeError):
        await skopeo_copy(f"docker://{ref.name}", tmp_path / "anon")
    await skopeo_copy(f"docker://{ref.name}", tmp_path / "ok", creds=("bob", "bob-secret"))
    assert read_dir_image(tmp_path / "ok")["manifest_digest"] == ref.manifest_digest


async def test_token_auth_registry(token_registry: Registry, images: TestImages, tmp_path: Path) -> None:
    reg = token_registry
    ts = reg.token_server
    assert ts is not None
    pub = await push_built(reg, "library/public", "v1", images.single)
    priv = await push_built(reg, "private/app", "v1", images.multi)
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{reg.url}/v2/")
        assert r.status_code == 401
        scheme, ch = parse_www_authenticate(r.headers["www-authenticate"])
        assert scheme == "bearer" and ch["realm"] == ts.realm and ch["service"] == reg.service
        # no token at all: 401 naming the scope
        r = await c.get(f"{reg.url}/v2/private/app/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
        assert r.status_code == 401
        assert parse_www_authenticate(r.headers["www-authenticate"])[1]["scope"] == "repository:private/app:pull"
        # anonymous token: public yes, private no
        for repo, want in (("library/public", 200), ("private/app", 401)):
            h = await auth_headers(c, reg.url, repo, None, "pull")
            r = await c.get(f"{reg.url}/v2/{repo}/manifests/v1", headers={**h, "Accept": DOCKER_MANIFEST})
            assert r.status_code == want, repo
        priv_layer = f"{reg.url}/v2/private/app/blobs/{priv.layer_digests[0]}"
        r = await c.get(priv_layer, headers=h)
        assert r.status_code == 401
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        # the user's token reads the private repo
        h = await auth_headers(c, reg.url, "private/app", ("bob", "bob-secret"), "pull")
        r = await c.get(priv_layer, headers=h)
        assert r.status_code == 200 and len(r.content) == images.multi.layers[0].size
        # a token for one repo does not open another private one
        h_pub = await auth_headers(c, reg.url, "library/public", ("bob", "bob-secret"), "pull")
        assert (await c.get(priv_layer, headers=h_pub)).status_code == 401
        # wrong password: the token server refuses
        r = await c.get(ts.realm, params={"service": reg.service, "scope": "repository:private/app:pull"},
                        auth=("bob", "nope"))
        assert r.status_code == 401
    assert any(t.account is None and t.status == 200 for t in ts.requests)
    # skopeo speaks the same flow
    await skopeo_copy(f"docker://{pub.name}", tmp_path / "pub")
    with pytest.raises(RuntimeError):
        await skopeo_copy(f"docker://{priv.name}", tmp_path / "anon")
    await skopeo_copy(f"docker://{priv.name}", tmp_path / "priv", creds=("alice", "alice-secret"))
    assert read_dir_image(tmp_path / "priv")["manifest_digest"] == priv.manifest_digest


async def test_dockerd_token_login_pull_and_live_mirrors(token_registry: Registry, images: TestImages,
                                                         dockerd: Dockerd) -> None:
    reg = token_registry
    priv = await push_built(reg, "private/bb", "v1", images.busybox)
    res = await dockerd.docker_cli("pull", priv.name, check=False)
    assert res.returncode != 0
    await dockerd.docker_cli("login", "-u", "alice", "--password-stdin", reg.host, input=b"alice-secret")
    await dockerd.docker_cli("pull", priv.name)
    img = await dockerd.api(dockerd.client.images.get, priv.name)
    assert img.id == priv.config_digest
    # mirrors can be changed live (SIGHUP) and show in `docker info`
    await dockerd.set_mirrors(["http://127.0.0.1:1"])
    info = await dockerd.api(dockerd.client.info)
    assert info["RegistryConfig"]["Mirrors"] == ["http://127.0.0.1:1/"]
    await dockerd.set_mirrors([])


async def test_dockerd_starts_fast_and_cleans_up(registry: Registry, images: TestImages) -> None:
    """Startup within budget; on exit no process, mount, dir or cgroup is left behind."""
    try:
        require_root()
        require_binaries("dockerd", "containerd")
    except ComponentMissing as exc:
        pytest.skip(str(exc))
    ref = await push_built(registry, "library/busybox", "v1", images.busybox)
    t0 = trio.current_time()
    async with start_dockerd() as d:
        started = trio.current_time() - t0
        root, cgroup = d.root, d.cgroup_parent
        assert (await d.api(d.client.ping)) is True
        await d.docker_cli("pull", ref.name)
        # a container left running: the fixture must clean it up
        await d.docker_cli("run", "-d", "--network", "none", ref.name, "/bin/busybox", "sleep", "600")
        pids = [d.process.pid, d.containerd.process.pid]
    assert started < 5, f"containerd + dockerd took {started:.1f}s to start"
    assert not root.exists()
    assert str(root) not in Path("/proc/self/mountinfo").read_text()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{cgroup}"))
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


async def test_mirror_wiring_with_the_registry_as_mirror(registry: Registry, images: TestImages,
                                                         dockerd: Dockerd, tmp_path: Path) -> None:
    """The mirror helpers (daemon.json ``registry-mirrors``, ctr ``hosts.toml``, skopeo
    ``registries.conf``) send docker.io names to the given URL: here the registry itself
    plays the mirror, and its access log proves the requests went there."""
    ref = await push_built(registry, "library/single", "v1", images.single)
    layer = ref.layer_digests[0]
    await dockerd.set_mirrors([registry.url])
    await dockerd.docker_cli("pull", "single:v1")
    img = await dockerd.api(dockerd.client.images.get, "single:v1")
    assert img.id == ref.config_digest
    assert registry.blob_gets(layer, ok_only=True) == 1

    hosts = tmp_path / "hosts"
    write_hosts_toml(hosts, registry.url)
    await ctr_pull(dockerd.containerd.sock, "docker.io/library/single:v1", hosts)
    assert (await ctr_image_ids(dockerd.containerd.sock))["docker.io/library/single:v1"] == ref.manifest_digest
    ns = [e for e in registry.requests("GET") if e.blob_digest == layer and "ns=docker.io" in e.path]
    assert len(ns) == 1  # containerd adds ?ns=docker.io

    conf = write_registries_conf(tmp_path / "registries.conf", registry.host)
    await skopeo_copy("docker://docker.io/library/single:v1", tmp_path / "sk", conf)
    assert read_dir_image(tmp_path / "sk")["manifest_digest"] == ref.manifest_digest
    assert registry.blob_gets(layer, ok_only=True) == 3
