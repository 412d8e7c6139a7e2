"""Image references and platforms, parsed the way docker parses them (pure: no I/O).

Reference grammar (distribution/reference, ``ParseNormalizedNamed``)::

    [HOST[:PORT]/]PATH[:TAG][@sha256:HEX]

- the first component is a registry host only if it holds a ``.`` or a ``:`` or is
  ``localhost``; otherwise the registry is ``docker.io``;
- on ``docker.io`` a one-component name gets ``library/`` (``busybox`` →
  ``docker.io/library/busybox``); ``index.docker.io`` is ``docker.io``;
- no tag and no digest means ``:latest``; with both, the digest decides what is pulled.

Platforms are ``os/arch[/variant]`` in Go's terms (``linux/amd64``, ``linux/arm/v7``).
:func:`select_manifest` picks an index entry the way dockerd does: same os and
architecture; a requested variant must match; entries for attestations
(``unknown/unknown``) never match.
"""

from __future__ import annotations

import platform as _platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pdist.backend.registry import REPO_NAME, TAG
from p2pdist.core.digest import Digest
from p2pdist.core.errors import BadRequest, NotFound

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"
DEFAULT_TAG = "latest"
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PART = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")


class ReferenceInvalid(BadRequest):
    code = "NAME_INVALID"


@dataclass(frozen=True)
class ImageReference:
    registry: str  # "docker.io", "127.0.0.1:5000", "ghcr.io"
    repository: str  # "library/busybox"
    tag: str | None  # None only with a digest
    digest: Digest | None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return str(self.digest) if self.digest is not None else (self.tag or DEFAULT_TAG)

    @property
    def familiar_name(self) -> str:
        """The repository as docker shows it: ``busybox``, ``user/app``, ``host:5000/x/y``."""
        if self.registry == DOCKER_HUB:
            return self.repository.removeprefix("library/") if self.repository.count("/") == 1 else self.repository
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def parse_image_reference(text: str) -> ImageReference:
    """Parse ``text`` like ``docker pull`` does; raise :class:`ReferenceInvalid` naming why."""
    if not isinstance(text, str) or not text or len(text) > 512 or text != text.strip():
        raise ReferenceInvalid(f"invalid reference format: {str(text)[:100]!r}")
    rest, digest = text, None
    if "@" in rest:
        rest, _, d = rest.partition("@")
        try:
            digest = Digest.parse(d)
        except BadRequest as exc:
            raise ReferenceInvalid(f"invalid reference {text[:100]!r}: {exc}") from exc
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:  # a ':' after the last '/' is a tag, not a port
        rest, tag = rest[:colon], rest[colon + 1:]
        if not TAG.fullmatch(tag):
            raise ReferenceInvalid(f"invalid tag {tag[:100]!r} in {text[:100]!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
        if not _HOST.fullmatch(registry):
            raise ReferenceInvalid(f"invalid registry host {registry[:100]!r} in {text[:100]!r}")
    else:
        registry, path = DOCKER_HUB, rest
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if path != path.lower() and REPO_NAME.fullmatch(path.lower()):
        raise ReferenceInvalid(f"invalid reference {text[:100]!r}: repository name must be lowercase")
    if not path or not all(_PART.fullmatch(p) for p in path.split("/")) or len(path) > 255:
        raise ReferenceInvalid(f"invalid reference format: {text[:100]!r}")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageReference(registry, path, tag, digest)


def default_registry_url(registry: str) -> str:
    """Where a registry host lives when ``--registry`` does not say: Docker Hub's API host,
    plain http for loopback (as dockerd treats 127.0.0.0/8 as insecure), else https."""
    if registry == DOCKER_HUB:
        return DOCKER_HUB_URL
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0] + "]"
    if host in ("localhost", "[::1]") or host.startswith("127."):
        return f"http://{registry}"
    return f"https://{registry}"


def parse_registry_overrides(raw: Sequence[str]) -> dict[str, str]:
    """``--registry HOST=URL`` values → {host: base URL}."""
    out = {}
    for item in raw:
        host, sep, url = item.partition("=")
        if not sep or not host or not url.startswith(("http://", "https://")):
            raise BadRequest(f"bad --registry {item!r}: expected HOST=http(s)://…")
        out["docker.io" if host == "index.docker.io" else host] = url.rstrip("/")
    return out


# -- platforms --------------------------------------------------------------------------

_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
           "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_VARIANT = {"armv7l": "v7", "armv6l": "v6"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def parse_platform(text: str) -> Platform:
    parts = text.split("/") if isinstance(text, str) else []
    if not 2 <= len(parts) <= 3 or not all(re.fullmatch(r"[a-z0-9_]{1,32}", p) for p in parts):
        raise BadRequest(f"bad platform {str(text)[:60]!r}: expected os/arch[/variant], e.g. linux/amd64")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def default_platform(machine: str | None = None) -> Platform:
    """linux/<this machine's architecture in GOARCH terms>."""
    m = (machine or _platform.machine()).lower()
    return Platform("linux", _GOARCH.get(m, m), _VARIANT.get(m))


def _entry_platform(entry: Mapping[str, Any]) -> Platform | None:
    p = entry.get("platform")
    if not isinstance(p, dict) or not isinstance(p.get("os"), str) or not isinstance(p.get("architecture"), str):
        return None
    variant = p.get("variant")
    return Platform(p["os"], p["architecture"], variant if isinstance(variant, str) and variant else None)


def _variant_matches(want: Platform, got: Platform) -> bool:
    if want.variant is None:
        # arm64 images are v8 when they say anything; plain arm defaults to the newest
        return got.variant in (None, "v8") if want.architecture == "arm64" else True
    if want.architecture == "arm64" and want.variant == "v8":
        return got.variant in (None, "v8")
    return got.variant == want.variant


def select_manifest(entries: Sequence[Mapping[str, Any]], want: Platform, image: str = "image") -> Mapping[str, Any]:
    """The index entry for ``want``; :class:`NotFound` naming what the index offers."""
    offered: list[str] = []
    candidates: list[tuple[int, Mapping[str, Any]]] = []
    for entry in entries:
        p = _entry_platform(entry)
        if p is None or p.os == "unknown":
            continue
        offered.append(str(p))
        if p.os == want.os and p.architecture == want.architecture and _variant_matches(want, p):
            # prefer an exact variant match, then the highest variant (v7 over v6)
            rank = 2 if p.variant == want.variant else 1
            n = re.fullmatch(r"v(\d{1,2})", p.variant or "")
            candidates.append((rank * 100 + (int(n[1]) if n else 0), entry))
    if not candidates:
        raise NotFound(f"{image} has no manifest for platform {want}"
                       f" (it has: {', '.join(offered) or 'none'})", code="MANIFEST_UNKNOWN")
    return max(candidates, key=lambda c: c[0])[1]
