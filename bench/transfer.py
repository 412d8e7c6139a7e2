#!/usr/bin/env python3
"""One peer serving a blob to another on loopback, against curl fetching it from nginx.

The issue's benchmark: peer B fetches a 1 GiB blob from peer A (which already holds it),
verifying every chunk's BLAKE3 and writing it to its store, against ``curl -s -o FILE``
fetching the same file from nginx (``sendfile on``) in the same run. Target: p2pdist at
least 0.6 x curl. Also the peak RSS of each peer during the transfer: at most 96 MiB.

Set-up, all real processes on 127.0.0.1:

* nginx (Debian ``nginx-light``) with a private config in a temp dir serves the blob; it
  is also the origin p2pdist knows the blob by.
* ``p2pdist tracker`` and ``p2pdist peer`` A (with that tracker): A downloads the blob
  once (warm-up, not timed) so it holds it.
* each run: a fresh ``p2pdist peer`` B (fresh data dir, no tracker) is asked through its
  local API, ``POST /api/v1/tasks {url, digest, nodes: [A]}``, then polled with
  ``GET /api/v1/tasks/<digest hex>`` until ``state == complete``. B takes the sealed chunk
  map from A (``GET /maps/<task>``) and the chunks from A's chunk server.
* each run: ``curl -s -o FILE URL`` against nginx, FILE on the same disk as B's store,
  removed between runs.

Nothing is dropped from the page cache: the blob is cached for nginx and for A alike.
MB/s are decimal (10^6 bytes). RSS is sampled from /proc/<pid>/status every 20 ms.

    ./dev bench transfer [--size 1GiB] [--runs 5] [--json] [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
MARK_START = "<!-- bench:transfer:start -->"
MARK_END = "<!-- bench:transfer:end -->"
TARGET_RATIO = 0.6
RSS_LIMIT_MIB = 96.0
MiB = 1024 * 1024

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GiB, 256MiB, 4096)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def log(msg: str) -> None:
    print(f"[transfer] {msg}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------------


class Procs:
    """Every process we start, each in its own process group, killed group-wise at the end."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logf = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True, env=env)
        logf.close()
        self.procs.append((name, p))
        return p

    def log_tail(self, name: str, lines: int = 25) -> str:
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group may outlive its leader (workers, threads' children): always sweep it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout)
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self) -> None:
        for _, p in reversed(list(self.procs)):
            self.stop(p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


def wait_ready(procs: Procs, name: str, p: subprocess.Popen[bytes], url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited with {p.returncode} before it was ready:\n{procs.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{name} not ready at {url} after {timeout:.0f}s:\n{procs.log_tail(name)}")


# -- RSS sampling ----------------------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


class RssSampler:
    """Samples VmRSS of some pids (each with its descendants) every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02):
        self.pids, self.interval = pids, interval
        self.peak_kib = dict.fromkeys(pids, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                total = sum(_status_kib(p, "VmRSS") or 0 for p in [pid, *_descendants(pid)])
                self.peak_kib[name] = max(self.peak_kib[name], total)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mib(self, name: str) -> float:
        return self.peak_kib[name] / 1024


# -- nginx + curl ----------------------------------------------------------------------------


def ensure_tool(binary: str, package: str) -> str:
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.access(f"/usr/sbin/{binary}", os.X_OK) else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"{binary} not found: installing Debian package {package}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        policy = Path("/usr/sbin/policy-rc.d")
        added = not policy.exists()
        if added:  # do not let the package start the system's own nginx on :80
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                           check=True, env=env, stdout=subprocess.DEVNULL)
        finally:
            if added:
                policy.unlink(missing_ok=True)
        found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.access(f"/usr/sbin/{binary}", os.X_OK) else None)
        if found:
            return found
    raise SystemExit(f"{binary} not found: install the Debian package {package} (or run ./dev bench transfer as root)")


NGINX_CONF = """\
{user}
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{ }}
    }}
}}
"""


def start_nginx(procs: Procs, work: Path, www: Path) -> tuple[str, str]:
    nginx = ensure_tool("nginx", "nginx-light")
    d = work / "nginx"
    (d / "tmp").mkdir(parents=True)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read our 0700 temp dir
    (d / "nginx.conf").write_text(NGINX_CONF.format(user=user, d=d, port=port, www=www))
    p = procs.start("nginx", [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"nginx exited with {p.returncode}:\n{procs.log_tail('nginx')}\n"
                               f"{(d / 'error.log').read_text(errors='replace') if (d / 'error.log').exists() else ''}")
        try:
            with urllib.request.urlopen(base + "/", timeout=1.0):
                break
        except urllib.error.HTTPError:
            break  # 403/404 on / : it answers
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not answer within 10 s") from None
            time.sleep(0.02)
    nv = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    return base, nv


def time_curl(curl: str, url: str, out: Path, size: int) -> float:
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run([curl, "-s", "-f", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - t0
    got = out.stat().st_size
    out.unlink()
    if got != size:
        raise RuntimeError(f"curl wrote {got} bytes, expected {size}")
    return elapsed


# -- p2pdist ---------------------------------------------------------------------------------


def p2pdist_bin() -> str:
    for cand in (ROOT / ".venv" / "bin" / "p2pdist", Path(sys.executable).parent / "p2pdist"):
        if cand.exists():
            return str(cand)
    found = shutil.which("p2pdist")
    if not found:
        raise SystemExit("p2pdist console script not found: run ./dev bench transfer (it installs it)")
    return found


def p2pdist_has_cli(exe: str) -> str | None:
    """None when `p2pdist tracker/peer` exist, else why not."""
    for sub in ("tracker", "peer"):
        r = subprocess.run([exe, sub, "--help"], capture_output=True, text=True)
        if r.returncode != 0:
            return f"`p2pdist {sub} --help` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}"
    return None


def wait_task(api: str, task_id: str, timeout: float, poll: float = 0.01) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = http("GET", f"{api}/api/v1/tasks/{task_id}")
        if status == 200 and isinstance(body, dict):
            if body.get("state") == "complete":
                return body
            if body.get("state") == "failed":
                raise RuntimeError(f"task failed: {body.get('error')}")
        elif status != 404:
            raise RuntimeError(f"GET {api}/api/v1/tasks/{task_id}: {status} {body!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} not complete after {timeout:.0f}s: {body!r}")
        time.sleep(poll)


def start_task(api: str, body: dict[str, Any]) -> None:
    status, reply = http("POST", f"{api}/api/v1/tasks", body)
    if status not in (200, 201, 202):
        raise RuntimeError(f"POST {api}/api/v1/tasks: {status} {reply!r}")


def start_py_spy(procs: Procs, outdir: str, label: str, pids: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """`py-spy record` on each process of ``pids`` (raw collapsed stacks, ``<label>-<name>.txt``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    Path(outdir).mkdir(parents=True, exist_ok=True)
    spies = []
    for name, pid in pids.items():
        out = Path(outdir).resolve() / f"{label}-{name}.txt"
        spies.append(procs.start(f"py-spy-{label}-{name}", [
            spy, "record", "--pid", str(pid), "--rate", "250", "--threads", "--idle",
            "--format", "raw", "--output", str(out)]))
    time.sleep(0.5)  # let py-spy attach before the measured step starts
    return spies


def stop_py_spy(procs: Procs, spies: list[subprocess.Popen[bytes]]) -> None:
    for p in spies:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    for p in spies:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(15)
        procs.stop(p)


@dataclass
class Run:
    run: int
    curl_s: float
    curl_mbps: float
    p2p_s: float | None = None
    p2p_mbps: float | None = None
    ratio: float | None = None
    rss_a_mib: float | None = None
    rss_b_mib: float | None = None
    hwm_b_mib: float | None = None
    b_reported_s: float | None = None
    b_mode: str | None = None
    rss_samples: int | None = None


@dataclass
class Result:
    size: int
    runs: list[Run] = field(default_factory=list)
    date: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    command: str = ""
    nginx: str = ""
    curl: str = ""
    p2pdist: str = ""
    p2pdist_skipped: str | None = None
    hwm_a_mib: float | None = None
    rss_a_idle_mib: float | None = None

    def median(self, key: str) -> float | None:
        vals = [getattr(r, key) for r in self.runs if getattr(r, key) is not None]
        return statistics.median(vals) if vals else None

    def summary(self) -> dict[str, Any]:
        keys = ("curl_mbps", "p2p_mbps", "ratio", "rss_a_mib", "rss_b_mib", "hwm_b_mib", "curl_s", "p2p_s")
        med = {k: self.median(k) for k in keys}
        verdict = None
        if med["ratio"] is not None:
            verdict = {
                "ratio_target": TARGET_RATIO, "ratio_ok": med["ratio"] >= TARGET_RATIO,
                "rss_limit_mib": RSS_LIMIT_MIB,
                "rss_ok": max(r.rss_a_mib or 0 for r in self.runs) <= RSS_LIMIT_MIB
                and max(r.rss_b_mib or 0 for r in self.runs) <= RSS_LIMIT_MIB,
            }
        return {"median": med, "verdict": verdict}


def machine_info() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count()), "kernel": platform.release(),
            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["free", "-g"], capture_output=True, text=True, check=True).stdout
        mem = next(line for line in out.splitlines() if line.startswith("Mem:")).split()
        info["free -g"] = f"total {mem[1]} GiB, available {mem[-1]} GiB"
    return info


