"""Wiring a node's container runtime to its peer's registry mirror (``p2pdist configure``).

- dockerd: ``registry-mirrors`` in ``daemon.json`` (applies to docker.io names only; the
  mirror URL must have no path). Merged into an existing file: every other key is kept,
  the mirror goes first, other mirrors stay behind it as fall-backs.
- containerd: ``<hosts dir>/<registry>/hosts.toml`` — ``server`` is the real upstream,
  the mirror a ``[host."…"]`` with ``pull`` and ``resolve`` (containerd adds ``?ns=<registry>``,
  which the mirror uses to pick its upstream).

Pure formatting (``format_*``/``merge_*``) plus one atomic write (temp in the same dir,
fsync, rename; the old file's mode kept).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from p2pdist.core.errors import BadRequest
from p2pdist.shim.reference import DOCKER_HUB, DOCKER_HUB_URL

DEFAULT_MIRROR = "http://127.0.0.1:7401"
DEFAULT_DAEMON_JSON = "/etc/docker/daemon.json"
DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"


def parse_mirror(url: str) -> str:
    """An ``http(s)://host[:port]`` URL with no path (what dockerd accepts), normalised."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"bad mirror URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"bad mirror URL {url!r}: expected http(s)://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise BadRequest(f"bad mirror URL {url!r}: a registry mirror URL has no path, query or credentials")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def upstream_server(registry: str) -> str:
    return DOCKER_HUB_URL if registry == DOCKER_HUB else f"https://{registry}"


def merge_daemon_json(existing: dict[str, Any] | None, mirror: str) -> dict[str, Any]:
    """``existing`` with ``mirror`` first in ``registry-mirrors`` (other keys untouched)."""
    doc = dict(existing or {})
    old = doc.get("registry-mirrors") or []
    if not isinstance(old, list):
        raise BadRequest("daemon.json: 'registry-mirrors' is not a list")
    rest = [m for m in old if isinstance(m, str) and m.rstrip("/") != mirror.rstrip("/")]
    doc["registry-mirrors"] = [mirror, *rest]
    return doc


def format_daemon_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def read_daemon_json(path: Path) -> dict[str, Any] | None:
    """The current daemon.json, None if absent; a clear error if it is not a JSON object."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{path} is not valid JSON ({exc}); fix it first, nothing was changed") from exc
    if not isinstance(doc, dict):
        raise BadRequest(f"{path} is not a JSON object; fix it first, nothing was changed")
    return doc


def _toml_string(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for these values


def format_hosts_toml(registry: str, mirror: str) -> str:
    return (f"server = {_toml_string(upstream_server(registry))}\n\n"
            f"[host.{_toml_string(mirror)}]\n"
            '  capabilities = ["pull", "resolve"]\n')


def hosts_toml_path(hosts_dir: Path, registry: str) -> Path:
    if not registry or "/" in registry or registry in (".", ".."):
        raise BadRequest(f"bad registry name {registry!r}")
    return hosts_dir / registry / "hosts.toml"


def write_atomically(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a
    half-written one; an existing file's mode is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
