"""The Docker shim in memory: reference parsing, platform choice, the docker-archive
layout, ``pull`` into an in-memory loader (streamed, checked, cached-image path),
``configure`` output and merge-on-write, and preheat's peer choice."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from p2pdist.cli.main import main
from p2pdist.core.digest import Digest
from p2pdist.core.errors import BadRequest, IntegrityError, NotFound
from p2pdist.core.task import TaskSpec
from p2pdist.peer.localapi import BlobStream
from p2pdist.shim.archive import build_archive
from p2pdist.shim.configure import (
    format_hosts_toml,
    merge_daemon_json,
    parse_mirror,
    read_daemon_json,
    write_atomically,
)
from p2pdist.shim.loader import MemoryLoader
from p2pdist.shim.preheat import PeerInfo, choose_peers, parse_peers
from p2pdist.shim.pull import PIECE, pull
from p2pdist.shim.reference import (
    ImageReference,
    Platform,
    ReferenceInvalid,
    default_platform,
    default_registry_url,
    parse_image_reference,
    parse_platform,
    select_manifest,
)
from p2pdist.shim.resolve import BlobRef, ResolvedImage

D = "sha256:" + "ab" * 32


# -- references ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("busybox", ("docker.io", "library/busybox", "latest", None)),
    ("busybox:1.36", ("docker.io", "library/busybox", "1.36", None)),
    ("user/app", ("docker.io", "user/app", "latest", None)),
    ("docker.io/busybox", ("docker.io", "library/busybox", "latest", None)),
    ("index.docker.io/library/busybox:x", ("docker.io", "library/busybox", "x", None)),
    ("localhost/app", ("localhost", "app", "latest", None)),
    ("localhost:5000/a/b:v1", ("localhost:5000", "a/b", "v1", None)),
    ("127.0.0.1:5101/library/x:v1", ("127.0.0.1:5101", "library/x", "v1", None)),
    ("ghcr.io/org/tool", ("ghcr.io", "org/tool", "latest", None)),
    (f"busybox@{D}", ("docker.io", "library/busybox", None, D)),
    (f"host:1/x:t@{D}", ("host:1", "x", "t", D)),
    ("a_b/c__d.e-f", ("docker.io", "a_b/c__d.e-f", "latest", None)),  # no '.' in the first part: not a host
])
def test_reference_parsing_like_docker(text: str, want: tuple) -> None:
    ref = parse_image_reference(text)
    assert (ref.registry, ref.repository, ref.tag, str(ref.digest) if ref.digest else None) == want


@pytest.mark.parametrize("text", ["", "Busybox", "busybox:", ":tag", "a//b", "busybox@sha256:12",
                                  "busybox@md5:" + "a" * 32, "-x", "x/", " busybox", "host:5000/",
                                  "busybox:" + "t" * 200, "a/b/../c", "bad host!/x"])
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(ReferenceInvalid):
        parse_image_reference(text)


def test_reference_names() -> None:
    assert parse_image_reference("busybox:1").familiar_name == "busybox"
    assert parse_image_reference("user/app").familiar_name == "user/app"
    assert parse_image_reference("127.0.0.1:5/a/b").familiar_name == "127.0.0.1:5/a/b"
    assert parse_image_reference(f"x@{D}").reference == D
    assert parse_image_reference("x").reference == "latest"
    assert default_registry_url("docker.io") == "https://registry-1.docker.io"
    assert default_registry_url("ghcr.io") == "https://ghcr.io"
    assert default_registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert default_registry_url("localhost:5000") == "http://localhost:5000"


# -- platforms ----------------------------------------------------------------------------

def test_default_platform_uses_goarch_names() -> None:
    assert default_platform("x86_64") == Platform("linux", "amd64")
    assert default_platform("aarch64") == Platform("linux", "arm64")
    assert default_platform("armv7l") == Platform("linux", "arm", "v7")
    assert parse_platform("linux/arm/v6") == Platform("linux", "arm", "v6")
    for bad in ("linux", "linux/", "Linux/amd64", "a/b/c/d", "linux/amd64 "):
        with pytest.raises(BadRequest):
            parse_platform(bad)


def _entry(os_: str, arch: str, variant: str | None = None, n: int = 0) -> dict:
    p = {"os": os_, "architecture": arch} | ({"variant": variant} if variant else {})
    return {"digest": f"sha256:{n:064x}", "size": 1, "platform": p}


def test_select_manifest_picks_platform() -> None:
    entries = [_entry("unknown", "unknown", n=9), _entry("linux", "amd64", n=1),
               _entry("linux", "arm", "v6", n=2), _entry("linux", "arm", "v7", n=3),
               _entry("linux", "arm64", "v8", n=4), _entry("windows", "amd64", n=5)]
    assert select_manifest(entries, Platform("linux", "amd64"))["digest"].endswith("1")
    assert select_manifest(entries, Platform("linux", "arm", "v6"))["digest"].endswith("2")
    assert select_manifest(entries, Platform("linux", "arm"))["digest"].endswith("3")
    assert select_manifest(entries, Platform("linux", "arm64"))["digest"].endswith("4")
    assert select_manifest(entries, Platform("windows", "amd64"))["digest"].endswith("5")
    with pytest.raises(NotFound, match=r"no manifest for platform linux/s390x \(it has: linux/amd64"):
        select_manifest(entries, Platform("linux", "s390x"), "x")
    with pytest.raises(NotFound):  # attestation entries never match
        select_manifest(entries, Platform("unknown", "unknown"))


# -- the archive and pull into an in-memory loader -------------------------------------------

def _blob(data: bytes, media: str = "application/vnd.docker.image.rootfs.diff.tar.gzip") -> tuple[BlobRef, bytes]:
    return BlobRef(Digest(hashlib.sha256(data).hexdigest()), len(data), media), data


def _image(layers: list[bytes], config: bytes = b'{"os":"linux"}', tag: str | None = "v1") -> tuple[ResolvedImage, dict]:
    cref, cdata = _blob(config, "application/vnd.docker.container.image.v1+json")
    lrefs = [_blob(x) for x in layers]
    blobs = {cref.digest: cdata} | {r.digest: d for r, d in lrefs}
    ref = ImageReference("docker.io", "library/app", tag, None if tag else Digest("cd" * 32))
    return ResolvedImage(ref, Digest("ef" * 32), cref, tuple(r for r, _ in lrefs), None), blobs


def test_archive_is_a_docker_archive() -> None:
    img, blobs = _image([b"one" * 1000, b"two", b"one" * 1000])  # a repeated layer appears once
    raw = build_archive(img, blobs)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        assert tar.extractfile(f"{img.config.digest.hex}.json").read() == blobs[img.config.digest]
        for layer in img.layers:
            assert tar.extractfile(f"{layer.digest.hex}/layer.tar").read() == blobs[layer.digest]
    assert names.count(f"{img.layers[0].digest.hex}/layer.tar") == 1
    assert manifest == [{"Config": f"{img.config.digest.hex}.json", "RepoTags": [],
                         "Layers": [f"{x.digest.hex}/layer.tar" for x in img.layers]}]


class MemorySource:
    """Blobs from memory in small pieces; counts what was started and opened."""

    def __init__(self, blobs: dict[Digest, bytes], corrupt: Digest | None = None):
        self.blobs = blobs
        self.corrupt = corrupt
        self.started: list[str] = []
        self.opened: list[str] = []

    async def start(self, spec: TaskSpec) -> None:
        self.started.append(spec.task_id)

    @asynccontextmanager
    async def open(self, spec: TaskSpec) -> AsyncIterator[BlobStream]:
        assert spec.digest is not None
        self.opened.append(spec.task_id)
        data = self.blobs[spec.digest]
        if spec.digest == self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])

        async def pieces() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 3 * PIECE):  # bigger than PIECE: pull must split them
                await trio.sleep(0)
                yield data[i:i + 3 * PIECE]
        yield BlobStream(spec.task_id, len(data), pieces())

    async def progress(self, spec: TaskSpec) -> tuple[int, int | None, bool]:
        return 0, None, True


def _specs(blobs: dict[Digest, bytes]):  # type: ignore[no-untyped-def]
    async def specs_for(img: ResolvedImage) -> dict[Digest, TaskSpec]:
        return {d: TaskSpec(f"http://origin/{d.hex}", d) for d in blobs}
    return specs_for


async def test_pull_streams_checks_tags_and_skips_present_images() -> None:
    img, blobs = _image([bytes(range(256)) * 40000, b"small"])  # ~10 MiB layer
    source, loader = MemorySource(blobs), MemoryLoader()
    res = await pull(img, _specs(blobs), source, loader)
    assert res.fetched and res.image_id == str(img.config.digest) and res.names == ["app:v1"]
    assert loader.images["app:v1"] == str(img.config.digest)
    assert loader.max_piece <= PIECE  # never a whole layer in one piece
    assert sorted(source.started) == sorted(d.hex for d in blobs)
    assert loader.archives[0] == build_archive(img, blobs)
    # again: Docker has it, nothing is fetched, the tag is (re)set
    source2 = MemorySource(blobs)
    loader.images.pop("app:v1")
    res2 = await pull(img, _specs(blobs), source2, loader)
    assert not res2.fetched and source2.started == [] and source2.opened == []
    assert loader.images["app:v1"] == str(img.config.digest)


async def test_pull_refuses_a_corrupt_blob() -> None:
    img, blobs = _image([b"x" * 5000])
    source, loader = MemorySource(blobs, corrupt=img.layers[0].digest), MemoryLoader()
    with pytest.raises(IntegrityError):
        await pull(img, _specs(blobs), source, loader)
    assert str(img.config.digest) not in loader.images


async def test_pull_of_a_digest_reference_does_not_tag() -> None:
    img, blobs = _image([b"y" * 10], tag=None)
    loader = MemoryLoader()
    res = await pull(img, _specs(blobs), MemorySource(blobs), loader)
    assert res.names == [] and list(loader.images) == [str(img.config.digest)]


# -- configure ----------------------------------------------------------------------------

def test_configure_formats() -> None:
    assert parse_mirror("http://127.0.0.1:7401/") == "http://127.0.0.1:7401"
    for bad in ("ftp://x", "http://x/v2", "127.0.0.1:7401", "http://u:p@x"):
        with pytest.raises(BadRequest):
            parse_mirror(bad)
    import tomllib
    doc = tomllib.loads(format_hosts_toml("docker.io", "http://127.0.0.1:7401"))
    assert doc == {"server": "https://registry-1.docker.io",
                   "host": {"http://127.0.0.1:7401": {"capabilities": ["pull", "resolve"]}}}
    assert tomllib.loads(format_hosts_toml("ghcr.io", "http://m:1"))["server"] == "https://ghcr.io"
    merged = merge_daemon_json({"debug": True, "registry-mirrors": ["http://old", "http://m:1/"]}, "http://m:1")
    assert merged == {"debug": True, "registry-mirrors": ["http://m:1", "http://old"]}
    assert merge_daemon_json(None, "http://m:1") == {"registry-mirrors": ["http://m:1"]}


def test_configure_docker_write_merges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"log-level": "warn", "registry-mirrors": ["https://other"],
                                "storage-driver": "overlay2"}))
    path.chmod(0o600)
    assert main(["configure", "docker", "--mirror", "http://10.0.0.1:7401", "--daemon-json", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(path.read_text())["registry-mirrors"] == ["https://other"]  # printing changes nothing
    assert main(["configure", "docker", "--mirror", "http://10.0.0.1:7401", "--daemon-json", str(path), "--write"]) == 0
    doc = json.loads(path.read_text())
    assert doc == printed == {"log-level": "warn", "storage-driver": "overlay2",
                              "registry-mirrors": ["http://10.0.0.1:7401", "https://other"]}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["daemon.json"]  # no temp file left
    # idempotent
    assert main(["configure", "docker", "--mirror", "http://10.0.0.1:7401", "--daemon-json", str(path), "--write"]) == 0
    assert json.loads(path.read_text()) == doc


def test_configure_refuses_broken_daemon_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "daemon.json"
    path.write_text("{not json")
    assert main(["configure", "docker", "--daemon-json", str(path), "--write"]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert path.read_text() == "{not json"
    path.write_text("[]")
    with pytest.raises(BadRequest):
        read_daemon_json(path)
    assert main(["configure", "docker", "--registry", "ghcr.io"]) == 1


def test_configure_containerd_write(tmp_path: Path) -> None:
    assert main(["configure", "containerd", "--mirror", "http://127.0.0.1:7401", "--write",
                 "--hosts-dir", str(tmp_path / "certs.d"), "--registry", "ghcr.io"]) == 0
    text = (tmp_path / "certs.d" / "ghcr.io" / "hosts.toml").read_text()
    assert text == format_hosts_toml("ghcr.io", "http://127.0.0.1:7401")
    assert main(["configure", "containerd", "--registry", "../x", "--hosts-dir", str(tmp_path)]) == 1


def test_write_atomically_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")

    with pytest.raises(TypeError):
        write_atomically(path, 123)  # type: ignore[arg-type]
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]


# -- preheat peer choice ------------------------------------------------------------------

def test_choose_peers() -> None:
    peers = parse_peers({"peers": [{"peer_id": f"p{i}", "addr": f"10.0.0.{i}:7401", "zone": "a" if i < 3 else "b"}
                                   for i in range(5)] + [{"peer_id": "bad"}]})
    assert len(peers) == 5
    rng = random.Random(1)
    assert choose_peers(peers, rng=rng) == peers
    two = choose_peers(peers, count=2, rng=rng)
    assert len(two) == 2 and len(set(two)) == 2 and set(two) <= set(peers)
    assert [p.peer_id for p in choose_peers(peers, zone="b", rng=rng)] == ["p3", "p4"]
    with pytest.raises(BadRequest, match="zones: a, b"):
        choose_peers(peers, zone="c", rng=rng)
    with pytest.raises(BadRequest):
        choose_peers(peers, count=6, rng=rng)
    with pytest.raises(BadRequest):
        choose_peers([], rng=rng)
    assert choose_peers([PeerInfo("x", "h:1", "")], count=1, rng=rng)[0].addr == "h:1"
