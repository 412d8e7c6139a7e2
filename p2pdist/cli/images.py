"""What ``pull`` and ``preheat`` share at the edge: which registry URL and credentials an
image reference means on this machine (``--registry HOST=URL``, ``~/.docker/config.json``
or ``$DOCKER_CONFIG/config.json``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from p2pdist.backend.registry import ANONYMOUS, Credentials, credentials_from_docker_config
from p2pdist.shim.reference import (
    DOCKER_HUB,
    ImageReference,
    Platform,
    default_platform,
    default_registry_url,
    parse_image_reference,
    parse_platform,
    parse_registry_overrides,
)


def registry_url(ref: ImageReference, overrides: Sequence[str]) -> str:
    return parse_registry_overrides(overrides).get(ref.registry) or default_registry_url(ref.registry)


def registry_credentials(ref: ImageReference, env: Mapping[str, str] = os.environ) -> Credentials:
    """The docker CLI's stored login for the reference's registry (anonymous if none).
    Credential helpers (``credsStore``) are not consulted."""
    base = env.get("DOCKER_CONFIG")
    path = Path(base) / "config.json" if base else None
    # docker login stores Docker Hub under https://index.docker.io/v1/
    hosts = ("index.docker.io", DOCKER_HUB) if ref.registry == DOCKER_HUB else (ref.registry,)
    for host in hosts:
        creds = credentials_from_docker_config(host, path)
        if creds != ANONYMOUS:
            return creds
    return ANONYMOUS


def image_target(args: object, env: Mapping[str, str] = os.environ
                 ) -> tuple[ImageReference, Platform, str, Credentials]:
    """What an image command's arguments name: the reference, the platform (``--platform``
    or this machine's), the registry URL and the stored credentials."""
    ref = parse_image_reference(args.image)  # type: ignore[attr-defined]
    plat = parse_platform(args.platform) if args.platform else default_platform()  # type: ignore[attr-defined]
    return ref, plat, registry_url(ref, args.registry), registry_credentials(ref, env)  # type: ignore[attr-defined]
