#!/usr/bin/env python3
"""docker pull of a one-big-layer image: straight from the registry, through a cold peer,
through a warm peer; and the time to first byte of a cold blob through the mirror.

The issue's benchmark (issue 3): pull an image with a 1 GiB layer into dockerd (a) straight
from the registry, (b) through a cold peer, (c) through a warm peer (layer already in the
swarm), in one run. Targets: cold ≤ 1.25 × direct, warm ≤ 1.1 × direct. Time to first byte
of a cold 1 GiB blob through the mirror ≤ 0.5 s.

Set-up, all real processes on 127.0.0.1 (must run as root: dockerd):

* the image: one layer of ``--size`` bytes, an uncompressed tar (media type
  ``application/vnd.docker.image.rootfs.diff.tar``, so nobody spends time in gzip) holding one
  file of seeded random bytes, built once into ``--cache-dir`` and reused by later runs;
* the real CNCF ``docker-registry`` holding it as ``library/big:v1``;
* a private containerd + dockerd (``p2pdist.testing_real.start_dockerd``).

Each run, in one process run time, alternating the order (odd runs: direct, cold, warm;
even runs: cold, warm, direct), with ``docker rmi -f`` of both names and ``sync`` (untimed)
before every pull:

* direct: ``docker pull 127.0.0.1:REG/library/big:v1``; the registry's access log must show
  the layer sent once, whole;
* cold: a fresh ``p2pdist tracker`` and a fresh ``p2pdist peer --upstream docker.io=REG
  --tracker …`` (subprocesses, fresh data dirs), dockerd's ``registry-mirrors`` set to the
  peer (SIGHUP), ``docker pull docker.io/library/big:v1``; the registry must have sent the
  layer exactly once (one GET, all bytes) and the peer's
  ``p2pdist_mirror_requests_total{kind="blob"}`` must have grown (dockerd falls back to
  Docker Hub silently otherwise);
* warm: ``docker rmi`` and the same pull through the same peer; the registry must send no
  blob at all.
* TTFB: another fresh tracker + peer; ``GET /v2/library/big/blobs/<layer>`` on the peer with
  httpx streaming; time from the request's start to the first body byte, then the rest is
  drained (its MB/s reported too).

Timings are wall-clock around the ``docker pull`` CLI (it returns once the layer is
extracted). CPU seconds of each process (utime+stime from /proc) during each step are
reported as well, to show where the time goes. Medians over runs; ratios paired per run.

    python bench/pull.py [--size 1GiB] [--runs 3] [--json] [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer import (  # noqa: E402  (shared bench helpers)
    Procs,
    free_port,
    machine_info,
    p2pdist_bin,
    parse_size,
    start_py_spy,
    stop_py_spy,
    wait_ready,
)
from transfer import (
    record as record_section,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
MARK_START = "<!-- bench:pull:start -->"
MARK_END = "<!-- bench:pull:end -->"
TARGET_COLD = 1.25
TARGET_WARM = 1.10
TARGET_TTFB_S = 0.5
MiB = 1024 * 1024
REPO, TAG = "library/big", "v1"
SEED = 77
DEFAULT_CACHE = Path("/var/tmp/p2pdist-bench-pull-cache")


def log(msg: str) -> None:
    print(f"[pull] {msg}", file=sys.stderr, flush=True)


# -- the image ---------------------------------------------------------------------------------


def build_image(cache_dir: Path, size: int) -> Any:
    """A docker-media-type image with one uncompressed tar layer of exactly ``size`` bytes
    (rounded up to 512; one file of seeded random bytes), cached by size."""
    import blake3

    from p2pdist.testing_real import (
        DOCKER_CONFIG,
        DOCKER_LAYER_TAR,
        DOCKER_MANIFEST,
        FIXED_CREATED,
        FIXED_MTIME,
        Blob,
        Image,
        ImageCache,
    )

    size = max(4096, -(-size // 512) * 512)
    cache = ImageCache(cache_dir)
    meta_path = cache_dir / f"layer-{size}-{SEED}.json"
    layer = None
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        p = cache_dir / "blobs" / meta["digest"].split(":", 1)[1]
        if p.exists() and p.stat().st_size == size:
            layer = Blob(meta["digest"], size, DOCKER_LAYER_TAR, p)
    if layer is None:
        log(f"building a {size:,} byte layer into {cache_dir} (once)")
        content = size - 512 - 1024  # header + data (a multiple of 512) + end-of-archive
        info = tarfile.TarInfo("data/big.bin")
        info.size, info.mode, info.mtime = content, 0o644, FIXED_MTIME
        header = info.tobuf(format=tarfile.GNU_FORMAT)
        assert len(header) == 512, len(header)
        xof = blake3.blake3(b"p2pdist-bench-pull" + SEED.to_bytes(8, "little"))
        h = hashlib.sha256()
        tmp = cache_dir / "blobs" / f"building.{os.getpid()}"
        with open(tmp, "wb") as fh:
            for piece in (header,):
                h.update(piece)
                fh.write(piece)
            pos = 0
            while pos < content:
                n = min(8 * MiB, content - pos)
                piece = xof.digest(length=n, seek=pos)
                h.update(piece)
                fh.write(piece)
                pos += n
            tail = b"\0" * 1024
            h.update(tail)
            fh.write(tail)
        digest = "sha256:" + h.hexdigest()
        p = cache_dir / "blobs" / digest.split(":", 1)[1]
        os.replace(tmp, p)
        meta_path.write_text(json.dumps({"digest": digest, "size": size}))
        layer = Blob(digest, size, DOCKER_LAYER_TAR, p)
    cfg = {"architecture": "amd64", "os": "linux", "created": FIXED_CREATED,
           "config": {"Env": ["PATH=/bin"]},
           "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
           "history": [{"created": FIXED_CREATED, "created_by": "bench/pull.py"}]}
    config = cache.put(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode(), DOCKER_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.descriptor(),
                "layers": [layer.descriptor()]}
    mblob = cache.put(json.dumps(manifest, indent=3).encode(), DOCKER_MANIFEST)
    return Image(mblob, config, (layer,), (layer.digest,), "docker", ("linux", "amd64"))


# -- process accounting ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants (seconds)."""
    from transfer import _descendants

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


