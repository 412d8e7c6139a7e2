"""Unit tests of the sans-I/O tracker wire codecs (p2pdist.wire.tracker)."""

from __future__ import annotations

import base64
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.core.digest import Digest
from p2pdist.core.errors import BadRequest, BodyInvalid, DigestInvalid
from p2pdist.core.task import TaskSpec
from p2pdist.wire.tracker import (
    MAX_HEADERS,
    MAX_TASKS_PER_ANNOUNCE,
    Announce,
    AnnounceReply,
    MapProgress,
    Neighbour,
    TaskHave,
    decode_announce,
    decode_have,
    decode_register,
    encode_have,
    encode_register,
    parse_task_id,
)

H1 = "a" * 64
H2 = "0123456789abcdef" * 4
D1 = "sha256:" + H1
UTID = "u" + "b" * 40
HEX = "0123456789abcdef"

hex64 = st.text(alphabet=HEX, min_size=64, max_size=64)
task_ids = st.one_of(hex64, st.text(alphabet=HEX, min_size=40, max_size=40).map(lambda h: "u" + h))
peer_ids = st.text(alphabet="ABCxyz019._:-", min_size=1, max_size=128)
zones = st.text(alphabet="abcXYZ019._/-", max_size=128)
addrs = st.one_of(
    st.tuples(st.text(alphabet="abc019.-", min_size=1, max_size=30), st.integers(0, 65535))
    .map(lambda t: f"{t[0]}:{t[1]}"),
    st.sampled_from(["[::1]:7401", "[fe80::1]:80", "10.0.0.1:7400"]),
)


# -- task ids ----------------------------------------------------------------------------

@pytest.mark.parametrize("tid", [H1, H2, UTID])
def test_parse_task_id_accepts(tid):
    assert parse_task_id(tid) == tid


@pytest.mark.parametrize("tid", [
    "", "A" * 64, "a" * 63, "a" * 65, "u" + "b" * 39, "u" + "b" * 41, "U" + "b" * 40,
    "u" + "B" * 40, D1, "../" + "a" * 61, H1 + "\n", None, 5,
])
def test_parse_task_id_refuses(tid):
    with pytest.raises(BodyInvalid) as ei:
        parse_task_id(tid)
    assert ei.value.code == "NAME_INVALID" and ei.value.status == 400


# -- holdings bitmaps --------------------------------------------------------------------

def test_encode_have_bit_order():
    assert base64.b64decode(encode_have({0})) == b"\x80"
    assert base64.b64decode(encode_have({7})) == b"\x01"
    assert base64.b64decode(encode_have({0, 9})) == b"\x80\x40"
    assert encode_have([]) == ""
    assert encode_have({1, 2}, complete=True) == "all"
    assert encode_have([], complete=True) == "all"


def test_decode_have_all_and_empty():
    assert decode_have("all") is None
    assert decode_have("all", 5) == {0, 1, 2, 3, 4}
    assert decode_have("all", 0) == set()
    assert decode_have("") == set()
    assert decode_have("AAAA") == set()


@given(st.sets(st.integers(0, 5000)))
def test_have_round_trip(have):
    text = encode_have(have)
    assert isinstance(text, str) and text != "all"
    assert decode_have(text) == have
    assert decode_have(text, 5001) == have


@given(st.sets(st.integers(0, 500)), st.integers(0, 600))
def test_have_complete_round_trip(have, n):
    assert decode_have(encode_have(have, complete=True), n) == set(range(n))


@pytest.mark.parametrize("text", [
    None, 5, ["AA=="], {"a": 1}, True, "ALL", "not base64!", "A", "AA=", "AA==\n", "*" * 8,
    "A" * 200_000,   # longer than any bitmap of MAX_CHUNKS_PER_TASK chunks
])
def test_decode_have_refuses(text):
    with pytest.raises(BodyInvalid):
        decode_have(text)


# -- register ----------------------------------------------------------------------------

