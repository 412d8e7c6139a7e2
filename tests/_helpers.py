"""Shared helpers of the cluster, fault and bad-input tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import blake3

from p2pdist.peer.download import Download
from p2pdist.peer.service import Peer

MiB = 1024 * 1024


async def assert_copy(d: Download, blob: bytes, out_dir: Path) -> None:
    """The download finished, and its store assembles exactly ``blob``, sha256-checked."""
    cmap = await d.wait()
    assert d.summary()["state"] == "complete", d.summary()
    out = out_dir / f"out-{d.env.peer_id}-{d.task_id}"
    await d.env.store.assemble(cmap, out, verify_sha256=True)
    assert out.read_bytes() == blob
    out.unlink()


def rehash_store(root: Path) -> int:
    """Re-hash every chunk file under ``root/chunks``; assert each matches its name.
    Returns how many files were checked."""
    n = 0
    for f in (root / "chunks").glob("*/*"):
        assert blake3.blake3(f.read_bytes()).hexdigest() == f.name, f"unverified bytes stored as {f}"
        assert f.parent.name == f.name[:2]
        n += 1
    return n


def bytes_served(peer: Peer) -> float:
    v = peer.metrics.registry.get_sample_value("p2pdist_bytes_served_total")
    return v or 0.0