def make_blob(path: Path, size: int) -> str:
    h = hashlib.sha256()
    block = 4 * MiB
    with open(path, "wb") as fh:
        left = size
        while left:
            piece = os.urandom(min(block, left))
            h.update(piece)
            fh.write(piece)
            left -= len(piece)
    return "sha256:" + h.hexdigest()


def bench(args: argparse.Namespace, res: Result, procs: Procs, work: Path) -> None:
    curl = ensure_tool("curl", "curl")
    res.curl = " ".join(subprocess.run([curl, "--version"], capture_output=True, text=True).stdout.split()[:2])
    www = work / "www"
    www.mkdir()
    log(f"writing a {args.size} byte random blob")
    digest = make_blob(www / "blob.bin", args.size)
    task_id = digest.split(":", 1)[1]
    base, res.nginx = start_nginx(procs, work, www)
    url = f"{base}/blob.bin"
    out = work / "curl.out"

    exe = None
    if not args.curl_only:
        exe = p2pdist_bin()
        why = p2pdist_has_cli(exe)
        if why:
            res.p2pdist_skipped = why
            log(f"p2pdist half skipped: {why}")
            exe = None
    a_api = ""
    a_proc = None
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.peer_env)
    if exe:
        res.p2pdist = subprocess.run([sys.executable, "-c", "import p2pdist; print(p2pdist.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
        t_port = free_port()
        t = procs.start("tracker", [exe, "tracker", "--listen", f"127.0.0.1:{t_port}",
                                    "--data-dir", str(work / "tracker")], env)
        wait_ready(procs, "tracker", t, f"http://127.0.0.1:{t_port}/readyz")
        a_port = free_port()
        a_addr = f"127.0.0.1:{a_port}"
        a_api = f"http://{a_addr}"
        a_proc = procs.start("peer-a", [exe, "peer", "--listen", a_addr, "--data-dir", str(work / "peer-a"),
                                        "--tracker", f"http://127.0.0.1:{t_port}"], env)
        wait_ready(procs, "peer-a", a_proc, f"{a_api}/readyz")
        log("warm-up: peer A downloads the blob (not timed)")
        t0 = time.perf_counter()
        start_task(a_api, {"url": url, "digest": digest})
        summary = wait_task(a_api, task_id, timeout=600, poll=0.05)
        log(f"peer A holds the blob after {time.perf_counter() - t0:.2f}s (mode {summary.get('mode')})")
        res.rss_a_idle_mib = (_status_kib(a_proc.pid, "VmRSS") or 0) / 1024

    for i in range(1, args.runs + 1):
        # Each run pairs two transfers made moments apart; odd runs start with curl, even
        # runs with p2pdist, so a drift in the machine's state does not favour one side.
        # Before each, sync (untimed) so neither pays for the other's dirty pages.
        run = Run(run=i, curl_s=0.0, curl_mbps=0.0)
        if i % 2 == 1 or not exe:
            os.sync()
            run.curl_s = time_curl(curl, url, out, args.size)
        if exe and a_proc is not None:
            os.sync()
            b_dir = work / f"peer-b-{i}"
            b_addr = f"127.0.0.1:{free_port()}"
            b_api = f"http://{b_addr}"
            b = procs.start(f"peer-b-{i}", [exe, "peer", "--listen", b_addr, "--data-dir", str(b_dir)], env)
            try:
                wait_ready(procs, f"peer-b-{i}", b, f"{b_api}/readyz")
                spies = start_py_spy(procs, args.py_spy, f"run{i}-peer", {"a": a_proc.pid, "b": b.pid}) if args.py_spy else []
                with RssSampler({"a": a_proc.pid, "b": b.pid}) as rss:
                    t0 = time.perf_counter()
                    start_task(b_api, {"url": url, "digest": digest, "nodes": [a_addr]})
                    summary = wait_task(b_api, task_id, timeout=600)
                    p = time.perf_counter() - t0
                stop_py_spy(procs, spies)
                run.hwm_b_mib = (_status_kib(b.pid, "VmHWM") or 0) / 1024
            finally:
                procs.stop(b)
                shutil.rmtree(b_dir, ignore_errors=True)
            if summary.get("bytes_from_origin"):
                log(f"warning: run {i}: B took {summary['bytes_from_origin']} bytes from the origin, not from A")
            run.p2p_s, run.p2p_mbps = p, args.size / p / 1e6
            run.rss_a_mib, run.rss_b_mib = rss.peak_mib("a"), rss.peak_mib("b")
            run.rss_samples = rss.samples
            run.b_reported_s = summary.get("seconds")
            run.b_mode = summary.get("mode")
        if i % 2 == 0 and exe:
            os.sync()
            run.curl_s = time_curl(curl, url, out, args.size)
        run.curl_mbps = args.size / run.curl_s / 1e6
        if run.p2p_mbps is not None:
            run.ratio = run.p2p_mbps / run.curl_mbps
        res.runs.append(run)
        log(f"run {i}: curl {run.curl_mbps:,.0f} MB/s"
            + (f"; p2pdist {run.p2p_mbps:,.0f} MB/s (x{run.ratio:.2f}), RSS A {run.rss_a_mib:.0f} MiB,"
               f" B {run.rss_b_mib:.0f} MiB (HWM {run.hwm_b_mib:.0f}), mode {run.b_mode}"
               if run.p2p_mbps else ""))
    if a_proc is not None:
        res.hwm_a_mib = (_status_kib(a_proc.pid, "VmHWM") or 0) / 1024


# -- reporting -------------------------------------------------------------------------------


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def render(res: Result) -> str:
    s = res.summary()
    med = s["median"]
    gib = res.size / 2**30
    lines = [
        MARK_START,
        "## transfer: one peer serving one blob to another, vs curl from nginx",
        "",
        f"{res.date}. Blob {res.size:,} bytes ({gib:.2f} GiB), random; {len(res.runs)} runs, medians below.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in res.machine.items()) + ".",
        "",
        f"Command: `{res.command}`",
        "",
        f"Versions: {res.nginx}; {res.curl}; p2pdist {res.p2pdist or 'n/a'}.",
        "",
    ]
    if res.p2pdist_skipped:
        lines += [f"**p2pdist half not run**: {res.p2pdist_skipped}", ""]
    lines += [
        "| run | curl -o FILE (MB/s) | p2pdist A→B (MB/s) | ratio | peak RSS A (MiB) | peak RSS B (MiB) | VmHWM B (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res.runs:
        lines.append(f"| {r.run} | {r.curl_mbps:,.0f} | {_f(r.p2p_mbps, ',.0f')} | {_f(r.ratio, '.2f')} | "
                     f"{_f(r.rss_a_mib, '.1f')} | {_f(r.rss_b_mib, '.1f')} | {_f(r.hwm_b_mib, '.1f')} |")
    lines.append(f"| **median** | **{_f(med['curl_mbps'], ',.0f')}** | **{_f(med['p2p_mbps'], ',.0f')}** | "
                 f"**{_f(med['ratio'], '.2f')}** | **{_f(med['rss_a_mib'], '.1f')}** | "
                 f"**{_f(med['rss_b_mib'], '.1f')}** | **{_f(med['hwm_b_mib'], '.1f')}** |")
    lines.append("")
    v = s["verdict"]
    if v:
        lines.append(f"Target: ratio ≥ {TARGET_RATIO} — **{'met' if v['ratio_ok'] else 'NOT met'}** "
                     f"(median {med['ratio']:.2f}); peak RSS of each peer ≤ {RSS_LIMIT_MIB:.0f} MiB — "
                     f"**{'met' if v['rss_ok'] else 'NOT met'}**. Peer A: {_f(res.rss_a_idle_mib, '.1f')} MiB "
                     f"holding the blob before the runs, VmHWM {_f(res.hwm_a_mib, '.1f')} MiB over its "
                     "life (includes its own warm-up download through the tracker).")
        lines.append("")
    lines += [
        "How: nginx (sendfile on, private config, 127.0.0.1) serves the blob; `curl -s -o FILE` "
        "writes it to the same ext4 disk as the peer stores, removed between runs. Peer A "
        "(`p2pdist peer --tracker …`) downloads the blob once, untimed. Each run starts a fresh "
        "`p2pdist peer` B (fresh data dir, no tracker) and times `POST /api/v1/tasks "
        "{url, digest, nodes:[A]}` until `GET /api/v1/tasks/<id>` says `complete` (polled every "
        "10 ms): B takes A's sealed chunk map, fetches every chunk from A, checks its BLAKE3 and "
        "writes it to its store. Odd runs time curl first, even runs p2pdist first; `sync` "
        "(untimed) before each transfer. Page cache is not dropped (the blob is cached for nginx "
        "and A alike). RSS: VmRSS of each peer process sampled every 20 ms during the timed transfer. "
        "MB/s = 10^6 bytes/s. Ratio = p2pdist MB/s ÷ curl MB/s, paired per run.",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def record(text: str, start: str = MARK_START, end: str = MARK_END, results: Path | None = None) -> None:
    """Replace the section between ``start`` and ``end`` in ``results`` (default
    bench/RESULTS.md); append it if absent."""
    results = results or RESULTS
    old = results.read_text() if results.exists() else (
        "# Benchmark results\n\nEach section is written by its benchmark in `bench/`; rerun it to replace it.\n")
    if start in old and end in old:
        head, rest = old.split(start, 1)
        _, tail = rest.split(end, 1)
        new = head + text.rstrip("\n") + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text
    results.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=2**30, help="blob size (default 1GiB)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs (default 5); medians are reported")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    ap.add_argument("--no-record", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--curl-only", action="store_true", help="only the nginx/curl baseline")
    ap.add_argument("--workdir", default=None, help="parent of the temp dir (default: system temp; the "
                    "curl output and the peer stores live there)")
    ap.add_argument("--peer-env", metavar="KEY=VALUE", action="append", default=[],
                    help="extra environment for the p2pdist processes, e.g. "
                    "P2PDIST_PER_SOURCE_IN_FLIGHT=4 (repeatable; for experiments: implies --no-record)")
    ap.add_argument("--py-spy", metavar="DIR", default=None,
                    help="profile both peers with `py-spy record` during each timed transfer; "
                    "raw collapsed stacks go to DIR (implies --no-record)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    for kv in args.peer_env:
        if "=" not in kv or not kv.split("=", 1)[0]:
            ap.error(f"--peer-env wants KEY=VALUE, got {kv!r}")
    if args.peer_env:
        args.no_record = True  # not the default configuration: never record it as the result
    if args.py_spy:
        args.no_record = True  # profiled runs are slower: never record them as results

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    work = Path(tempfile.mkdtemp(prefix="p2pdist-bench-transfer-", dir=args.workdir))
    procs = Procs(work)
    res = Result(size=args.size, date=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                 machine=machine_info(),
                 command="./dev bench transfer " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    res.command = res.command.rstrip()
    failed = False
    try:
        bench(args, res, procs, work)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except Exception as exc:  # report with the logs, then clean up
        failed = True
        log(f"failed: {exc}")
        for name, _ in procs.procs:
            tail = procs.log_tail(name, 10)
            if tail:
                log(f"--- {name} log tail ---\n{tail}")
        if not res.runs:
            return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    text = render(res)
    if not args.no_record and not failed:
        record(text)
        log(f"recorded in {RESULTS}")
    if args.json:
        print(json.dumps({"size": res.size, "date": res.date, "machine": res.machine, "command": res.command,
                          "p2pdist_skipped": res.p2pdist_skipped, "rss_a_idle_mib": res.rss_a_idle_mib,
                          "hwm_a_mib": res.hwm_a_mib, "runs": [asdict(r) for r in res.runs], **res.summary()},
                         indent=2))
    else:
        print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