def test_register_round_trip():
    spec = TaskSpec("https://origin.example/v2/blob", Digest.parse(D1),
                    (("Authorization", "Bearer t0k"), ("X-Trace", "")))
    assert decode_register(encode_register(spec)) == spec
    plain = TaskSpec("http://origin.example/x")
    body = encode_register(plain)
    assert body == {"url": "http://origin.example/x", "digest": None, "headers": []}
    assert decode_register(body) == plain
    assert decode_register({"url": "http://origin.example/x"}) == plain


@pytest.mark.parametrize("body", [
    None, [], "x",
    {},
    {"url": 5},
    {"url": "http://o/x", "headers": {"A": "b"}},
    {"url": "http://o/x", "headers": "A: b"},
    {"url": "http://o/x", "headers": [["A"]]},
    {"url": "http://o/x", "headers": [["A", "b", "c"]]},
    {"url": "http://o/x", "headers": [("A", "b")]},           # only lists survive JSON
    {"url": "http://o/x", "headers": [["A", 5]]},
    {"url": "http://o/x", "headers": [[5, "b"]]},
    {"url": "http://o/x", "headers": [["", "b"]]},
    {"url": "http://o/x", "headers": [["Bad Name", "b"]]},
    {"url": "http://o/x", "headers": [["A:", "b"]]},
    {"url": "http://o/x", "headers": [["A\r\nX-Evil", "b"]]},
    {"url": "http://o/x", "headers": [["A", "b\r\nX-Evil: 1"]]},  # header injection
    {"url": "http://o/x", "headers": [["A", "b\nX-Evil: 1"]]},
    {"url": "http://o/x", "headers": [["A", "b\rX-Evil: 1"]]},
    {"url": "http://o/x", "headers": [["A", "x" * 8193]]},
    {"url": "http://o/x", "headers": [["A", "b"]] * (MAX_HEADERS + 1)},
])
def test_decode_register_refuses_body(body):
    with pytest.raises(BodyInvalid):
        decode_register(body)


def test_decode_register_header_limits():
    ok = decode_register({"url": "http://o/x", "headers": [["A", "x" * 8192]] * MAX_HEADERS})
    assert len(ok.headers) == MAX_HEADERS


@pytest.mark.parametrize("url", ["ftp://o/x", "http://u:p@o/x", "not a url", "http://[::1/x"])
def test_decode_register_refuses_url(url):
    with pytest.raises(BadRequest) as ei:
        decode_register({"url": url})
    assert ei.value.code == "URL_INVALID"


@pytest.mark.parametrize("digest", ["sha512:" + H1, H1, "SHA256:" + H1, 5, ""])
def test_decode_register_refuses_digest(digest):
    with pytest.raises((DigestInvalid, BodyInvalid)):
        decode_register({"url": "http://o/x", "digest": digest})


# -- map progress ------------------------------------------------------------------------

def _progress(**kw):
    base = dict(task_id=H1, chunk_size=4, size=10, offset=1, chunks=(H2, H1), total=3,
                sealed=True, digest=D1, error=None)
    base.update(kw)
    return MapProgress(**base)


def test_map_progress_round_trip_examples():
    for p in [_progress(),
              _progress(task_id=UTID, chunk_size=None, size=None, offset=0, chunks=(), total=None,
                        sealed=False, digest=None),
              _progress(sealed=False, error={"code": "ORIGIN_UNREACHABLE", "message": "boom"})]:
        assert MapProgress.from_dict(p.to_dict()) == p


@st.composite
def progresses(draw):
    opt_int = st.one_of(st.none(), st.integers(0, 1 << 40))
    return MapProgress(
        task_id=draw(task_ids), chunk_size=draw(opt_int), size=draw(opt_int),
        offset=draw(st.integers(0, 1 << 20)), chunks=tuple(draw(st.lists(hex64, max_size=8))),
        total=draw(opt_int), sealed=draw(st.booleans()),
        digest=draw(st.one_of(st.none(), hex64.map(lambda h: "sha256:" + h))),
        error=draw(st.one_of(st.none(), st.fixed_dictionaries({"code": st.text(max_size=20),
                                                               "message": st.text(max_size=40)}))))


@given(progresses())
def test_map_progress_round_trip_property(p):
    assert MapProgress.from_dict(p.to_dict()) == p