class CpuMeter:
    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start = {k: cpu_seconds(p) for k, p in pids.items()}

    def done(self) -> dict[str, float]:
        return {k: round(cpu_seconds(p) - self.start[k], 2) for k, p in self.pids.items()}


class DownloadWatch:
    """When dockerd finished downloading the layer: it writes each blob to a temp file under
    ``<data-root>/tmp`` (``GetImageBlob…``) before it extracts it. Polls their sizes every 10 ms
    and notes the first moment one of them held the whole layer."""

    def __init__(self, tmpdir: Path, size: int, t0: float):
        self.tmpdir, self.size, self.t0 = tmpdir, size, t0
        self.done_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.done_s is None:
            with contextlib.suppress(OSError):
                for e in os.scandir(self.tmpdir):
                    with contextlib.suppress(OSError):
                        if e.stat().st_size >= self.size:
                            self.done_s = time.perf_counter() - self.t0
            self._stop.wait(0.01)

    def __enter__(self) -> DownloadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m[1] != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m[2] or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(m[3])
    return total


# -- p2pdist subprocesses ----------------------------------------------------------------------


@dataclass
class Pair:
    tracker: subprocess.Popen[bytes]
    peer: subprocess.Popen[bytes]
    peer_addr: str
    dirs: list[Path]
    names: list[str]


