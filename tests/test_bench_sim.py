"""The simulator (bench/sim.py) runs as documented: every host finishes, no faster than
the Kumar-Ross bound, and its diagnostics say something that could be wrong.

Small runs only (8 hosts, 64 MiB: about a second each); the figures themselves are
benchmarks and live in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "bench" / "sim.py"


def _sim(*flags: str) -> dict:
    out = subprocess.run([sys.executable, str(SIM), "--hosts", "8", "--size", "64MiB", "--seeds", "1",
                          "--json", "--stats", *flags], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)["runs"][0]


def test_every_host_finishes_no_faster_than_the_bound() -> None:
    r = _sim()
    assert r["finished"] == r["hosts"] == 8
    assert r["t_min"] <= r["t_first"] <= r["t_median"] <= r["t_last"]
    assert r["seed_sent_over_F"] >= 1.0  # every chunk leaves the seed at least once
    idle = r["stats"]["idle_fetch_slots"]
    assert set(idle) == {"no_neighbour_holds", "holders_busy", "busy_backoff", "per_source_cap",
                         "stale_have", "other"}
    assert all(v >= 0 for v in idle.values())
    assert 0 < sum(idle.values()) < 4  # per peer, of max_in_flight = 4 slots


def test_instant_haves_leaves_no_slot_idle_for_want_of_news() -> None:
    """With the announce lag a peer often has a free slot only because it has not heard
    that a free neighbour holds what it lacks; the oracle removes exactly that reason."""
    lagged = _sim()["stats"]["idle_fetch_slots"]["stale_have"]
    instant = _sim("--instant-haves")["stats"]["idle_fetch_slots"]["stale_have"]
    assert lagged > 0.02
    assert instant < lagged / 5


def test_a_saturated_tracker_spaces_the_announces_and_polls_stand_in() -> None:
    """``--tracker-rate R``: R announces a second among the unfinished peers, so 8 peers
    at R = 8 announce about once a second, not every 0.1-0.25 s; ``--have-poll`` then
    lets them learn their neighbours' chunks between announces."""
    free = _sim()
    paced = _sim("--tracker-rate", "8")
    polled = _sim("--tracker-rate", "8", "--have-poll", "0.25")
    assert free["stats"]["per_peer"]["announces"] > 3 * paced["stats"]["per_peer"]["announces"]
    assert paced["stats"]["per_peer"]["announces"] <= paced["t_last"] + 2
    stale = [r["stats"]["idle_fetch_slots"]["stale_have"] for r in (paced, polled)]
    assert stale[1] < stale[0] / 2