def test_map_progress_missing_offset_defaults_to_zero():
    d = _progress().to_dict()
    del d["offset"]
    assert MapProgress.from_dict(d).offset == 0


@pytest.mark.parametrize("change", [
    {"chunks": None}, {"chunks": "ab"}, {"chunks": [H1, "A" * 64]}, {"chunks": [H1, 5]},
    {"chunk_size": -1}, {"size": "10"}, {"offset": -1}, {"total": 1.5}, {"total": True},
    {"task_id": "nope"}, {"task_id": None}, {"task_id": D1},
    {"error": "boom"}, {"error": {"code": "X"}}, {"error": {"code": 5, "message": "m"}},
])
def test_map_progress_refuses(change):
    d = _progress().to_dict()
    d.update(change)
    with pytest.raises(BodyInvalid):
        MapProgress.from_dict(d)


@pytest.mark.parametrize("digest", ["sha1:" + "a" * 40, H1, 5])
def test_map_progress_refuses_digest(digest):
    d = _progress().to_dict()
    d["digest"] = digest
    with pytest.raises(DigestInvalid):
        MapProgress.from_dict(d)


def test_map_progress_refuses_non_object():
    for body in (None, [], "x"):
        with pytest.raises(BodyInvalid):
            MapProgress.from_dict(body)


# -- announce ----------------------------------------------------------------------------

def _announce(**kw):
    d = {"peer_id": "peer-1", "addr": "10.0.0.2:7401", "zone": "eu/w1",
         "tasks": [{"task_id": H1, "have": encode_have({0, 3}), "complete": False},
                   {"task_id": UTID, "have": "all", "complete": True}]}
    d.update(kw)
    return d


def test_decode_announce_valid():
    a = decode_announce(_announce())
    assert a.peer_id == "peer-1" and a.addr == "10.0.0.2:7401" and a.zone == "eu/w1"
    assert a.tasks == (TaskHave(H1, encode_have({0, 3}), False), TaskHave(UTID, "all", True))
    body = _announce()
    del body["zone"], body["tasks"]
    a = decode_announce(body)
    assert a.zone == "" and a.tasks == ()


@given(peer_ids, addrs, zones,
       st.lists(st.tuples(task_ids, st.sets(st.integers(0, 100)), st.booleans()), max_size=5))
def test_announce_round_trip(peer_id, addr, zone, tasks):
    a = Announce(peer_id, addr, zone,
                 tuple(TaskHave(t, encode_have(h, c), c) for t, h, c in tasks))
    assert decode_announce(a.to_dict()) == a


@pytest.mark.parametrize("peer_id", ["", "x" * 129, "has space", "a/b", "a\nb", "é", 5, None])
def test_decode_announce_bad_peer_id(peer_id):
    with pytest.raises(BodyInvalid, match="peer_id"):
        decode_announce(_announce(peer_id=peer_id))


@pytest.mark.parametrize("addr", [
    "host", "host:", ":80", "host:123456", "a b:80", "host:80/x", "[::1]", "::1:80",
    "[::1:80", "[zz]:80", "h" * 254 + ":80", "host:80\r\n", 7401, None,
])
def test_decode_announce_bad_addr(addr):
    with pytest.raises(BodyInvalid, match="addr"):
        decode_announce(_announce(addr=addr))


@pytest.mark.parametrize("addr", ["h:0", "my-host.example:65535", "[::1]:7401", "10.1.2.3:80"])
def test_decode_announce_good_addr(addr):
    assert decode_announce(_announce(addr=addr)).addr == addr


@pytest.mark.parametrize("zone", ["eu west", "z" * 129, "a\\b", "a:b", 5])
def test_decode_announce_bad_zone(zone):
    with pytest.raises(BodyInvalid, match="zone"):
        decode_announce(_announce(zone=zone))


def test_decode_announce_task_limit():
    task = {"task_id": H1, "have": ""}
    assert len(decode_announce(_announce(tasks=[task] * MAX_TASKS_PER_ANNOUNCE)).tasks) == MAX_TASKS_PER_ANNOUNCE
    with pytest.raises(BodyInvalid, match="at most"):
        decode_announce(_announce(tasks=[task] * (MAX_TASKS_PER_ANNOUNCE + 1)))


