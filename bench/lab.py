#!/usr/bin/env python3
"""Performance lab: N capped hosts in network namespaces, one blob to all of them.

    python bench/lab.py --hosts N --size SIZE --rate RATE [--systems LIST] [--json]
    python bench/lab.py --cleanup            # remove anything a killed run left behind

Run as root. Systems (all by default): ``p2pdist-swarm``, ``p2pdist-tree``, ``direct``,
``bittorrent``.

The hosts, all namespaces this script creates (prefix ``p2plab-``) and nothing else:

* ``p2plab-sw`` holds a bridge; every other namespace hangs off it by a veth pair, with a
  ``tbf`` cap on both ends (the host end caps its upload, the switch end its download);
* ``p2plab-origin`` (10.77.0.1): nginx serving the blob (a random file of SIZE); for the
  BitTorrent baseline it also runs the libtorrent seeder;
* ``p2plab-tracker`` (10.77.0.2): the p2pdist tracker, or opentracker for BitTorrent;
* ``p2plab-h1`` … ``p2plab-hN`` (10.77.0.11 …): one p2pdist peer each, or one libtorrent
  leecher, or one curl.

**Who is the seed.** The seed is the host that first holds the whole blob and serves it
to the N hosts. In p2pdist that is the tracker host (the tracker fetches the blob from the
origin once, cut-through, and serves its chunks); for BitTorrent the seeder runs on the
origin host; for ``direct`` the origin itself serves every host. The lab gives the
origin and the tracker host the same cap (``--seed-rate``, default ``--rate``), so the
Kumar-Ross bound is the same number for every system:

    T_min = max(F/u_s, F/d_min, N*F/(u_s + sum(u_i)))

with u_s = the seed host's upload cap, d_min = the slowest host download cap and u_i the
hosts' upload caps (configured tbf rates, in bits/s; F in bits). The bound counts payload
only: on a tbf-capped Ethernet link TCP carries at most ~95-96 % of the rate as payload
(1448 of every 1514 bytes), so even a perfect system lands at ~1.05 x T_min.

Measured per system: each host's finish time from the moment all hosts are told to start
(p2pdist: ``POST /api/v1/tasks`` then ``GET /api/v1/tasks/<id>`` until ``complete``; its
``seconds`` field gives the finish exactly); origin bytes (nginx access log
``$body_bytes_sent``, or the libtorrent seeder's payload upload for BitTorrent); the payload
bytes each host uploaded (p2pdist ``/metrics`` ``p2pdist_bytes_served``, libtorrent stats);
and the wire bytes of every link, sampled every 0.25 s from the switch side, from which
the seed's link utilisation is reported. ``verified``: every host holds bytes whose
sha256 equals the blob's digest, checked by this script (p2pdist: streamed back through
``POST /api/v1/fetch`` after the timed run).

Output: a table on stderr; ``--json``: one object keyed by system on stdout; a section
in bench/RESULTS.md (between ``<!-- bench:lab:start -->`` and ``<!-- bench:lab:end -->``,
rebuilt from every run kept in bench/lab-results/); a PNG plot bench/lab-n<N>.png when
matplotlib is importable. Everything created is removed at the end, also on Ctrl-C or
SIGTERM; ``--cleanup`` removes leftovers of a run that was SIGKILLed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
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
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
BT_NODE = ROOT / "bench" / "bt_node.py"
SYS_PYTHON = "/usr/bin/python3"
RESULTS = ROOT / "bench" / "RESULTS.md"
RUNS_DIR = ROOT / "bench" / "lab-results"
NOTES = ROOT / "bench" / "lab_notes.md"
MARK_START = "<!-- bench:lab:start -->"
MARK_END = "<!-- bench:lab:end -->"
PREFIX = "p2plab-"
TMP_PREFIX = "p2plab-"
SUBNET = "10.77.0"
ORIGIN_IP = f"{SUBNET}.1"
TRACKER_IP = f"{SUBNET}.2"
ORIGIN_PORT = 8080
TRACKER_PORT = 7400
PEER_PORT = 7401
BT_TRACKER_PORT = 6969
BT_PORT = 6881


def bt_piece_size(size: int) -> int:
    """BitTorrent's piece size: p2pdist's chunk size for the blob, so both move pieces of
    the same granularity and neither wins on pipelining depth alone."""
    from p2pdist.core.chunkmap import chunk_size_for

    return chunk_size_for(size)

TBF_LATENCY = "20ms"  # tbf queue length in time; --tbf-latency
MTU = 9000  # --mtu
LINK = "tbf-prio"  # --link
# How often each host's task status is polled. A host's finish time is what its peer
# reports (the task's own seconds), so polling only has to notice it; at 0.25 s the
# polls were ~1,700 HTTP requests per N = 16 run on the 2 cores being measured.
STATUS_POLL = 1.0
SYSTEMS = ("p2pdist-swarm", "p2pdist-tree", "direct", "bittorrent")
CLONE_NEWNET = 0x40000000
MiB = 1024 * 1024

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30}
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 256MiB, 32MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_rate(text: str) -> int:
    """tc-style rate -> bits/s: 100mbit, 1gbit, 500kbit."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = (m.group(2).lower() if m else "") or "bit"
    if not m or unit not in _RATE_UNITS:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (examples: 100mbit, 1gbit)")
    return int(float(m.group(1)) * _RATE_UNITS[unit])


def fmt_rate(bits: int) -> str:
    for unit, mult in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % mult == 0:
            return f"{bits // mult}{unit}"
    return f"{bits}bit"


def fmt_size(n: int) -> str:
    for unit, mult in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True, capture: bool = False) -> str:
    r = subprocess.run(argv, check=False, text=True, capture_output=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout if capture else ""


# -- network namespaces ------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def enter_ns(name: str) -> None:
    """Move the calling thread (only) into namespace ``name``; sockets it opens stay there."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_ns(name: str, fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh thread inside namespace ``name``; return its result."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_ns(name)
            box["r"] = fn(*args)
        except BaseException as exc:  # handed to the caller
            box["e"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("r")


def ns_available() -> str | None:
    """None when this machine can run the lab, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) not installed"
    name = f"{PREFIX}probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def lab_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False, capture=True)
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].startswith(PREFIX)]


def kill_ns_pids(name: str) -> None:
    out = sh("ip", "netns", "pids", name, check=False, capture=True)
    pids = [int(p) for p in out.split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.05)


