"""Public fixtures for tests against the real components: the CNCF registry
(``docker-registry``), dockerd + containerd, ``ctr`` and ``skopeo``.

Everything here starts its own private copy (own ports, sockets, state under a temp dir),
never touches the machine's defaults, and cleans up after itself. How each component starts
and what it sends is in ``shared/notes/real-components.md``.

Trio-friendly: servers run as async context managers inside a nursery; long blocking steps
(hashing and writing big blobs, CLI tools) go through ``trio.to_thread`` / ``trio.run_process``.

Main entry points::

    async with start_registry(tmp, auth="token", users={"alice": "pw"}, private={"priv/app"}) as reg:
        ref = await push_image(reg, "priv/app", "v1", images.single, auth=("alice", "pw"))
        reg.blob_gets(ref.layer_digests[0])
    async with start_dockerd(mirrors=[reg.url]) as d:
        await d.docker_cli("pull", f"{reg.host}/library/x:v1")

Images are built offline and deterministically (fixed mtimes, gzip ``mtime=0``, seeded
random data) into an on-disk blob cache, :class:`ImageCache`, so the same image has the same
digests in every run and a 100 MiB layer is generated once per session.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import blake3
import httpx
import trio

# ---------------------------------------------------------------------------------------------
# Media types

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

ALL_MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)

MiB = 1024 * 1024
FIXED_MTIME = 1_600_000_000  # every tar entry and config timestamp: same bytes every run
FIXED_CREATED = "2020-09-13T12:26:40Z"

Media = Literal["docker", "oci"]


class ComponentMissing(RuntimeError):
    """A real component cannot run here (binary missing, not root): tests should skip."""


def require_binaries(*names: str) -> None:
    """Raise :class:`ComponentMissing` naming every binary not on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ComponentMissing(f"not installed: {', '.join(missing)} "
                               "(apt-get install docker.io docker-registry skopeo containerd busybox-static)")


def require_root() -> None:
    if os.geteuid() != 0:
        raise ComponentMissing("needs root")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for daemons that cannot report their own)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def short_tmpdir(prefix: str = "p2d-") -> Path:
    """A fresh dir directly under /tmp: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def seeded_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes (BLAKE3 XOF, GB/s)."""
    return blake3.blake3(b"p2pdist-testing-real" + seed.to_bytes(8, "little")).digest(length=size)


# ---------------------------------------------------------------------------------------------
# Deterministic layers and images


def layer_tar(files: Mapping[str, bytes], *, modes: Mapping[str, int] | None = None) -> bytes:
    """An uncompressed tar of ``files`` (path → content), with parent dirs, fixed mtimes,
    root ownership, sorted entries: the same bytes every run."""
    modes = modes or {}
    buf = io.BytesIO()
    dirs: set[str] = set()
    for path in files:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d + "/")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = FIXED_MTIME
            tar.addfile(info)
        for path in sorted(files):
            data = files[path]
            info = tarfile.TarInfo(path.strip("/"))
            info.size = len(data)
            info.mode = modes.get(path, 0o644)
            info.mtime = FIXED_MTIME
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def random_layer_tar(size: int, seed: int, name: str | None = None) -> bytes:
    """A tar holding one file of ``size`` seeded random bytes."""
    return layer_tar({name or f"data/blob-{seed}.bin": seeded_bytes(size, seed)})


def gzip_bytes(data: bytes, level: int = 1) -> bytes:
    """Deterministic gzip (mtime 0, no file name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=level, mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


@dataclass(frozen=True)
class Blob:
    """One content-addressed blob stored in an :class:`ImageCache` directory."""

    digest: str
    size: int
    media_type: str
    path: Path

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest, **extra}

    def read(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True)
class Image:
    """A built, not yet pushed, single-platform image: its manifest, config and layers.
    ``diff_ids`` are the sha256 of the uncompressed layer tars (config ``rootfs``)."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    media: Media
    platform: tuple[str, str]  # (os, architecture)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)


@dataclass(frozen=True)
class Index:
    """A built multi-platform index (OCI index or Docker manifest list) and its children."""

    manifest: Blob
    children: tuple[Image, ...]
    media: Media

    def child(self, os_: str, arch: str) -> Image:
        for c in self.children:
            if c.platform == (os_, arch):
                return c
        raise KeyError(f"{os_}/{arch}")


