"""bench/transfer.py: its nginx/curl half against a real nginx, and its RESULTS.md section."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "transfer.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_transfer", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_transfer"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.real
def test_curl_half_runs_and_cleans_up(tmp_path: Path) -> None:
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) or not shutil.which("curl"):
        pytest.skip("needs nginx (Debian nginx-light) and curl: ./dev test installs them")
    r = subprocess.run([sys.executable, str(BENCH), "--size", "8MiB", "--runs", "2", "--curl-only",
                        "--no-record", "--json", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["size"] == 8 * 2**20
    assert [run["run"] for run in out["runs"]] == [1, 2]
    assert all(run["curl_mbps"] > 0 for run in out["runs"])
    assert out["median"]["curl_mbps"] > 0
    assert list(tmp_path.iterdir()) == []  # its temp dir (blob, nginx config, logs) is gone
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert left == "", f"processes left behind: {left}"


def test_record_replaces_its_own_section_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _load()
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(t, "RESULTS", results)
    res = t.Result(size=2**30, date="today", machine={"nproc": "2"}, command="./dev bench transfer")
    res.runs = [t.Run(run=1, curl_s=1.0, curl_mbps=1000.0, p2p_s=1.25, p2p_mbps=800.0, ratio=0.8,
                      rss_a_mib=50.0, rss_b_mib=60.0, hwm_b_mib=61.0)]
    t.record(t.render(res))
    first = results.read_text()
    assert first.startswith("# Benchmark results")
    assert "| **median** | **1,000** | **800** | **0.80** |" in first
    assert "ratio ≥ 0.6 — **met**" in first
    results.write_text(first + "\n## other benchmark\n\nkept\n")
    res.runs[0].p2p_mbps, res.runs[0].ratio = 500.0, 0.5
    t.record(t.render(res))
    second = results.read_text()
    assert second.count(t.MARK_START) == 1 and "**NOT met**" in second
    assert "## other benchmark\n\nkept" in second


def test_parse_size() -> None:
    t = _load()
    assert t.parse_size("1GiB") == 2**30
    assert t.parse_size("256MiB") == 256 * 2**20
    assert t.parse_size("4096") == 4096
    with pytest.raises(Exception, match="not a size"):
        t.parse_size("lots")
