"""Client of the tracker API, with fail-over across several trackers (tracker HA).

Each task belongs to one tracker, chosen by rendezvous hashing of the task id over the
tracker list: every peer computes the same owner with no shared store, and when the owner
dies each task moves to its next tracker in the same order (the others keep theirs). Task
calls (register, map, announce) try the trackers in that order; calls about no task
(heartbeat, status) go to every tracker or the first that answers. A tracker that cannot
be reached (or answers 5xx) makes a call try the next; when none answers it raises
:class:`Unavailable`. A tracker's 4xx is raised as the error it names (``TaskUnknown`` …).

The list is the configured URLs; a URL whose host is a DNS name with several addresses
(the headless Service of a tracker Deployment) stands for all of them, re-resolved every
``DNS_TTL`` seconds.

An ``https://`` tracker is verified with ``tls`` (the cluster's mTLS client context: it
presents this peer's certificate and checks the tracker's chain against the cluster CA,
not its host name, so an expanded address verifies as its DNS name does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from p2pdist.core.errors import P2PError, Unavailable, error_from_code
from p2pdist.core.task import TaskSpec
from p2pdist.wire.tracker import (
    Announce,
    AnnounceReply,
    Heartbeat,
    MapProgress,
    TaskHave,
    encode_register,
)

DNS_TTL = 30.0
TIMEOUT = httpx.Timeout(connect=3.0, read=40.0, write=10.0, pool=5.0)


def raise_for_error(response: httpx.Response, who: str) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["errors"][0]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        code, message = "", f"HTTP {response.status_code}"
    raise error_from_code(code, f"{who}: {message}", response.status_code)


class TrackerClient:
    def __init__(self, urls: Sequence[str], *, client: httpx.AsyncClient | None = None,
                 headers: dict[str, str] | None = None, resolve: bool = True,
                 tls: ssl.SSLContext | None = None):
        if not urls:
            raise ValueError("TrackerClient needs at least one tracker URL")
        self.configured = [u.rstrip("/") for u in urls]
        self.urls = list(self.configured)
        self._resolve = resolve
        self._resolved_at = float("-inf")
        self._preferred = 0
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT, headers=headers,
                                                   verify=tls if tls is not None else True)

    async def _refresh(self) -> None:
        """Expand DNS names with several addresses into one URL per address."""
        if not self._resolve or trio.current_time() - self._resolved_at < DNS_TTL:
            return
        self._resolved_at = trio.current_time()
        out: list[str] = []
        for url in self.configured:
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                ipaddress.ip_address(host)
                out.append(url)
                continue
            except ValueError:
                pass
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                out.append(url)
                continue
            addrs = sorted({i[4][0] for i in infos if i[0] == socket.AF_INET})
            if len(addrs) <= 1:
                out.append(url)
            else:
                out += [urlunsplit((parts.scheme, f"{a}:{port}", parts.path, "", "")) for a in addrs]
        if out != self.urls:
            self.urls = out
            self._preferred = 0

    def owners(self, task_id: str) -> list[str]:
        """The trackers in rendezvous order for ``task_id``: the owner first."""
        return sorted(self.urls, key=lambda u: hashlib.blake2b(f"{task_id}|{u}".encode(), digest_size=8).digest(),
                      reverse=True)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, *, json: Any = None, key: str | None = None,
                    params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Try the trackers in ``key``'s rendezvous order (no key: the last that answered
        first) until one answers."""
        await self._refresh()
        last: Exception | None = None
        n = len(self.urls)
        order = self.owners(key) if key is not None else [
            self.urls[(self._preferred + k) % n] for k in range(n)]
        for base in order:
            i = self.urls.index(base)
            url = base + path
            try:
                kwargs: dict[str, Any] = {"json": json, "params": params}
                if timeout is not None:
                    kwargs["timeout"] = httpx.Timeout(connect=3.0, read=timeout, write=10.0, pool=5.0)
                response = await self._client.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                last = exc
                continue
            if response.status_code >= 500 and response.status_code != 502:
                last = Unavailable(f"tracker {self.urls[i]} answered HTTP {response.status_code}")
                continue
            self._preferred = i
            raise_for_error(response, f"tracker {self.urls[i]}")
            try:
                return response.json()
            except ValueError as exc:
                raise P2PError(f"tracker {self.urls[i]} sent invalid JSON") from exc
        raise Unavailable(f"no tracker reachable ({', '.join(self.urls)}): {last}")

    async def register(self, spec: TaskSpec) -> dict[str, Any]:
        return await self._call("POST", "/api/v1/tasks", json=encode_register(spec), key=spec.task_id)

    async def map_progress(self, task_id: str, known: int, wait: float) -> MapProgress:
        body = await self._call("GET", f"/api/v1/tasks/{task_id}/map", key=task_id,
                                params={"known": known, "wait": int(wait)}, timeout=wait + 10)
        return MapProgress.from_dict(body)

    async def announce(self, ann: Announce) -> AnnounceReply:
        """Announce each task to its owner (one request per owner, batched); a peer with no
        task announces to one tracker, so the fleet view knows it."""
        await self._refresh()
        groups: dict[str, list[TaskHave]] = {}
        for t in ann.tasks:
            groups.setdefault(self.owners(t.task_id)[0], []).append(t)
        if not groups:
            return AnnounceReply.from_dict(await self._call("POST", "/api/v1/announce", json=ann.to_dict()))
        merged = AnnounceReply(float("inf"), {})
        for tasks in groups.values():
            part = dataclasses.replace(ann, tasks=tuple(tasks))
            # keyed by its first task: a dead owner moves the whole group to the next tracker
            reply = AnnounceReply.from_dict(await self._call(
                "POST", "/api/v1/announce", json=part.to_dict(), key=tasks[0].task_id))
            merged = AnnounceReply(min(merged.interval, reply.interval), {**merged.neighbours, **reply.neighbours})
        return merged

    async def heartbeat(self, hb: Heartbeat) -> None:
        """To every tracker (each keeps its own fleet view); fails only if none took it."""
        await self._refresh()
        reached = 0
        last: Exception | None = None
        for base in self.urls:
            try:
                r = await self._client.post(base + "/api/v1/heartbeat", json=hb.to_dict())
                raise_for_error(r, f"tracker {base}")
                reached += 1
            except (httpx.HTTPError, P2PError) as exc:
                last = exc
        if not reached:
            raise Unavailable(f"no tracker took the heartbeat: {last}")

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/api/v1/status")