@dataclass(frozen=True)
class ImageRef:
    """What a push produced. For an index, ``children`` maps ``"os/arch"`` to each child's
    ImageRef and config/layer digests are those of the amd64 child (if any)."""

    registry: str  # host:port
    repo: str
    tag: str
    manifest_digest: str
    media_type: str
    config_digest: str
    layer_digests: tuple[str, ...]
    children: Mapping[str, ImageRef] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``host:port/repo:tag`` for docker/ctr."""
        return f"{self.registry}/{self.repo}:{self.tag}"

    @property
    def by_digest(self) -> str:
        return f"{self.registry}/{self.repo}@{self.manifest_digest}"

    @property
    def blob_digests(self) -> tuple[str, ...]:
        return (self.config_digest, *self.layer_digests)


class ImageCache:
    """Blobs on disk named by digest, so images are built once per session and pushed to
    any number of registries. Building is blocking: use the ``a*`` methods from trio code,
    or build once in a sync session fixture."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, media_type: str) -> Blob:
        digest = sha256_of(data)
        path = self.root / "blobs" / digest.split(":", 1)[1]
        if not path.exists() or path.stat().st_size != len(data):
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return Blob(digest, len(data), media_type, path)

    def build(self, layers: Sequence[bytes], *, media: Media = "docker", compress: bool = True,
              platform: tuple[str, str] = ("linux", "amd64"), cmd: Sequence[str] | None = None,
              env: Sequence[str] = ("PATH=/bin",), config: Mapping[str, Any] | None = None,
              annotations: Mapping[str, str] | None = None) -> Image:
        """Build an image from uncompressed layer tars. ``compress`` gzips them (level 1,
        mtime 0); otherwise the uncompressed tar media type is used. ``config`` replaces the
        generated config JSON (``rootfs`` is filled in if missing)."""
        diff_ids = tuple(sha256_of(t) for t in layers)
        if media == "docker":
            lt = DOCKER_LAYER_GZIP if compress else DOCKER_LAYER_TAR
            ct, mt = DOCKER_CONFIG, DOCKER_MANIFEST
        else:
            lt = OCI_LAYER_GZIP if compress else OCI_LAYER_TAR
            ct, mt = OCI_CONFIG, OCI_MANIFEST
        blobs = tuple(self.put(gzip_bytes(t) if compress else t, lt) for t in layers)
        cfg: dict[str, Any]
        if config is None:
            cfg = {
                "architecture": platform[1],
                "os": platform[0],
                "created": FIXED_CREATED,
                "config": {"Env": list(env), **({"Cmd": list(cmd)} if cmd else {})},
                "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
                "history": [{"created": FIXED_CREATED, "created_by": "p2pdist.testing_real"}
                            for _ in layers],
            }
        else:
            cfg = dict(config)
            cfg.setdefault("rootfs", {"type": "layers", "diff_ids": list(diff_ids)})
        config_blob = self.put(_canonical(cfg), ct)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt,
            "config": config_blob.descriptor(),
            "layers": [b.descriptor() for b in blobs],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        mblob = self.put(json.dumps(manifest, indent=3).encode(), mt)
        return Image(mblob, config_blob, blobs, diff_ids, media, platform)

    def build_index(self, children: Sequence[Image], *, media: Media = "docker") -> Index:
        mt = DOCKER_LIST if media == "docker" else OCI_INDEX
        idx = {
            "schemaVersion": 2,
            "mediaType": mt,
            "manifests": [c.manifest.descriptor(platform={"architecture": c.platform[1],
                                                          "os": c.platform[0]})
                          for c in children],
        }
        return Index(self.put(json.dumps(idx, indent=3).encode(), mt), tuple(children), media)

    async def abuild(self, layers: Sequence[bytes], **kw: Any) -> Image:
        return await trio.to_thread.run_sync(lambda: self.build(layers, **kw))


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def busybox_layer_tar(busybox: str = "/bin/busybox", extra: Mapping[str, bytes] | None = None) -> bytes:
    """A layer with the static ``/bin/busybox`` (Debian ``busybox-static``), a minimal
    /etc/passwd and /tmp, plus ``extra`` files (to make layers of distinct images differ)."""
    p = Path(busybox)
    if not p.exists():
        raise ComponentMissing(f"{busybox} missing (apt-get install busybox-static)")
    data = p.read_bytes()
    if b"\x7fELF" != data[:4]:
        raise ComponentMissing(f"{busybox} is not an ELF binary")
    return layer_tar({"bin/busybox": data, "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
                      "etc/group": b"root:x:0:\n", "tmp/.keep": b"", **(extra or {})},
                     modes={"bin/busybox": 0o755})


