"""Bad input over real HTTP: every client mistake gets a 4xx with an OCI-style error body
(``{"errors":[{"code","message"}]}``), never a 500, and the service keeps serving.

Requests go through httpx where it sends them as written; where httpx would tidy the
request (dot segments in a path, a malformed request line) they go over a raw trio socket.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.core.digest import Digest, parse_chunk_name
from p2pdist.core.errors import P2PError
from p2pdist.testing import Cluster, StaticOrigin, make_blob, start_cluster
from p2pdist.wire.tracker import MAX_ANNOUNCE_BYTES, decode_announce

BLOB = make_blob(1000, seed=30)
HEX = "ab" * 32
GOOD_ANNOUNCE = {"peer_id": "p1", "addr": "127.0.0.1:9", "zone": "",
                 "tasks": [{"task_id": HEX, "have": "", "complete": False}]}


@dataclass
class Svc:
    cluster: Cluster
    client: httpx.AsyncClient

    def base(self, who: str) -> str:
        if who == "tracker":
            return self.cluster.tracker_url
        if who == "peer":
            return f"http://{self.cluster.peers[0].advertise}"
        return self.cluster.origin.base_url

    def addr(self, who: str) -> tuple[str, int]:
        host, _, port = self.base(who).removeprefix("http://").rpartition(":")
        return host, int(port)


@pytest.fixture
async def svc(nursery, tmp_path):
    origin = StaticOrigin({"b": BLOB})
    c = await start_cluster(nursery, tmp_path, peers=1, origin=origin)
    async with httpx.AsyncClient(timeout=10) as client:
        yield Svc(c, client)


def assert_error(r: httpx.Response, status: int, code: str | None) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"], body
    err = body["errors"][0]
    assert isinstance(err.get("code"), str) and isinstance(err.get("message"), str), body
    assert err["message"] and "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code, body


async def assert_alive(svc: Svc, who: str) -> None:
    base = svc.base(who)
    r = await svc.client.get(f"{base}/healthz" if who != "origin" else f"{base}/b")
    assert r.status_code == 200, r.text
    if who == "origin":
        assert r.content == BLOB
        return
    r = await svc.client.get(f"{base}/api/v1/status")
    assert r.status_code == 200 and r.json()["service"] == who


async def raw_exchange(svc: Svc, who: str, request: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send ``request`` bytes as they are; return (status, headers, body, closed_after)."""
    host, port = svc.addr(who)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in data:
                piece = await stream.receive_some(65536)
                assert piece, f"connection closed without a response: {data!r}"
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                piece = await stream.receive_some(65536)
                assert piece
                body += piece
            closed = False
            if headers.get("connection", "").lower() == "close":
                with trio.move_on_after(5):
                    closed = await stream.receive_some(1) == b""
        return status, headers, body, closed


def _json_error(status: int, body: bytes, want_status: int, want_code: str | None) -> None:
    assert status == want_status, (status, body[:300])
    err = json.loads(body)["errors"][0]
    assert isinstance(err["message"], str)
    if want_code is not None:
        assert err["code"] == want_code, err


# -- chunk names and paths ------------------------------------------------------------------

BAD_NAMES = [
    ("upper", HEX.upper(), 400, "NAME_INVALID"),
    ("63hex", HEX[:63], 400, "NAME_INVALID"),
    ("65hex", HEX + "a", 400, "NAME_INVALID"),
    ("nonhex", "zz" * 32, 400, "NAME_INVALID"),
    ("dotdot-encoded", "%2e%2e", 400, "NAME_INVALID"),
    ("space", "%20" + HEX[1:], 400, "NAME_INVALID"),
    ("nul", HEX[:10] + "%00" + HEX[11:], 400, "NAME_INVALID"),
    ("unknown", HEX, 404, "CHUNK_UNKNOWN"),
]


@pytest.mark.parametrize("who", ["tracker", "peer"])
@pytest.mark.parametrize(("case", "name", "status", "code"), BAD_NAMES, ids=[c[0] for c in BAD_NAMES])
async def test_bad_chunk_names(svc, who, case, name, status, code):
    r = await svc.client.get(f"{svc.base(who)}/chunks/{name}")
    assert_error(r, status, code)
    await assert_alive(svc, who)


TRAVERSALS = [
    b"/chunks/../../etc/passwd",
    b"/chunks/..%2F..%2Fetc%2Fpasswd",
    b"/chunks/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    b"/chunks/%2e%2e",
    b"/maps/..%2F..%2Fx",
    b"/maps/../../x",
    b"/maps/%2e%2e%2f%2e%2e%2fmaps",
    b"/api/v1/tasks/..%2F..%2Fetc%2Fpasswd",
    b"/api/v1/tasks/" + HEX.encode() + b"%2F..%2F..%2Fx/map",
    b"//etc/passwd",
]


