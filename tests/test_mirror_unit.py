"""Mirror bookkeeping that needs no registry: grants expire and stay bounded."""

from __future__ import annotations

from p2pdist.backend.registry import Credentials, RegistryClient
from p2pdist.net.observe import Metrics
from p2pdist.proxy import mirror as mirror_mod
from p2pdist.proxy.mirror import Mirror


def make(clock):
    return Mirror({"docker.io": RegistryClient("http://127.0.0.1:9")}, lambda spec: None,
                  Metrics("peer"), auth_ttl=30.0, clock=clock)


def test_grants_expire_after_the_ttl():
    now = [100.0]
    m = make(lambda: now[0])
    alice = Credentials(authorization="Bearer a")
    m._grant(alice, "docker.io", "private/app")
    assert m._may_read(alice, "docker.io", "private/app")
    assert not m._may_read(Credentials(authorization="Bearer b"), "docker.io", "private/app")
    assert not m._may_read(alice, "docker.io", "private/other")
    now[0] += 31
    assert not m._may_read(alice, "docker.io", "private/app")


def test_grants_stay_bounded_with_a_new_token_per_request(monkeypatch):
    monkeypatch.setattr(mirror_mod, "MAX_GRANTS", 100)
    now = [0.0]
    m = make(lambda: now[0])
    for i in range(1000):
        now[0] += 0.001
        m._grant(Credentials(authorization=f"Bearer {i}"), "docker.io", "r")
    assert len(m._authorized) <= 100
    assert m._may_read(Credentials(authorization="Bearer 999"), "docker.io", "r")