def start_pair(procs: Procs, exe: str, work: Path, tag: str, registry_url: str) -> Pair:
    t_port = free_port()
    t_dir, p_dir = work / f"tracker-{tag}", work / f"peer-{tag}"
    tr = procs.start(f"tracker-{tag}", [exe, "tracker", "--listen", f"127.0.0.1:{t_port}",
                                        "--data-dir", str(t_dir)])
    wait_ready(procs, f"tracker-{tag}", tr, f"http://127.0.0.1:{t_port}/readyz")
    p_addr = f"127.0.0.1:{free_port()}"
    pe = procs.start(f"peer-{tag}", [exe, "peer", "--listen", p_addr, "--data-dir", str(p_dir),
                                     "--tracker", f"http://127.0.0.1:{t_port}",
                                     "--upstream", f"docker.io={registry_url}"])
    wait_ready(procs, f"peer-{tag}", pe, f"http://{p_addr}/readyz")
    return Pair(tr, pe, p_addr, [t_dir, p_dir], [f"tracker-{tag}", f"peer-{tag}"])


def stop_pair(procs: Procs, pair: Pair) -> None:
    procs.stop(pair.peer)
    procs.stop(pair.tracker)
    for d in pair.dirs:
        shutil.rmtree(d, ignore_errors=True)


# -- results -----------------------------------------------------------------------------------


@dataclass
class Run:
    run: int
    order: str
    direct_s: float | None = None
    cold_s: float | None = None
    warm_s: float | None = None
    ttfb_s: float | None = None
    ttfb_total_s: float | None = None
    cold_ratio: float | None = None
    warm_ratio: float | None = None
    direct_mbps: float | None = None
    cold_mbps: float | None = None
    warm_mbps: float | None = None
    ttfb_stream_mbps: float | None = None
    direct_dl_s: float | None = None  # when dockerd's temp file held the whole layer
    cold_dl_s: float | None = None
    warm_dl_s: float | None = None
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    size: int
    runs: list[Run] = field(default_factory=list)
    date: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    command: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    layer_digest: str = ""
    dockerd_root: str = ""
    workdir: str = ""

    def median(self, key: str) -> float | None:
        vals = [getattr(r, key) for r in self.runs if getattr(r, key) is not None]
        return statistics.median(vals) if vals else None

    def summary(self) -> dict[str, Any]:
        keys = ("direct_s", "cold_s", "warm_s", "ttfb_s", "cold_ratio", "warm_ratio", "direct_mbps",
                "cold_mbps", "warm_mbps", "ttfb_total_s", "ttfb_stream_mbps", "direct_dl_s", "cold_dl_s",
                "warm_dl_s")
        med = {k: self.median(k) for k in keys}
        verdict = {
            "cold_target": TARGET_COLD, "warm_target": TARGET_WARM, "ttfb_target_s": TARGET_TTFB_S,
            "cold_ok": med["cold_ratio"] is not None and med["cold_ratio"] <= TARGET_COLD,
            "warm_ok": med["warm_ratio"] is not None and med["warm_ratio"] <= TARGET_WARM,
            "ttfb_ok": med["ttfb_s"] is not None and med["ttfb_s"] <= TARGET_TTFB_S,
        }
        return {"median": med, "verdict": verdict}


