"""The command line as a user runs it: real `p2pdist` processes on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from p2pdist.testing import StaticOrigin, make_blob, sha256_digest

P2PDIST = [sys.executable, "-m", "p2pdist"]
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([*P2PDIST, *args], capture_stdout=True, capture_stderr=True,
                                  check=check, env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def wait_healthy(url: str, proc: trio.Process) -> None:
    async with httpx.AsyncClient() as client:
        with trio.fail_after(15):
            while True:
                assert proc.returncode is None, f"{url} exited early"
                try:
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.05)


async def start_daemon(nursery: trio.Nursery, *args: str) -> trio.Process:
    proc: trio.Process = await nursery.start(lambda task_status: trio.run_process(
        [*P2PDIST, *args], task_status=task_status, check=False,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return proc


@pytest.fixture
async def origin(nursery):
    o = StaticOrigin({"blob": make_blob(9 * 4 * MiB + 777, seed=3)})
    await nursery.start(o.serve)
    return o


async def test_demo_json_reports_verified_and_origin_once():
    r = await run_cli("demo", "--peers", "4", "--size", "64MiB", "--json", check=True)
    report = json.loads(r.stdout)
    assert report["verified"] is True
    assert report["completed"] == report["peers"] == 4
    assert report["blob_bytes"] == 64 * MiB
    assert report["origin_bytes"] <= 1.05 * report["blob_bytes"]
    assert report["bytes_from_peers"] > 0
    for key in ("seconds", "topology", "bytes_from_peers"):
        assert key in report


async def test_demo_tree_text_report():
    r = await run_cli("demo", "--peers", "3", "--size", "9MiB", "--topology", "tree", check=True)
    out = r.stdout.decode()
    assert "3/3" in out and "yes, every copy matches" in out


@pytest.mark.parametrize("args, needle", [
    (["--size", "lots"], "--size"),
    (["--peers", "0"], "--peers"),
])
async def test_demo_bad_arguments(args, needle):
    r = await run_cli("demo", *args)
    assert r.returncode != 0
    assert needle in r.stderr.decode() and b"Traceback" not in r.stderr


async def test_get_through_daemon(tmp_path: Path, origin: StaticOrigin, nursery):
    tport, pport = free_port(), free_port()
    tracker = await start_daemon(nursery, "tracker", "--listen", f"127.0.0.1:{tport}",
                                 "--data-dir", str(tmp_path / "t"))
    peer = await start_daemon(nursery, "peer", "--listen", f"127.0.0.1:{pport}", "--data-dir",
                              str(tmp_path / "p"), "--tracker", f"http://127.0.0.1:{tport}")
    await wait_healthy(f"http://127.0.0.1:{tport}", tracker)
    await wait_healthy(f"http://127.0.0.1:{pport}", peer)
    blob = origin.blobs["blob"]
    digest = str(sha256_digest(blob))
    out = tmp_path / "out.bin"
    r = await run_cli("get", origin.url("blob"), "-O", str(out), "--digest", digest,
                      "--daemon", f"http://127.0.0.1:{pport}")
    assert r.returncode == 0, r.stderr.decode()
    assert out.read_bytes() == blob
    assert digest in r.stderr.decode()

    # no --digest: the daemon's sealed digest is checked instead
    out2 = tmp_path / "out2.bin"
    r = await run_cli("get", origin.url("blob"), "-O", str(out2), "--daemon", f"http://127.0.0.1:{pport}")
    assert r.returncode == 0, r.stderr.decode()
    assert out2.read_bytes() == blob

    # a wrong digest: non-zero, the existing output untouched, no temp file left
    out.write_bytes(b"precious")
    r = await run_cli("get", origin.url("blob"), "-O", str(out), "--digest", "sha256:" + "0" * 64,
                      "--daemon", f"http://127.0.0.1:{pport}")
    assert r.returncode == 1
    assert b"DIGEST" in r.stderr.upper() or b"digest" in r.stderr
    assert b"Traceback" not in r.stderr
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # status shows the task
    r = await run_cli("status", "--tracker", f"http://127.0.0.1:{tport}", "--json", check=True)
    st = json.loads(r.stdout)
    assert any(t["task_id"] == digest.split(":")[1] and t["sealed"] for t in st["tasks"])
    r = await run_cli("status", "--tracker", f"http://127.0.0.1:{tport}", check=True)
    assert b"sealed" in r.stdout
    nursery.cancel_scope.cancel()


async def test_get_in_process_with_node_and_without_tracker(tmp_path: Path, origin: StaticOrigin, nursery):
    blob = origin.blobs["blob"]
    digest = str(sha256_digest(blob))
    pport = free_port()
    peer = await start_daemon(nursery, "peer", "--listen", f"127.0.0.1:{pport}", "--data-dir", str(tmp_path / "p"))
    await wait_healthy(f"http://127.0.0.1:{pport}", peer)
    # the peer (no tracker) seeds from the origin itself
    r = await run_cli("get", origin.url("blob"), "-O", str(tmp_path / "a"), "--digest", digest,
                      "--daemon", f"http://127.0.0.1:{pport}")
    assert r.returncode == 0, r.stderr.decode()
    sent = origin.bytes_sent
    assert sent == len(blob)
    # in-process, fetching from that node only: the origin sends nothing more
    r = await run_cli("get", origin.url("blob"), "-O", str(tmp_path / "b"), "--digest", digest,
                      "--node", f"127.0.0.1:{pport}", "--data-dir", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "b").read_bytes() == blob
    assert origin.bytes_sent == sent
    nursery.cancel_scope.cancel()


async def test_get_tracker_unreachable_falls_back_to_origin(tmp_path: Path, origin: StaticOrigin):
    blob = origin.blobs["blob"]
    r = await run_cli("get", origin.url("blob"), "-O", str(tmp_path / "x"), "--digest", str(sha256_digest(blob)),
                      "--tracker", f"http://127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "x").read_bytes() == blob


@pytest.mark.parametrize("args, needle", [
    (["ftp://example.com/x"], "bad URL"),
    (["http://127.0.0.1:1/x", "--digest", "sha256:XYZ"], "digest"),
    (["http://127.0.0.1:1/x", "--digest", "md5:" + "0" * 32], "digest"),
    (["http://127.0.0.1:1/x", "-H", "no-colon"], "header"),
    (["http://127.0.0.1:1/x", "--node", "nohostport"], "--node"),
    (["http://127.0.0.1:1/x"], "unreachable"),
])
async def test_get_errors_are_one_clear_line(tmp_path: Path, args, needle):
    r = await run_cli("get", *args, "-O", str(tmp_path / "o"), "--data-dir", str(tmp_path / "c"),
                      "--no-progress")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


async def test_get_output_is_a_directory(tmp_path: Path):
    r = await run_cli("get", "http://127.0.0.1:1/x", "-O", str(tmp_path))
    assert r.returncode == 1 and b"directory" in r.stderr


async def test_daemon_bad_config_names_the_key(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[peer]\nupload_slots = 'many'\n")
    r = await run_cli("peer", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2
    assert b"upload_slots" in r.stderr and b"Traceback" not in r.stderr


async def test_daemon_port_in_use_is_a_clear_error(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = await run_cli("tracker", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "t"))
    assert r.returncode == 1
    assert b"Traceback" not in r.stderr and b"error" in r.stderr
