"""The Docker shim against the real things: ``p2pdist pull`` into a private dockerd from the
CNCF registry (through a peer daemon, and through an in-process peer with a tracker),
``p2pdist preheat`` onto three peers, and ``p2pdist configure containerd`` driving
``ctr image pull --hosts-dir`` through a peer's mirror."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pdist.cli.main import main
from p2pdist.core.config import PeerConfig, TrackerConfig
from p2pdist.peer import service as peer_service
from p2pdist.peer.service import Peer
from p2pdist.testing_real import (
    Containerd,
    Dockerd,
    Registry,
    TestImages,
    ctr_image_ids,
    ctr_pull,
    push_built,
)
from p2pdist.tracker import service as tracker_service

pytestmark = [pytest.mark.real, pytest.mark.slow]


async def p2pdist_cli(*args: str, timeout: float = 300) -> tuple[int, str, str]:
    """``python -m p2pdist args…`` as a user runs it (its own process and trio loop)."""
    with trio.fail_after(timeout):
        res = await trio.run_process([sys.executable, "-m", "p2pdist", *args], capture_stdout=True,
                                     capture_stderr=True, check=False)
    return res.returncode, res.stdout.decode(), res.stderr.decode()


@asynccontextmanager
async def cluster(tmp: Path, n_peers: int, *, tracker: bool = True, zones: tuple[str, ...] = (),
                  upstreams: tuple[str, ...] = ()) -> AsyncIterator[tuple[str | None, list[Peer]]]:
    """A tracker (optional) and ``n_peers`` peers on loopback, in this test's trio loop."""
    async with trio.open_nursery() as nursery:
        turl = None
        if tracker:
            t = await nursery.start(tracker_service.serve, TrackerConfig(
                listen="127.0.0.1:0", data_dir=str(tmp / "tracker"), announce_interval=0.5))
            turl = f"http://{t.advertise}"
        peers = []
        for i in range(n_peers):
            cfg = PeerConfig(listen="127.0.0.1:0", data_dir=str(tmp / f"peer{i}"), peer_id=f"peer{i}",
                             trackers=(turl,) if turl else (), zone=zones[i] if zones else "",
                             upstreams=upstreams, announce_interval=0.2)
            peers.append(await nursery.start(peer_service.serve, cfg))
        yield turl, peers
        nursery.cancel_scope.cancel()


async def wait_tracker_peers(turl: str, n: int, timeout: float = 15) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        with trio.fail_after(timeout):
            while True:
                peers = (await client.get(f"{turl}/api/v1/status")).json()["peers"]
                if len(peers) >= n:
                    return peers
                await trio.sleep(0.1)


async def test_pull_into_dockerd_through_a_peer_daemon(tmp_path: Path, registry: Registry, dockerd: Dockerd,
                                                       images: TestImages) -> None:
    ref = await push_built(registry, "library/busybox", "v1", images.busybox)
    async with cluster(tmp_path, 1, tracker=False) as (_, [peer]):
        args = ["pull", "busybox:v1", "--registry", f"docker.io={registry.url}", "--daemon",
                f"http://{peer.advertise}", "--docker-host", dockerd.host]
        mark = registry.mark()
        rc, out, err = await p2pdist_cli(*args)
        assert rc == 0, err
        assert out.strip().startswith(f"busybox:v1: {ref.config_digest}")
        info = await dockerd.api(dockerd.client.api.inspect_image, "busybox:v1")
        assert info["Id"] == ref.config_digest
        # every blob came through the peer (its own downloads), from the registry once
        assert set(peer.downloads) == {d.split(":")[1] for d in ref.blob_digests}
        assert all(peer.downloads[d.split(":")[1]].complete for d in ref.blob_digests)
        for d in ref.blob_digests:
            assert registry.blob_gets(d, since=mark, ok_only=True) >= 1
        run = await dockerd.docker_cli("run", "--rm", "--network", "none", "busybox:v1", "/bin/busybox", "true")
        assert run.returncode == 0
        # again: Docker has the image, nothing is fetched (no blob request to the registry,
        # no new task on the peer)
        downloads = dict(peer.downloads)
        mark = registry.mark()
        rc, out, err = await p2pdist_cli(*args)
        assert rc == 0, err
        assert "already present, nothing fetched" in out
        assert peer.downloads == downloads
        assert [e for e in registry.requests(since=mark) if e.blob_digest] == []