@pytest.mark.parametrize("who", ["tracker", "peer"])
@pytest.mark.parametrize("path", TRAVERSALS, ids=[p.decode() for p in TRAVERSALS])
async def test_path_traversal_refused(svc, who, path):
    status, _, body, _ = await raw_exchange(
        svc, who, b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert status in (400, 404), (status, body)
    _json_error(status, body, status, None)
    assert b"root:" not in body
    await assert_alive(svc, who)


async def test_unknown_map_and_task(svc):
    r = await svc.client.get(f"{svc.base('tracker')}/api/v1/tasks/{HEX}/map")
    assert_error(r, 404, "TASK_UNKNOWN")
    r = await svc.client.get(f"{svc.base('tracker')}/api/v1/tasks/{HEX.upper()}/map")
    assert_error(r, 400, "NAME_INVALID")
    r = await svc.client.get(f"{svc.base('peer')}/api/v1/tasks/{HEX}")
    assert_error(r, 404, "TASK_UNKNOWN")
    r = await svc.client.get(f"{svc.base('peer')}/maps/{HEX}")
    assert_error(r, 404, "BLOB_UNKNOWN")
    r = await svc.client.get(f"{svc.base('peer')}/maps/not-a-task")
    assert_error(r, 400, "NAME_INVALID")
    await assert_alive(svc, "tracker")
    await assert_alive(svc, "peer")


@pytest.mark.parametrize("query", ["known=abc", "known=-1", "known=1e3", "wait=abc",
                                   "known=99999999999999999999"])
async def test_bad_query_params(svc, query):
    # Register a real task so only the query is wrong.
    r = await svc.client.post(f"{svc.base('tracker')}/api/v1/tasks",
                              json={"url": svc.cluster.origin.url("b")})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    r = await svc.client.get(f"{svc.base('tracker')}/api/v1/tasks/{task_id}/map?{query}")
    assert_error(r, 400, "BAD_REQUEST")
    r = await svc.client.get(f"{svc.base('tracker')}/api/v1/tasks/{task_id}/map?known=0&wait=0")
    assert r.status_code == 200
    await assert_alive(svc, "tracker")


@pytest.mark.parametrize("who", ["tracker", "peer"])
async def test_unknown_route_and_wrong_method(svc, who):
    base = svc.base(who)
    assert_error(await svc.client.get(f"{base}/no/such/thing"), 404, "NOT_FOUND")
    assert_error(await svc.client.get(f"{base}/api/v1"), 404, "NOT_FOUND")
    assert_error(await svc.client.delete(f"{base}/api/v1/tasks"), 405, "UNSUPPORTED")
    assert_error(await svc.client.get(f"{base}/api/v1/tasks"), 405, "UNSUPPORTED")
    assert_error(await svc.client.post(f"{base}/healthz"), 405, "UNSUPPORTED")
    assert_error(await svc.client.put(f"{base}/chunks/{HEX}", content=b"x"), 405, "UNSUPPORTED")
    await assert_alive(svc, who)


# -- task registration ----------------------------------------------------------------------

BAD_TASKS = [
    ("digest-xyz", {"url": "http://h/x", "digest": "sha256:XYZ"}, "DIGEST_INVALID"),
    ("digest-md5", {"url": "http://h/x", "digest": "md5:" + "a" * 32}, "DIGEST_INVALID"),
    ("digest-upper", {"url": "http://h/x", "digest": "sha256:" + HEX.upper()}, "DIGEST_INVALID"),
    ("digest-short", {"url": "http://h/x", "digest": "sha256:" + HEX[:63]}, "DIGEST_INVALID"),
    ("digest-noalg", {"url": "http://h/x", "digest": HEX}, "DIGEST_INVALID"),
    ("digest-int", {"url": "http://h/x", "digest": 5}, None),
    ("url-ftp", {"url": "ftp://h/x"}, "URL_INVALID"),
    ("url-nohost", {"url": "http:///x"}, "URL_INVALID"),
    ("url-bare", {"url": "http://"}, "URL_INVALID"),
    ("url-creds", {"url": "http://u:p@h/x"}, "URL_INVALID"),
    ("url-badport", {"url": "http://h:99999/x"}, "URL_INVALID"),
    ("url-ipv6", {"url": "http://[::1/x"}, "URL_INVALID"),
    ("url-missing", {}, "BODY_INVALID"),
    ("url-int", {"url": 7}, None),
    ("not-object", [1, 2], "BODY_INVALID"),
    ("headers-bad", {"url": "http://h/x", "headers": [["bad name", "v"]]}, "BODY_INVALID"),
    ("headers-crlf", {"url": "http://h/x", "headers": [["x", "a\r\nb: c"]]}, "BODY_INVALID"),
]


@pytest.mark.parametrize("who", ["tracker", "peer"])
@pytest.mark.parametrize(("case", "body", "code"), BAD_TASKS, ids=[c[0] for c in BAD_TASKS])
async def test_bad_task_registration(svc, who, case, body, code):
    r = await svc.client.post(f"{svc.base(who)}/api/v1/tasks", json=body)
    assert_error(r, 400, code)
    await assert_alive(svc, who)


async def test_bad_fetch_bodies(svc):
    base = svc.base("peer")
    r = await svc.client.post(f"{base}/api/v1/fetch", content=b"{nope")
    assert_error(r, 400, "BODY_INVALID")
    r = await svc.client.post(f"{base}/api/v1/fetch",
                              json={"url": "http://h/x", "nodes": ["a b:1"]})
    assert_error(r, 400, "BODY_INVALID")
    r = await svc.client.post(f"{base}/api/v1/fetch",
                              json={"url": "http://h/x", "nodes": "127.0.0.1:1"})
    assert_error(r, 400, "BODY_INVALID")
    await assert_alive(svc, "peer")


# -- announces ------------------------------------------------------------------------------

def _announce(**changes):
    body = json.loads(json.dumps(GOOD_ANNOUNCE))
    for k, v in changes.items():
        if k.startswith("task_"):
            body["tasks"][0][k[5:]] = v
        else:
            body[k] = v
    return body


BAD_ANNOUNCES = [
    ("peer-id-int", _announce(peer_id=5)),
    ("peer-id-space", _announce(peer_id="a b")),
    ("peer-id-slash", _announce(peer_id="../x")),
    ("peer-id-long", _announce(peer_id="p" * 129)),
    ("peer-id-missing", {k: v for k, v in GOOD_ANNOUNCE.items() if k != "peer_id"}),
    ("addr-noport", _announce(addr="127.0.0.1")),
    ("addr-junk", _announce(addr="http://x:1/")),
    ("addr-list", _announce(addr=["127.0.0.1:1"])),
    ("zone-bad", _announce(zone="a zone")),
    ("tasks-dict", _announce(tasks={"a": 1})),
    ("task-not-object", _announce(tasks=[5])),
    ("task-id-bad", _announce(task_task_id="../../x")),
    ("task-id-upper", _announce(task_task_id=HEX.upper())),
    ("have-not-b64", _announce(task_have="!!!!")),
    ("have-int", _announce(task_have=12)),
    ("have-huge", _announce(task_have="A" * (200 * 1024))),
    ("complete-str", _announce(task_complete="yes")),
    ("array", [GOOD_ANNOUNCE]),
    ("null", None),
]


@pytest.mark.parametrize(("case", "body"), BAD_ANNOUNCES, ids=[c[0] for c in BAD_ANNOUNCES])
async def test_bad_announce(svc, case, body):
    r = await svc.client.post(f"{svc.base('tracker')}/api/v1/announce", json=body)
    assert_error(r, 400, None)
    r = await svc.client.post(f"{svc.base('tracker')}/api/v1/announce", json=GOOD_ANNOUNCE)
    assert r.status_code == 200, r.text
    await assert_alive(svc, "tracker")


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"\xff\xfe", b"[1,", b"1e999999"])
async def test_announce_not_json(svc, body):
    r = await svc.client.post(f"{svc.base('tracker')}/api/v1/announce", content=body,
                              headers={"content-type": "application/json"})
    assert_error(r, 400, None)
    await assert_alive(svc, "tracker")


