"""Credentials never leak: not into logs, metrics, chunk maps, status pages or errors."""

from __future__ import annotations

import io
import json
import logging

import httpx
import trio

from p2pdist.cli.logs import JsonFormatter
from p2pdist.core.task import TaskSpec
from p2pdist.testing import StaticOrigin, make_blob, sha256_digest, start_cluster

SECRET = "s3cr3t-token-DO-NOT-LEAK-81723"


async def test_planted_credentials_appear_nowhere(tmp_path, nursery):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        blob = make_blob(3 * 4 * 1024 * 1024 + 3, seed=21)
        origin = StaticOrigin({"b": blob})
        await nursery.start(origin.serve)
        c = await start_cluster(nursery, tmp_path, peers=2, origin=origin,
                                peer_overrides={"heartbeat_interval": 0.1})
        headers = (("authorization", f"Bearer {SECRET}"), ("x-registry-key", SECRET))
        good = TaskSpec(origin.url("b"), sha256_digest(blob), headers)
        bad = TaskSpec(origin.url("missing"), None, headers)  # fails at the origin: error paths log too
        with trio.fail_after(30):
            for p in c.peers:
                await p.start_download(good).wait()
            d = c.peers[0].start_download(bad)
            await d.finished.wait()
            assert d.error is not None
        texts = [stream.getvalue(), repr(good), repr(bad)]
        async with httpx.AsyncClient() as client:
            for base in [c.tracker_url] + [f"http://{p.advertise}" for p in c.peers]:
                for path in ("/metrics", "/api/v1/status"):
                    texts.append((await client.get(base + path)).text)
            for p in c.peers:
                texts.append((await client.get(f"http://{p.advertise}/api/v1/tasks/{good.task_id}")).text)
                texts.append((await client.get(f"http://{p.advertise}/maps/{good.task_id}")).text)
        texts += [json.dumps(c.tracker.status())]
        texts += [f.read_text() for f in tmp_path.rglob("*.json")]
        assert len(stream.getvalue()) > 0  # the services did log
        for t in texts:
            assert SECRET not in t
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    nursery.cancel_scope.cancel()


def test_httpx_request_lines_only_at_debug() -> None:
    """httpx logs every request at info (a peer's map polls and announces): quiet unless
    the operator asks for debug."""
    import logging

    from p2pdist.cli.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info")
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert logging.getLogger("p2pdist.peer").isEnabledFor(logging.INFO)
        setup_logging("debug")
        assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(logging.NOTSET)
