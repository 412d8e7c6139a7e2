"""A client of a peer's local API (``/api/v1/fetch``, ``/api/v1/tasks``), used by the CLI
(``get``, ``pull``, ``preheat``) to drive a running peer daemon, plus the defaults for a
peer run in-process when no daemon answers.

Errors: a peer's OCI-style error body comes back as the same :class:`P2PError` class;
an unreachable peer is :class:`Unavailable`; a transfer the peer cut is the download's own
error when the peer reports one.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from p2pdist.core.config import PeerConfig
from p2pdist.core.errors import IntegrityError, P2PError, Unavailable, error_from_code
from p2pdist.core.task import TaskSpec
from p2pdist.core.tls import ClusterTls, load_cluster_tls
from p2pdist.net.auth import token_headers
from p2pdist.peer.trackerclient import raise_for_error
from p2pdist.wire.tracker import encode_register

DEFAULT_DAEMON = "http://127.0.0.1:7401"
TIMEOUT = httpx.Timeout(10.0, read=None)


def daemon_alive(url: str, timeout: float = 0.5) -> bool:
    """Whether a peer daemon answers ``/healthz`` at ``url`` (blocking; for CLI start-up)."""
    try:
        return httpx.get(f"{url.rstrip('/')}/healthz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def default_data_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "p2pdist")


def cluster_secret(env: Mapping[str, str] | None = None) -> str | None:
    """The cluster's shared secret for a CLI command talking to trackers and peers
    (``P2PDIST_CLUSTER_SECRET``, as the daemons read it)."""
    return (os.environ if env is None else env).get("P2PDIST_CLUSTER_SECRET") or None


TLS_ENV = {"tls_cert": "P2PDIST_TLS_CERT", "tls_key": "P2PDIST_TLS_KEY", "tls_ca": "P2PDIST_TLS_CA"}


def _tls_paths(env: Mapping[str, str] | None) -> dict[str, str | None]:
    e = os.environ if env is None else env
    return {key: e.get(var) or None for key, var in TLS_ENV.items()}


def cluster_tls(env: Mapping[str, str] | None = None) -> ClusterTls | None:
    """The cluster's mTLS material for a CLI command talking to trackers and peers
    (``P2PDIST_TLS_CERT``/``_KEY``/``_CA``, as the daemons read them); None without it.
    :class:`ConfigError` naming the variable when it is incomplete or unusable."""
    return load_cluster_tls(**{k.removeprefix("tls_"): v for k, v in _tls_paths(env).items()},
                            names={k: f"${v}" for k, v in TLS_ENV.items()})


def component_verify(tls: ClusterTls | None) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for calls to trackers and peers: with mTLS, the client context
    (our certificate presented, theirs checked against the cluster CA); else the default."""
    return tls.client if tls is not None else True


def embedded_peer_config(trackers: tuple[str, ...] | list[str], data_dir: str | None) -> PeerConfig:
    """The config of a peer run inside a CLI command for one job."""
    # with a tracker, others may fetch from us while we download: listen where they can reach us
    listen = "0.0.0.0:0" if trackers else "127.0.0.1:0"
    cluster_tls()  # an unusable $P2PDIST_TLS_* is named as the variable it came from
    cfg = PeerConfig(listen=listen, data_dir=data_dir or default_data_dir(), trackers=tuple(trackers),
                     cluster_secret=cluster_secret(), **_tls_paths(None))
    cfg.validate()
    return cfg


def task_error(summary: Mapping[str, Any]) -> P2PError | None:
    """The error of a failed task, from its summary (``GET /api/v1/tasks/<id>``)."""
    err = summary.get("error")
    if not isinstance(err, dict):
        return None
    return error_from_code(str(err.get("code")), str(err.get("message")), 422)


@dataclass
class BlobStream:
    task_id: str
    size: int | None
    pieces: AsyncIterator[bytes]


class LocalApiClient:
    """One peer's local API at ``base`` (``http://host:port``)."""

    def __init__(self, base: str, *, client: httpx.AsyncClient | None = None):
        self.base = base.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT, headers=token_headers(cluster_secret()),
                                                   verify=component_verify(cluster_tls()))
        self._owns = client is None

    async def aclose(self) -> None:
        if self._owns:
            await self._client.aclose()

    async def start_task(self, spec: TaskSpec) -> dict[str, Any]:
        """``POST /api/v1/tasks``: the peer starts (or joins) the download; its summary."""
        try:
            r = await self._client.post(f"{self.base}/api/v1/tasks", json=encode_register(spec))
        except httpx.HTTPError as exc:
            raise Unavailable(f"peer {self.base} unreachable: {type(exc).__name__}") from exc
        raise_for_error(r, f"peer {self.base}")
        return r.json()  # type: ignore[no-any-return]

    async def task(self, task_id: str) -> dict[str, Any]:
        """``GET /api/v1/tasks/<id>``: a download's summary."""
        try:
            r = await self._client.get(f"{self.base}/api/v1/tasks/{task_id}")
        except httpx.HTTPError as exc:
            raise Unavailable(f"peer {self.base} unreachable: {type(exc).__name__}") from exc
        raise_for_error(r, f"peer {self.base}")
        return r.json()  # type: ignore[no-any-return]

    @asynccontextmanager
    async def fetch(self, spec: TaskSpec) -> AsyncIterator[BlobStream]:
        """``POST /api/v1/fetch``: the blob's bytes, in order, as chunks land. The pieces
        iterator raises the download's error (or :class:`IntegrityError` on a short body)
        if the peer cuts the transfer."""
        try:
            async with self._client.stream("POST", f"{self.base}/api/v1/fetch", json=encode_register(spec)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise_for_error(r, f"peer {self.base}")
                length = r.headers.get("content-length")
                size = int(length) if length and length.isdigit() else None
                task_id = r.headers.get("x-p2pdist-task-id", spec.task_id)
                yield BlobStream(task_id, size, self._pieces(r, task_id, size))
        except httpx.HTTPError as exc:
            raise Unavailable(f"peer {self.base} unreachable: {type(exc).__name__}: {exc}") from exc

    async def _pieces(self, r: httpx.Response, task_id: str, size: int | None) -> AsyncIterator[bytes]:
        n = 0
        try:
            async for piece in r.aiter_raw():
                n += len(piece)
                yield piece
        except httpx.RemoteProtocolError as exc:
            try:
                err = task_error(await self.task(task_id))
            except P2PError:
                err = None
            raise err or Unavailable(f"peer {self.base} cut the transfer: {exc}") from exc
        if size is not None and n != size:
            raise IntegrityError(f"peer {self.base} sent {n} of {size} bytes")
