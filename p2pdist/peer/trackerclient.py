"""Client of the tracker API, with fail-over across the configured trackers.

Every call tries the trackers in order, starting with the last one that answered; a
tracker that cannot be reached (or answers 5xx) makes it try the next. When none answers
the call raises :class:`Unavailable`. A tracker's 4xx is the caller's problem and is
raised as the error it names (``TaskUnknown``, ``BodyInvalid`` …).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from p2pdist.core.errors import P2PError, Unavailable, error_from_code
from p2pdist.core.task import TaskSpec
from p2pdist.wire.tracker import Announce, AnnounceReply, Heartbeat, MapProgress, encode_register

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
                 headers: dict[str, str] | None = None):
        if not urls:
            raise ValueError("TrackerClient needs at least one tracker URL")
        self.urls = [u.rstrip("/") for u in urls]
        self._preferred = 0
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT, headers=headers)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, *, json: Any = None,
                    params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        last: Exception | None = None
        n = len(self.urls)
        for k in range(n):
            i = (self._preferred + k) % n
            url = self.urls[i] + path
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
        return await self._call("POST", "/api/v1/tasks", json=encode_register(spec))

    async def map_progress(self, task_id: str, known: int, wait: float) -> MapProgress:
        body = await self._call("GET", f"/api/v1/tasks/{task_id}/map",
                                params={"known": known, "wait": int(wait)}, timeout=wait + 10)
        return MapProgress.from_dict(body)

    async def announce(self, ann: Announce) -> AnnounceReply:
        return AnnounceReply.from_dict(await self._call("POST", "/api/v1/announce", json=ann.to_dict()))

    async def heartbeat(self, hb: Heartbeat) -> None:
        await self._call("POST", "/api/v1/heartbeat", json=hb.to_dict())

    async def status(self) -> dict[str, Any]:
        return await self._call("GET", "/api/v1/status")
