"""Sans-I/O message types and codecs of the tracker API.

    POST /api/v1/tasks            RegisterTask      -> {"task_id", "state"}
    GET  /api/v1/tasks/<id>/map   ?known=N&wait=S   -> MapProgress (long poll)
    GET  /api/v1/tasks/<id>/fresh ?wait=S           -> a chunk the seed hands the asker
                                                       (x-chunk-index, x-chunk-name), or
                                                       204 with x-fresh: wait | end (long poll)
    POST /api/v1/announce         Announce          -> AnnounceReply

The map and announce answers tell the asking host which chunks the seed withholds from
it for now (``MapProgress.withheld``, ``Neighbour.withheld``: first copies it handed to
other hosts, engine.firstcopy), so it does not ask for them.

Decoders validate strictly and raise :class:`BodyInvalid` (or :class:`DigestInvalid`)
naming the field; encoders produce plain JSON-able dicts. Chunk holdings travel as a
bitmap (bit ``i`` of byte ``i // 8``, most significant bit first), base64-encoded, or the
string ``"all"`` for a complete copy.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from p2pdist.core.digest import Digest, is_hex64
from p2pdist.core.errors import BodyInvalid
from p2pdist.core.task import TaskSpec, normalise_url

MAX_ANNOUNCE_BYTES = 1024 * 1024
MAX_TASKS_PER_ANNOUNCE = 1024
MAX_HEADERS = 64
MAX_CHUNKS_PER_TASK = 1 << 20
_TASK_ID = re.compile(r"[0-9a-f]{64}|u[0-9a-f]{40}")
_PEER_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ADDR = re.compile(r"[A-Za-z0-9.\-]{1,253}:\d{1,5}|\[[0-9a-fA-F:]{2,45}\]:\d{1,5}")
_ZONE = re.compile(r"[A-Za-z0-9._/-]{0,128}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")


def _obj(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise BodyInvalid(f"{what}: expected a JSON object")
    return d


def _str(d: dict[str, Any], key: str, what: str, *, pattern: re.Pattern[str] | None = None,
         optional: bool = False, default: str | None = None) -> Any:
    v = d.get(key, default)
    if v is None:
        if optional:
            return None
        raise BodyInvalid(f"{what}: missing field {key!r}")
    if not isinstance(v, str) or (pattern is not None and not pattern.fullmatch(v)):
        raise BodyInvalid(f"{what}: field {key!r} is malformed")
    return v


def _bool(d: dict[str, Any], key: str, what: str) -> bool:
    v = d.get(key, False)
    if not isinstance(v, bool):
        raise BodyInvalid(f"{what}: field {key!r} must be true or false")
    return v


def parse_task_id(text: str) -> str:
    if not isinstance(text, str) or not _TASK_ID.fullmatch(text):
        raise BodyInvalid(f"malformed task id {str(text)[:80]!r}", code="NAME_INVALID")
    return text


# -- holdings bitmaps -------------------------------------------------------------------

def encode_have(have: Iterable[int], complete: bool = False) -> str:
    if complete:
        return "all"
    idx = sorted(have)
    if not idx:
        return ""
    bits = bytearray(idx[-1] // 8 + 1)
    for i in idx:
        bits[i >> 3] |= 0x80 >> (i & 7)
    return base64.b64encode(bytes(bits)).decode()


def decode_have(text: Any, n_chunks: int | None = None) -> set[int] | None:
    """Decode a holdings bitmap; ``None`` means "all" (the caller knows the count)."""
    if text == "all":
        return None if n_chunks is None else set(range(n_chunks))
    if not isinstance(text, str) or len(text) > (MAX_CHUNKS_PER_TASK // 8) * 4 // 3 + 4:
        raise BodyInvalid("have: expected a base64 bitmap or \"all\"")
    try:
        bits = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BodyInvalid("have: not valid base64") from exc
    out: set[int] = set()
    for byte_i, b in enumerate(bits):
        if b:
            for bit in range(8):
                if b & (0x80 >> bit):
                    out.add(byte_i * 8 + bit)
    return out


# -- register ---------------------------------------------------------------------------

def encode_register(spec: TaskSpec) -> dict[str, Any]:
    return {"url": spec.url, "digest": str(spec.digest) if spec.digest else None,
            "headers": [[k, v] for k, v in spec.headers]}


def decode_register(body: Any) -> TaskSpec:
    d = _obj(body, "task")
    url = _str(d, "url", "task")
    normalise_url(url)  # validates
    digest_s = _str(d, "digest", "task", optional=True)
    digest = Digest.parse(digest_s) if digest_s is not None else None
    raw = d.get("headers", [])
    if not isinstance(raw, list) or len(raw) > MAX_HEADERS:
        raise BodyInvalid(f"task: headers must be a list of at most {MAX_HEADERS} [name, value] pairs")
    headers: list[tuple[str, str]] = []
    for h in raw:
        if (not isinstance(h, list) or len(h) != 2 or not isinstance(h[0], str)
                or not isinstance(h[1], str) or not _HEADER_NAME.fullmatch(h[0])
                or len(h[1]) > 8192 or "\r" in h[1] or "\n" in h[1]):
            raise BodyInvalid("task: each header must be [name, value] with a valid name and a one-line value")
        headers.append((h[0], h[1]))
    return TaskSpec(url, digest, tuple(headers))


# -- map progress -----------------------------------------------------------------------

@dataclass(frozen=True)
class MapProgress:
    """What the tracker knows of a task's chunk map so far (cut-through).

    ``chunks`` lists hashes from index ``offset`` on. ``sealed`` means the whole blob's
    sha256 was checked and ``digest`` is final; ``error`` means the task failed."""

    task_id: str
    chunk_size: int | None
    size: int | None
    offset: int
    chunks: tuple[str, ...]
    total: int | None  # final chunk count when known
    sealed: bool = False
    digest: str | None = None
    error: dict[str, str] | None = None
    # of ``chunks``, the indices the seed withholds from the asker for now: it handed
    # them to other peers as first copies (engine.firstcopy), so asking it would be refused
    withheld: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {"task_id": self.task_id, "chunk_size": self.chunk_size, "size": self.size,
             "offset": self.offset, "chunks": list(self.chunks), "total": self.total,
             "sealed": self.sealed, "digest": self.digest, "error": self.error}
        if self.withheld:
            d["withheld"] = list(self.withheld)
        return d

    @classmethod
    def from_dict(cls, body: Any) -> MapProgress:
        d = _obj(body, "map")
        chunks = d.get("chunks")
        if not isinstance(chunks, list) or not all(is_hex64(c) for c in chunks):
            raise BodyInvalid("map: chunks must be a list of 64-hex hashes")
        ints = {}
        for k in ("chunk_size", "size", "offset", "total"):
            v = d.get(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise BodyInvalid(f"map: field {k!r} must be a non-negative integer")
            ints[k] = v
        digest = d.get("digest")
        if digest is not None:
            Digest.parse(digest)
        err = d.get("error")
        if err is not None and not (isinstance(err, dict) and isinstance(err.get("code"), str)
                                    and isinstance(err.get("message"), str)):
            raise BodyInvalid("map: error must be {code, message}")
        offset = ints["offset"] or 0
        withheld = d.get("withheld", [])
        if not isinstance(withheld, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and offset <= i < offset + len(chunks)
                for i in withheld):
            raise BodyInvalid("map: withheld must list indices of the chunks in this answer")
        return cls(parse_task_id(d.get("task_id", "")), ints["chunk_size"], ints["size"],
                   offset, tuple(chunks), ints["total"], _bool(d, "sealed", "map"),
                   digest, err, tuple(withheld))


# -- announce ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskHave:
    task_id: str
    have: str  # encoded bitmap or "all"
    complete: bool = False


@dataclass(frozen=True)
class Announce:
    peer_id: str
    addr: str
    zone: str = ""
    tasks: tuple[TaskHave, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "addr": self.addr, "zone": self.zone,
                "tasks": [{"task_id": t.task_id, "have": t.have, "complete": t.complete}
                          for t in self.tasks]}


def decode_announce(body: Any) -> Announce:
    d = _obj(body, "announce")
    peer_id = _str(d, "peer_id", "announce", pattern=_PEER_ID)
    addr = _str(d, "addr", "announce", pattern=_ADDR)
    zone = _str(d, "zone", "announce", pattern=_ZONE, default="")
    raw = d.get("tasks", [])
    if not isinstance(raw, list) or len(raw) > MAX_TASKS_PER_ANNOUNCE:
        raise BodyInvalid(f"announce: tasks must be a list of at most {MAX_TASKS_PER_ANNOUNCE}")
    tasks = []
    for t in raw:
        t = _obj(t, "announce task")
        have = t.get("have", "")
        decode_have(have)  # validates
        tasks.append(TaskHave(parse_task_id(t.get("task_id", "")), have, _bool(t, "complete", "announce task")))
    return Announce(peer_id, addr, zone, tuple(tasks))


@dataclass(frozen=True)
class Neighbour:
    peer_id: str
    addr: str
    zone: str
    have: str  # encoded
    fallback: bool = False  # a last resort: ask it only when the others cannot serve
    seed: bool = False  # holds every chunk the map lists (the tracker): its ``have`` is stale at once
    withheld: str = ""  # encoded: chunks a seed will not send the asker for now (first copies gone to others)

    def to_dict(self) -> dict[str, Any]:
        d = {"peer_id": self.peer_id, "addr": self.addr, "zone": self.zone, "have": self.have,
             "fallback": self.fallback, "seed": self.seed}
        if self.withheld:
            d["withheld"] = self.withheld
        return d


@dataclass(frozen=True)
class AnnounceReply:
    interval: float
    neighbours: dict[str, tuple[Neighbour, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"interval": self.interval,
                "tasks": {tid: {"neighbours": [n.to_dict() for n in ns]}
                          for tid, ns in self.neighbours.items()}}

    @classmethod
    def from_dict(cls, body: Any) -> AnnounceReply:
        d = _obj(body, "announce reply")
        interval = d.get("interval")
        tasks = d.get("tasks")
        if (not isinstance(interval, int | float) or isinstance(interval, bool)
                or not math.isfinite(interval) or interval < 0 or not isinstance(tasks, dict)):
            raise BodyInvalid("announce reply: interval (a finite number >= 0) and tasks required")
        out: dict[str, tuple[Neighbour, ...]] = {}
        for tid, t in tasks.items():
            ns = _obj(t, "announce reply task").get("neighbours", [])
            if not isinstance(ns, list):
                raise BodyInvalid("announce reply: neighbours must be a list")
            out[parse_task_id(tid)] = tuple(
                Neighbour(_str(n, "peer_id", "neighbour", pattern=_PEER_ID),
                          _str(n, "addr", "neighbour", pattern=_ADDR),
                          _str(n, "zone", "neighbour", pattern=_ZONE, default=""),
                          n.get("have", "") if isinstance(n.get("have", ""), str) else "",
                          _bool(n, "fallback", "neighbour"), _bool(n, "seed", "neighbour"),
                          n.get("withheld", "") if isinstance(n.get("withheld", ""), str) else "")
                for n in (_obj(x, "neighbour") for x in ns))
        return cls(float(interval), out)


# -- heartbeat --------------------------------------------------------------------------

MAX_HEARTBEAT_BYTES = 16 * 1024
_VERSION = re.compile(r"[A-Za-z0-9.+_-]{1,64}")
HEARTBEAT_NUMBERS = ("uptime_s", "cpu_percent", "rss_bytes", "disk_used_bytes", "upload_bps",
                     "download_bps", "active_tasks")


@dataclass(frozen=True)
class Heartbeat:
    """A peer's periodic report of itself (every 30 s by default)."""

    peer_id: str
    addr: str
    version: str
    zone: str = ""
    uptime_s: float = 0.0
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    disk_used_bytes: int = 0
    disk_quota_bytes: int | None = None
    upload_bps: float = 0.0
    download_bps: float = 0.0
    active_tasks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def decode_heartbeat(body: Any) -> Heartbeat:
    d = _obj(body, "heartbeat")
    numbers: dict[str, Any] = {}
    for k in HEARTBEAT_NUMBERS:
        v = d.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0 <= v < 1e18):
            raise BodyInvalid(f"heartbeat: field {k!r} must be a non-negative number")
        numbers[k] = v
    quota = d.get("disk_quota_bytes")
    if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0):
        raise BodyInvalid("heartbeat: field 'disk_quota_bytes' must be a non-negative integer or null")
    return Heartbeat(
        _str(d, "peer_id", "heartbeat", pattern=_PEER_ID), _str(d, "addr", "heartbeat", pattern=_ADDR),
        _str(d, "version", "heartbeat", pattern=_VERSION), _str(d, "zone", "heartbeat", pattern=_ZONE, default=""),
        float(numbers["uptime_s"]), float(numbers["cpu_percent"]), int(numbers["rss_bytes"]),
        int(numbers["disk_used_bytes"]), quota, float(numbers["upload_bps"]), float(numbers["download_bps"]),
        int(numbers["active_tasks"]))
