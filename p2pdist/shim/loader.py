"""Where images go: the :class:`ImageLoader` boundary and Docker behind it (docker SDK).

Every method blocks: callers run them through ``trio.to_thread`` with a
``CapacityLimiter``. Errors are :class:`P2PError`s: Docker unreachable →
:class:`Unavailable`; Docker refusing the archive → :class:`LoadFailed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from p2pdist.core.errors import P2PError, Unavailable


class LoadFailed(P2PError):
    code, status = "LOAD_FAILED", 502


class ImageLoader(Protocol):
    def image_id(self, name: str) -> str | None:
        """The Id of the image ``name`` (a name or ``sha256:…`` id), None if absent."""

    def load(self, archive: Iterator[bytes]) -> str | None:
        """Load a docker-archive streamed from ``archive``; the loaded image's Id if said."""

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        """Point ``repository:tag`` at ``image_id``."""


class DockerLoader:
    """Docker through the SDK's low-level ``APIClient``. ``base_url`` None: ``DOCKER_HOST``
    or the default socket. Connecting (API version negotiation) happens here."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 600):
        import docker
        from docker.errors import DockerException

        self._errors = docker.errors
        try:
            kwargs = docker.utils.kwargs_from_env() if base_url is None else {"base_url": base_url}
            self.api = docker.APIClient(version="auto", timeout=timeout, **kwargs)
        except DockerException as exc:
            where = base_url or "DOCKER_HOST / the default socket"
            raise Unavailable(f"Docker is not reachable at {where}: {_short(exc)}") from exc

    def close(self) -> None:
        self.api.close()

    def image_id(self, name: str) -> str | None:
        try:
            info = self.api.inspect_image(name)
        except self._errors.ImageNotFound:
            return None
        except self._errors.DockerException as exc:
            raise Unavailable(f"Docker: {_short(exc)}") from exc
        return str(info.get("Id")) if isinstance(info, dict) else None

    def load(self, archive: Iterator[bytes]) -> str | None:
        loaded: str | None = None
        try:
            for line in self.api.load_image(archive, quiet=True):
                if not isinstance(line, dict):
                    continue
                if line.get("error") or line.get("errorDetail"):
                    detail = line.get("errorDetail")
                    msg = line.get("error") or (detail.get("message") if isinstance(detail, dict) else detail)
                    raise LoadFailed(f"docker load failed: {msg}")
                loaded = _loaded_id(str(line.get("stream", ""))) or loaded
        except self._errors.DockerException as exc:
            raise LoadFailed(f"docker load failed: {_short(exc)}") from exc
        except OSError as exc:  # requests' ConnectionError: docker hung up mid-upload
            raise LoadFailed(f"docker load failed: {_short(exc)}") from exc
        return loaded

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        try:
            self.api.tag(image_id, repository, tag, force=True)
        except self._errors.DockerException as exc:
            raise LoadFailed(f"docker tag {repository}:{tag} failed: {_short(exc)}") from exc


def _loaded_id(stream: str) -> str | None:
    # "Loaded image ID: sha256:…" (no RepoTags in the archive) or "Loaded image: name:tag"
    for line in stream.splitlines():
        if line.startswith("Loaded image ID: "):
            return line.removeprefix("Loaded image ID: ").strip()
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class MemoryLoader:
    """An in-memory twin: keeps each loaded archive's bytes and answers like Docker for
    the Id (sha256 of the config member named in manifest.json)."""

    def __init__(self) -> None:
        self.images: dict[str, str] = {}  # name or id -> id
        self.archives: list[bytes] = []
        self.max_piece = 0

    def image_id(self, name: str) -> str | None:
        return self.images.get(name)

    def load(self, archive: Iterator[bytes]) -> str | None:
        import hashlib
        import io
        import json
        import tarfile

        buf = bytearray()
        for piece in archive:
            self.max_piece = max(self.max_piece, len(piece))
            buf += piece
        self.archives.append(bytes(buf))
        with tarfile.open(fileobj=io.BytesIO(bytes(buf))) as tar:
            manifest: Any = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            config = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
            for layer in manifest[0]["Layers"]:
                tar.getmember(layer)
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        self.images[image_id] = image_id
        return image_id

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        self.images[f"{repository}:{tag}"] = image_id
