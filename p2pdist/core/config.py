"""Configuration: frozen values, validated once at start, passed in.

Sources, later ones win: defaults → a TOML file (section ``[tracker]`` or ``[peer]``) →
``P2PDIST_<KEY>`` environment variables (e.g. ``P2PDIST_UPLOAD_SLOTS=4``) → command-line
flags. Every error is a :class:`ConfigError` naming the key and the reason. Nothing below
a composition root reads the environment: services receive these objects.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from p2pdist.core.errors import ConfigError
from p2pdist.core.sizes import parse_size
from p2pdist.core.tls import ClusterTls, load_cluster_tls

TOPOLOGIES = ("tree", "swarm")
CHUNK_POLICIES = ("rarest", "sequential")


def _choice(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class TrackerConfig:
    listen: str = "0.0.0.0:7400"
    advertise: str | None = None  # host:port peers use to fetch chunks from the tracker (its seed role)
    data_dir: str = "/var/lib/p2pdist/tracker"
    capacity: int | None = field(default=None, metadata={"size": True})
    direct_io: bool = True  # chunk bytes past the page cache (storage/direct.py)
    topology: str = field(default="swarm", metadata=_choice(*TOPOLOGIES))
    fanout: int = 4  # tree: children per parent
    swarm_size: int = 12  # swarm: neighbours handed to a peer (more fill its fetches; bench/RESULTS.md sim)
    peer_ttl: float = 30.0  # a peer that has not announced for this long is forgotten
    announce_interval: float = 5.0  # the interval told to idle peers; downloading peers announce faster
    upload_slots: int = 4  # the seed's concurrent uploads: few, so each chunk leaves it fast (bench/lab.py)
    seed_grace: float = 5.0  # swarm, while a blob streams in: a chunk the seed sent goes to no other peer for this long
    stale_after: float = 90.0  # a peer whose last heartbeat is older is shown as stale
    cluster_secret: str | None = field(default=None, repr=False)  # shared by trackers and peers; None: no component auth
    # mTLS, the other way components authenticate (core/tls.py): PEM paths of this
    # component's certificate and key and of the cluster CA; all three or none
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    origin_concurrency: int = 4  # back-to-source budget: concurrent origin fetches per origin host
    log_level: str = field(default="info", metadata=_choice("debug", "info", "warning", "error"))
    log_format: str = field(default="text", metadata=_choice("text", "json"))

    def validate(self) -> None:
        _positive(self, "fanout", "swarm_size", "peer_ttl", "announce_interval", "upload_slots", "stale_after",
                  "origin_concurrency")
        if self.seed_grace < 0:
            raise ConfigError(f"config key 'seed_grace': must not be negative, got {self.seed_grace}")
        _hostport(self, "listen")
        if self.advertise is not None:
            _hostport(self, "advertise")
        self.cluster_tls()

    def cluster_tls(self) -> ClusterTls | None:
        """The mTLS contexts of ``tls_*`` (None without them); ConfigError naming the key."""
        return load_cluster_tls(self.tls_cert, self.tls_key, self.tls_ca)


@dataclass(frozen=True)
class PeerConfig:
    listen: str = "0.0.0.0:7401"
    advertise: str | None = None  # host:port other peers use to reach this one
    trackers: tuple[str, ...] = ()  # tracker base URLs; empty = no swarm, back-to-source only
    data_dir: str = "/var/lib/p2pdist/peer"
    capacity: int | None = field(default=None, metadata={"size": True})
    direct_io: bool = True  # chunk bytes past the page cache (storage/direct.py)
    peer_id: str | None = None
    zone: str = ""
    # Few transfers at a time, each fast: a chunk a peer just received is passed on
    # sooner (bench/sim.py and bench/lab.py; RESULTS.md "What moved the numbers").
    upload_slots: int = 4  # concurrent chunk uploads; past it a peer answers 503
    max_in_flight: int = 4  # concurrent chunk fetches per download
    per_source_in_flight: int = 1  # per source while many can serve; with few, each takes a share of max_in_flight
    chunk_timeout: float = 10.0  # per-chunk deadline before asking elsewhere
    peer_attempts: int = 2  # tries from peers before a chunk goes back to source
    fallback_wait: float = 2.0  # tree: how long a chunk waits for its parents before the seed is asked
    back_to_source: bool = True
    chunk_policy: str = field(default="rarest", metadata=_choice(*CHUNK_POLICIES))
    wire_compression: str = field(default="auto", metadata=_choice("auto", "off"))
    announce_interval: float = 0.25  # while downloading: how fast peers learn of each other's new chunks
    # swarm, for a task with more peers than one tracker core can follow (past ~1,250):
    # ask each neighbour what it holds this often (0: never), and announce and poll the map
    # only every announce_interval -- set that to about (peers / 5,000) seconds. Below
    # that size it costs time (bench/RESULTS.md sim)
    have_poll_interval: float = 0.0
    heartbeat_interval: float = 30.0  # how often the peer reports itself to the tracker
    cluster_secret: str | None = field(default=None, repr=False)  # sent to trackers and peers, required from them
    tls_cert: str | None = None  # mTLS: as the tracker's (core/tls.py); with them the peer speaks TLS to every peer
    tls_key: str | None = None
    tls_ca: str | None = None
    upload_rate: int | None = field(default=None, metadata={"size": True})  # bytes/s served to peers; None: uncapped
    download_rate: int | None = field(default=None, metadata={"size": True})  # bytes/s fetched from peers
    upstreams: tuple[str, ...] = ()  # registry mirror: "HOST=URL", e.g. "docker.io=http://127.0.0.1:5101"
    auth_cache_ttl: float = 30.0  # mirror: how long a client's right to read a repository is remembered
    tag_cache_ttl: float = 0.0  # mirror: how long a tag's digest is remembered (0: ask upstream every time)
    log_level: str = field(default="info", metadata=_choice("debug", "info", "warning", "error"))
    log_format: str = field(default="text", metadata=_choice("text", "json"))

    def upstream_map(self) -> dict[str, str]:
        """``upstreams`` as {registry host: base URL}, in the order given."""
        return dict(u.split("=", 1) for u in self.upstreams)

    def validate(self) -> None:
        for u in self.upstreams:
            host, sep, url = u.partition("=")
            if not sep or not host or not url.startswith(("http://", "https://")):
                raise ConfigError(f"config key 'upstreams': {u!r} is not HOST=URL with an http(s) URL")
        if self.auth_cache_ttl < 0 or self.tag_cache_ttl < 0:
            raise ConfigError("config keys 'auth_cache_ttl' and 'tag_cache_ttl' must not be negative")
        if self.have_poll_interval < 0:
            raise ConfigError(f"config key 'have_poll_interval': must not be negative (0 turns it off), "
                              f"got {self.have_poll_interval}")
        _positive(self, "upload_slots", "max_in_flight", "per_source_in_flight", "chunk_timeout",
                  "peer_attempts", "announce_interval", "heartbeat_interval")
        _hostport(self, "listen")
        if self.advertise is not None:
            _hostport(self, "advertise")
        for t in self.trackers:
            if not t.startswith(("http://", "https://")):
                raise ConfigError(f"config key 'trackers': {t!r} is not an http(s) URL")
        if self.cluster_tls() is not None and not self.cluster_secret:
            plain = [t for t in self.trackers if t.startswith("http://")]
            if plain:
                # such a call could carry neither the certificate nor the secret: refused
                raise ConfigError(f"config key 'trackers': {plain[0]!r} is plain HTTP, but with tls_* and no "
                                  f"cluster_secret the trackers must be reached over https://")
        # the tracker refuses announces whose peer_id or zone break these patterns (wire.tracker)
        if self.peer_id is not None and not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", self.peer_id):
            raise ConfigError(f"config key 'peer_id': {self.peer_id[:80]!r} must be 1-128 of A-Za-z0-9._:-")
        if not re.fullmatch(r"[A-Za-z0-9._/-]{0,128}", self.zone):
            raise ConfigError(f"config key 'zone': {self.zone[:80]!r} must be at most 128 of A-Za-z0-9._/-")

    def cluster_tls(self) -> ClusterTls | None:
        """The mTLS contexts of ``tls_*`` (None without them); ConfigError naming the key."""
        return load_cluster_tls(self.tls_cert, self.tls_key, self.tls_ca)


def _positive(cfg: Any, *keys: str) -> None:
    for k in keys:
        if getattr(cfg, k) <= 0:
            raise ConfigError(f"config key {k!r}: must be positive, got {getattr(cfg, k)!r}")


def _hostport(cfg: Any, key: str) -> None:
    value = getattr(cfg, key)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"config key {key!r}: expected HOST:PORT, got {value!r}")


# keys a running service applies on reload (SIGHUP or a changed file); the rest need a restart
LIVE_KEYS = {
    TrackerConfig: {"topology", "fanout", "swarm_size", "upload_slots", "seed_grace", "log_level", "log_format",
                    "peer_ttl", "announce_interval", "stale_after"},
    PeerConfig: {"upload_rate", "download_rate", "upload_slots", "log_level", "log_format",
                 "max_in_flight", "per_source_in_flight", "chunk_timeout", "peer_attempts", "fallback_wait",
                 "back_to_source", "chunk_policy", "wire_compression", "announce_interval",
                 "heartbeat_interval", "auth_cache_ttl", "tag_cache_ttl"},
}


def changed_keys(old: Any, new: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)}


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


C = TypeVar("C", TrackerConfig, PeerConfig)


def _coerce(cls: type, f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    key = f"config key {f.name!r} (from {source})"
    hint = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if raw is None or (optional and raw in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required")
    try:
        if f.metadata.get("size"):
            value: Any = parse_size(raw)
        elif base is bool:
            if isinstance(raw, bool):
                value = raw
            elif isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                value = raw.lower() in ("1", "true", "yes", "on")
            else:
                raise ValueError(f"expected true or false, got {raw!r}")
        elif base is int:
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise ValueError(f"expected an integer, got {raw!r}")
            value = int(raw)
        elif base is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ValueError(f"expected a number, got {raw!r}")
            value = float(raw)
        elif typing.get_origin(base) is tuple:
            if isinstance(raw, str):
                raw = [s for s in (p.strip() for p in raw.split(",")) if s]
            if not isinstance(raw, list | tuple) or not all(isinstance(s, str) for s in raw):
                raise ValueError(f"expected a list of strings, got {raw!r}")
            value = tuple(raw)
        else:
            if not isinstance(raw, str):
                raise ValueError(f"expected a string, got {raw!r}")
            value = raw
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from exc
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def load_config(cls: type[C], *, path: str | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> C:
    """Build and validate a config of ``cls`` from a TOML file, environment and overrides."""
    section = "tracker" if cls is TrackerConfig else "peer"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [{section}] must be a table")
        for k, v in table.items():
            if k not in fields:
                raise ConfigError(f"config key {section}.{k!r} (from {path}): unknown key")
            values[k] = _coerce(cls, fields[k], v, path)
    for k, v in (env or {}).items():
        if not k.startswith("P2PDIST_"):
            continue
        name = k[len("P2PDIST_"):].lower()
        if name in fields:
            values[name] = _coerce(cls, fields[name], v, f"${k}")
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in fields:
            raise ConfigError(f"config key {k!r}: unknown key")
        values[k] = _coerce(cls, fields[k], v, "command line")
    cfg = cls(**values)
    cfg.validate()
    return cfg