class TestImages:
    """The ready-made test images, built lazily into an :class:`ImageCache` (blocking).

    - ``single``: one gzip layer (docker media types);
    - ``multi``: three gzip layers (docker);
    - ``oci_single`` / ``oci_multi``: the same with OCI media types (different content);
    - ``big``: one uncompressed-tar layer of ``big_size`` (>= 100 MiB) seeded random bytes, plus
      a small layer (docker);
    - ``busybox``: runnable, ``/bin/busybox`` + Cmd ``["/bin/busybox","true"]`` (docker);
    - ``oci_busybox``: the same with OCI media types (and a layer of its own);

    No two images share a layer, so "the registry sent each layer once" is easy to assert.
    - ``multiarch`` / ``oci_multiarch``: an index with linux/amd64 + linux/arm64 children.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, cache: ImageCache, big_size: int = 100 * MiB + 4096):
        self.cache = cache
        self.big_size = big_size
        self._built: dict[str, Image | Index] = {}

    def _get(self, name: str, make: Any) -> Any:
        if name not in self._built:
            self._built[name] = make()
        return self._built[name]

    @property
    def single(self) -> Image:
        return self._get("single", lambda: self.cache.build([random_layer_tar(1 * MiB, 1)]))

    @property
    def multi(self) -> Image:
        return self._get("multi", lambda: self.cache.build(
            [random_layer_tar(512 * 1024, 11), random_layer_tar(2 * MiB, 12),
             layer_tar({"etc/p2pdist-test": b"multi\n"})]))

    @property
    def oci_single(self) -> Image:
        return self._get("oci_single", lambda: self.cache.build(
            [random_layer_tar(1 * MiB, 21)], media="oci"))

    @property
    def oci_multi(self) -> Image:
        return self._get("oci_multi", lambda: self.cache.build(
            [random_layer_tar(700 * 1024, 31), random_layer_tar(1536 * 1024, 32)], media="oci"))

    @property
    def big(self) -> Image:
        return self._get("big", lambda: self.cache.build(
            [random_layer_tar(self.big_size, 41, "data/big.bin"), layer_tar({"etc/big": b"big\n"})],
            compress=False))

    @property
    def busybox(self) -> Image:
        return self._get("busybox", lambda: self.cache.build(
            [busybox_layer_tar()], cmd=["/bin/busybox", "true"]))

    @property
    def oci_busybox(self) -> Image:
        return self._get("oci_busybox", lambda: self.cache.build(
            [busybox_layer_tar(extra={"etc/p2pdist-variant": b"oci\n"})], media="oci",
            cmd=["/bin/busybox", "true"]))

    def _multiarch(self, media: Media) -> Index:
        seed = 50 if media == "docker" else 60
        kids = [self.cache.build([random_layer_tar(256 * 1024, seed + i, f"data/{arch}.bin")],
                                 media=media, platform=("linux", arch))
                for i, arch in enumerate(("amd64", "arm64"))]
        return self.cache.build_index(kids, media=media)

    @property
    def multiarch(self) -> Index:
        return self._get("multiarch", lambda: self._multiarch("docker"))

    @property
    def oci_multiarch(self) -> Index:
        return self._get("oci_multiarch", lambda: self._multiarch("oci"))

    def build_all(self) -> dict[str, Image | Index]:
        for name in ("single", "multi", "oci_single", "oci_multi", "big", "busybox",
                     "oci_busybox", "multiarch", "oci_multiarch"):
            getattr(self, name)
        return dict(self._built)


# ---------------------------------------------------------------------------------------------
# Token auth: RSA key, self-signed cert, libtrust key id, RS256 JWTs


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key_der: bytes) -> str:
    """The libtrust fingerprint distribution checks a token's ``kid`` against: base32 of the
    first 240 bits of sha256(DER SubjectPublicKeyInfo), in 12 groups of 4 joined by ':'."""
    b32 = base64.b32encode(hashlib.sha256(public_key_der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, 48, 4))


class TokenIssuer:
    """An RSA key and its self-signed cert (the registry's ``rootcertbundle``); signs
    Docker registry tokens (RS256, ``kid`` = libtrust key id)."""

    def __init__(self, issuer: str = "p2pdist-test-issuer", service: str = "p2pdist-test-registry"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.issuer = issuer
        self.service = service
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = time.time()
        import datetime as _dt
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(self._key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_dt.datetime.fromtimestamp(now - 3600, _dt.UTC))
                .not_valid_after(_dt.datetime.fromtimestamp(now + 30 * 86400, _dt.UTC))
                .sign(self._key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = libtrust_key_id(der)

    def sign(self, subject: str, access: list[dict[str, Any]], expires_in: int = 300) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + expires_in,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(_canonical(header))}.{_b64url(_canonical(claims))}"
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"


@dataclass
class TokenRequest:
    """One request the token server answered (for tests asserting on the auth flow)."""

    account: str | None  # the authenticated user, None for anonymous
    scopes: list[str]
    granted: list[dict[str, Any]]
    status: int


class TokenServer:
    """The Docker token flow: ``GET /token?service=…&scope=repository:NAME:pull[,push]``.

    Anonymous callers get ``pull`` on repositories not in ``private``; a caller with a right
    Basic ``Authorization`` gets everything it asks for; wrong credentials get 401. Grants
    for repos the caller may not read are returned empty (as real token servers do), so the
    registry answers 401/denied."""

    def __init__(self, issuer: TokenIssuer, users: Mapping[str, str],
                 private: Iterable[str] = (), expires_in: int = 300):
        self.issuer = issuer
        self.users = dict(users)
        self.private = set(private)
        self.expires_in = expires_in
        self.port = 0
        self.requests: list[TokenRequest] = []

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def is_private(self, repo: str) -> bool:
        return any(repo == p or (p.endswith("/*") and repo.startswith(p[:-1])) for p in self.private)

    def _authenticate(self, authorization: str | None) -> tuple[bool, str | None]:
        if not authorization:
            return True, None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            user, _, pw = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        if user in self.users and secrets.compare_digest(self.users[user], pw):
            return True, user
        return False, None

    def grant(self, account: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue
            name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
            allowed = actions if account else (["pull"] if "pull" in actions and not self.is_private(name) else [])
            access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def router(self) -> Any:
        from p2pdist.net.http import Request, Response, Router

        r = Router()

        async def token(request: Request) -> Response:
            ok, account = self._authenticate(request.header("authorization"))
            scopes = [s for v in request.query.get("scope", []) for s in v.split(" ") if s]
            if not ok:
                self.requests.append(TokenRequest(None, scopes, [], 401))
                return Response.json({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                                     401, [("www-authenticate", 'Basic realm="token"')])
            if request.arg("service") not in (None, self.issuer.service):
                self.requests.append(TokenRequest(account, scopes, [], 400))
                return Response.json({"errors": [{"code": "DENIED", "message": "unknown service"}]}, 400)
            access = self.grant(account, scopes)
            jwt = self.issuer.sign(account or "", access, self.expires_in)
            self.requests.append(TokenRequest(account, scopes, access, 200))
            return Response.json({"token": jwt, "access_token": jwt, "expires_in": self.expires_in,
                                  "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

        r.route("GET", "/token", token)
        return r

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on 127.0.0.1 (a free port) until cancelled; ``started(port)``."""
        from p2pdist.net.http import serve_http

        async with trio.open_nursery() as n:
            self.port = await n.start(serve_http, self.router(), "127.0.0.1", 0)
            task_status.started(self.port)


# ---------------------------------------------------------------------------------------------
# The registry

_ACCESS_RE = re.compile(r'^(\S+) \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)')


@dataclass(frozen=True)
class AccessEntry:
    """One line of the registry's access log (written when a response is complete)."""

    method: str
    path: str  # with query
    status: int
    size: int  # body bytes written

    @property
    def blob_digest(self) -> str | None:
        m = re.match(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})(?:\?|$)", self.path)
        return m[1] if m else None


