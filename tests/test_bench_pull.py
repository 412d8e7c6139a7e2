"""bench/pull.py: its whole code path on a small layer, and its RESULTS.md section."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "pull.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_pull", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_pull"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.real
def test_pull_bench_runs_and_cleans_up(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (starts its own dockerd)")
    missing = [b for b in ("docker-registry", "dockerd", "docker", "containerd") if not shutil.which(b)]
    if missing:
        pytest.skip(f"not installed: {missing} (./dev test installs them)")
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    r = subprocess.run([sys.executable, str(BENCH), "--size", "8MiB", "--runs", "1", "--no-record", "--json",
                        "--workdir", str(work), "--cache-dir", str(cache)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["size"] == 8 * 2**20
    [run] = out["runs"]
    for key in ("direct_s", "cold_s", "warm_s", "ttfb_s", "cold_ratio", "warm_ratio"):
        assert run[key] is not None and run[key] > 0, key
    assert run["checks"]["cold"]["registry_layer_gets"] == 1
    assert run["checks"]["cold"]["mirror_blob_requests"] >= 2
    assert run["checks"]["warm"]["registry_blob_gets"] == 0
    assert out["median"]["cold_ratio"] == run["cold_ratio"]
    assert set(out["verdict"]) >= {"cold_ok", "warm_ok", "ttfb_ok"}
    # everything it started is gone: its temp dir, dockerd's dir, every process
    assert list(work.iterdir()) == []
    assert not Path(out["dockerd_root"]).exists()
    for marker in (str(work), out["dockerd_root"]):
        left = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
        assert left == "", f"processes left behind: {left}"
    # the layer is cached for the next run
    assert (cache / "blobs" / out["layer_digest"].split(":", 1)[1]).stat().st_size == out["size"]


def test_record_replaces_its_own_section_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _load()
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- bench:transfer:start -->\nT\n<!-- bench:transfer:end -->\n")
    monkeypatch.setattr(b, "RESULTS", results)
    res = b.Result(size=2**30, date="today", machine={"nproc": "2"}, command="python bench/pull.py")
    res.runs = [b.Run(run=1, order="direct,cold,warm,ttfb", direct_s=4.0, cold_s=4.8, warm_s=4.2,
                      ttfb_s=0.1, cold_ratio=1.2, warm_ratio=1.05)]
    b.record(b.render(res))
    first = results.read_text()
    assert "<!-- bench:transfer:start -->\nT\n<!-- bench:transfer:end -->" in first
    assert "cold ≤ 1.25 × direct — **met**" in first and "TTFB of a cold blob ≤ 0.5 s — **met**" in first
    res.runs[0].cold_ratio = 1.5
    b.record(b.render(res))
    second = results.read_text()
    assert second.count(b.MARK_START) == 1 and "**NOT met** (median 1.50)" in second
    assert "<!-- bench:transfer:start -->\nT\n<!-- bench:transfer:end -->" in second


def test_metric_parser() -> None:
    b = _load()
    text = ('# HELP x\np2pdist_mirror_requests_total{kind="blob",status="200"} 2.0\n'
            'p2pdist_mirror_requests_total{kind="blob",status="206"} 1.0\n'
            'p2pdist_mirror_requests_total{kind="manifest",status="200"} 5.0\n'
            'p2pdist_mirror_requests_created{kind="blob",status="200"} 1.7e9\n')
    assert b.metric(text, "p2pdist_mirror_requests_total", {"kind": "blob"}) == 3.0
    assert b.metric(text, "p2pdist_mirror_requests_total") == 8.0
