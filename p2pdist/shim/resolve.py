"""Resolve an image reference to its config and layers: the part of a pull that talks to
the registry for manifests (small, by digest, verified), shared by ``pull`` and ``preheat``.

An index (OCI index or Docker manifest list) is narrowed to one platform; every manifest
fetched is checked against its digest (the one asked for, or the one the registry named).
Errors: :class:`Unauthorized`, :class:`NotFound` (``MANIFEST_UNKNOWN``), :class:`OriginError`,
:class:`BadRequest` for a manifest this shim cannot load (schema1, foreign layers…).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from p2pdist.backend.registry import ANONYMOUS, Credentials, ManifestResponse, RegistryClient
from p2pdist.core.digest import Digest
from p2pdist.core.errors import (
    BadRequest,
    IntegrityError,
    NotFound,
    OriginError,
    P2PError,
    Unauthorized,
)
from p2pdist.core.task import TaskSpec
from p2pdist.shim.reference import ImageReference, Platform, select_manifest

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
IMAGE_TYPES = ("application/vnd.oci.image.manifest.v1+json",
               "application/vnd.docker.distribution.manifest.v2+json")
MAX_LAYERS = 1000


@dataclass(frozen=True)
class BlobRef:
    digest: Digest
    size: int
    media_type: str


@dataclass(frozen=True)
class ResolvedImage:
    reference: ImageReference
    manifest_digest: Digest  # the single-platform manifest
    config: BlobRef
    layers: tuple[BlobRef, ...]
    platform: Platform | None  # the platform picked from an index, None if there was no index

    @property
    def blobs(self) -> tuple[BlobRef, ...]:
        """Config first, then each distinct layer once, in manifest order."""
        seen: set[Digest] = set()
        out = []
        for b in (self.config, *self.layers):
            if b.digest not in seen:
                seen.add(b.digest)
                out.append(b)
        return tuple(out)


def _check(r: ManifestResponse, what: str) -> None:
    if r.status < 400:
        return
    if r.status in (401, 403):
        raise Unauthorized(f"registry refused access to {what} (HTTP {r.status});"
                           " log in with docker login or check ~/.docker/config.json", status=r.status)
    if r.status == 404:
        raise NotFound(f"{what} not found in the registry", code="MANIFEST_UNKNOWN")
    raise OriginError(f"registry answered HTTP {r.status} for {what}")


def _descriptor(d: Any, what: str) -> BlobRef:
    try:
        size = d["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size")
        return BlobRef(Digest.parse(d["digest"]), size, str(d.get("mediaType", "")))
    except (KeyError, TypeError, ValueError, P2PError) as exc:
        raise OriginError(f"{what}: malformed descriptor in manifest") from exc


async def _fetch(client: RegistryClient, ref: ImageReference, reference: str,
                 creds: Credentials, what: str) -> tuple[str, dict[str, Any], Digest]:
    r = await client.manifest(ref.repository, reference, creds=creds)
    _check(r, what)
    got = Digest(hashlib.sha256(r.body).hexdigest())
    expected = reference if reference.startswith("sha256:") else r.digest
    if expected and expected.startswith("sha256:") and str(got) != expected:
        raise IntegrityError(f"manifest of {what} has digest {got}, expected {expected}")
    try:
        doc = json.loads(r.body)
    except ValueError as exc:
        raise OriginError(f"manifest of {what} is not JSON") from exc
    if not isinstance(doc, dict):
        raise OriginError(f"manifest of {what} is not a JSON object")
    media = (r.media_type or "").split(";")[0].strip()
    if media not in INDEX_TYPES + IMAGE_TYPES:
        media = doc.get("mediaType") or ("index" if "manifests" in doc else "")
    if doc.get("schemaVersion") == 1 or "schema1" in media:
        raise BadRequest(f"{what} has a schema1 manifest, which p2pdist pull does not support")
    return media, doc, got


async def resolve_image(client: RegistryClient, ref: ImageReference, platform: Platform,
                        creds: Credentials = ANONYMOUS) -> ResolvedImage:
    name = str(ref)
    media, doc, digest = await _fetch(client, ref, ref.reference, creds, name)
    picked: Platform | None = None
    if media in INDEX_TYPES or media == "index" or "manifests" in doc:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise OriginError(f"index of {name} has no manifests list")
        entry = select_manifest([e for e in entries if isinstance(e, dict)], platform, name)
        child = _descriptor(entry, name)
        picked = platform
        media, doc, digest = await _fetch(client, ref, str(child.digest), creds, f"{name} ({platform})")
        if str(digest) != str(child.digest):
            raise IntegrityError(f"manifest of {name} ({platform}) has digest {digest}, expected {child.digest}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not isinstance(doc.get("config"), dict) or len(layers) > MAX_LAYERS:
        raise OriginError(f"manifest of {name} has no config or layers")
    for layer in layers:
        if isinstance(layer, dict) and ("foreign" in str(layer.get("mediaType", "")) or layer.get("urls")):
            raise BadRequest(f"{name} has a foreign (non-distributable) layer; p2pdist pull cannot fetch it")
    return ResolvedImage(ref, digest, _descriptor(doc["config"], name),
                         tuple(_descriptor(x, name) for x in layers), picked)


async def blob_specs(client: RegistryClient, image: ResolvedImage,
                     creds: Credentials = ANONYMOUS) -> dict[Digest, TaskSpec]:
    """The task of every distinct blob (config first): URL plus the Authorization that the
    registry accepted for it (a HEAD each, which also proves the blob is there)."""
    return {b.digest: await client.blob_spec(image.reference.repository, b.digest, creds)
            for b in image.blobs}