class Registry:
    """A running ``docker-registry serve`` on 127.0.0.1. ``auth``: ``"none"``, ``"basic"``
    (htpasswd, bcrypt) or ``"token"`` (bearer flow, :attr:`token_server`). ``users`` are
    the accounts (basic and token); ``private`` the repos only users may pull (token mode;
    in basic mode every repo needs a user)."""

    def __init__(self, root: Path, port: int, auth: str, users: Mapping[str, str],
                 token_server: TokenServer | None):
        self.root = root
        self.port = port
        self.auth = auth
        self.users = dict(users)
        self.token_server = token_server
        self.process: trio.Process | None = None
        self.access_log_path = root / "access.log"
        self.error_log_path = root / "registry.log"
        self.data_dir = root / "data"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def service(self) -> str | None:
        return self.token_server.issuer.service if self.token_server else None

    def credentials(self) -> tuple[str, str] | None:
        """Some user's (name, password), or None when the registry has no users."""
        return next(iter(self.users.items()), None)

    # -- access log -------------------------------------------------------------------------
    def access_log(self) -> list[AccessEntry]:
        entries = []
        try:
            text = self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            m = _ACCESS_RE.match(line)
            if m:
                entries.append(AccessEntry(m[2], m[3], int(m[4]), 0 if m[5] == "-" else int(m[5])))
        return entries

    def mark(self) -> int:
        """The current length of the access log, to count only what comes after it."""
        return len(self.access_log())

    def blob_gets(self, digest: str, *, since: int = 0, ok_only: bool = False) -> int:
        """How many ``GET /v2/<any>/blobs/<digest>`` the registry answered (complete
        responses; ``ok_only``: only 200/206)."""
        return sum(1 for e in self.access_log()[since:]
                   if e.method == "GET" and e.blob_digest == digest
                   and (not ok_only or e.status in (200, 206)))

    def blob_bytes_sent(self, digest: str, *, since: int = 0) -> int:
        """Body bytes the registry wrote for GETs of this blob."""
        return sum(e.size for e in self.access_log()[since:]
                   if e.method == "GET" and e.blob_digest == digest)

    def requests(self, method: str | None = None, *, since: int = 0) -> list[AccessEntry]:
        return [e for e in self.access_log()[since:] if method is None or e.method == method]

    def config_yaml(self) -> str:
        lines = [
            "version: 0.1",
            "log: {level: info, accesslog: {disabled: false}}",
            "storage:",
            f"  filesystem: {{rootdirectory: {self.data_dir}}}",
            "  delete: {enabled: true}",
            "  maintenance: {uploadpurging: {enabled: false}}",
            f"http: {{addr: '{self.host}', secret: p2pdist-test-secret}}",
            "health: {storagedriver: {enabled: false}}",
        ]
        if self.auth == "basic":
            lines.append(f"auth: {{htpasswd: {{realm: basic-realm, path: {self.root / 'htpasswd'}}}}}")
        elif self.auth == "token":
            assert self.token_server is not None
            iss = self.token_server.issuer
            lines += ["auth:", "  token:", f"    realm: {self.token_server.realm}",
                      f"    service: {iss.service}", f"    issuer: {iss.issuer}",
                      f"    rootcertbundle: {self.root / 'token-cert.pem'}"]
        return "\n".join(lines) + "\n"


def write_htpasswd(path: Path, users: Mapping[str, str]) -> None:
    """An htpasswd file with bcrypt hashes (cost 5: fast, still bcrypt)."""
    import bcrypt

    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}" for u, p in users.items()]
    path.write_text("\n".join(lines) + "\n")


async def _wait_http(url: str, ok: Iterable[int], proc: trio.Process | None, timeout: float,
                     what: str, log: Path | None = None,
                     transport: httpx.AsyncBaseTransport | None = None) -> None:
    ok = set(ok)
    deadline = trio.current_time() + timeout
    delay = 0.01
    last: object = None
    async with httpx.AsyncClient(transport=transport, timeout=2) as client:
        while True:
            if proc is not None and proc.returncode is not None:
                tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
                raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{tail}")
            try:
                r = await client.get(url)
                if r.status_code in ok:
                    return
                last = r.status_code
            except httpx.HTTPError as exc:
                last = exc
            if trio.current_time() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
                raise RuntimeError(f"{what} not ready after {timeout}s (last: {last!r}):\n{tail}")
            await trio.sleep(delay)
            delay = min(delay * 1.5, 0.1)


async def _stop_process(proc: trio.Process, timeout: float = 5.0) -> None:
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        with trio.move_on_after(timeout):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()


