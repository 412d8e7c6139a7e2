from pathlib import Path

from p2pdist.core.config import PeerConfig, TrackerConfig, load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_example_config_is_valid_for_both_roles():
    path = str(DEPLOY / "standalone" / "p2pdist.toml")
    tracker = load_config(TrackerConfig, path=path)
    peer = load_config(PeerConfig, path=path)
    assert tracker.topology == "swarm"
    assert peer.capacity == 20 * 1024**3
    assert peer.trackers == ("http://tracker.example.internal:7400",)


def test_systemd_units_run_the_documented_commands():
    for role in ("peer", "tracker"):
        unit = (DEPLOY / "standalone" / f"p2pdist-{role}.service").read_text()
        assert f"p2pdist {role} --config /etc/p2pdist/p2pdist.toml" in unit
