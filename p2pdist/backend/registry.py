"""An OCI distribution (registry v2) client for origins.

- Manifests by tag or digest, forwarding every ``Accept`` value the caller gives (dockerd
  sends six separate header lines; folding them into one dict entry gets schema1 back).
- Blobs as plain URLs for tasks: ``blob_spec`` returns the :class:`TaskSpec` (URL plus the
  ``Authorization`` header) that the tracker or a peer streams, Range included.
- Auth: anonymous, Basic, and the bearer-token flow (``WWW-Authenticate: Bearer realm=…``
  → token endpoint with ``scope`` → retry), tokens cached per (realm, service, scope,
  identity) until they expire. Credentials come from a docker ``config.json`` or from
  the caller (:class:`Credentials`). With ``passthrough`` (the mirror), the caller's own
  ``Authorization`` header is forwarded and a challenge is returned to the caller, never
  answered with anyone else's credentials.

Errors: 401/403 → :class:`Unauthorized` carrying the upstream's challenge; 404 →
``MANIFEST_UNKNOWN`` / ``BLOB_UNKNOWN``; anything unreachable → :class:`OriginError`.
Credentials never appear in messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from p2pdist.core.digest import Digest
from p2pdist.core.errors import BlobUnknown, NotFound, OriginError, P2PError, Unauthorized
from p2pdist.core.task import TaskSpec

# distribution/reference's path-component grammar, joined by "/"
REPO_NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)


def parse_repo(name: str) -> str:
    if not isinstance(name, str) or len(name) > 255 or not REPO_NAME.fullmatch(name):
        raise P2PError(f"invalid repository name {str(name)[:100]!r}", code="NAME_INVALID", status=400)
    return name


def parse_reference(ref: str) -> str | Digest:
    """A manifest reference: a tag, or a digest (strictly parsed)."""
    if ":" in ref:
        return Digest.parse(ref)
    if not TAG.fullmatch(ref):
        raise P2PError(f"invalid tag {ref[:100]!r}", code="TAG_INVALID", status=400)
    return ref


@dataclass(frozen=True)
class Credentials:
    """Who asks. ``authorization``: a header to forward as is; else Basic ``username``/
    ``password`` (used for Basic challenges and at token endpoints)."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    authorization: str | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        """A stable, non-reversible id of these credentials (for cache keys, never logs)."""
        raw = f"{self.username}\0{self.password}\0{self.authorization}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def basic(self) -> str | None:
        if self.username is None:
            return None
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return f"Basic {token}"


ANONYMOUS = Credentials()


def credentials_from_docker_config(host: str, path: str | Path | None = None) -> Credentials:
    """Credentials for ``host`` from a docker ``config.json`` (``auths`` entries with
    ``auth`` = base64 user:password). Missing file or entry: anonymous."""
    p = Path(path) if path else Path.home() / ".docker" / "config.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return ANONYMOUS
    auths = doc.get("auths", {}) if isinstance(doc, dict) else {}
    for key in (host, f"http://{host}", f"https://{host}", f"https://{host}/v1/"):
        entry = auths.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
            try:
                user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return Credentials(user, pw)
    return ANONYMOUS


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class ManifestResponse:
    status: int
    media_type: str | None
    digest: str | None
    body: bytes
    length: int | None
    challenge: str | None = None  # the upstream's WWW-Authenticate on a 401


class RegistryClient:
    """One upstream registry. ``base_url`` like ``http://127.0.0.1:5101``."""

    def __init__(self, base_url: str, *, client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True)
        self._owns = client is None
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}
        self._clock = clock

    async def aclose(self) -> None:
        if self._owns:
            await self._client.aclose()

    # -- auth --------------------------------------------------------------------------

    async def _token(self, params: Mapping[str, str], creds: Credentials) -> str:
        realm = params.get("realm")
        if not realm:
            raise Unauthorized("registry sent a Bearer challenge without a realm")
        key = (realm, params.get("service", ""), params.get("scope", ""), creds.identity)
        tok = self._tokens.get(key)
        if tok is not None and tok.expires > self._clock():
            return tok.value
        query = {k: v for k, v in (("service", params.get("service")), ("scope", params.get("scope"))) if v}
        headers = {}
        basic = creds.basic()
        if basic:
            headers["authorization"] = basic
        try:
            r = await self._client.get(realm, params=query, headers=headers)
        except httpx.HTTPError as exc:
            raise OriginError(f"token endpoint {realm} unreachable: {type(exc).__name__}") from exc
        if r.status_code in (401, 403):
            raise Unauthorized(f"token endpoint {realm} refused these credentials (HTTP {r.status_code})")
        if r.status_code >= 400:
            raise OriginError(f"token endpoint {realm} answered HTTP {r.status_code}")
        try:
            doc = r.json()
            value = doc.get("token") or doc.get("access_token")
            ttl = float(doc.get("expires_in", 60))
        except (ValueError, AttributeError, TypeError) as exc:
            raise OriginError(f"token endpoint {realm} sent an unreadable answer") from exc
        if not isinstance(value, str) or not value:
            raise OriginError(f"token endpoint {realm} sent no token")
        # renew a little early so a token never expires in flight
        self._tokens[key] = _Token(value, self._clock() + max(0.0, ttl - 10))
        return value

    async def authorization(self, challenge: str | None, creds: Credentials) -> str | None:
        """The Authorization header answering ``challenge`` with ``creds`` (None: none fits)."""
        if creds.authorization is not None:
            return creds.authorization
        if not challenge:
            return None
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            return creds.basic()
        if scheme == "bearer":
            return f"Bearer {await self._token(params, creds)}"
        return None

    async def request(self, method: str, path: str, *, creds: Credentials = ANONYMOUS,
                      headers: Sequence[tuple[str, str]] = (), passthrough: bool = False,
                      stream: bool = False) -> httpx.Response:
        """Send a request; answer an auth challenge once with ``creds`` unless
        ``passthrough`` (then the caller's own Authorization is forwarded and a 401 is
        returned as is). The response body is read unless ``stream``."""
        url = self.base_url + path
        hdrs = list(headers)
        if creds.authorization is not None:
            hdrs.append(("authorization", creds.authorization))
        try:
            r = await self._send(method, url, hdrs, stream)
            if r.status_code == 401 and not passthrough and creds.authorization is None:
                auth = await self.authorization(r.headers.get("www-authenticate"), creds)
                if auth is not None:
                    await r.aclose()
                    r = await self._send(method, url, [*hdrs, ("authorization", auth)], stream)
        except httpx.HTTPError as exc:
            raise OriginError(f"registry {self.base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        return r

    async def _send(self, method: str, url: str, headers: list[tuple[str, str]], stream: bool) -> httpx.Response:
        req = self._client.build_request(method, url, headers=headers)
        return await self._client.send(req, stream=stream)

    # -- API ---------------------------------------------------------------------------

    async def manifest(self, repo: str, ref: str, *, accept: Sequence[str] = MANIFEST_TYPES,
                       creds: Credentials = ANONYMOUS, method: str = "GET",
                       passthrough: bool = False) -> ManifestResponse:
        parse_repo(repo)
        parse_reference(ref)
        r = await self.request(method, f"/v2/{repo}/manifests/{ref}", creds=creds,
                               headers=[("accept", a) for a in accept], passthrough=passthrough)
        length = r.headers.get("content-length")
        return ManifestResponse(r.status_code, r.headers.get("content-type"),
                                r.headers.get("docker-content-digest"), r.content,
                                int(length) if length and length.isdigit() else None,
                                r.headers.get("www-authenticate"))

    async def head_blob(self, repo: str, digest: Digest, *, creds: Credentials = ANONYMOUS,
                        passthrough: bool = False) -> httpx.Response:
        return await self.request("HEAD", f"/v2/{parse_repo(repo)}/blobs/{digest}", creds=creds,
                                  passthrough=passthrough)

    def blob_url(self, repo: str, digest: Digest) -> str:
        return f"{self.base_url}/v2/{parse_repo(repo)}/blobs/{digest}"

    async def blob_spec(self, repo: str, digest: Digest, creds: Credentials = ANONYMOUS) -> TaskSpec:
        """The task that fetches this blob: its URL and the Authorization that works for
        it (found by a HEAD, which also proves the blob exists and these creds may read it)."""
        r = await self.head_blob(repo, digest, creds=creds)
        raise_for_registry(r, f"blob {digest} in {repo}", BlobUnknown)
        auth = r.request.headers.get("authorization")
        headers = (("authorization", auth),) if auth else ()
        return TaskSpec(self.blob_url(repo, digest), digest, headers)


def raise_for_registry(r: httpx.Response, what: str, not_found: type[NotFound] = NotFound) -> None:
    if r.status_code < 400:
        return
    if r.status_code in (401, 403):
        exc = Unauthorized(f"registry refused access to {what} (HTTP {r.status_code})", status=r.status_code)
        challenge = r.headers.get("www-authenticate")
        if challenge:
            exc.headers = [("www-authenticate", challenge)]  # type: ignore[attr-defined]
        raise exc
    if r.status_code == 404:
        raise not_found(f"registry has no {what}")
    raise OriginError(f"registry answered HTTP {r.status_code} for {what}")
