"""Fixtures for the real-component tests: the CNCF registry (anonymous, basic, token auth),
a private dockerd + containerd, and the test images, built once per session.

Trio fixtures cannot be session-scoped under pytest-trio, so daemons are started per test
(each is cheap: registry ~0.05 s, containerd + dockerd ~1 s) while image blobs are built
once per session into an on-disk cache by a sync session fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pdist.testing_real import (
    ComponentMissing,
    Containerd,
    Dockerd,
    ImageCache,
    Registry,
    TestImages,
    require_binaries,
    require_root,
    start_containerd,
    start_dockerd,
    start_registry,
)

USERS = {"alice": "alice-secret", "bob": "bob-secret"}
PRIVATE = {"private/*"}


def _skip_if_missing(fn, *args):  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except ComponentMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    return ImageCache(tmp_path_factory.mktemp("image-cache"))


@pytest.fixture(scope="session")
def images(image_cache: ImageCache) -> TestImages:
    """Every ready-made test image, built (deterministically) once per session."""
    imgs = TestImages(image_cache)
    try:
        imgs.build_all()
    except ComponentMissing as exc:
        pytest.skip(str(exc))
    return imgs


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    """An anonymous registry."""
    _skip_if_missing(require_binaries, "docker-registry")
    async with start_registry(tmp_path, auth="none") as reg:
        yield reg


@pytest.fixture
async def basic_registry(tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry behind htpasswd basic auth (users: ``USERS``; every repo needs a user)."""
    _skip_if_missing(require_binaries, "docker-registry")
    async with start_registry(tmp_path, auth="basic", users=USERS) as reg:
        yield reg


@pytest.fixture
async def token_registry(tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry with bearer-token auth: anonymous pull on public repos, ``private/*``
    only for ``USERS``. ``token_registry.token_server.requests`` records the token flow."""
    _skip_if_missing(require_binaries, "docker-registry")
    async with start_registry(tmp_path, auth="token", users=USERS, private=PRIVATE) as reg:
        yield reg


@pytest.fixture
async def containerd() -> AsyncIterator[Containerd]:
    """A private containerd (use ``containerd.sock`` with ``ctr_pull``)."""
    _skip_if_missing(require_root)
    _skip_if_missing(require_binaries, "containerd", "ctr")
    async with start_containerd() as c:
        yield c


@pytest.fixture
async def dockerd() -> AsyncIterator[Dockerd]:
    """A private dockerd (own containerd, no mirrors; ``await dockerd.set_mirrors([...])``
    to point docker.io at a mirror)."""
    _skip_if_missing(require_root)
    _skip_if_missing(require_binaries, "dockerd", "docker", "containerd", "ctr")
    async with start_dockerd() as d:
        yield d
