"""Unit tests of the pure core: digests, chunk maps, errors, sizes, tasks and config."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.core.chunkmap import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    TARGET_CHUNKS,
    ChunkMap,
    canonical_json,
    chunk_count,
    chunk_size_for,
    chunk_span,
)
from p2pdist.core.config import PeerConfig, TrackerConfig, load_config, split_hostport
from p2pdist.core.digest import Digest, is_hex64, parse_chunk_name
from p2pdist.core.errors import (
    BadRequest,
    BodyInvalid,
    ConfigError,
    DigestInvalid,
    NameInvalid,
    P2PError,
    TaskFailed,
    Unavailable,
    error_from_code,
    p2p_error_in,
)
from p2pdist.core.sizes import format_size, parse_size
from p2pdist.core.task import MAX_URL_LENGTH, TaskSpec, normalise_url, task_id_for
from p2pdist.wire.tracker import parse_task_id

MiB = 1024 * 1024
GiB = 1024 * MiB
HEX = "0123456789abcdef"
H1 = "a" * 64
H2 = "0123456789abcdef" * 4
D1 = "sha256:" + H1

hex64 = st.text(alphabet=HEX, min_size=64, max_size=64)
valid_digests = hex64.map(lambda h: "sha256:" + h)


def _is_valid_digest(x: str) -> bool:
    """Independent oracle for the digest grammar."""
    return len(x) == 71 and x.startswith("sha256:") and all(c in HEX for c in x[7:])


# -- Digest ------------------------------------------------------------------------------

def test_digest_parse_accepts_canonical_form():
    d = Digest.parse(D1)
    assert d.hex == H1 and d.algorithm == "sha256"
    assert str(d) == D1
    assert Digest.parse(D1) == d  # frozen value type, equal by value


@pytest.mark.parametrize("text", [
    "sha256:" + "A" * 64,                 # uppercase
    "sha256:" + "a" * 63 + "A",
    "SHA256:" + H1,                       # uppercase algorithm
    "sha256:" + "a" * 63,                 # 63 hex
    "sha256:" + "a" * 65,                 # 65 hex
    "sha512:" + "a" * 128,                # other algorithm
    "sha384:" + "a" * 96,
    "md5:" + "a" * 32,
    H1,                                   # bare hex, no algorithm
    ":" + H1,
    "sha256" + H1,
    "sha256:",
    "",
    " " + D1,                             # whitespace
    D1 + " ",
    D1 + "\n",
    "sha256: " + "a" * 63,
    "sha256:" + "a" * 32 + " " + "a" * 31,
    "sha256:" + "g" * 64,                 # not hex
    "sha256:" + "a" * 63 + "/",
    "sha256:../" + "a" * 61,
    "sha256:" + "\uff41" * 64,            # fullwidth 'a'
    "sha256:" + "\u0661" * 64,            # Arabic-Indic digits (\d would accept)
    "sha256:sha256:" + H1,
])
def test_digest_parse_refuses(text):
    with pytest.raises(DigestInvalid) as ei:
        Digest.parse(text)
    assert ei.value.status == 400 and ei.value.code == "DIGEST_INVALID"


@pytest.mark.parametrize("value", [None, 123, D1.encode(), [D1], {"digest": D1}, 1.5])
def test_digest_parse_refuses_non_str(value):
    with pytest.raises(DigestInvalid):
        Digest.parse(value)


@given(valid_digests)
def test_digest_round_trip(text):
    assert str(Digest.parse(text)) == text


@given(st.text(max_size=80))
def test_digest_arbitrary_text_refused_unless_valid(text):
    if _is_valid_digest(text):
        assert str(Digest.parse(text)) == text
    else:
        with pytest.raises(DigestInvalid):
            Digest.parse(text)


@given(valid_digests, st.data())
def test_digest_single_mutation(text, data):
    """Insert, delete or replace one character of a valid digest: the result parses only if
    it is still exactly sha256:+64 lowercase hex."""
    op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    ch = data.draw(st.characters())
    if op == "insert":
        i = data.draw(st.integers(0, len(text)))
        mutated = text[:i] + ch + text[i:]
    else:
        i = data.draw(st.integers(0, len(text) - 1))
        mutated = text[:i] + (ch if op == "replace" else "") + text[i + 1:]
    if _is_valid_digest(mutated):
        assert str(Digest.parse(mutated)) == mutated
    else:
        with pytest.raises(DigestInvalid):
            Digest.parse(mutated)


def test_parse_chunk_name():
    assert parse_chunk_name(H2) == H2
    for bad in ["A" * 64, "a" * 63, "a" * 65, D1, "", "../" + "a" * 61, "a" * 63 + "\n", None, 5]:
        with pytest.raises(NameInvalid) as ei:
            parse_chunk_name(bad)
        assert ei.value.code == "NAME_INVALID"


@given(st.text(max_size=70))
def test_parse_chunk_name_property(text):
    ok = len(text) == 64 and all(c in HEX for c in text)
    assert is_hex64(text) is ok
    if ok:
        assert parse_chunk_name(text) == text
    else:
        with pytest.raises(NameInvalid):
            parse_chunk_name(text)


# -- chunk-size rule ---------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [
    (None, 4 * MiB),                     # unknown size
    (0, 1 * MiB),
    (1, 1 * MiB),
    (100 * MiB, 1 * MiB),
    (256 * MiB, 1 * MiB),                # documented: 256 chunks of 1 MiB
    (256 * MiB + 1, 2 * MiB),
    (512 * MiB, 2 * MiB),
    (1 * GiB, 4 * MiB),
    (4 * GiB, 4 * MiB),                  # documented: 1,024 chunks of 4 MiB
    (8 * GiB, 4 * MiB),                  # exactly MAX_CHUNKS chunks: no doubling
    (8 * GiB + 1, 8 * MiB),
    (16 * GiB, 8 * MiB),
    (20 * GiB, 16 * MiB),                # documented: 20 GiB gets 16 MiB chunks
    (64 * GiB, 32 * MiB),
    (1024 * GiB, 32 * MiB),              # capped
])
def test_chunk_size_examples(size, expected):
    assert chunk_size_for(size) == expected


def test_chunk_size_documented_counts():
    assert chunk_count(4 * GiB, chunk_size_for(4 * GiB)) == 1024
    assert chunk_count(20 * GiB, chunk_size_for(20 * GiB)) == 1280
    assert DEFAULT_CHUNK_SIZE == 4 * MiB and MAX_CHUNK_SIZE == 32 * MiB


@given(st.integers(min_value=0, max_value=1 << 44))
def test_chunk_size_rule_property(size):
    cs = chunk_size_for(size)
    # a power-of-two multiple of 1 MiB, within [1 MiB, 32 MiB]
    ratio, rem = divmod(cs, MIN_CHUNK_SIZE)
    assert rem == 0 and ratio >= 1 and ratio & (ratio - 1) == 0
    assert MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE
    # up to 4 MiB: at most TARGET_CHUNKS chunks, and half the size would give more
    if cs < DEFAULT_CHUNK_SIZE:
        assert chunk_count(size, cs) <= TARGET_CHUNKS
    if MIN_CHUNK_SIZE < cs <= DEFAULT_CHUNK_SIZE:
        assert chunk_count(size, cs // 2) > TARGET_CHUNKS
    # no more than MAX_CHUNKS chunks unless capped
    assert chunk_count(size, cs) <= MAX_CHUNKS or cs == MAX_CHUNK_SIZE
    # past 4 MiB, the smallest such size: half of it would list too many chunks
    if cs > DEFAULT_CHUNK_SIZE:
        assert chunk_count(size, cs // 2) > MAX_CHUNKS


@given(st.integers(0, 1 << 42), st.integers(0, 1 << 42))
def test_chunk_size_monotone(a, b):
    a, b = sorted((a, b))
    assert chunk_size_for(a) <= chunk_size_for(b)


@pytest.mark.parametrize("size, cs, index, span", [
    (10, 4, 0, (0, 4)),
    (10, 4, 1, (4, 4)),
    (10, 4, 2, (8, 2)),
    (8, 4, 1, (4, 4)),
    (1, 4 * MiB, 0, (0, 1)),
])
def test_chunk_span(size, cs, index, span):
    assert chunk_span(index, size, cs) == span


@pytest.mark.parametrize("size, cs, index", [(10, 4, 3), (8, 4, 2), (10, 4, -1), (0, 4, 0)])
def test_chunk_span_out_of_range(size, cs, index):
    with pytest.raises(IndexError):
        chunk_span(index, size, cs)


@given(st.integers(0, 10_000), st.integers(1, 300))
def test_chunk_spans_tile_the_blob(size, cs):
    n = chunk_count(size, cs)
    offset = 0
    for i in range(n):
        off, length = chunk_span(i, size, cs)
        assert off == offset and 0 < length <= cs
        assert length == cs or i == n - 1
        offset += length
    assert offset == size
    with pytest.raises(IndexError):
        chunk_span(n, size, cs)


# -- ChunkMap ----------------------------------------------------------------------------

def _map(size=10, cs=4, chunks=(H1, H2, H1)):
    return ChunkMap(Digest.parse(D1), size, cs, tuple(chunks))


def test_chunkmap_basics():
    m = _map()
    assert m.n_chunks == 3
    assert m.span(2) == (8, 2)
    empty = ChunkMap(Digest.parse(D1), 0, 4, ())
    assert empty.n_chunks == 0


@pytest.mark.parametrize("size, cs, chunks", [
    (10, 4, (H1, H2)),                    # too few
    (10, 4, (H1, H2, H1, H2)),            # too many
    (0, 4, (H1,)),                        # zero-byte blob has no chunks
    (8, 4, (H1, H2, H1)),
])
def test_chunkmap_wrong_count(size, cs, chunks):
    with pytest.raises(BodyInvalid, match="chunks listed"):
        _map(size, cs, chunks)


@pytest.mark.parametrize("bad", ["A" * 64, "a" * 63, "", D1, "../../etc/passwd", 5, None])
def test_chunkmap_bad_hash(bad):
    with pytest.raises(BodyInvalid, match="malformed chunk hash"):
        _map(10, 4, (H1, bad, H2))


@pytest.mark.parametrize("size, cs", [(-1, 4), (10, 0), (10, -4)])
def test_chunkmap_bad_sizes(size, cs):
    with pytest.raises(BodyInvalid):
        ChunkMap(Digest.parse(D1), size, cs, ())


def test_chunkmap_canonical_json_exact_bytes():
    m = _map(5, 4, (H1, H2))
    expected = f'{{"chunk_size":4,"chunks":["{H1}","{H2}"],"digest":"{D1}","size":5}}'.encode()
    assert m.to_json() == expected
    assert b" " not in m.to_json()
    assert ChunkMap.from_json(expected) == m
    assert ChunkMap.from_json(expected).to_json() == expected


def test_chunkmap_from_json_accepts_non_canonical_input():
    m = _map()
    pretty = json.dumps(m.to_dict(), indent=2).encode()
    assert ChunkMap.from_json(pretty) == m
    assert ChunkMap.from_json(pretty).to_json() == m.to_json()


def test_canonical_json_sorted_and_ascii():
    assert canonical_json({"b": 1, "a": [1, 2], "c": "é"}) == b'{"a":[1,2],"b":1,"c":"\\u00e9"}'


@st.composite
def chunk_maps(draw):
    cs = draw(st.integers(1, 64))
    size = draw(st.integers(0, cs * 20))
    chunks = draw(st.lists(hex64, min_size=chunk_count(size, cs), max_size=chunk_count(size, cs)))
    return ChunkMap(Digest.parse(draw(valid_digests)), size, cs, tuple(chunks))


@given(chunk_maps())
def test_chunkmap_json_round_trip_property(m):
    data = m.to_json()
    back = ChunkMap.from_json(data)
    assert back == m
    assert back.to_json() == data
    d = json.loads(data)
    assert list(d) == sorted(d)
    assert data == json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("data", [
    b"", b"not json", b"\xff\xfe", b"[]", b'"x"', b"null",
    b'{"digest":"%s","size":0,"chunk_size":4}' % D1.encode(),              # missing chunks
    b'{"size":0,"chunk_size":4,"chunks":[]}',                              # missing digest
    b'{"digest":"%s","size":"0","chunk_size":4,"chunks":[]}' % D1.encode(),
    b'{"digest":"%s","size":true,"chunk_size":4,"chunks":[]}' % D1.encode(),
    b'{"digest":"%s","size":0,"chunk_size":4.0,"chunks":[]}' % D1.encode(),
    b'{"digest":"%s","size":0,"chunk_size":4,"chunks":{}}' % D1.encode(),
    b'{"digest":"%s","size":0,"chunk_size":4,"chunks":"ab"}' % D1.encode(),
    b'{"digest":"%s","size":-1,"chunk_size":4,"chunks":[]}' % D1.encode(),
    b'{"digest":"%s","size":1,"chunk_size":4,"chunks":[]}' % D1.encode(),
])
def test_chunkmap_from_json_refuses(data):
    with pytest.raises(BodyInvalid):
        ChunkMap.from_json(data)


@pytest.mark.parametrize("digest", ["sha512:" + H1, "SHA256:" + H1, 5, None])
def test_chunkmap_from_json_bad_digest(digest):
    with pytest.raises(DigestInvalid):
        ChunkMap.from_dict({"digest": digest, "size": 0, "chunk_size": 4, "chunks": []})


# -- errors ------------------------------------------------------------------------------

def _all_error_classes():
    out, todo = [], [P2PError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


ERROR_CLASSES = _all_error_classes()


def test_error_codes_are_unique():
    codes = [c.code for c in ERROR_CLASSES]
    assert len(codes) == len(set(codes)), codes
    assert len(ERROR_CLASSES) >= 20


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_from_code_maps_every_class_back(cls):
    exc = error_from_code(cls.code, "it broke", cls.status)
    assert type(exc) is cls
    assert exc.code == cls.code and exc.status == cls.status
    assert str(exc) == "it broke" and exc.message == "it broke"


def test_error_from_code_keeps_remote_status_and_unknown_codes():
    assert error_from_code("BUSY", "m", 599).status == 599
    exc = error_from_code("URL_INVALID", "bad url", 400)
    assert type(exc) is P2PError and exc.code == "URL_INVALID" and exc.status == 400


def test_error_instance_overrides_do_not_leak_to_class():
    e = BadRequest("x", code="URL_INVALID", status=418)
    assert (e.code, e.status) == ("URL_INVALID", 418)
    assert (BadRequest.code, BadRequest.status) == ("BAD_REQUEST", 400)
    assert issubclass(DigestInvalid, BadRequest) and DigestInvalid.status == 400


def test_p2p_error_in():
    a, b = TaskFailed("a"), Unavailable("b")
    assert p2p_error_in(a) is a
    assert p2p_error_in(ValueError("x")) is None
    assert p2p_error_in(ExceptionGroup("g", [a])) is a
    assert p2p_error_in(ExceptionGroup("g", [a, b])) is a
    nested = ExceptionGroup("outer", [ExceptionGroup("mid", [ExceptionGroup("inner", [b])]), a])
    assert p2p_error_in(nested) is b
    assert p2p_error_in(ExceptionGroup("g", [a, ValueError("x")])) is None
    assert p2p_error_in(ExceptionGroup("g", [ExceptionGroup("h", [ValueError("x")]), a])) is None
    assert p2p_error_in(BaseExceptionGroup("g", [a, KeyboardInterrupt()])) is None
    assert p2p_error_in(KeyboardInterrupt()) is None


# -- sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("4096", 4096), ("0", 0), ("64MiB", 64 * MiB), ("64mib", 64 * MiB), ("64 MiB", 64 * MiB),
    (" 1GiB ", GiB), ("1.5GB", 1_500_000_000), ("500MB", 500_000_000), ("2k", 2000),
    ("2Ki", 2048), ("3TiB", 3 * 1024 * GiB), ("7b", 7), ("7B", 7), (4096, 4096), (0, 0),
    # exact arithmetic: float gave 2299999 and lost the last byte past 2**53
    ("2.3MB", 2_300_000), ("1.5KiB", 1536), ("9007199254740993", 2**53 + 1),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", "MiB", "-1", "1e3", "1,000", "12 parsecs", "1.5.5GB", "0x10", -1, 1.5, True, None, [1],
])
def test_parse_size_refuses_with_value_error(text):
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(0, 1 << 60))
def test_parse_size_integer_strings(n):
    assert parse_size(str(n)) == n
    assert parse_size(f"{n}KiB") == n * 1024


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (64 * MiB, "64.0 MiB"),
    (3 * GiB, "3.0 GiB"), (1024 ** 4, "1.0 TiB"), (1024 ** 5, "1024.0 TiB"),
])
def test_format_size(n, text):
    assert format_size(n) == text


# -- tasks and URLs ----------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("http://example.com/a", "http://example.com/a"),
    ("HTTP://Example.COM/Path?Q=1", "http://example.com/Path?Q=1"),
    ("http://example.com:80/a", "http://example.com/a"),
    ("https://example.com:443/a", "https://example.com/a"),
    ("http://example.com:443/a", "http://example.com:443/a"),
    ("https://example.com:80/a", "https://example.com:80/a"),
    ("http://example.com:8080/a", "http://example.com:8080/a"),
    ("http://example.com", "http://example.com/"),
    ("http://example.com/a#frag", "http://example.com/a"),
    ("  http://example.com/a  ", "http://example.com/a"),
    ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ("http://[FE80::1]/x", "http://[fe80::1]/x"),
])
def test_normalise_url(url, expected):
    assert normalise_url(url) == expected


@pytest.mark.parametrize("url", [
    "ftp://example.com/a", "file:///etc/passwd", "gopher://h/", "example.com/a", "/a", "",
    "http:///a", "http://", "http://user:pw@example.com/a", "http://user@example.com/a",
    "https://:secret@example.com/a", "http://example.com:99999/a", "http://example.com:x/a",
    "http://[::1/a", "http://[zzz]/a",   # malformed IPv6 brackets (urlsplit's ValueError)
    "h" * (MAX_URL_LENGTH + 1), None, 5, b"http://example.com/",
])
def test_normalise_url_refuses(url):
    with pytest.raises(BadRequest) as ei:
        normalise_url(url)
    assert ei.value.code == "URL_INVALID" and ei.value.status == 400


def test_normalise_url_credentials_never_echoed():
    with pytest.raises(BadRequest) as ei:
        normalise_url("http://alice:hunter2@example.com/a")
    assert "hunter2" not in str(ei.value)


def test_task_id_for_digest_tasks_share_ids():
    d = Digest.parse(D1)
    assert task_id_for("http://a.example/x", d) == task_id_for("https://b.example/y", d) == H1
    assert TaskSpec("http://a.example/x", d).task_id == H1
    assert parse_task_id(H1) == H1


def test_task_id_for_urls():
    tid = task_id_for("http://example.com/blob", None)
    assert tid.startswith("u") and len(tid) == 41 and not is_hex64(tid)
    assert parse_task_id(tid) == tid
    # equivalent spellings share the task; different resources do not
    assert task_id_for("HTTP://EXAMPLE.com:80/blob#x", None) == tid
    assert task_id_for("http://example.com/blob?v=2", None) != tid
    assert task_id_for("https://example.com/blob", None) != tid
    assert task_id_for("http://example.com/Blob", None) != tid
    with pytest.raises(BadRequest):
        task_id_for("http://u:p@example.com/blob", None)
    with pytest.raises(BadRequest):
        task_id_for("ftp://example.com/blob", None)


@given(st.text(alphabet=string.ascii_letters + string.digits + "/-._~", max_size=40))
def test_task_id_for_url_paths(path):
    tid = task_id_for(f"http://example.com/{path}", None)
    assert parse_task_id(tid) == tid
    assert tid == task_id_for(f"http://EXAMPLE.COM:80/{path}", None)


def test_taskspec_repr_hides_headers():
    spec = TaskSpec("http://example.com/a", None, (("Authorization", "Bearer s3cr3t"),))
    assert "s3cr3t" not in repr(spec)
    assert spec.task_id == task_id_for("http://example.com/a", None)


# -- config ------------------------------------------------------------------------------

def _toml(tmp_path, text):
    p = tmp_path / "p2pdist.toml"
    p.write_text(text)
    return str(p)


def test_config_defaults():
    assert load_config(TrackerConfig) == TrackerConfig()
    assert load_config(PeerConfig) == PeerConfig()


def test_config_file_sections(tmp_path):
    path = _toml(tmp_path, """
