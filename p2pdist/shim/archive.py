"""The ``docker load`` archive, laid out without holding any blob (pure: no I/O).

A docker-archive is a tar of::

    <config hex>.json            the config blob, byte for byte (so Docker's image Id is its digest)
    <layer hex>/layer.tar        each distinct layer blob as the registry holds it (gzip is
                                 fine: docker load detects and decompresses it)
    manifest.json                [{"Config": …, "RepoTags": […], "Layers": [… in order]}]

:func:`archive_members` says what goes in, in order; each member is written as
:func:`tar_header` + its bytes + :func:`tar_padding`, then :data:`TAR_END`. Blob members
carry their digest and size so the bytes can be streamed and checked on the way.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

from p2pdist.core.digest import Digest
from p2pdist.shim.resolve import BlobRef, ResolvedImage

BLOCK = 512
TAR_END = b"\0" * (2 * BLOCK)
FIXED_MTIME = 0


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    blob: BlobRef | None = None  # streamed from the swarm and checked against its digest
    data: bytes | None = None  # small, inline (manifest.json)
    directory: bool = False


def tar_header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = FIXED_MTIME
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    # PAX: sizes past 8 GiB and long names stay exact
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def tar_padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def archive_manifest(config: Digest, layers: Sequence[Digest], repo_tags: Sequence[str] = ()) -> bytes:
    return json.dumps([{"Config": f"{config.hex}.json", "RepoTags": list(repo_tags),
                        "Layers": [f"{d.hex}/layer.tar" for d in layers]}]).encode()


def archive_members(image: ResolvedImage, repo_tags: Sequence[str] = ()) -> list[Member]:
    """Config, each distinct layer once, then manifest.json (which names layers in order,
    repeats included)."""
    members = [Member(f"{image.config.digest.hex}.json", image.config.size, blob=image.config)]
    seen: set[Digest] = set()
    for layer in image.layers:
        if layer.digest in seen:
            continue
        seen.add(layer.digest)
        members.append(Member(f"{layer.digest.hex}/", 0, directory=True))
        members.append(Member(f"{layer.digest.hex}/layer.tar", layer.size, blob=layer))
    manifest = archive_manifest(image.config.digest, [x.digest for x in image.layers], repo_tags)
    members.append(Member("manifest.json", len(manifest), data=manifest))
    return members


def member_header(m: Member) -> bytes:
    return tar_header(m.name, m.size, directory=m.directory)


def build_archive(image: ResolvedImage, blobs: dict[Digest, bytes], repo_tags: Sequence[str] = ()) -> bytes:
    """A whole archive in memory (for tests and tiny images only)."""
    out = io.BytesIO()
    for m in archive_members(image, repo_tags):
        out.write(member_header(m))
        body = m.data if m.data is not None else (blobs[m.blob.digest] if m.blob else b"")
        out.write(body)
        out.write(tar_padding(len(body)))
    out.write(TAR_END)
    return out.getvalue()