@pytest.mark.parametrize("tasks", [
    "x", {"task_id": H1}, [5], [None], [{"task_id": "bad", "have": ""}], [{"have": ""}],
    [{"task_id": H1, "have": "!!"}], [{"task_id": H1, "have": 5}], [{"task_id": H1, "have": None}],
])
def test_decode_announce_bad_tasks(tasks):
    with pytest.raises(BodyInvalid):
        decode_announce(_announce(tasks=tasks))


def test_decode_announce_non_object():
    for body in (None, [], "x", 5):
        with pytest.raises(BodyInvalid):
            decode_announce(body)


# -- announce reply ----------------------------------------------------------------------

def test_announce_reply_round_trip_example():
    r = AnnounceReply(2.5, {H1: (Neighbour("p1", "10.0.0.1:7401", "z", "all"),
                                 Neighbour("p2", "[::1]:7401", "", encode_have({1}))),
                            UTID: ()})
    assert AnnounceReply.from_dict(r.to_dict()) == r
    assert AnnounceReply.from_dict({"interval": 5, "tasks": {}}) == AnnounceReply(5.0)


@given(st.floats(0, 3600, allow_nan=False),
       st.dictionaries(task_ids, st.lists(st.builds(Neighbour, peer_ids, addrs, zones,
                                                    st.sampled_from(["", "all", "gA=="])),
                                          max_size=4).map(tuple), max_size=4))
def test_announce_reply_round_trip_property(interval, neighbours):
    r = AnnounceReply(interval, neighbours)
    assert AnnounceReply.from_dict(r.to_dict()) == r


@pytest.mark.parametrize("body", [
    None, [], {"tasks": {}}, {"interval": 5}, {"interval": "5", "tasks": {}},
    {"interval": True, "tasks": {}}, {"interval": -1, "tasks": {}},
    {"interval": math.nan, "tasks": {}}, {"interval": math.inf, "tasks": {}},
    {"interval": 5, "tasks": []},
    {"interval": 5, "tasks": {"bad": {"neighbours": []}}},
    {"interval": 5, "tasks": {H1: []}},
    {"interval": 5, "tasks": {H1: {"neighbours": {}}}},
    {"interval": 5, "tasks": {H1: {"neighbours": [5]}}},
    {"interval": 5, "tasks": {H1: {"neighbours": [{"peer_id": "p", "addr": "nope"}]}}},
    {"interval": 5, "tasks": {H1: {"neighbours": [{"peer_id": "p q", "addr": "h:1"}]}}},
    {"interval": 5, "tasks": {H1: {"neighbours": [{"peer_id": "p", "addr": "h:1", "zone": "a b"}]}}},
])
def test_announce_reply_refuses(body):
    with pytest.raises(BodyInvalid):
        AnnounceReply.from_dict(body)


def test_announce_reply_tolerates_missing_optional_fields():
    r = AnnounceReply.from_dict({"interval": 1, "tasks": {H1: {}, UTID: {"neighbours": [
        {"peer_id": "p", "addr": "h:1", "have": 5}]}}})
    assert r.neighbours[H1] == ()
    assert r.neighbours[UTID] == (Neighbour("p", "h:1", "", ""),)


def test_neighbour_fallback_flag_round_trips_and_is_strict() -> None:
    from p2pdist.core.errors import BodyInvalid
    from p2pdist.wire.tracker import AnnounceReply, Neighbour

    reply = AnnounceReply(1.0, {"a" * 64: (Neighbour("seed", "127.0.0.1:1", "", "all", fallback=True),
                                           Neighbour("p1", "127.0.0.1:2", "z", ""))})
    assert AnnounceReply.from_dict(reply.to_dict()) == reply
    body = reply.to_dict()
    body["tasks"]["a" * 64]["neighbours"][0]["fallback"] = "yes"
    with pytest.raises(BodyInvalid):
        AnnounceReply.from_dict(body)
