"""Smoke test of the performance lab (bench/lab.py): a small real run, correctness only.

N = 4 hosts in network namespaces with 200 Mbit tbf caps, a 32 MiB blob, p2pdist swarm and
the direct baseline. Asserts every host ends with the verified blob and the origin sends at
most 1.05 x the blob for p2pdist; never asserts timings (CI machines are noisy). Skipped
only without root or without ``ip netns`` (and under CI=true even that skip fails).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "bench" / "lab.py"
MiB = 1024 * 1024

pytestmark = [pytest.mark.real, pytest.mark.slow]


def _load_lab():
    spec = importlib.util.spec_from_file_location("bench_lab", LAB)
    assert spec is not None and spec.loader is not None
    mod = sys.modules.get("bench_lab")
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_lab"] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return mod


def test_lab_kumar_ross_bound() -> None:
    lab = _load_lab()
    hosts = lab.Lab(8, 100_000_000, 100_000_000, 0, 20_000_000)
    f = 256 * MiB
    # homogeneous: the seed's upload (= every host's download) binds
    assert lab.kumar_ross(f, hosts) == pytest.approx(f * 8 / 100e6)
    # many slow uploaders: the aggregate upload term binds
    slow = lab.Lab(16, 100_000_000, 100_000_000, 16, 20_000_000)
    assert lab.kumar_ross(f, slow) == pytest.approx(16 * f * 8 / (100e6 + 16 * 20e6))


def test_lab_smoke(tmp_path: Path) -> None:
    lab = _load_lab()
    why = lab.ns_available()
    if why is not None:
        pytest.skip(f"performance lab needs root and ip netns: {why}")
    prefix = f"p2pt{os.getpid() % 100000}-"
    cmd = [sys.executable, str(LAB), "--hosts", "4", "--size", "32MiB", "--rate", "200mbit",
           "--systems", "p2pdist-swarm,direct", "--json", "--no-record", "--prefix", prefix,
           "--timeout", "120"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT)
    finally:
        subprocess.run([sys.executable, str(LAB), "--cleanup", "--prefix", prefix], capture_output=True, timeout=60)
    assert r.returncode in (0, 1), f"lab failed ({r.returncode}):\n{r.stderr[-4000:]}"
    out = json.loads(r.stdout)
    size = 32 * MiB
    assert set(out) == {"p2pdist-swarm", "direct"}
    for name, res in out.items():
        assert res["blob_bytes"] == size
        assert res["hosts_finished"] == 4, f"{name}: {res['notes']}\n{r.stderr[-3000:]}"
        assert res["verified"] is True, f"{name} not verified: {res['notes']}\n{r.stderr[-3000:]}"
        assert all(t is not None and t > 0 for t in res["finish"])
    swarm = out["p2pdist-swarm"]
    assert 0 < swarm["origin_bytes"] <= 1.05 * size, swarm
    # the direct baseline really fetched one copy per host from the origin
    assert out["direct"]["origin_bytes"] == 4 * size
    # nothing left behind
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in left