@asynccontextmanager
async def start_registry(tmp: Path | None = None, *, auth: Literal["none", "basic", "token"] = "none",
                         users: Mapping[str, str] | None = None, private: Iterable[str] = (),
                         port: int | None = None, ready_timeout: float = 10.0) -> AsyncIterator[Registry]:
    """Start ``docker-registry serve`` on 127.0.0.1 (a free port unless ``port``), with its
    config, data, htpasswd/cert and logs in a fresh dir under ``tmp``. Token mode also runs a
    :class:`TokenServer` in this task's nursery. Stopped (SIGTERM, then SIGKILL) on exit;
    without ``tmp`` its dir under /tmp is removed then too (with ``tmp`` the logs stay for
    post-mortems)."""
    require_binaries("docker-registry")
    if users is None:
        users = {"alice": "alice-secret"} if auth != "none" else {}
    base = Path(tmp) if tmp is not None else short_tmpdir()
    root = Path(tempfile.mkdtemp(prefix="registry-", dir=base))
    async with trio.open_nursery() as nursery:
        token_server = None
        if auth == "token":
            issuer = await trio.to_thread.run_sync(TokenIssuer)
            token_server = TokenServer(issuer, users, private)
            await nursery.start(token_server.serve)
            (root / "token-cert.pem").write_bytes(issuer.cert_pem)
        elif auth == "basic":
            await trio.to_thread.run_sync(write_htpasswd, root / "htpasswd", users)
        elif auth != "none":
            raise ValueError(f"unknown auth mode {auth!r}")
        reg = None
        for attempt in range(5):
            reg = Registry(root, port or free_port(), auth, users, token_server)
            (root / "config.yml").write_text(reg.config_yaml())
            with open(reg.access_log_path, "ab") as out, open(reg.error_log_path, "ab") as err:
                reg.process = await trio.lowlevel.open_process(
                    ["docker-registry", "serve", str(root / "config.yml")],
                    stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            try:
                await _wait_http(f"{reg.url}/v2/", (200, 401), reg.process, ready_timeout,
                                 "docker-registry", reg.error_log_path)
                break
            except RuntimeError:
                await _stop_process(reg.process)
                in_use = "address already in use" in reg.error_log_path.read_text(errors="replace")
                if port is None and in_use and attempt < 4:
                    continue
                raise
        assert reg is not None and reg.process is not None
        try:
            yield reg
        finally:
            with trio.CancelScope(shield=True):
                await _stop_process(reg.process)
                if tmp is None:
                    await trio.to_thread.run_sync(shutil.rmtree, base, True)
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Registry client: auth, push


def parse_www_authenticate(value: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ``("bearer", {…})``."""
    scheme, _, rest = value.strip().partition(" ")
    params = {m[1].lower(): m[2] if m[2] is not None else m[3]
              for m in re.finditer(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', rest)}
    return scheme.lower(), params


async def fetch_token(client: httpx.AsyncClient, challenge: Mapping[str, str], scopes: Iterable[str],
                      auth: tuple[str, str] | None) -> str:
    """Ask a token endpoint (from a Bearer challenge) for a token covering ``scopes``."""
    params: list[tuple[str, str]] = []
    if "service" in challenge:
        params.append(("service", challenge["service"]))
    params += [("scope", s) for s in scopes]
    if auth:
        params.append(("account", auth[0]))
    r = await client.get(challenge["realm"], params=params, auth=auth)
    r.raise_for_status()
    body = r.json()
    return body.get("token") or body["access_token"]


async def auth_headers(client: httpx.AsyncClient, registry_url: str, repo: str,
                       auth: tuple[str, str] | None, actions: str = "pull,push") -> dict[str, str]:
    """The ``Authorization`` header for ``repo`` on this registry (anonymous, basic or
    bearer, picked from the ``GET /v2/`` challenge)."""
    r = await client.get(f"{registry_url}/v2/")
    if r.status_code == 200:
        return {}
    if r.status_code != 401:
        raise RuntimeError(f"GET /v2/ → {r.status_code}")
    scheme, params = parse_www_authenticate(r.headers.get("www-authenticate", ""))
    if scheme == "basic":
        if not auth:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()}
    if scheme == "bearer":
        token = await fetch_token(client, params, [f"repository:{repo}:{actions}"], auth)
        return {"Authorization": f"Bearer {token}"}
    raise RuntimeError(f"unknown auth scheme {scheme!r}")


async def _file_chunks(path: Path, piece: int = 1 * MiB) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as f:
        while data := await f.read(piece):
            yield data


async def push_blob(client: httpx.AsyncClient, registry_url: str, repo: str, blob: Blob,
                    headers: Mapping[str, str]) -> None:
    base = f"{registry_url}/v2/{repo}/blobs"
    r = await client.head(f"{base}/{blob.digest}", headers=headers)
    if r.status_code == 200:
        return
    r = await client.post(f"{base}/uploads/", headers=headers)
    if r.status_code != 202:
        raise RuntimeError(f"upload start for {repo} → {r.status_code}: {r.text[:300]}")
    location = httpx.URL(registry_url).join(r.headers["location"])
    location = location.copy_merge_params({"digest": blob.digest})
    r = await client.put(location, content=_file_chunks(blob.path),
                         headers={**headers, "Content-Type": "application/octet-stream",
                                  "Content-Length": str(blob.size)})
    if r.status_code != 201:
        raise RuntimeError(f"upload of {blob.digest} to {repo} → {r.status_code}: {r.text[:300]}")


async def put_manifest(client: httpx.AsyncClient, registry_url: str, repo: str, ref: str,
                       manifest: Blob, headers: Mapping[str, str]) -> str:
    r = await client.put(f"{registry_url}/v2/{repo}/manifests/{ref}", content=manifest.read(),
                         headers={**headers, "Content-Type": manifest.media_type})
    if r.status_code != 201:
        raise RuntimeError(f"manifest PUT {repo}:{ref} → {r.status_code}: {r.text[:500]}")
    got = r.headers.get("docker-content-digest")
    if got and got != manifest.digest:
        raise RuntimeError(f"registry stored {got}, expected {manifest.digest}")
    return manifest.digest


def _registry_url(registry: Registry | str) -> tuple[str, str]:
    if isinstance(registry, Registry):
        return registry.url, registry.host
    url = registry if "://" in registry else f"http://{registry}"
    return url.rstrip("/"), httpx.URL(url).netloc.decode()


async def push_built(registry: Registry | str, repo: str, tag: str, image: Image | Index, *,
                     auth: tuple[str, str] | None | Literal["default"] = "default") -> ImageRef:
    """Push a built image or index (blobs, child manifests by digest, then the tag).
    ``auth="default"`` uses the registry's first user when it has users."""
    url, host = _registry_url(registry)
    if auth == "default":
        auth = registry.credentials() if isinstance(registry, Registry) else None
    async with httpx.AsyncClient(timeout=120) as client:
        headers = await auth_headers(client, url, repo, auth)
        if isinstance(image, Index):
            children = {}
            for child in image.children:
                for b in child.blobs:
                    await push_blob(client, url, repo, b, headers)
                await put_manifest(client, url, repo, child.manifest.digest, child.manifest, headers)
                children[f"{child.platform[0]}/{child.platform[1]}"] = _ref(host, repo, tag, child)
            await put_manifest(client, url, repo, tag, image.manifest, headers)
            main = children.get("linux/amd64") or next(iter(children.values()))
            return ImageRef(host, repo, tag, image.manifest.digest, image.manifest.media_type,
                            main.config_digest, main.layer_digests, children)
        for b in image.blobs:
            await push_blob(client, url, repo, b, headers)
        await put_manifest(client, url, repo, tag, image.manifest, headers)
        return _ref(host, repo, tag, image)


def _ref(host: str, repo: str, tag: str, image: Image) -> ImageRef:
    return ImageRef(host, repo, tag, image.manifest.digest, image.manifest.media_type,
                    image.config.digest, tuple(b.digest for b in image.layers))


async def push_image(registry: Registry | str, repo: str, tag: str, layers: Sequence[bytes], *,
                     media: Media = "docker", config: Mapping[str, Any] | None = None,
                     compress: bool = True, cache: ImageCache | None = None,
                     auth: tuple[str, str] | None | Literal["default"] = "default",
                     **build_kw: Any) -> ImageRef:
    """Build an image from uncompressed layer tars (into ``cache``, or a temp cache) and
    push it. See :meth:`ImageCache.build` for ``config``/``compress``/``cmd``/``platform``."""
    tmp = None
    if cache is None:
        tmp = tempfile.mkdtemp(prefix="p2d-img-")
        cache = ImageCache(Path(tmp))
    try:
        image = await trio.to_thread.run_sync(
            lambda: cache.build(layers, media=media, config=config, compress=compress, **build_kw))
        return await push_built(registry, repo, tag, image, auth=auth)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# containerd + dockerd


async def _run(args: Sequence[str], *, env: Mapping[str, str] | None = None, check: bool = True,
               timeout: float = 300, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command via ``trio.run_process``, capturing output; on failure raise with its
    stderr in the message."""
    full_env = {**os.environ, **(env or {})}
    with trio.fail_after(timeout):
        res = await trio.run_process(list(args), capture_stdout=True, capture_stderr=True,
                                     check=False, env=full_env, stdin=input)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} → exit {res.returncode}\n"
                           f"stdout: {res.stdout.decode(errors='replace')[-3000:]}\n"
                           f"stderr: {res.stderr.decode(errors='replace')[-3000:]}")
    return res


def _umount_under(root: Path) -> None:
    """Lazily unmount everything mounted at or under ``root`` (deepest first)."""
    root_s = str(root.resolve())
    mounts = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if mp == root_s or mp.startswith(root_s + "/"):
                mounts.append(mp)
    except OSError:
        return
    for mp in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)


def remove_cgroup(name: str) -> None:
    """Kill what is left in cgroup ``name`` (in every v1 hierarchy, and v2) and remove it.
    dockerd with cgroupfs leaves its ``--cgroup-parent`` dirs behind."""
    base = Path("/sys/fs/cgroup")
    tops = [base / name] + [h / name for h in base.iterdir() if h.is_dir()] if base.exists() else []
    for top in tops:
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            try:
                for pid in (d / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            except OSError:
                pass
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _rm_tree(root: Path) -> None:
    _umount_under(root)
    shutil.rmtree(root, ignore_errors=True)


class Containerd:
    """A private containerd (root, state, sockets under ``root``; CRI plugin off)."""

    def __init__(self, root: Path):
        self.root = root
        self.sock = root / "containerd.sock"
        self.config_path = root / "containerd.toml"
        self.log_path = root / "containerd.log"
        self.process: trio.Process | None = None

    def config_toml(self) -> str:
        return (
            "version = 2\n"
            f'root = "{self.root / "ctrd-root"}"\n'
            f'state = "{self.root / "ctrd-state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.sock}"\n'
            f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
            '[debug]\n  address = ""\n'
            '[metrics]\n  address = ""\n'
        )

    async def ctr(self, *args: str, namespace: str = "test", check: bool = True,
                  timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        """Run ``ctr -a <sock> -n <namespace> args…``."""
        return await _run(["ctr", "-a", str(self.sock), "-n", namespace, *args], check=check,
                          timeout=timeout)


@asynccontextmanager
async def start_containerd(root: Path | None = None, *, ready_timeout: float = 10.0) -> AsyncIterator[Containerd]:
    """Start a private containerd; stopped and its dir removed on exit (when we made it)."""
    require_root()
    require_binaries("containerd", "ctr")
    own = root is None
    root = root or short_tmpdir("p2d-ctrd-")
    c = Containerd(root)
    c.config_path.write_text(c.config_toml())
    try:
        with open(c.log_path, "ab") as log:
            c.process = await trio.lowlevel.open_process(
                ["containerd", "--config", str(c.config_path)], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
        await _wait_socket(c.sock, c.process, ready_timeout, "containerd", c.log_path)
        yield c
    finally:
        with trio.CancelScope(shield=True):
            if c.process is not None:
                await _stop_process(c.process)
            if own:
                await trio.to_thread.run_sync(_rm_tree, root)


async def _wait_socket(path: Path, proc: trio.Process, timeout: float, what: str, log: Path) -> None:
    deadline = trio.current_time() + timeout
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        if path.exists():
            try:
                s = trio.socket.socket(trio.socket.AF_UNIX)
                with s:
                    await s.connect(str(path))
                return
            except OSError:
                pass
        if trio.current_time() > deadline:
            raise RuntimeError(f"{what} socket {path} not ready after {timeout}s:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        await trio.sleep(0.01)


class Dockerd:
    """A private dockerd on its own containerd. ``client`` is a ``docker.DockerClient``
    (blocking: call it through ``trio.to_thread``); :meth:`docker_cli` runs the CLI."""

    def __init__(self, root: Path, containerd: Containerd):
        self.root = root
        self.containerd = containerd
        self.sock = root / "docker.sock"
        self.daemon_json = root / "daemon.json"
        self.log_path = root / "dockerd.log"
        self.data_root = root / "data"
        self.cgroup_parent = f"p2pdist-test-{root.name}"
        self.process: trio.Process | None = None
        self._client: Any = None
        self.mirrors: list[str] = []
        self.insecure_registries: list[str] = []

    @property
    def host(self) -> str:
        """The ``DOCKER_HOST`` value."""
        return f"unix://{self.sock}"

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.root / "cli-config")}

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=self.host, timeout=300)
        return self._client

    def write_daemon_json(self) -> None:
        cfg: dict[str, Any] = {
            "registry-mirrors": self.mirrors,
            "insecure-registries": self.insecure_registries,
            "deprecated-key-path": str(self.root / "key.json"),
            "shutdown-timeout": 2,
            "cgroup-parent": self.cgroup_parent,
            "max-concurrent-downloads": 3,
        }
        tmp = self.daemon_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, self.daemon_json)

    async def docker_cli(self, *args: str, check: bool = True, timeout: float = 300,
                         input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``docker args…`` against this daemon (``DOCKER_HOST``, a private ``DOCKER_CONFIG``)."""
        return await _run(["docker", *args], env=self.env, check=check, timeout=timeout, input=input)

    async def api(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Call a blocking docker SDK function in a worker thread."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kw))

    async def set_mirrors(self, mirrors: Sequence[str], timeout: float = 10.0) -> None:
        """Rewrite ``registry-mirrors`` and SIGHUP dockerd; returns once ``docker info``
        shows them."""
        self.mirrors = list(mirrors)
        self.write_daemon_json()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        want = [m.rstrip("/") + "/" for m in self.mirrors]
        with trio.fail_after(timeout):
            while True:
                info = await self.api(self.client.info)
                got = (info.get("RegistryConfig") or {}).get("Mirrors") or []
                if [g.rstrip("/") + "/" for g in got] == want:
                    return
                await trio.sleep(0.05)

    async def remove_all_containers(self) -> None:
        def rm() -> None:
            for c in self.client.containers.list(all=True):
                try:
                    c.remove(force=True)
                except Exception:  # noqa: BLE001 - best effort at cleanup
                    pass
        await trio.to_thread.run_sync(rm)

    async def image_ids(self) -> list[str]:
        return [i.id for i in await self.api(self.client.images.list)]


@asynccontextmanager
async def start_dockerd(*, mirrors: Sequence[str] = (), insecure_registries: Sequence[str] = (),
                        storage_driver: str | None = None, root: Path | None = None,
                        ready_timeout: float = 20.0) -> AsyncIterator[Dockerd]:
    """Start a private containerd + dockerd (own root/state/sockets in a short dir under
    /tmp, ``--iptables=false --bridge=none``, daemon.json with ``registry-mirrors``).
    On exit: remove containers, stop dockerd and containerd, unmount, remove the dir."""
    require_root()
    require_binaries("dockerd", "docker", "containerd", "ctr")
    root = root or short_tmpdir("p2d-dk-")
    try:
        (root / "c").mkdir(exist_ok=True)
        async with start_containerd(root / "c", ready_timeout=ready_timeout) as ctrd:
            d = Dockerd(root, ctrd)
            d.mirrors = list(mirrors)
            d.insecure_registries = list(insecure_registries)
            d.write_daemon_json()
            (root / "cli-config").mkdir(exist_ok=True)
            (root / "cli-config" / "config.json").write_text("{}")
            args = ["dockerd", "--containerd", str(ctrd.sock), "--config-file", str(d.daemon_json),
                    "--data-root", str(d.data_root), "--exec-root", str(root / "exec"),
                    "--pidfile", str(root / "dockerd.pid"), "-H", d.host,
                    "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none"]
            if storage_driver:
                args += ["--storage-driver", storage_driver]
            with open(d.log_path, "ab") as log:
                d.process = await trio.lowlevel.open_process(args, stdout=log, stderr=log,
                                                             stdin=subprocess.DEVNULL)
            try:
                await _wait_http("http://docker/_ping", (200,), d.process, ready_timeout, "dockerd",
                                 d.log_path, transport=httpx.AsyncHTTPTransport(uds=str(d.sock)))
                yield d
            finally:
                with trio.CancelScope(shield=True):
                    if d.process.returncode is None:
                        with trio.move_on_after(15):
                            await d.remove_all_containers()
                    if d._client is not None:
                        d._client.close()
                    await _stop_process(d.process, timeout=10)
                    await trio.to_thread.run_sync(remove_cgroup, d.cgroup_parent)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_rm_tree, root)


# ---------------------------------------------------------------------------------------------
# ctr and skopeo helpers


def write_hosts_toml(hosts_dir: Path, mirror_url: str, *, registry: str = "docker.io",
                     server: str | None = None, capabilities: Sequence[str] = ("pull", "resolve")) -> Path:
    """``hosts_dir/<registry>/hosts.toml`` sending pulls of ``registry`` to ``mirror_url``."""
    server = server or ("https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}")
    d = Path(hosts_dir) / registry
    d.mkdir(parents=True, exist_ok=True)
    caps = ", ".join(f'"{c}"' for c in capabilities)
    (d / "hosts.toml").write_text(f'server = "{server}"\n\n[host."{mirror_url}"]\n  capabilities = [{caps}]\n')
    return d / "hosts.toml"


async def ctr_pull(sock: Path | str, ref: str, hosts_dir: Path | str | None = None, *,
                   namespace: str = "test", plain_http: bool = False, platform: str | None = None,
                   user: tuple[str, str] | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """``ctr image pull`` into the containerd at ``sock``. With ``hosts_dir`` (see
    :func:`write_hosts_toml`) a docker.io name goes to the mirror; ``plain_http`` for a
    direct pull from an http registry. ctr also unpacks the image into its snapshotter."""
    args = ["ctr", "-a", str(sock), "-n", namespace, "image", "pull"]
    if hosts_dir is not None:
        args += ["--hosts-dir", str(hosts_dir)]
    if plain_http:
        args.append("--plain-http")
    if platform:
        args += ["--platform", platform]
    if user:
        args += ["--user", f"{user[0]}:{user[1]}"]
    args.append(ref)
    return await _run(args, timeout=timeout)


async def ctr_image_ids(sock: Path | str, namespace: str = "test") -> dict[str, str]:
    """``{name: target digest}`` of the images in a containerd namespace."""
    res = await _run(["ctr", "-a", str(sock), "-n", namespace, "image", "ls"])
    out = {}
    for line in res.stdout.decode().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            out[parts[0]] = parts[2]
    return out


def write_registries_conf(path: Path, mirror_host: str, *, prefix: str = "docker.io",
                          location: str = "registry-1.docker.io", insecure: bool = True) -> Path:
    """A containers ``registries.conf`` mirroring ``prefix`` to ``mirror_host`` (host:port)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[[registry]]\nprefix = "{prefix}"\nlocation = "{location}"\n'
                    f'[[registry.mirror]]\nlocation = "{mirror_host}"\n'
                    f"insecure = {'true' if insecure else 'false'}\n")
    return path


async def skopeo_copy(src: str, dest_dir: Path | str, registries_conf: Path | str | None = None, *,
                      creds: tuple[str, str] | None = None, arch: str | None = None,
                      os_: str | None = None, all_platforms: bool = False,
                      timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """``skopeo copy SRC dir:DEST`` (``--src-tls-verify=false``; ``--registries-conf`` when
    given: skopeo ignores CONTAINERS_REGISTRIES_CONF). ``src`` like
    ``docker://127.0.0.1:PORT/repo:tag``."""
    require_binaries("skopeo")
    args = ["skopeo"]
    if registries_conf is not None:
        args += ["--registries-conf", str(registries_conf)]
    if arch:
        args += ["--override-arch", arch]
    if os_:
        args += ["--override-os", os_]
    args += ["copy", "--src-tls-verify=false", "--retry-times", "0"]
    if all_platforms:
        args += ["--all"]
    if creds:
        args += ["--src-creds", f"{creds[0]}:{creds[1]}"]
    else:
        args += ["--src-no-creds"]
    args += [src, f"dir:{dest_dir}"]
    return await _run(args, timeout=timeout)


def read_dir_image(dest_dir: Path | str) -> dict[str, Any]:
    """A ``skopeo copy … dir:`` result: ``{"manifest": dict, "manifest_digest": str,
    "blobs": {digest: size}}``; every blob file is re-hashed and checked against its name."""
    d = Path(dest_dir)
    raw = (d / "manifest.json").read_bytes()
    blobs = {}
    for f in d.iterdir():
        if re.fullmatch(r"[0-9a-f]{64}", f.name):
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while chunk := fh.read(4 * MiB):
                    h.update(chunk)
            assert h.hexdigest() == f.name, f"{f} does not hash to its name"
            blobs["sha256:" + f.name] = f.stat().st_size
    return {"manifest": json.loads(raw), "manifest_digest": sha256_of(raw), "blobs": blobs}