async def test_pull_multiarch_in_process_through_the_swarm(tmp_path: Path, registry: Registry, dockerd: Dockerd,
                                                           images: TestImages) -> None:
    ref = await push_built(registry, "tools/multi", "v2", images.oci_multiarch)
    arm = ref.children["linux/arm64"]
    async with cluster(tmp_path, 0) as (turl, _):
        assert turl is not None
        name = f"{registry.host}/tools/multi:v2"  # a loopback registry: plain http by default
        rc, out, err = await p2pdist_cli("pull", name, "--platform", "linux/arm64", "--tracker", turl,
                                         "--data-dir", str(tmp_path / "cli"), "--docker-host", dockerd.host)
        assert rc == 0, err
        info = await dockerd.api(dockerd.client.api.inspect_image, name)
        assert info["Id"] == arm.config_digest and info["Architecture"] == "arm64"
        for d in arm.blob_digests:  # the tracker seeded each blob, once
            assert registry.blob_gets(d, ok_only=True) == 1
        # errors: one line, exit 1
        for bad, why in ((f"{registry.host}/tools/nope:v1", "not found"),
                         (f"{registry.host}/tools/multi:v2", "no manifest for platform linux/s390x"),
                         ("Bad/Name", "lowercase")):
            extra = ["--platform", "linux/s390x"] if "s390x" in why else []
            rc, out, err = await p2pdist_cli("pull", bad, *extra, "--tracker", turl, "--docker-host", dockerd.host)
            assert rc == 1 and why in err and len(err.strip().splitlines()) == 1, err
        rc, _, err = await p2pdist_cli("pull", name, "--docker-host", f"unix://{tmp_path}/no.sock", "--tracker", turl)
        assert rc == 1 and "Docker is not reachable" in err


async def test_preheat_onto_three_peers(tmp_path: Path, registry: Registry, images: TestImages) -> None:
    ref = await push_built(registry, "library/multi", "v1", images.multi)
    async with cluster(tmp_path, 3, zones=("a", "a", "b")) as (turl, peers):
        assert turl is not None
        await wait_tracker_peers(turl, 3)  # idle peers are listed too
        rc, out, err = await p2pdist_cli("preheat", f"{registry.host}/library/multi:v1", "--all", "--tracker", turl,
                                         "--timeout", "120")
        assert rc == 0, err
        assert out.count(f"{len(ref.blob_digests)}/{len(ref.blob_digests)} blobs") == 3
        async with httpx.AsyncClient() as client:
            for p in peers:
                for d in ref.blob_digests:
                    summary = (await client.get(f"http://{p.advertise}/api/v1/tasks/{d.split(':')[1]}")).json()
                    assert summary["state"] == "complete", summary
        for d in ref.blob_digests:  # single flight: the registry sent each blob once
            assert registry.blob_gets(d, ok_only=True) == 1, d
        # a zone picks only its peers; an unknown zone fails with one clear line
        rc, out, err = await p2pdist_cli("preheat", f"{registry.host}/library/multi:v1", "--zone", "b",
                                         "--tracker", turl)
        assert rc == 0 and len(out.strip().splitlines()) == 1 and peers[2].advertise in out, err
        rc, out, err = await p2pdist_cli("preheat", f"{registry.host}/library/multi:v1", "--zone", "zz",
                                         "--tracker", turl)
        assert rc == 1 and "no peer in zone 'zz'" in err