[tracker]
topology = "tree"
fanout = 3
upload_slots = 99

[peer]
upload_slots = 3
zone = "eu-west/1"
trackers = ["http://t1:7400", "https://t2:7400"]
capacity = "10GiB"
chunk_timeout = 2
back_to_source = false
advertise = "10.0.0.5:7401"
""")
    t = load_config(TrackerConfig, path=path)
    assert (t.topology, t.fanout, t.upload_slots) == ("tree", 3, 99)
    p = load_config(PeerConfig, path=path)
    assert p.upload_slots == 3 and p.zone == "eu-west/1"
    assert p.trackers == ("http://t1:7400", "https://t2:7400")
    assert p.capacity == 10 * GiB
    assert p.chunk_timeout == 2.0 and isinstance(p.chunk_timeout, float)
    assert p.back_to_source is False
    assert p.advertise == "10.0.0.5:7401"


def test_config_missing_section_uses_defaults(tmp_path):
    path = _toml(tmp_path, "[tracker]\nfanout = 2\n")
    assert load_config(PeerConfig, path=path) == PeerConfig()


def test_config_precedence_file_env_cli(tmp_path):
    path = _toml(tmp_path, "[peer]\nupload_slots = 3\nzone = \"file\"\n")
    env = {"P2PDIST_UPLOAD_SLOTS": "5", "HOME": "/root", "P2PDIST_CONFIG": "/x", "UPLOAD_SLOTS": "1"}
    assert load_config(PeerConfig, path=path).upload_slots == 3
    cfg = load_config(PeerConfig, path=path, env=env)
    assert cfg.upload_slots == 5 and cfg.zone == "file"
    cfg = load_config(PeerConfig, path=path, env=env, overrides={"upload_slots": 7, "zone": None})
    assert cfg.upload_slots == 7 and cfg.zone == "file"   # None override means "not given"


def test_config_env_values_are_parsed():
    env = {"P2PDIST_TRACKERS": "http://a:1, http://b:2,", "P2PDIST_CAPACITY": "64MiB",
           "P2PDIST_BACK_TO_SOURCE": "no", "P2PDIST_CHUNK_TIMEOUT": "2.5",
           "P2PDIST_ADVERTISE": "none"}
    cfg = load_config(PeerConfig, env=env)
    assert cfg.trackers == ("http://a:1", "http://b:2")
    assert cfg.capacity == 64 * MiB
    assert cfg.back_to_source is False
    assert cfg.chunk_timeout == 2.5
    assert cfg.advertise is None
    assert load_config(PeerConfig, env={"P2PDIST_CAPACITY": ""}).capacity is None
    assert PeerConfig().direct_io is True and TrackerConfig().direct_io is True
    assert load_config(PeerConfig, env={"P2PDIST_DIRECT_IO": "false"}).direct_io is False
    assert load_config(TrackerConfig, env={"P2PDIST_DIRECT_IO": "false"}).direct_io is False


def _config_error(cls=PeerConfig, **kw) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(cls, **kw)
    assert ei.value.code == "CONFIG_INVALID"
    return str(ei.value)


def test_config_unknown_key_in_file(tmp_path):
    msg = _config_error(path=_toml(tmp_path, "[peer]\nupload_slotz = 3\n"))
    assert "upload_slotz" in msg and "unknown" in msg


def test_config_unknown_override():
    msg = _config_error(overrides={"fanout_x": 3})
    assert "fanout_x" in msg and "unknown" in msg


@pytest.mark.parametrize("env, key", [
    ({"P2PDIST_UPLOAD_SLOTS": "four"}, "upload_slots"),
    ({"P2PDIST_UPLOAD_SLOTS": "1.5"}, "upload_slots"),
    ({"P2PDIST_UPLOAD_SLOTS": "0"}, "upload_slots"),
    ({"P2PDIST_UPLOAD_SLOTS": "-2"}, "upload_slots"),
    ({"P2PDIST_CHUNK_TIMEOUT": "soon"}, "chunk_timeout"),
    ({"P2PDIST_BACK_TO_SOURCE": "maybe"}, "back_to_source"),
    ({"P2PDIST_CAPACITY": "lots"}, "capacity"),
    ({"P2PDIST_CHUNK_POLICY": "random"}, "chunk_policy"),
    ({"P2PDIST_LOG_LEVEL": "verbose"}, "log_level"),
    ({"P2PDIST_LISTEN": "nohost"}, "listen"),
    ({"P2PDIST_LISTEN": ":7401"}, "listen"),
    ({"P2PDIST_LISTEN": "h:99999"}, "listen"),
    ({"P2PDIST_LISTEN": "h:abc"}, "listen"),
    ({"P2PDIST_ADVERTISE": "h:"}, "advertise"),
    ({"P2PDIST_TRACKERS": "ftp://t:7400"}, "trackers"),
    ({"P2PDIST_TRACKERS": "t:7400"}, "trackers"),
    ({"P2PDIST_PEER_ID": "has space"}, "peer_id"),
    ({"P2PDIST_PEER_ID": "x" * 129}, "peer_id"),
    ({"P2PDIST_ZONE": "eu west"}, "zone"),
])
def test_config_bad_env_values_name_the_key(env, key):
    assert repr(key) in _config_error(env=env)


@pytest.mark.parametrize("overrides, key", [
    ({"topology": "ring"}, "topology"),
    ({"fanout": 0}, "fanout"),
    ({"fanout": True}, "fanout"),
    ({"peer_ttl": -1}, "peer_ttl"),
    ({"listen": 7400}, "listen"),
])
def test_config_bad_tracker_overrides(overrides, key):
    assert repr(key) in _config_error(TrackerConfig, overrides=overrides)


@pytest.mark.parametrize("body, key", [
    ("upload_slots = 1.5", "upload_slots"),
    ("upload_slots = \"x\"", "upload_slots"),
    ("upload_slots = true", "upload_slots"),
    ("back_to_source = 1", "back_to_source"),
    ("trackers = \"t:7400\"", "trackers"),
    ("trackers = [1, 2]", "trackers"),
    ("listen = 7401", "listen"),
    ("capacity = 1.5", "capacity"),      # parse_size used to raise TypeError here
    ("capacity = true", "capacity"),
    ("capacity = -1", "capacity"),
    ("capacity = [1]", "capacity"),
    ("zone = 5", "zone"),
])
def test_config_bad_file_values_name_the_key(tmp_path, body, key):
    assert repr(key) in _config_error(path=_toml(tmp_path, f"[peer]\n{body}\n"))


def test_config_unreadable_file(tmp_path):
    missing = tmp_path / "nope.toml"
    msg = _config_error(path=str(missing))
    assert str(missing) in msg
    msg = _config_error(path=str(tmp_path))   # a directory
    assert str(tmp_path) in msg


def test_config_invalid_toml(tmp_path):
    path = _toml(tmp_path, "[peer\nupload_slots = \n")
    msg = _config_error(path=path)
    assert path in msg and "TOML" in msg


def test_config_section_not_a_table(tmp_path):
    assert "[peer]" in _config_error(path=_toml(tmp_path, "peer = 3\n"))


def test_config_valid_identity():
    cfg = load_config(PeerConfig, overrides={"peer_id": "node-1.example:a_b", "zone": "eu/w-1.a",
                                             "listen": "[::1]:7401"})
    assert cfg.peer_id == "node-1.example:a_b" and cfg.zone == "eu/w-1.a"
    assert split_hostport(cfg.listen) == ("::1", 7401)
    assert split_hostport("0.0.0.0:7400") == ("0.0.0.0", 7400)
