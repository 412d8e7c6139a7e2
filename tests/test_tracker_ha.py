"""Tracker HA without a shared store: tasks are owned by rendezvous hashing; when a task's
owner dies mid-distribution, peers move to the next tracker and still finish, verified."""

from __future__ import annotations

import trio
from _helpers import assert_copy

from p2pdist.core.config import PeerConfig, TrackerConfig
from p2pdist.core.task import TaskSpec
from p2pdist.peer.trackerclient import TrackerClient
from p2pdist.testing import StaticOrigin, _scoped, make_blob, sha256_digest, start_peer
from p2pdist.tracker import service as tracker_service

MiB = 1 << 20


def test_rendezvous_owner_is_stable_and_moves_only_the_dead_trackers_tasks():
    urls = ["http://10.0.0.1:7400", "http://10.0.0.2:7400", "http://10.0.0.3:7400"]
    client = TrackerClient(urls, resolve=False)
    tasks = [f"{i:064x}" for i in range(300)]
    owner = {t: client.owners(t)[0] for t in tasks}
    assert len(set(owner.values())) == 3  # spread over all trackers
    assert TrackerClient(list(reversed(urls)), resolve=False).owners(tasks[0]) == client.owners(tasks[0])
    survivors = TrackerClient(urls[:2], resolve=False)  # 10.0.0.3 gone
    for t in tasks:
        if owner[t] != urls[2]:
            assert survivors.owners(t)[0] == owner[t]  # nobody else's task moves
        else:
            assert survivors.owners(t)[0] == client.owners(t)[1]  # its tasks go to their next


async def test_owner_killed_mid_distribution_every_peer_finishes(tmp_path, nursery):
    blob = make_blob(16 * 4 * MiB + 11, seed=51)
    origin = StaticOrigin({"b": blob}, piece=1024 * 1024, delay=0.03)  # ~2 s of seeding
    await nursery.start(origin.serve)
    trackers, scopes = [], []
    for i in range(3):
        scope = trio.CancelScope()
        t = await nursery.start(_scoped, scope, tracker_service.serve, TrackerConfig(
            listen="127.0.0.1:0", data_dir=str(tmp_path / f"t{i}")))
        trackers.append(t)
        scopes.append(scope)
    urls = tuple(f"http://{t.advertise}" for t in trackers)
    peers = []
    for i in range(5):
        p, _ = await start_peer(nursery, PeerConfig(
            listen="127.0.0.1:0", data_dir=str(tmp_path / f"p{i}"), trackers=urls, peer_id=f"peer{i}",
            chunk_timeout=2.0))
        peers.append(p)
    spec = TaskSpec(origin.url("b"), sha256_digest(blob))
    owner_url = TrackerClient(urls, resolve=False).owners(spec.task_id)[0]
    owner = urls.index(owner_url)
    with trio.fail_after(60):
        downloads = [p.start_download(spec) for p in peers]
        while not any(len(d.held) >= 3 for d in downloads):
            await trio.sleep(0.01)
        assert not all(d.finished.is_set() for d in downloads), "too late: all done already"
        assert spec.task_id in trackers[owner].tasks
        scopes[owner].cancel()  # the task's owner dies mid-distribution
        for d in downloads:
            await assert_copy(d, blob, tmp_path)
    for d in downloads:
        assert d.summary()["mode"] == "swarm"  # they stayed in the swarm, on the next tracker
    others = [t for i, t in enumerate(trackers) if i != owner]
    assert any(spec.task_id in t.tasks for t in others)
    nursery.cancel_scope.cancel()


async def test_a_dns_name_with_several_addresses_stands_for_every_tracker(monkeypatch):
    """A headless Service's name resolves to one address per tracker pod."""
    import socket

    async def fake_getaddrinfo(host, port, *args, **kwargs):
        assert host == "p2pdist-tracker.p2pdist.svc"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in ("10.1.0.7", "10.1.0.5", "10.1.0.6", "10.1.0.5")]

    monkeypatch.setattr(trio.socket, "getaddrinfo", fake_getaddrinfo)
    client = TrackerClient(["http://p2pdist-tracker.p2pdist.svc:7400", "http://10.9.9.9:7400"])
    await client._refresh()
    assert client.urls == ["http://10.1.0.5:7400", "http://10.1.0.6:7400", "http://10.1.0.7:7400",
                           "http://10.9.9.9:7400"]
    assert client.owners("a" * 64)[0] in client.urls
    await client.aclose()