async def test_preheat_names_failures(tmp_path: Path, registry: Registry, images: TestImages) -> None:
    await push_built(registry, "library/single", "v1", images.single)
    async with cluster(tmp_path, 1) as (turl, [peer]):
        assert turl is not None
        async with httpx.AsyncClient() as client:  # a peer that announced, then vanished
            r = await client.post(f"{turl}/api/v1/announce", json={"peer_id": "ghost", "addr": "127.0.0.1:9",
                                                                  "zone": "", "tasks": []})
            assert r.status_code == 200
        await wait_tracker_peers(turl, 2)
        rc, out, err = await p2pdist_cli("preheat", "library/single:v1", "--registry", f"docker.io={registry.url}",
                                         "--tracker", turl, "--timeout", "60")
        assert rc == 1, err
        assert "preheat failed on 1 of 2 peers: 127.0.0.1:9" in err and len(err.strip().splitlines()) == 2, err
        assert f"{peer.advertise} (peer0): 2/2 blobs" in out
        # the registry itself unreachable: one line, exit 1
        rc, out, err = await p2pdist_cli("preheat", "library/single:v1", "--registry", "docker.io=http://127.0.0.1:9",
                                         "--tracker", turl)
        assert rc == 1 and "unreachable" in err and len(err.strip().splitlines()) == 1, err


async def test_configure_containerd_then_ctr_pulls_through_the_mirror(
        tmp_path: Path, registry: Registry, containerd: Containerd, images: TestImages) -> None:
    ref = await push_built(registry, "library/single", "v1", images.single)
    hosts = tmp_path / "certs.d"
    async with cluster(tmp_path, 1, tracker=False, upstreams=(f"docker.io={registry.url}",)) as (_, [peer]):
        assert main(["configure", "containerd", "--mirror", f"http://{peer.advertise}", "--write",
                     "--hosts-dir", str(hosts)]) == 0
        res = await ctr_pull(containerd.sock, "docker.io/library/single:v1", hosts)
        assert res.returncode == 0
        ids = await ctr_image_ids(containerd.sock)
        assert ids["docker.io/library/single:v1"] == ref.manifest_digest
        # the layers really came through the peer (containerd would not fall back silently,
        # but the peer's own tasks prove it)
        for d in ref.layer_digests:
            assert peer.downloads[d.split(":")[1]].complete
        text = (hosts / "docker.io" / "hosts.toml").read_text()
        assert f'[host."http://{peer.advertise}"]' in text and json.dumps("https://registry-1.docker.io") in text


async def test_pull_of_a_big_layer_streams(tmp_path: Path, registry: Registry, dockerd: Dockerd,
                                           images: TestImages) -> None:
    """A >100 MiB layer goes into Docker without the CLI ever holding it: the most memory
    Python ever held at once (tracemalloc's peak: every bytes object counts) stays far below
    the layer's size. (ru_maxrss would not do: a child's counts its parent's pages from
    before the exec.)"""
    ref = await push_built(registry, "library/big", "v1", images.big)
    async with cluster(tmp_path, 1, tracker=False) as (_, [peer]):
        code = ("import sys, tracemalloc; tracemalloc.start(); from p2pdist.cli.main import main;"
                " rc = main(sys.argv[1:]); print('PEAK', tracemalloc.get_traced_memory()[1], file=sys.stderr);"
                " sys.exit(rc)")
        res = await trio.run_process([sys.executable, "-c", code, "pull", f"{registry.host}/library/big:v1",
                                      "--daemon", f"http://{peer.advertise}", "--docker-host", dockerd.host],
                                     capture_stdout=True, capture_stderr=True, check=False)
        err = res.stderr.decode()
        assert res.returncode == 0, err
        peak = int(err.split("PEAK ")[1].split()[0])
        assert peak < 48 * 2**20 < images.big_size, f"pull held {peak} bytes at once"
        info = await dockerd.api(dockerd.client.api.inspect_image, f"{registry.host}/library/big:v1")
        assert info["Id"] == ref.config_digest