def cleanup_leftovers() -> int:
    names = lab_namespaces()
    for name in names:
        kill_ns_pids(name)
    for name in names:
        sh("ip", "netns", "del", name, check=False)
    removed = 0
    for d in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    log(f"cleanup: removed {len(names)} namespaces, {removed} work dirs")
    return len(names)


@dataclass
class Host:
    name: str       # namespace
    ip: str
    up: int         # bits/s
    down: int       # bits/s
    sw_if: str      # the veth end in the switch namespace

    @property
    def short(self) -> str:
        return self.name[len(PREFIX):]


class Lab:
    def __init__(self, n: int, rate: int, seed_rate: int, slow: int, slow_rate: int):
        self.sw = f"{PREFIX}sw"
        self.origin = Host(f"{PREFIX}origin", ORIGIN_IP, seed_rate, seed_rate, "ps-origin")
        self.tracker = Host(f"{PREFIX}tracker", TRACKER_IP, seed_rate, seed_rate, "ps-tracker")
        self.hosts = [Host(f"{PREFIX}h{i}", f"{SUBNET}.{10 + i}",
                           slow_rate if i > n - slow else rate, rate, f"ps-h{i}")
                      for i in range(1, n + 1)]
        self.built: list[str] = []

    @property
    def all_hosts(self) -> list[Host]:
        return [self.origin, self.tracker, *self.hosts]

    def build(self) -> None:
        sh("ip", "netns", "add", self.sw)
        self.built.append(self.sw)
        sh("ip", "netns", "exec", self.sw, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.sw, "ip", "link", "set", "br0", "mtu", str(MTU), "up")
        sh("ip", "netns", "exec", self.sw, "ip", "link", "set", "lo", "up")
        for h in self.all_hosts:
            sh("ip", "netns", "add", h.name)
            self.built.append(h.name)
            sh("ip", "netns", "exec", h.name, "ip", "link", "set", "lo", "up")
            sh("ip", "link", "add", "eth0", "netns", h.name, "type", "veth", "peer", "name", h.sw_if, "netns", self.sw)
            sh("ip", "netns", "exec", self.sw, "ip", "link", "set", h.sw_if, "master", "br0", "up")
            sh("ip", "netns", "exec", h.name, "ip", "addr", "add", f"{h.ip}/24", "dev", "eth0")
            sh("ip", "netns", "exec", h.name, "ip", "link", "set", "eth0", "mtu", str(MTU), "up")
            sh("ip", "netns", "exec", self.sw, "ip", "link", "set", h.sw_if, "mtu", str(MTU))
            shape(h.name, "eth0", h.up)       # upload cap
            shape(self.sw, h.sw_if, h.down)   # download cap
        # all links up before anyone talks
        for h in self.all_hosts:
            sh("ip", "netns", "exec", h.name, "ping", "-c1", "-W2", self.origin.ip, check=False)

    def destroy(self) -> None:
        for name in reversed(self.built):
            kill_ns_pids(name)
        for name in reversed(self.built):
            sh("ip", "netns", "del", name, check=False)
        self.built.clear()


def tbf(dev: str, rate: int) -> list[str]:
    burst = max(256 * 1024, rate // 8 // 100)
    return ["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "tbf", "rate", f"{rate}bit",
            "burst", str(burst), "latency", TBF_LATENCY]


def shape(ns: str, dev: str, rate: int) -> None:
    """Cap ``dev``'s egress at ``rate``. ``--link tbf``: a plain tbf (one FIFO, as in
    notes/real-components.md). ``--link tbf-prio`` (default): the same tbf, whose queue
    sends small packets (IP length < 256: TCP ACKs, requests, announces) before bulk
    ones, the way fq_codel's sparse-flow priority does on a real host. This kernel has
    no fq/fq_codel/sfq/prio, so the child is an htb used only as a two-band priority
    scheduler (its classes never limit); the bulk band holds ``TBF_LATENCY`` worth of
    full packets."""
    sh("ip", "netns", "exec", ns, *tbf(dev, rate))
    if LINK == "tbf":
        return
    lat_s = float(TBF_LATENCY.removesuffix("ms")) / 1000
    bulk = max(8, int(rate / 8 * lat_s / MTU))
    for cmd in (
        ["qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "htb", "default", "2"],
        ["class", "add", "dev", dev, "parent", "10:", "classid", "10:1", "htb", "rate", "10gbit", "prio", "0", "quantum", "60000"],
        ["class", "add", "dev", dev, "parent", "10:", "classid", "10:2", "htb", "rate", "10gbit", "prio", "1", "quantum", "60000"],
        ["qdisc", "add", "dev", dev, "parent", "10:1", "handle", "21:", "pfifo", "limit", "1000"],
        ["qdisc", "add", "dev", dev, "parent", "10:2", "handle", "22:", "pfifo", "limit", str(bulk)],
        ["filter", "add", "dev", dev, "parent", "10:", "protocol", "ip", "prio", "1", "u32",
         "match", "u16", "0x0000", "0xff00", "at", "2", "flowid", "10:1"],
    ):
        sh("ip", "netns", "exec", ns, "tc", *cmd)


# -- link counters ----------------------------------------------------------------------------


CPU_KEY = "cpu:"  # LinkSampler's machine-CPU entry (no interface name has a colon)


def cpu_busy(samples: list[tuple[float, dict[str, tuple[int, int]]]], t_end: float) -> float | None:
    """Fraction of the machine's CPU time that was busy from the first sample to
    ``t_end`` (1.0 = every core busy all the time)."""
    marks = [d[CPU_KEY] for t, d in samples if CPU_KEY in d and t <= t_end]
    if len(marks) < 2 or marks[-1][1] == marks[0][1]:
        return None
    return round((marks[-1][0] - marks[0][0]) / (marks[-1][1] - marks[0][1]), 3)


class LinkSampler:
    """Wire bytes of every switch-side veth every ``interval`` s (rx there = the host's
    upload, tx there = the host's download)."""

    def __init__(self, ns: str, interval: float = 0.25):
        self.ns, self.interval = ns, interval
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _read(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        with open("/proc/thread-self/net/dev") as fh:
            for line in fh.readlines()[2:]:
                name, _, rest = line.partition(":")
                f = rest.split()
                out[name.strip()] = (int(f[0]), int(f[8]))
        # the whole machine's CPU (jiffies: busy, total), under a name no interface has:
        # 18 processes share 2 cores, and a saturated box is not a protocol result.
        # Niced time (f[1]) counts as idle: background work yields it to the lab.
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:9]]
        out[CPU_KEY] = (sum(f) - f[1] - f[3] - f[4], sum(f))
        return out

    def _run(self) -> None:
        enter_ns(self.ns)
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._read()))
            self._stop.wait(self.interval)

    def window(self, t0: float, t1: float) -> list[tuple[float, dict[str, tuple[int, int]]]]:
        return [(t - t0, d) for t, d in self.samples if t0 - self.interval <= t <= t1 + self.interval]


