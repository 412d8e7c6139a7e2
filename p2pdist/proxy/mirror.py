"""The registry pull-through mirror at the root of a peer's HTTP port (``/v2/…``).

dockerd (``registry-mirrors``), containerd (``hosts.toml``, which adds ``?ns=<registry>``)
and skopeo (``registries.conf``) pull through it unchanged:

- ``GET /v2/`` answers as the upstream does for this client (200, or 401 with the
  upstream's challenge, so the client knows to authenticate).
- Manifests (HEAD/GET) go upstream with every ``Accept`` value and the client's own
  ``Authorization``; the upstream's status, ``Content-Type`` and ``Docker-Content-Digest``
  come back. A manifest asked for by digest is immutable and kept; a tag is resolved
  upstream every time (or within ``tag_cache_ttl``).
- Blobs come through the swarm (a task per digest), streamed in order as chunks land,
  ``Range`` supported.

Authorization on every cache hit (invariant 7): before anything held here is served, the
upstream confirms that *this client* may read that repository (a HEAD with the client's
credentials), remembered per (credentials, upstream, repository) for ``auth_cache_ttl``.
The mirror never answers a challenge with credentials of its own: an anonymous client
asking for a private layer gets the upstream's 401, even when the layer sits on this node.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from p2pdist.backend.registry import (
    ANONYMOUS,
    MANIFEST_TYPES,
    Credentials,
    RegistryClient,
    parse_reference,
    parse_repo,
)
from p2pdist.core.digest import Digest
from p2pdist.core.errors import BlobUnknown, NotFound, OriginError
from p2pdist.core.task import TaskSpec
from p2pdist.net.http import FileBody, Request, Response, Router, parse_range
from p2pdist.net.observe import Metrics

API_VERSION = ("docker-distribution-api-version", "registry/2.0")
MAX_CACHED_MANIFEST = 4 * 1024 * 1024
MANIFEST_CACHE = 512
MAX_GRANTS = 10_000  # remembered (credentials, repository) grants; bounded memory


class Mirror:
    def __init__(self, upstreams: Mapping[str, RegistryClient], start_download: Callable[[TaskSpec], Any],
                 metrics: Metrics, *, auth_ttl: float = 30.0, tag_ttl: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        if not upstreams:
            raise ValueError("a mirror needs at least one upstream")
        self.upstreams = dict(upstreams)
        self.default = next(iter(self.upstreams))
        self.start_download = start_download
        self.metrics = metrics
        self.auth_ttl = auth_ttl
        self.tag_ttl = tag_ttl
        self.clock = clock
        self._authorized: dict[tuple[str, str, str], float] = {}
        self._blob_sizes: dict[tuple[str, str, str, str], int] = {}
        self._manifests: OrderedDict[str, tuple[str | None, bytes]] = OrderedDict()
        self._tags: dict[tuple[str, str, str], tuple[str, float]] = {}

    # -- helpers -----------------------------------------------------------------------

    def _upstream(self, request: Request) -> tuple[str, RegistryClient]:
        ns = request.arg("ns") or self.default
        client = self.upstreams.get(ns)
        if client is None:
            raise NotFound(f"this mirror has no upstream for registry {ns[:100]!r}", code="NAME_UNKNOWN")
        return ns, client

    @staticmethod
    def _creds(request: Request) -> Credentials:
        auth = request.header("authorization")
        return Credentials(authorization=auth) if auth else ANONYMOUS

    def _may_read(self, creds: Credentials, ns: str, repo: str) -> bool:
        until = self._authorized.get((creds.identity, ns, repo))
        return until is not None and until > self.clock()

    def _grant(self, creds: Credentials, ns: str, repo: str) -> None:
        if self.auth_ttl > 0:
            now = self.clock()
            if len(self._authorized) >= MAX_GRANTS:
                # every bearer token is its own identity: forget the expired ones, then the oldest
                self._authorized = {k: t for k, t in self._authorized.items() if t > now}
                while len(self._authorized) >= MAX_GRANTS:
                    self._authorized.pop(next(iter(self._authorized)))
                live = {(i, n, r) for i, n, r in self._authorized}
                self._blob_sizes = {k: v for k, v in self._blob_sizes.items() if k[:3] in live}
            self._authorized[(creds.identity, ns, repo)] = now + self.auth_ttl

    def _count(self, kind: str, status: int) -> None:
        self.metrics.mirror_requests.labels(kind, str(status)).inc()

    @staticmethod
    def _relay(r: httpx.Response) -> Response:
        """An upstream error (401 with its challenge, 404 …) passed to the client as is."""
        headers = [API_VERSION, ("content-type", r.headers.get("content-type", "application/json"))]
        challenge = r.headers.get("www-authenticate")
        if challenge:
            headers.append(("www-authenticate", challenge))
        return Response(r.status_code, headers, r.content)

    # -- routes ------------------------------------------------------------------------

    def add_routes(self, router: Router) -> None:
        router.route("GET", "/v2/", self.ping)
        router.route(["GET", "HEAD"], "/v2/{name:.+}/manifests/{ref}", self.manifest)
        router.route(["GET", "HEAD"], "/v2/{name:.+}/blobs/{digest}", self.blob)

    async def ping(self, request: Request) -> Response:
        ns, up = self._upstream(request)
        r = await up.request("GET", "/v2/", creds=self._creds(request), passthrough=True)
        self._count("ping", r.status_code)
        if r.status_code >= 400:
            return self._relay(r)
        return Response.json({}, 200, [API_VERSION])

    async def manifest(self, request: Request) -> Response:
        repo = parse_repo(request.params["name"])
        ref = parse_reference(request.params["ref"])
        ns, up = self._upstream(request)
        creds = self._creds(request)
        key = str(ref) if isinstance(ref, Digest) else None
        if key is None and self.tag_ttl > 0:
            hit = self._tags.get((ns, repo, ref))  # type: ignore[arg-type]
            if hit and hit[1] > self.clock():
                key = hit[0]
        cached = self._manifests.get(key) if key else None
        if cached is not None and self._may_read(creds, ns, repo):
            self._manifests.move_to_end(key)  # type: ignore[arg-type]
            self._count("manifest_cached", 200)
            return self._manifest_response(request, cached[0], key, cached[1])  # type: ignore[arg-type]
        accept = request.header_values("accept") or list(MANIFEST_TYPES)
        r = await up.manifest(repo, str(ref), accept=accept, creds=creds, method=request.method, passthrough=True)
        self._count("manifest", r.status)
        if r.status >= 400:
            headers = [API_VERSION, ("content-type", r.media_type or "application/json")]
            if r.challenge:
                headers.append(("www-authenticate", r.challenge))
            return Response(r.status, headers, r.body if request.method == "GET" else b"")
        self._grant(creds, ns, repo)
        digest = r.digest
        if request.method == "GET" and digest and len(r.body) <= MAX_CACHED_MANIFEST:
            self._manifests[digest] = (r.media_type, r.body)
            if len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)
            if not isinstance(ref, Digest) and self.tag_ttl > 0:
                self._tags[(ns, repo, ref)] = (digest, self.clock() + self.tag_ttl)
        if request.method == "HEAD":
            headers = [API_VERSION, ("content-type", r.media_type or "application/octet-stream")]
            if digest:
                headers.append(("docker-content-digest", digest))
            return Response(200, headers, b"", content_length=r.length)
        return self._manifest_response(request, r.media_type, digest, r.body)

    @staticmethod
    def _manifest_response(request: Request, media_type: str | None, digest: str | None, body: bytes) -> Response:
        headers = [API_VERSION, ("content-type", media_type or "application/octet-stream")]
        if digest:
            headers.append(("docker-content-digest", digest))
        if request.method == "HEAD":
            return Response(200, headers, b"", content_length=len(body))
        return Response(200, headers, body)

    async def _authorize_blob(self, request: Request, ns: str, up: RegistryClient, repo: str,
                              digest: Digest, creds: Credentials) -> int | Response:
        """The blob's size if this client may read it; else the upstream's refusal."""
        size = self._blob_sizes.get((creds.identity, ns, repo, str(digest)))
        if size is not None and self._may_read(creds, ns, repo):
            return size
        r = await up.head_blob(repo, digest, creds=creds, passthrough=True)
        if r.status_code >= 400:
            self._count("blob", r.status_code)
            if r.status_code == 404:
                raise BlobUnknown(f"blob {digest} is not in {repo}")
            return self._relay(r)
        length = r.headers.get("content-length")
        if length is None or not length.isdigit():
            raise OriginError(f"registry sent no size for blob {digest}")
        self._grant(creds, ns, repo)
        self._blob_sizes[(creds.identity, ns, repo, str(digest))] = int(length)
        return int(length)

    async def blob(self, request: Request) -> Response:
        repo = parse_repo(request.params["name"])
        digest = Digest.parse(request.params["digest"])
        ns, up = self._upstream(request)
        creds = self._creds(request)
        size = await self._authorize_blob(request, ns, up, repo, digest, creds)
        if isinstance(size, Response):
            return size
        headers = [API_VERSION, ("content-type", "application/octet-stream"),
                   ("docker-content-digest", str(digest)), ("accept-ranges", "bytes")]
        span = parse_range(request.header("range"), size) if size else None
        offset, length = span if span else (0, size)
        status = 206 if span else 200
        if span:
            headers.append(("content-range", f"bytes {offset}-{offset + length - 1}/{size}"))
        if request.method == "HEAD":
            self._count("blob_head", status)
            return Response(status, headers, b"", content_length=length)
        auth = (("authorization", creds.authorization),) if creds.authorization else ()
        download = self.start_download(TaskSpec(up.blob_url(repo, digest), digest, auth))
        self._count("blob", status)
        return Response(status, headers, self._counted(download.iter_files(offset, length)),
                        content_length=length)

    async def _counted(self, spans: AsyncIterator[FileBody]) -> AsyncIterator[FileBody]:
        async for span in spans:
            self.metrics.mirror_blob_bytes.inc(span.count)
            yield span