# -- the benchmark -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, res: Result, procs: Procs, work: Path):
        self.args, self.res, self.procs, self.work = args, res, procs, work
        self.exe = p2pdist_bin()
        self.reg: Any = None
        self.dockerd: Any = None
        self.ref: Any = None
        self.image: Any = None

    @property
    def layer(self) -> str:
        return self.ref.layer_digests[0]

    async def docker(self, *a: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return await self.dockerd.docker_cli(*a, check=check, timeout=1800)

    async def remove_image(self) -> None:
        names = [f"{self.reg.host}/{REPO}:{TAG}", f"docker.io/{REPO}:{TAG}"]
        await self.docker("rmi", "-f", *names, check=False)
        left = (await self.docker("images", "-q", "--no-trunc")).stdout.decode().split()
        if left:
            await self.docker("rmi", "-f", *left, check=False)
            left = (await self.docker("images", "-q", "--no-trunc")).stdout.decode().split()
        if left:
            raise RuntimeError(f"dockerd still holds images after rmi: {left}")
        await trio.to_thread.run_sync(os.sync)

    async def image_id(self, name: str) -> str:
        out = await self.docker("image", "inspect", "--format", "{{.Id}}", name)
        return out.stdout.decode().strip()

    def cpu_pids(self, pair: Pair | None) -> dict[str, int]:
        pids = {"dockerd": self.dockerd.process.pid, "containerd": self.dockerd.containerd.process.pid,
                "registry": self.reg.process.pid}
        if pair is not None:
            pids.update(tracker=pair.tracker.pid, peer=pair.peer.pid)
        return pids

    async def timed_pull(self, name: str, pair: Pair | None, label: str) -> tuple[float, dict[str, float]]:
        spies = []
        if self.args.py_spy and pair is not None and self.args.py_spy_run == self.run_no:
            spies = start_py_spy(self.procs, self.args.py_spy, f"run{self.run_no}-{label}",
                                 {"tracker": pair.tracker.pid, "peer": pair.peer.pid})
        meter = CpuMeter(self.cpu_pids(pair))
        t0 = time.perf_counter()
        with DownloadWatch(self.dockerd.data_root / "tmp", self.res.size, t0) as watch:
            await self.docker("pull", "-q", name)
            elapsed = time.perf_counter() - t0
        cpu = meter.done()
        setattr(self.current, f"{label}_dl_s", watch.done_s)
        stop_py_spy(self.procs, spies)
        got = await self.image_id(name)
        if got != self.ref.config_digest:
            raise RuntimeError(f"{label}: image Id {got} is not the config digest {self.ref.config_digest}")
        return elapsed, cpu

    async def peer_metrics(self, pair: Pair) -> str:
        import httpx

        async with httpx.AsyncClient(timeout=10) as c:
            return (await c.get(f"http://{pair.peer_addr}/metrics")).text

    async def direct(self, run: Run) -> None:
        await self.remove_image()
        mark = self.reg.mark()
        run.direct_s, run.cpu["direct"] = await self.timed_pull(f"{self.reg.host}/{REPO}:{TAG}", None, "direct")
        gets = self.reg.blob_gets(self.layer, since=mark, ok_only=True)
        sent = self.reg.blob_bytes_sent(self.layer, since=mark)
        run.checks["direct"] = {"registry_layer_gets": gets, "registry_layer_bytes": sent}
        if gets != 1 or sent != self.res.size:
            raise RuntimeError(f"direct pull: registry sent the layer {gets} times / {sent} bytes "
                               f"(expected once, {self.res.size}): did dockerd really download it?")

    async def cold_and_warm(self, run: Run) -> None:
        pair = await trio.to_thread.run_sync(start_pair, self.procs, self.exe, self.work, f"{run.run}-mirror",
                                             self.reg.url)
        try:
            await self.dockerd.set_mirrors([f"http://{pair.peer_addr}"])
            # (b) cold
            await self.remove_image()
            mark = self.reg.mark()
            m0 = metric(await self.peer_metrics(pair), "p2pdist_mirror_requests_total", {"kind": "blob"})
            run.cold_s, run.cpu["cold"] = await self.timed_pull(f"docker.io/{REPO}:{TAG}", pair, "cold")
            text = await self.peer_metrics(pair)
            m1 = metric(text, "p2pdist_mirror_requests_total", {"kind": "blob"})
            gets = self.reg.blob_gets(self.layer, since=mark, ok_only=True)
            sent = self.reg.blob_bytes_sent(self.layer, since=mark)
            run.checks["cold"] = {"registry_layer_gets": gets, "registry_layer_bytes": sent,
                                  "mirror_blob_requests": m1 - m0,
                                  "mirror_blob_bytes": metric(text, "p2pdist_mirror_blob_bytes_total")}
            if gets != 1 or sent != self.res.size:
                raise RuntimeError(f"cold pull: registry sent the layer {gets} times / {sent} bytes "
                                   f"(expected exactly once, {self.res.size})")
            if m1 - m0 < 2:  # config + layer
                raise RuntimeError(f"cold pull: the peer's mirror served {m1 - m0} blobs: "
                                   "dockerd did not pull through it")
            # (c) warm
            await self.remove_image()
            mark = self.reg.mark()
            b0 = metric(text, "p2pdist_mirror_blob_bytes_total")
            run.warm_s, run.cpu["warm"] = await self.timed_pull(f"docker.io/{REPO}:{TAG}", pair, "warm")
            text = await self.peer_metrics(pair)
            m2 = metric(text, "p2pdist_mirror_requests_total", {"kind": "blob"})
            b2 = metric(text, "p2pdist_mirror_blob_bytes_total")
            blob_gets = [e for e in self.reg.requests("GET", since=mark) if e.blob_digest]
            run.checks["warm"] = {"registry_blob_gets": len(blob_gets), "mirror_blob_requests": m2 - m1,
                                  "mirror_blob_bytes": b2 - b0}
            if blob_gets:
                raise RuntimeError(f"warm pull: the registry sent blobs: {blob_gets}")
            if m2 - m1 < 2 or b2 - b0 < self.res.size:
                raise RuntimeError(f"warm pull: the peer's mirror served {m2 - m1} blobs, {b2 - b0} bytes: "
                                   "dockerd did not pull through it")
        finally:
            await trio.to_thread.run_sync(stop_pair, self.procs, pair)

    async def ttfb(self, run: Run) -> None:
        import httpx

        pair = await trio.to_thread.run_sync(start_pair, self.procs, self.exe, self.work, f"{run.run}-ttfb",
                                             self.reg.url)
        try:
            await trio.to_thread.run_sync(os.sync)
            mark = self.reg.mark()
            spies = []
            if self.args.py_spy and self.args.py_spy_run == self.run_no:
                spies = start_py_spy(self.procs, self.args.py_spy, f"run{self.run_no}-ttfb",
                                     {"tracker": pair.tracker.pid, "peer": pair.peer.pid})
            meter = CpuMeter(self.cpu_pids(pair))
            url = f"http://{pair.peer_addr}/v2/{REPO}/blobs/{self.layer}"
            got = 0
            first = None
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as c:
                t0 = time.perf_counter()
                async with c.stream("GET", url) as r:
                    if r.status_code != 200:
                        raise RuntimeError(f"GET {url}: {r.status_code} {(await r.aread())[:300]!r}")
                    async for piece in r.aiter_raw():
                        if first is None and piece:
                            first = time.perf_counter() - t0
                        got += len(piece)
                total = time.perf_counter() - t0
            run.cpu["ttfb"] = meter.done()
            stop_py_spy(self.procs, spies)
            if got != self.res.size:
                raise RuntimeError(f"TTFB: the mirror sent {got} bytes, expected {self.res.size}")
            run.ttfb_s, run.ttfb_total_s = first, total
            run.ttfb_stream_mbps = got / total / 1e6
            gets = self.reg.blob_gets(self.layer, since=mark, ok_only=True)
            run.checks["ttfb"] = {"registry_layer_gets": gets}
            if gets != 1:
                raise RuntimeError(f"TTFB: the registry sent the layer {gets} times (expected once)")
        finally:
            await trio.to_thread.run_sync(stop_pair, self.procs, pair)

    async def main(self) -> None:
        from p2pdist.testing_real import push_built, start_dockerd, start_registry

        self.image = await trio.to_thread.run_sync(build_image, Path(self.args.cache_dir), self.args.size)
        self.res.size = self.image.layers[0].size
        async with start_registry(self.work, auth="none") as reg:
            self.reg = reg
            t0 = time.perf_counter()
            self.ref = await push_built(reg, REPO, TAG, self.image)
            self.res.layer_digest = self.layer
            log(f"pushed {REPO}:{TAG} ({self.res.size:,} byte layer) to {reg.url} in "
                f"{time.perf_counter() - t0:.1f}s")
            async with start_dockerd() as d:
                self.dockerd = d
                self.res.dockerd_root = str(d.root)
                info = await d.api(d.client.info)
                reg_v = subprocess.run(["docker-registry", "--version"], capture_output=True, text=True).stdout
                self.res.versions.update({
                    "dockerd": info.get("ServerVersion", "?"), "storage driver": info.get("Driver", "?"),
                    "docker-registry": (reg_v.split() or ["?"])[-1]})
                for i in range(1, self.args.runs + 1):
                    self.run_no = i
                    order = "direct,cold,warm,ttfb" if i % 2 else "ttfb,cold,warm,direct"
                    run = Run(run=i, order=order)
                    self.current = run
                    for step in order.split(","):
                        if step == "direct":
                            await self.direct(run)
                        elif step == "cold":
                            await self.cold_and_warm(run)
                        elif step == "ttfb":
                            await self.ttfb(run)
                    await self.remove_image()
                    size = self.res.size
                    run.direct_mbps = size / run.direct_s / 1e6
                    run.cold_mbps = size / run.cold_s / 1e6
                    run.warm_mbps = size / run.warm_s / 1e6
                    run.cold_ratio = run.cold_s / run.direct_s
                    run.warm_ratio = run.warm_s / run.direct_s
                    self.res.runs.append(run)
                    log(f"run {i} ({order}): direct {run.direct_s:.2f}s, cold {run.cold_s:.2f}s "
                        f"(x{run.cold_ratio:.2f}), warm {run.warm_s:.2f}s (x{run.warm_ratio:.2f}), "
                        f"TTFB {run.ttfb_s * 1000:.0f} ms (stream {run.ttfb_stream_mbps:,.0f} MB/s)")
                    log(f"run {i} download phase: direct {_f(run.direct_dl_s, '.2f')}s, cold "
                        f"{_f(run.cold_dl_s, '.2f')}s, warm {_f(run.warm_dl_s, '.2f')}s")
                    log(f"run {i} CPU s: " + "; ".join(
                        f"{k}: " + ", ".join(f"{p} {v:.1f}" for p, v in c.items()) for k, c in run.cpu.items()))


async def run_bench(args: argparse.Namespace, res: Result, procs: Procs, work: Path) -> bool:
    """False when interrupted (SIGINT/SIGTERM); cleanup happens on the way out either way."""
    interrupted = False

    async def watch(scope: trio.CancelScope) -> None:
        nonlocal interrupted
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for _ in sigs:
                interrupted = True
                scope.cancel()
                return

    async with trio.open_nursery() as n:
        n.start_soon(watch, n.cancel_scope)
        await Bench(args, res, procs, work).main()
        n.cancel_scope.cancel()
    return not interrupted


# -- reporting ---------------------------------------------------------------------------------


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _cpu(r: Run, step: str) -> str:
    c = r.cpu.get(step) or {}
    return " / ".join(_f(c.get(k), ".1f") for k in ("tracker", "peer", "dockerd", "containerd", "registry"))


def _phase(dl: float | None, total: float | None) -> str:
    if dl is None or total is None:
        return "–"
    return f"{dl:.2f} + {total - dl:.2f}"


def render(res: Result) -> str:
    s = res.summary()
    med, v = s["median"], s["verdict"]
    lines = [
        MARK_START,
        "## pull: `docker pull` of a one-layer image, direct vs through a cold and a warm peer",
        "",
        f"{res.date}. Layer {res.size:,} bytes ({res.size / 2**30:.2f} GiB, uncompressed tar, random); "
        f"{len(res.runs)} runs, medians below.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in res.machine.items()) + ".",
        "",
        f"Command: `{res.command}`",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in res.versions.items()) + ".",
        "",
        "| run | order | direct (s) | cold (s) | warm (s) | cold ÷ direct | warm ÷ direct | TTFB (ms) | "
        "mirror stream (MB/s) |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res.runs:
        lines.append(f"| {r.run} | {r.order} | {_f(r.direct_s, '.2f')} | {_f(r.cold_s, '.2f')} | "
                     f"{_f(r.warm_s, '.2f')} | {_f(r.cold_ratio, '.2f')} | {_f(r.warm_ratio, '.2f')} | "
                     f"{_f(r.ttfb_s and r.ttfb_s * 1000, '.0f')} | {_f(r.ttfb_stream_mbps, ',.0f')} |")
    lines.append(f"| **median** | | **{_f(med['direct_s'], '.2f')}** | **{_f(med['cold_s'], '.2f')}** | "
                 f"**{_f(med['warm_s'], '.2f')}** | **{_f(med['cold_ratio'], '.2f')}** | "
                 f"**{_f(med['warm_ratio'], '.2f')}** | **{_f(med['ttfb_s'] and med['ttfb_s'] * 1000, '.0f')}** | "
                 f"**{_f(med['ttfb_stream_mbps'], ',.0f')}** |")
    lines += [
        "",
        f"In MB/s (10^6 bytes/s of layer per second of `docker pull`, median): direct "
        f"{_f(med['direct_mbps'], ',.0f')}, cold {_f(med['cold_mbps'], ',.0f')}, warm {_f(med['warm_mbps'], ',.0f')}.",
        "",
        "Targets: cold ≤ {:.2f} × direct — **{}** (median {}); warm ≤ {:.2f} × direct — **{}** (median {}); "
        "TTFB of a cold blob ≤ {:.1f} s — **{}** (median {} ms).".format(
            TARGET_COLD, "met" if v["cold_ok"] else "NOT met", _f(med["cold_ratio"], ".2f"),
            TARGET_WARM, "met" if v["warm_ok"] else "NOT met", _f(med["warm_ratio"], ".2f"),
            TARGET_TTFB_S, "met" if v["ttfb_ok"] else "NOT met", _f(med["ttfb_s"] and med["ttfb_s"] * 1000, ".0f")),
        "",
        "Where the pull's time goes: the download phase ends when dockerd's temp file under "
        "`<data-root>/tmp` holds the whole layer (polled every 10 ms); after it dockerd verifies and "
        "extracts (registers) the layer. Seconds, download + the rest:",
        "",
        "| run | direct | cold | warm |",
        "|---:|:---|:---|:---|",
    ]
    for r in res.runs:
        lines.append(f"| {r.run} | {_phase(r.direct_dl_s, r.direct_s)} | {_phase(r.cold_dl_s, r.cold_s)} | "
                     f"{_phase(r.warm_dl_s, r.warm_s)} |")
    lines.append(f"| **median** | **{_phase(med['direct_dl_s'], med['direct_s'])}** | "
                 f"**{_phase(med['cold_dl_s'], med['cold_s'])}** | **{_phase(med['warm_dl_s'], med['warm_s'])}** |")
    lines += [
        "",
        "CPU seconds during each step (tracker / peer / dockerd / containerd / registry):",
        "",
        "| run | direct | cold | warm | TTFB stream |",
        "|---:|:---|:---|:---|:---|",
    ]
    for r in res.runs:
        lines.append(f"| {r.run} | {_cpu(r, 'direct')} | {_cpu(r, 'cold')} | {_cpu(r, 'warm')} | {_cpu(r, 'ttfb')} |")
    lines += [
        "",
        "How: the real `docker-registry` (distribution 2.8) and a private containerd + dockerd on "
        "127.0.0.1, all on one disk. Direct: `docker pull 127.0.0.1:REG/library/big:v1`. Cold: a fresh "
        "`p2pdist tracker` and a fresh `p2pdist peer --tracker … --upstream docker.io=http://127.0.0.1:REG` "
        "(subprocesses, empty data dirs), dockerd's `registry-mirrors` set to the peer (daemon.json + "
        "SIGHUP), `docker pull docker.io/library/big:v1` — the tracker fetches the layer from the registry, "
        "the peer takes its chunks from the tracker and streams them to dockerd as they land. Warm: `docker "
        "rmi`, the same pull through the same peer, which holds the layer. Every pull is checked: image Id = "
        "config digest; the registry's access log shows the layer sent exactly once (one GET, every byte) "
        "for direct and cold and no blob GET at all for warm; the peer's "
        "`p2pdist_mirror_requests_total{kind=\"blob\"}` grows for cold and warm (dockerd falls back to Docker "
        "Hub silently). Before every pull: `docker rmi -f` of both names, no image left, `sync` (untimed). "
        "Odd runs go direct, cold, warm, TTFB; even runs TTFB, cold, warm, direct. TTFB: another fresh "
        "tracker + peer, `GET /v2/library/big/blobs/<layer>` on the peer with httpx streaming, time from "
        "the request's start to the first body byte; the rest is drained (\"mirror stream\" MB/s). Timings "
        "are wall clock around the `docker` CLI (it returns after dockerd has extracted the layer). Page "
        "cache is not dropped (the registry's copy stays cached).",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def record(text: str) -> None:
    record_section(text, MARK_START, MARK_END, RESULTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=2**30, help="layer size (default 1GiB)")
    ap.add_argument("--runs", type=int, default=3, help="runs (default 3); medians are reported")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    ap.add_argument("--no-record", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE),
                    help=f"where the image's blobs are built once and kept (default {DEFAULT_CACHE})")
    ap.add_argument("--workdir", default=None, help="parent of the temp dir (registry data, peer and "
                    "tracker stores, logs; default: system temp)")
    ap.add_argument("--py-spy", metavar="DIR", default=None,
                    help="profile the tracker and peer with `py-spy record` during the cold, warm and TTFB "
                    "steps of one run (--py-spy-run); raw collapsed stacks go to DIR (implies --no-record)")
    ap.add_argument("--py-spy-run", type=int, default=1, help="which run --py-spy profiles (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.py_spy:
        args.no_record = True
    if os.geteuid() != 0:
        ap.error("must run as root (it starts its own dockerd)")
    work = Path(tempfile.mkdtemp(prefix="p2pdist-bench-pull-", dir=args.workdir))
    procs = Procs(work)
    argv_s = argv if argv is not None else sys.argv[1:]
    res = Result(size=args.size, date=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                 machine={**machine_info(), "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())},
                 workdir=str(work),
                 command=("python bench/pull.py " + " ".join(shlex.quote(a) for a in argv_s)).rstrip())
    res.versions["p2pdist"] = subprocess.run(
        [sys.executable, "-c", "import p2pdist; print(p2pdist.__version__)"],
        capture_output=True, text=True).stdout.strip()
    failed = interrupted = False
    try:
        interrupted = not trio.run(run_bench, args, res, procs, work)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as exc:  # report with the logs, then clean up
        failed = True
        log(f"failed: {exc!r}")
        for name, _ in procs.procs:
            tail = procs.log_tail(name, 15)
            if tail:
                log(f"--- {name} log tail ---\n{tail}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if interrupted:
        log("interrupted: cleaned up")
        return 130
    if failed and not res.runs:
        return 1
    text = render(res)
    if not args.no_record and not failed:
        record(text)
        log(f"recorded in {RESULTS}")
    if args.json:
        print(json.dumps({"size": res.size, "date": res.date, "machine": res.machine, "command": res.command,
                          "versions": res.versions, "layer_digest": res.layer_digest,
                          "dockerd_root": res.dockerd_root, "workdir": res.workdir,
                          "runs": [asdict(r) for r in res.runs], **res.summary()}, indent=2))
    else:
        print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