def link_bytes(samples: list[tuple[float, dict[str, tuple[int, int]]]], ifname: str, t_end: float) -> tuple[int, int]:
    """(uploaded, downloaded) wire bytes of the host behind switch port ``ifname`` from
    the first sample to the first sample at or after ``t_end``."""
    if not samples:
        return 0, 0
    first = samples[0][1].get(ifname, (0, 0))
    last = next((d for t, d in samples if t >= t_end), samples[-1][1]).get(ifname, (0, 0))
    return last[0] - first[0], last[1] - first[1]


# -- processes ---------------------------------------------------------------------------------


class Procs:
    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[Any]]] = []

    def start(self, name: str, ns: str, argv: list[str], env: dict[str, str] | None = None,
              stdin: Any = subprocess.DEVNULL, stdout: Any = None, cwd: str | None = None) -> subprocess.Popen[Any]:
        logf = open(self.logdir / f"{name}.log", "ab")
        full_env = {**os.environ, **(env or {})}
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=stdin,
                             stdout=stdout if stdout is not None else logf, stderr=logf,
                             env=full_env, start_new_session=True, cwd=cwd,
                             text=stdout is not None)
        logf.close()
        self.procs.append((name, p))
        return p

    def tail(self, name: str, n: int = 15) -> str:
        try:
            return "\n".join((self.logdir / f"{name}.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @staticmethod
    def stop(p: subprocess.Popen[Any], timeout: float = 5.0) -> None:
        if p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            self.stop(p)
        self.procs.clear()


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"} if data else {})
    try:
        with _opener.open(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    ctype_json = raw[:1] in (b"{", b"[")
    return status, json.loads(raw) if ctype_json else raw.decode(errors="replace")


def wait_http(ns: str, url: str, procs: Procs, name: str, p: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    def probe() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}):\n{procs.tail(name)}")
            try:
                status, _ = http("GET", url, timeout=2)
                if status < 500:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{name} not ready at {url} after {timeout}s:\n{procs.tail(name)}")

    in_ns(ns, probe)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key = line.split()[0].split("{")[0]
            if key in (name, name + "_total"):
                total += float(line.split()[-1])
    return total


def labelled(text: str, name: str, label: str) -> dict[str, float]:
    """Sum of metric ``name`` per value of ``label`` (e.g. requests per route)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and f'{label}="' in line:
            value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
            out[value] = out.get(value, 0.0) + float(line.split()[-1])
    return out


# -- the run -----------------------------------------------------------------------------------


@dataclass
class SystemResult:
    system: str
    finish: list[float | None]          # per host, seconds from start; None = did not finish
    verified: list[bool]
    origin_bytes: int
    uploaded: list[int]                  # payload bytes each host uploaded
    seed_uploaded: int                   # payload bytes the seed sent to hosts
    wire: dict[str, tuple[int, int]] = field(default_factory=dict)  # host -> (up, down) wire bytes
    timeline: list[tuple[float, dict[str, tuple[int, int]]]] = field(default_factory=list)
    progress: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # p2pdist: (t, chunks held)
    notes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # p2pdist: requests served, by route


class Runner:
    def __init__(self, args: argparse.Namespace, lab: Lab, work: Path, blob: Path, digest: str):
        self.args, self.lab, self.work, self.blob, self.digest = args, lab, work, blob, digest
        self.size = blob.stat().st_size
        self.procs = Procs(work / "logs")
        self.sampler = LinkSampler(lab.sw)
        self.url = f"http://{ORIGIN_IP}:{ORIGIN_PORT}/blob"
        self.access_log = work / "nginx" / "access.log"
        self.t_min = kumar_ross(self.size, lab)

    # origin ---------------------------------------------------------------------------------

    def start_origin(self) -> None:
        d = self.work / "nginx"
        (d / "www").mkdir(parents=True)
        os.link(self.blob, d / "www" / "blob")
        conf = d / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
user root;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format lab '$request_uri $status $body_bytes_sent $bytes_sent';
    access_log {self.access_log} lab;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    sendfile on; tcp_nopush on; keepalive_requests 100000;
    send_timeout 600s;  # direct: N flows share one capped link; a starved one must not be cut
    default_type application/octet-stream;
    server {{ listen {ORIGIN_IP}:{ORIGIN_PORT}; root {d}/www; }}
}}
""")
        p = self.procs.start("nginx", self.lab.origin.name, ["nginx", "-c", str(conf), "-p", str(d)])
        wait_http(self.lab.origin.name, self.url, self.procs, "nginx", p)

    def origin_log_offset(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def origin_bytes_since(self, offset: int) -> int:
        time.sleep(0.3)  # nginx writes the line when the response ends
        with open(self.access_log, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode(errors="replace").splitlines()
        return sum(int(f[2]) for f in (line.split() for line in lines) if len(f) >= 3 and f[2].isdigit())

    # systems --------------------------------------------------------------------------------

    def deadline_for(self, system: str) -> float:
        if self.args.timeout:
            return self.args.timeout
        n, f = len(self.lab.hosts), self.size * 8
        if system == "direct":
            return 1.5 * n * f / self.lab.origin.up + 60
        return 6 * self.t_min + 60

    def run_p2pdist(self, topology: str) -> SystemResult:
        system = f"p2pdist-{topology}"
        lab, run = self.lab, self.work / system
        env = {"PYTHONUNBUFFERED": "1", **dict(kv.split("=", 1) for kv in self.args.env)}
        if self.args.src:
            # PYTHONSAFEPATH: `python -m` would put the working directory first on the
            # path, and run from the repository root that is the checkout, not --src
            # (every --src run before this fix ran the checkout's code)
            env["PYTHONPATH"] = str(Path(self.args.src).resolve())
            env["PYTHONSAFEPATH"] = "1"
        tracker_url = f"http://{TRACKER_IP}:{TRACKER_PORT}"
        tenv = {**env, **dict(kv.split("=", 1) for kv in self.args.tracker_env)}
        tp = self.procs.start(f"{system}-tracker", lab.tracker.name, [
            PYTHON, "-m", "p2pdist", "tracker", "--listen", f"{TRACKER_IP}:{TRACKER_PORT}", "--advertise", f"{TRACKER_IP}:{TRACKER_PORT}",
            "--data-dir", str(run / "tracker"), "--topology", topology, "--log-level", self.args.log_level], env=tenv)
        peers = []
        for h in lab.hosts:
            addr = f"{h.ip}:{PEER_PORT}"
            peers.append(self.procs.start(f"{system}-{h.short}", h.name, [
                PYTHON, "-m", "p2pdist", "peer", "--listen", addr, "--advertise", addr, "--data-dir", str(run / h.short),
                "--tracker", tracker_url, "--log-level", self.args.log_level], env=env))
        wait_http(lab.tracker.name, f"{tracker_url}/readyz", self.procs, f"{system}-tracker", tp)
        for h, p in zip(lab.hosts, peers, strict=False):
            wait_http(h.name, f"http://{h.ip}:{PEER_PORT}/readyz", self.procs, f"{system}-{h.short}", p)
        log(f"{system}: tracker and {len(peers)} peers ready")

        task_id = self.digest.split(":", 1)[1]
        n = len(lab.hosts)
        finish: list[float | None] = [None] * n
        states: list[str] = ["?"] * n
        progress: dict[str, list[tuple[float, int]]] = {h.short: [] for h in lab.hosts}
        barrier = threading.Barrier(n + 1)
        t0_box: dict[str, float] = {}
        deadline = self.deadline_for(system)
        off = self.origin_log_offset()

        def host_thread(i: int, h: Host) -> None:
            enter_ns(h.name)
            base = f"http://{h.ip}:{PEER_PORT}"
            barrier.wait()
            t_post = time.monotonic()
            status, body = http("POST", f"{base}/api/v1/tasks", {"url": self.url, "digest": self.digest, "headers": []})
            if status >= 300:
                states[i] = f"POST {status}: {body}"
                return
            t0 = t0_box["t0"]
            while time.monotonic() - t0 < deadline:
                try:
                    status, s = http("GET", f"{base}/api/v1/tasks/{task_id}")
                except OSError as exc:
                    states[i] = f"poll: {exc}"
                    time.sleep(0.25)
                    continue
                if status == 200 and isinstance(s, dict):
                    progress[h.short].append((round(time.monotonic() - t0, 3), s.get("chunks_held") or 0))
                    states[i] = s["state"]
                    if s["state"] == "complete":
                        finish[i] = (t_post - t0) + float(s["seconds"])
                        return
                    if s["state"] == "failed":
                        states[i] = f"failed: {s.get('error')}"
                        return
                time.sleep(STATUS_POLL)

        self.sampler_mark = time.monotonic()
        threads = [threading.Thread(target=host_thread, args=(i, h), daemon=True) for i, h in enumerate(lab.hosts)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        t0_box["t0"] = t0
        barrier.wait()
        log(f"{system}: {n} hosts started (deadline {deadline:.0f}s)")
        for t in threads:
            t.join(max(1.0, deadline - (time.monotonic() - t0) + 5))
        t_end = time.monotonic()
        notes = [f"{h.short}: {states[i]}" for i, h in enumerate(lab.hosts) if finish[i] is None]

        # what each host uploaded, then independent verification
        uploaded, verified = [], []
        requests: dict[str, float] = {}  # what the hosts' servers answered, by route; refusals by reason
        for h in lab.hosts:
            try:
                _, m = in_ns(h.name, http, "GET", f"http://{h.ip}:{PEER_PORT}/metrics")
                uploaded.append(int(metric(m, "p2pdist_bytes_served")))
            except OSError:
                uploaded.append(-1)
                continue
            for k, v in labelled(m, "p2pdist_request_seconds_count", "route").items():
                requests[f"peers {k}"] = requests.get(f"peers {k}", 0) + v
            requests["peers' chunks back to source"] = (requests.get("peers' chunks back to source", 0)
                                                        + metric(m, "p2pdist_back_to_source"))
            for metric_name, what in (("p2pdist_chunk_refusals_total", "refused"), ("p2pdist_chunks_failed_total", "failed")):
                for k, v in labelled(m, metric_name, "reason").items():
                    requests[f"peers' asks {what}: {k}"] = requests.get(f"peers' asks {what}: {k}", 0) + v
        _, tm = in_ns(lab.tracker.name, http, "GET", f"{tracker_url}/metrics")
        for k, v in labelled(tm, "p2pdist_request_seconds_count", "route").items():
            requests[f"tracker {k}"] = v
        for k, v in labelled(tm, "p2pdist_chunk_asks_refused_total", "reason").items():
            requests[f"tracker refused: {k}"] = v
        seed_up = int(metric(tm, "p2pdist_bytes_served"))
        origin_bytes = self.origin_bytes_since(off)
        for i, h in enumerate(lab.hosts):
            verified.append(finish[i] is not None and in_ns(h.name, self._fetch_sha256, h) == self.digest)
        res = SystemResult(system, finish, verified, origin_bytes, uploaded, seed_up, notes=notes, progress=progress,
                           requests={k: int(v) for k, v in sorted(requests.items())},
                           env={**{k: v for k, v in env.items() if k.startswith("P2PDIST_")},
                                **{f"tracker:{k}": v for k, v in tenv.items() if k.startswith("P2PDIST_") and env.get(k) != v}})
        self._links(res, t0, t_end, seed=lab.tracker)
        self._stop_system_procs(system)
        shutil.rmtree(run, ignore_errors=True)
        return res

    def _fetch_sha256(self, h: Host) -> str:
        req = urllib.request.Request(f"http://{h.ip}:{PEER_PORT}/api/v1/fetch", method="POST",
                                     data=json.dumps({"url": self.url, "digest": self.digest}).encode(),
                                     headers={"content-type": "application/json"})
        sha = hashlib.sha256()
        try:
            with _opener.open(req, timeout=120) as r:
                while chunk := r.read(4 * MiB):
                    sha.update(chunk)
        except OSError as exc:
            return f"error: {exc}"
        return "sha256:" + sha.hexdigest()

    def _stop_system_procs(self, prefix: str) -> None:
        keep = []
        for name, p in self.procs.procs:
            if name.startswith(prefix):
                self.procs.stop(p)
            else:
                keep.append((name, p))
        self.procs.procs = keep

    def _links(self, res: SystemResult, t0: float, t_end: float, seed: Host) -> None:
        samples = self.sampler.window(t0, t_end)
        res.timeline = samples
        last = max([f for f in res.finish if f is not None], default=t_end - t0)
        for h in [self.lab.origin, self.lab.tracker, *self.lab.hosts]:
            res.wire[h.short] = link_bytes(samples, h.sw_if, last)
        res.notes.append(f"seed = {seed.short}")

    def run_direct(self) -> SystemResult:
        lab, run = self.lab, self.work / "direct"
        n = len(lab.hosts)
        for h in lab.hosts:
            (run / h.short).mkdir(parents=True)
        off = self.origin_log_offset()
        deadline = self.deadline_for("direct")
        t0 = time.monotonic()
        procs = [self.procs.start(f"direct-{h.short}", h.name,
                                  ["curl", "-s", "-f", "--noproxy", "*", "-o", str(run / h.short / "blob"), self.url])
                 for h in lab.hosts]
        log(f"direct: {n} curls started (deadline {deadline:.0f}s)")
        finish: list[float | None] = [None] * n

        def waiter(i: int, p: subprocess.Popen[Any]) -> None:
            try:
                rc = p.wait(deadline)
            except subprocess.TimeoutExpired:
                return
            if rc == 0:
                finish[i] = time.monotonic() - t0

        ws = [threading.Thread(target=waiter, args=(i, p), daemon=True) for i, p in enumerate(procs)]
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        t_end = time.monotonic()
        self._stop_system_procs("direct")
        verified = [finish[i] is not None and file_sha256(run / h.short / "blob") == self.digest
                    for i, h in enumerate(lab.hosts)]
        res = SystemResult("direct", finish, verified, self.origin_bytes_since(off), [0] * n, 0)
        res.seed_uploaded = res.origin_bytes
        self._links(res, t0, t_end, seed=lab.origin)
        shutil.rmtree(run, ignore_errors=True)
        return res

    def run_bittorrent(self) -> SystemResult:
        lab, run = self.lab, self.work / "bittorrent"
        n = len(lab.hosts)
        run.mkdir(parents=True)
        torrent = run / "blob.torrent"
        announce = f"http://{TRACKER_IP}:{BT_TRACKER_PORT}/announce"
        r = subprocess.run([SYS_PYTHON, str(BT_NODE), "make", "--file", str(self.blob), "--tracker", announce,
                            "--piece-size", str(self.args.bt_piece or bt_piece_size(self.args.size)),
                            "--out", str(torrent)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"making the torrent failed: {r.stderr.strip()}")
        (run / "ot").mkdir()
        # Debian's opentracker is built in whitelist mode: allow exactly this torrent
        info_hash = json.loads(r.stdout.strip().splitlines()[-1])["info_hash"]
        (run / "ot" / "whitelist").write_text(info_hash + "\n")
        os.chmod(run / "ot", 0o755)
        os.chmod(run / "ot" / "whitelist", 0o644)
        self.procs.start("bt-opentracker", lab.tracker.name,
                         ["opentracker", "-i", TRACKER_IP, "-p", str(BT_TRACKER_PORT), "-P", str(BT_TRACKER_PORT),
                          "-d", str(run / "ot"), "-u", "nobody", "-w", "whitelist"], cwd=str(run / "ot"))
        time.sleep(0.3)
        seed_dir = self.blob.parent
        seeder = self.procs.start("bt-seed", lab.origin.name, [
            SYS_PYTHON, str(BT_NODE), "seed", "--torrent", str(torrent), "--dir", str(seed_dir),
            "--listen", f"{ORIGIN_IP}:{BT_PORT}", *([] if self.args.bt_utp else ["--tcp-only"])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if json.loads(seeder.stdout.readline() or "{}").get("event") != "ready":
            raise RuntimeError(f"bt seeder did not start:\n{self.procs.tail('bt-seed')}")
        time.sleep(1.5)  # its first announce
        leechers = []
        for h in lab.hosts:
            (run / h.short).mkdir()
            leechers.append(self.procs.start(f"bt-{h.short}", h.name, [
                SYS_PYTHON, str(BT_NODE), "leech", "--torrent", str(torrent), "--dir", str(run / h.short),
                "--listen", f"{h.ip}:{BT_PORT}", *([] if self.args.bt_utp else ["--tcp-only"])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        for h, p in zip(lab.hosts, leechers, strict=False):
            if json.loads(p.stdout.readline() or "{}").get("event") != "ready":
                raise RuntimeError(f"bt leecher on {h.short} did not start:\n{self.procs.tail('bt-' + h.short)}")
        deadline = self.deadline_for("bittorrent")
        finish: list[float | None] = [None] * n
        go: list[float] = [0.0] * n
        t0 = time.monotonic()
        for i, p in enumerate(leechers):
            go[i] = time.monotonic() - t0
            p.stdin.write("go\n")
            p.stdin.flush()
        log(f"bittorrent: {n} leechers started (deadline {deadline:.0f}s)")

        def reader(i: int, p: subprocess.Popen[Any]) -> None:
            for line in p.stdout:
                ev = json.loads(line)
                if ev.get("event") == "done":
                    finish[i] = go[i] + float(ev["seconds"])
                    return

        rs = [threading.Thread(target=reader, args=(i, p), daemon=True) for i, p in enumerate(leechers)]
        for t in rs:
            t.start()
        for t in rs:
            t.join(max(1.0, deadline - (time.monotonic() - t0)))
        t_end = time.monotonic()

        def stats(p: subprocess.Popen[Any]) -> dict[str, Any]:
            with contextlib.suppress(OSError, ValueError):
                p.stdin.close()
            try:
                for line in p.stdout:
                    ev = json.loads(line)
                    if ev.get("event") == "stats":
                        return ev
            except (OSError, ValueError):
                pass
            return {}

        seed_stats = stats(seeder)
        up = [int(stats(p).get("uploaded", -1)) for p in leechers]
        self._stop_system_procs("bt-")
        verified = [finish[i] is not None and file_sha256(run / h.short / "blob") == self.digest
                    for i, h in enumerate(lab.hosts)]
        seed_up = int(seed_stats.get("uploaded", -1))
        res = SystemResult("bittorrent", finish, verified, seed_up, up, seed_up)
        res.notes.append("uTP and TCP" if self.args.bt_utp else "TCP only")
        self._links(res, t0, t_end, seed=lab.origin)
        shutil.rmtree(run, ignore_errors=True)
        return res


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(4 * MiB):
                sha.update(chunk)
    except OSError as exc:
        return f"error: {exc}"
    return "sha256:" + sha.hexdigest()


def source_id(src: str | None) -> str:
    """Which p2pdist ran: HEAD's commit, and whether the working tree was used as is."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if src:
        # what the lab's processes will import (bench/lab.py's own run of the same command)
        probe = subprocess.run([PYTHON, "-c", "import p2pdist; print(p2pdist.__file__)"], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(Path(src).resolve()),
                                               "PYTHONSAFEPATH": "1"})
        if not probe.stdout.strip().startswith(str(Path(src).resolve())):
            raise SystemExit(f"lab: --src {src} is not what python imports ({probe.stdout.strip() or probe.stderr})")
        marker = Path(src) / "COMMIT"  # written by whoever made the snapshot
        commit = marker.read_text().strip()[:7] if marker.exists() else f"unknown; HEAD now {head}"
        return f"snapshot of commit {commit} ({src})"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "p2pdist"],
                           capture_output=True, text=True).stdout.strip()
    return f"working tree at {head}" + (" with uncommitted changes" if dirty else "")


def kumar_ross(size: int, lab: Lab) -> float:
    f = size * 8
    u_s = lab.tracker.up  # == lab.origin.up: whichever host seeds, the bound is the same
    d_min = min(h.down for h in lab.hosts)
    n = len(lab.hosts)
    return max(f / u_s, f / d_min, n * f / (u_s + sum(h.up for h in lab.hosts)))


def make_blob(path: Path, size: int, seed: int = 4) -> str:
    """Deterministic pseudo-random bytes (fast: a seeded random block, varied per MiB)."""
    import random

    rng = random.Random(seed)
    sha = hashlib.sha256()
    block = rng.randbytes(MiB)
    with open(path, "wb") as fh:
        left, i = size, 0
        while left > 0:
            piece = (i.to_bytes(8, "little") + block[8:])[: min(MiB, left)]
            fh.write(piece)
            sha.update(piece)
            left -= len(piece)
            i += 1
    return "sha256:" + sha.hexdigest()


# -- report ------------------------------------------------------------------------------------


def summarize(res: SystemResult, t_min: float, size: int, rate: int, seed_host: str) -> dict[str, Any]:
    done = sorted(f for f in res.finish if f is not None)
    ok = len(done) == len(res.finish)
    t_first = round(done[0], 3) if done else None
    t_median = round(statistics.median(res.finish), 3) if ok else None
    t_last = round(done[-1], 3) if ok else None
    seed_wire = res.wire.get(seed_host, (0, 0))[0]
    out = {
        "t_first": t_first, "t_median": t_median, "t_last": t_last, "t_min": round(t_min, 3),
        "origin_bytes": res.origin_bytes, "blob_bytes": size, "verified": ok and all(res.verified),
        "hosts_finished": len(done), "hosts": len(res.finish),
        "last_over_tmin": round(t_last / t_min, 3) if t_last else None,
        "median_over_tmin": round(t_median / t_min, 3) if t_median else None,
        "origin_over_blob": round(res.origin_bytes / size, 4),
        "finish": [round(f, 3) if f is not None else None for f in res.finish],
        "uploaded": res.uploaded, "seed_uploaded": res.seed_uploaded,
        "seed_host": seed_host,
        "seed_link_util": round(seed_wire * 8 / (rate * t_last), 3) if t_last else None,
        "cpu_busy": cpu_busy(res.timeline, t_last if t_last else float("inf")),
        "wire": res.wire,
        "notes": res.notes,
    }
    if res.requests:
        out["requests"] = res.requests
    if res.env:
        out["env"] = res.env
    return out


def analyse_timeline(res: SystemResult, lab: Lab, t_min: float) -> dict[str, Any]:
    """Per host: fraction of 0.25 s samples before it finished in which its download link
    ran below 50 % of its cap; and the seed link's utilisation per 1 s bucket."""
    s = res.timeline
    out: dict[str, Any] = {}
    if len(s) < 3:
        return out
    idle: dict[str, float] = {}
    for i, h in enumerate(lab.hosts):
        fin = res.finish[i] if res.finish[i] is not None else s[-1][0]
        slow = total = 0
        for (ta, da), (tb, db) in zip(s, s[1:], strict=False):
            if tb > fin or ta < 0:
                continue
            rate = (db.get(h.sw_if, (0, 0))[1] - da.get(h.sw_if, (0, 0))[1]) * 8 / max(tb - ta, 1e-3)
            total += 1
            slow += rate < 0.5 * h.down
        idle[h.short] = round(slow / total, 3) if total else 0.0
    out["below_half_cap_fraction"] = idle
    return out


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    log(f"{'system':15} {'first':>7} {'median':>7} {'last':>7} {'T_min':>7} {'last/T':>7} {'med/T':>7} {'origin/F':>8} {'cpu':>5} verified")
    for name, r in summary.items():
        def f(x: Any) -> str:
            return f"{x:7.2f}" if isinstance(x, float | int) and x is not None else f"{'-':>7}"
        log(f"{name:15} {f(r['t_first'])} {f(r['t_median'])} {f(r['t_last'])} {f(r['t_min'])} "
            f"{f(r['last_over_tmin'])} {f(r['median_over_tmin'])} {r['origin_over_blob']:8.3f} {r.get('cpu_busy') or 0:5.2f} {r['verified']}")


def plot(summary: dict[str, dict[str, Any]], t_min: float, path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not importable: no plot (pip install matplotlib into the venv for one)")
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    markers = {"p2pdist-swarm": "o", "p2pdist-tree": "s", "direct": "^", "bittorrent": "D"}
    for name, r in summary.items():
        times = sorted(f for f in r["finish"] if f is not None)
        ax.plot(range(1, len(times) + 1), times, marker=markers.get(name, "x"), label=name)
    ax.axhline(t_min, color="k", linestyle="-", linewidth=1, label=f"T_min = {t_min:.1f} s")
    ax.axhline(1.25 * t_min, color="k", linestyle="--", linewidth=0.8, label="1.25 × T_min")
    ax.set_xlabel("host (sorted by finish)")
    ax.set_ylabel("finish time (s)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_key(run: dict[str, Any]) -> tuple[Any, ...]:
    return (run["hosts"], run["size"], run["rate"], run.get("slow", 0), run.get("tag", ""))


def record(run: dict[str, Any]) -> Path:
    RUNS_DIR.mkdir(exist_ok=True)
    tag = f"-{run['tag']}" if run.get("tag") else ""
    slow = f"-slow{run['slow']}" if run.get("slow") else ""
    path = RUNS_DIR / f"n{run['hosts']}-{fmt_size(run['size'])}-{fmt_rate(run['rate'])}{slow}{tag}.json"
    if path.exists() and run.get("merge"):
        # a partial rerun (--merge): keep the other systems of the earlier run
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(path.read_text())
            for name, s in old.get("systems", {}).items():
                run["systems"].setdefault(name, s)
            run["command"] = old.get("command", "") + "` + rerun of " + ", ".join(run["rerun"]) + ": `" + run["command"]
    path.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")
    write_results()
    return path


def write_results() -> None:
    runs = []
    for p in sorted(RUNS_DIR.glob("*.json")):
        if p.name.endswith(".timeline.json"):
            continue
        with contextlib.suppress(ValueError, OSError):
            runs.append(json.loads(p.read_text()))
    runs.sort(key=lambda r: (r.get("tag", "") != "", r.get("slow", 0), r["hosts"], r["size"]))
    lines = [MARK_START, "## lab: N capped hosts, one blob — p2pdist vs direct vs BitTorrent vs T_min", ""]
    lines.append("Written by `bench/lab.py` (see its docstring for the set-up). Times in seconds from the moment "
                 "every host is told to start; T_min is the Kumar–Ross bound for the configured caps; "
                 "origin/F = bytes the origin (or the BitTorrent seed) sent ÷ blob size. "
                 "Seed = the tracker host for p2pdist, the origin host for direct and BitTorrent (same cap).")
    lines.append("")
    for r in runs:
        slow = f", {r['slow']} hosts at {fmt_rate(r['slow_rate'])} upload" if r.get("slow") else ""
        tag = f" [{r['tag']}]" if r.get("tag") else ""
        lines.append(f"### N = {r['hosts']}, {fmt_size(r['size'])}, {fmt_rate(r['rate'])}{slow}{tag}")
        lines.append("")
        lines.append(f"{r['when']}. Command: `{r['command']}`" + (f" Env: `{r['env']}`" if r.get("env") else ""))
        lines.append("")
        sysctls = "".join(f", {kv}" for kv in r.get("sysctl") or [])
        lines.append(f"Links: {r.get('link', 'tbf')}, MTU {r.get('mtu', 1500)}, tbf latency {r.get('tbf_latency', '100ms')}{sysctls}; "
                     f"p2pdist: {r.get('src', '?')}; T_min {r['t_min']:.2f} s; machine nproc {r.get('nproc')}.")
        lines.append("")
        lines.append("| system | first | median | last | T_min | last/T_min | median/T_min | origin/F | seed link util | CPU busy | done | verified |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for name, s in r["systems"].items():
            def f(x: Any, d: int = 2) -> str:
                return f"{x:.{d}f}" if isinstance(x, int | float) else "—"
            lines.append(f"| {name} | {f(s['t_first'])} | {f(s['t_median'])} | {f(s['t_last'])} | {f(s['t_min'])} | "
                         f"{f(s['last_over_tmin'])} | {f(s['median_over_tmin'])} | {f(s['origin_over_blob'], 3)} | "
                         f"{f(s.get('seed_link_util'))} | {f(s.get('cpu_busy'))} | {s['hosts_finished']}/{s['hosts']} | {'yes' if s['verified'] else 'NO'} |")
        if r.get("plot"):
            lines.append("")
            lines.append(f"![finish times]({r['plot']})")
        lines.append("")
    if NOTES.exists():
        lines.append(NOTES.read_text().strip())
        lines.append("")
    lines.append(MARK_END)
    section = "\n".join(lines)
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if MARK_START in old and MARK_END in old:
        pre, _, rest = old.partition(MARK_START)
        _, _, post = rest.partition(MARK_END)
        new = pre + section + post
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(new)


# -- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=8, metavar="N")
    ap.add_argument("--size", type=parse_size, default=parse_size("256MiB"))
    ap.add_argument("--rate", type=parse_rate, default=parse_rate("100mbit"), help="every host's upload and download cap")
    ap.add_argument("--seed-rate", type=parse_rate, help="origin and tracker host caps (default: --rate)")
    ap.add_argument("--tbf-latency", default=TBF_LATENCY,
                    help="tbf queue length in time (default %(default)s; see the docstring: a long FIFO "
                         "delays the ACKs of a host's downloads behind its uploads)")
    ap.add_argument("--link", choices=["tbf-prio", "tbf"], default=LINK,
                    help="link model (default %(default)s; see shape())")
    ap.add_argument("--mtu", type=int, default=MTU,
                    help="MTU of every lab link (default %(default)s: jumbo frames keep the kernel's "
                         "per-packet work on 2 cores small; 1500 is closer to a WAN)")
    ap.add_argument("--sysctl", action="append", default=[], metavar="KEY=VALUE",
                    help="a sysctl set in every lab host's namespace (repeatable), e.g. "
                         "net.ipv4.tcp_slow_start_after_idle=0")
    ap.add_argument("--slow", type=int, default=0, metavar="K", help="the last K hosts get --slow-rate upload")
    ap.add_argument("--slow-rate", type=parse_rate, default=parse_rate("20mbit"))
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--env", action="append", default=[], metavar="P2PDIST_KEY=V",
                    help="environment override for p2pdist tracker and peers (repeatable)")
    ap.add_argument("--tracker-env", action="append", default=[], metavar="P2PDIST_KEY=V",
                    help="environment override for the p2pdist tracker only (after --env; repeatable)")
    ap.add_argument("--timeout", type=float, help="per-system deadline in seconds (default: from T_min)")
    ap.add_argument("--json", action="store_true", help="print one JSON object keyed by system on stdout")
    ap.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md, lab-results/ or the plot")
    ap.add_argument("--bt-utp", action="store_true",
                    help="BitTorrent with uTP as well as TCP (libtorrent's default). Off by default: on these "
                         "links libtorrent's uTP runs 4-10 x T_min (~1450-byte datagrams in a bulk queue sized "
                         "for 9000-byte frames drop ~5%%, and per-packet work on 2 cores); see RESULTS.md")
    ap.add_argument("--bt-tcp-only", action="store_true", help="the default; kept so recorded commands still run")
    ap.add_argument("--bt-piece", type=parse_size, help="BitTorrent piece size (default: p2pdist's chunk size for --size)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other systems of an earlier recorded run with the same hosts/size/rate/tag")
    ap.add_argument("--tag", default="", help="label for this run in RESULTS.md (e.g. a tuning variant)")
    ap.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--keep-logs", action="store_true", help="copy process logs to bench/lab-logs/ before cleanup")
    ap.add_argument("--src", metavar="DIR", help="run p2pdist from this source tree (PYTHONPATH=DIR, "
                    "e.g. a `git archive HEAD p2pdist | tar -x -C DIR` snapshot) instead of the working tree")
    ap.add_argument("--cleanup", action="store_true", help="only remove leftovers of earlier runs, then exit")
    ap.add_argument("--prefix", default=PREFIX, help=f"name prefix of the namespaces and work dirs (default {PREFIX})")
    return ap


def main(argv: list[str] | None = None) -> int:
    global PREFIX, TMP_PREFIX, TBF_LATENCY, MTU, LINK
    args = build_parser().parse_args(argv)
    if args.src:
        source_id(args.src)  # fails now, not after the run, if --src is not what runs
    TBF_LATENCY, MTU, LINK = args.tbf_latency, args.mtu, args.link
    if not re.fullmatch(r"[a-z][a-z0-9]{1,11}-", args.prefix):
        print("lab: --prefix wants 2-12 lowercase letters/digits and a trailing '-'", file=sys.stderr)
        return 2
    PREFIX = TMP_PREFIX = args.prefix
    if args.cleanup:
        cleanup_leftovers()
        return 0
    why = ns_available()
    if why:
        print(f"lab: cannot run: {why}", file=sys.stderr)
        return 2
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or not systems:
        print(f"lab: unknown systems {bad}; choose from {','.join(SYSTEMS)}", file=sys.stderr)
        return 2
    if lab_namespaces():
        print("lab: namespaces of an earlier run exist (another run, or run --cleanup)", file=sys.stderr)
        return 2
    for kv in args.env + args.tracker_env:
        if "=" not in kv or not kv.startswith("P2PDIST_"):
            print(f"lab: --env wants P2PDIST_KEY=VALUE, got {kv!r}", file=sys.stderr)
            return 2

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    seed_rate = args.seed_rate or args.rate
    lab = Lab(args.hosts, args.rate, seed_rate, args.slow, args.slow_rate)
    work = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    (work / "logs").mkdir()
    runner: Runner | None = None
    try:
        log(f"blob: {args.size} bytes")
        blob_dir = work / "blob"
        blob_dir.mkdir()
        digest = make_blob(blob_dir / "blob", args.size)
        log(f"building {args.hosts} hosts + origin + tracker at {fmt_rate(args.rate)} (seed {fmt_rate(seed_rate)})")
        lab.build()
        for h in lab.all_hosts:
            for kv in args.sysctl:
                sh("ip", "netns", "exec", h.name, "sysctl", "-qw", kv)
        runner = Runner(args, lab, work, blob_dir / "blob", digest)
        runner.sampler.start()
        runner.start_origin()
        log(f"T_min = {runner.t_min:.2f} s")
        summary: dict[str, dict[str, Any]] = {}
        analysis: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        for system in systems:
            log(f"--- {system}")
            if system.startswith("p2pdist-"):
                res = runner.run_p2pdist(system.split("-", 1)[1])
                seed_host = "tracker"
            elif system == "direct":
                res = runner.run_direct()
                seed_host = "origin"
            else:
                res = runner.run_bittorrent()
                seed_host = "origin"
            summary[system] = summarize(res, runner.t_min, args.size, seed_rate, seed_host)
            analysis[system] = analyse_timeline(res, lab, runner.t_min)
            raw[system] = {"timeline": [(round(t, 3), {k: v for k, v in d.items() if k.startswith("ps-")})
                                        for t, d in res.timeline],
                           "progress": res.progress}
            if args.keep_logs:
                (work / "logs" / f"timeline-{system}.json").write_text(json.dumps(raw[system]))
            s = summary[system]
            log(f"{system}: first {s['t_first']} median {s['t_median']} last {s['t_last']} "
                f"(T_min {s['t_min']}), origin/F {s['origin_over_blob']}, verified {s['verified']}"
                + (f"; {'; '.join(res.notes)}" if res.notes else ""))
            time.sleep(1.0)
        print_table(summary)
        if args.json:
            print(json.dumps(summary, indent=1))
        if not args.no_record:
            when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            cmd = "python bench/lab.py " + shlex.join(argv if argv is not None else sys.argv[1:])
            slow = f"-slow{args.slow}" if args.slow else ""
            tag = f"-{args.tag}" if args.tag else ""
            rate = "" if args.rate == parse_rate("100mbit") else f"-{fmt_rate(args.rate)}"
            png = ROOT / "bench" / f"lab-n{args.hosts}{rate}{slow}{tag}.png"
            title = f"N={args.hosts}, {fmt_size(args.size)}, {fmt_rate(args.rate)}" + (f" [{args.tag}]" if args.tag else "")
            if args.merge:
                old = RUNS_DIR / f"n{args.hosts}-{fmt_size(args.size)}-{fmt_rate(args.rate)}{slow}{tag}.json"
                with contextlib.suppress(ValueError, OSError):
                    for name, s in json.loads(old.read_text()).get("systems", {}).items():
                        summary.setdefault(name, s)
            plotted = plot(summary, runner.t_min, png, title)
            run = {"when": when, "command": cmd, "hosts": args.hosts, "size": args.size, "rate": args.rate,
                   "seed_rate": seed_rate, "slow": args.slow, "slow_rate": args.slow_rate, "tag": args.tag,
                   "env": " ".join(args.env + [f"tracker:{kv}" for kv in args.tracker_env]), "tbf_latency": args.tbf_latency, "mtu": args.mtu, "sysctl": args.sysctl, "link": args.link, "src": source_id(args.src), "t_min": runner.t_min, "systems": summary, "analysis": analysis,
                   "plot": png.name if plotted else None, "nproc": os.cpu_count(),
                   "merge": args.merge, "rerun": systems}
            path = record(run)
            (path.with_suffix(".timeline.json")).write_text(json.dumps(raw))
            log(f"recorded {path.relative_to(ROOT)} and bench/RESULTS.md" + (f", plot {png.relative_to(ROOT)}" if plotted else ""))
        ok = all(s["verified"] for s in summary.values())
        return 0 if ok else 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if runner is not None:
                runner.sampler.stop()
                if args.keep_logs:
                    dest = ROOT / "bench" / "lab-logs"
                    shutil.rmtree(dest, ignore_errors=True)
                    shutil.copytree(work / "logs", dest)
                runner.procs.stop_all()
            lab.destroy()
            shutil.rmtree(work, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