async def test_oversized_announce(svc):
    big = json.dumps({**GOOD_ANNOUNCE, "pad": "x" * (MAX_ANNOUNCE_BYTES + 10)}).encode()
    url = f"{svc.base('tracker')}/api/v1/announce"
    # With a Content-Length: refused before the body is read.
    r = await svc.client.post(url, content=big)
    assert_error(r, 413, "SIZE_INVALID")
    await assert_alive(svc, "tracker")

    # Chunked, no Content-Length: refused once the limit is passed while reading.
    async def pieces():
        for i in range(0, len(big), 64 * 1024):
            yield big[i:i + 64 * 1024]

    try:
        r = await svc.client.post(url, content=pieces())
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server may close before the client finished sending: also a refusal
    else:
        assert_error(r, 413, "SIZE_INVALID")
    await assert_alive(svc, "tracker")


# -- ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "status"), [
    ("bytes=1000-", 416), ("bytes=5000-6000", 416), ("bytes=0-", 206), ("bytes=-0", 416),
    ("bytes=10-5", 416), ("bytes=0-1,5-6", 416), ("items=0-1", 416), ("bytes=abc", 416),
    ("bytes=990-5000", 206),
])
async def test_origin_range(svc, header, status):
    r = await svc.client.get(svc.cluster.origin.url("b"), headers={"range": header})
    if status == 206:
        assert r.status_code == 206
        start = int(header.split("=")[1].split("-")[0])
        assert r.content == BLOB[start:]
    else:
        assert_error(r, 416, "RANGE_INVALID")
    await assert_alive(svc, "origin")


async def test_range_past_end_has_content_range(svc):
    r = await svc.client.get(svc.cluster.origin.url("b"), headers={"range": "bytes=1000-"})
    assert_error(r, 416, "RANGE_INVALID")
    assert r.headers.get("content-range") == f"bytes */{len(BLOB)}"


# -- raw HTTP -------------------------------------------------------------------------------

RAW = [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /healthz HTTP/1.1 trailing\r\nhost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n",
    b"GET /heal thz HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: x\r\nx: " + b"a" * (20 * 1024) + b"\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
]


@pytest.mark.parametrize("who", ["tracker", "peer"])
@pytest.mark.parametrize("request_bytes", RAW, ids=range(len(RAW)))
async def test_malformed_http(svc, who, request_bytes):
    status, headers, body, closed = await raw_exchange(svc, who, request_bytes)
    assert 400 <= status < 500, (status, body)
    assert headers.get("connection", "").lower() == "close"
    assert closed
    _json_error(status, body, status, None)
    await assert_alive(svc, who)


async def test_keepalive_survives_client_errors(svc):
    """Errors answered on a kept-alive connection leave it usable."""
    base = svc.base("tracker")
    for _ in range(3):
        assert_error(await svc.client.get(f"{base}/chunks/XYZ"), 400, "NAME_INVALID")
        assert (await svc.client.get(f"{base}/healthz")).status_code == 200


# -- codecs, fuzzed -------------------------------------------------------------------------

def _client_error(exc: P2PError) -> None:
    assert 400 <= exc.status < 500, (type(exc), exc.status, exc)
    assert exc.code and isinstance(exc.message, str)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=100), st.from_regex(r"sha256:[0-9a-fA-F]{60,68}", fullmatch=True),
                 st.none(), st.integers(), st.binary(max_size=20)))
def test_digest_parse_fuzz(text):
    try:
        d = Digest.parse(text)
    except P2PError as exc:
        _client_error(exc)
    else:
        assert str(d) == text and len(d.hex) == 64


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=100), st.from_regex(r"[0-9a-fA-F./]{62,66}", fullmatch=True),
                 st.none(), st.integers()))
def test_parse_chunk_name_fuzz(text):
    try:
        name = parse_chunk_name(text)
    except P2PError as exc:
        _client_error(exc)
    else:
        assert name == text and len(name) == 64 and name == name.lower()
        assert "/" not in name and "." not in name


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                          st.text(max_size=30))
_json = st.recursive(_json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
_have = st.one_of(st.just("all"), st.just(""), st.binary(max_size=16).map(
    lambda b: base64.b64encode(b).decode()), _json)
_task = st.fixed_dictionaries({}, optional={
    "task_id": st.one_of(st.just(HEX), st.from_regex(r"u[0-9a-f]{40}", fullmatch=True), _json),
    "have": _have, "complete": _json})
_announce_body = st.one_of(_json, st.fixed_dictionaries({}, optional={
    "peer_id": st.one_of(st.from_regex(r"[A-Za-z0-9._:-]{1,10}", fullmatch=True), _json),
    "addr": st.one_of(st.just("127.0.0.1:1"), st.just("[::1]:80"), _json),
    "zone": st.one_of(st.just("z1"), _json),
    "tasks": st.one_of(st.lists(_task, max_size=3), _json),
}))


@settings(max_examples=500, deadline=None)
@given(_announce_body)
def test_decode_announce_fuzz(body):
    try:
        ann = decode_announce(body)
    except P2PError as exc:
        _client_error(exc)
    else:
        assert isinstance(ann.peer_id, str) and isinstance(ann.addr, str)
        for t in ann.tasks:
            assert isinstance(t.task_id, str) and isinstance(t.have, str)
