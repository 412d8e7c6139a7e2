"""The chunk fast path, client side: ``GET /chunks/<blake3>`` (and the seed's ``/fresh``
long poll) over kept-alive raw trio sockets, the body read with ``recv_into`` straight
into a caller's reused buffer.

httpx tops out near 0.45 GB/s here because it copies every 64 KiB piece; this path does
no per-piece allocation (``shared/notes/perf-facts.md``). With a TLS context (the cluster
uses mTLS) every peer is dialled over TLS and the body is decrypted piece by piece into
the buffer instead: ``recv_into`` would read ciphertext. Only our own chunk servers are
spoken to, so the response parser handles exactly what they send: a status line,
headers, and a ``Content-Length`` body.

Errors: 404 → :class:`ChunkUnknown`, 503 → :class:`Busy`, a refused or broken
connection → :class:`Unavailable`; other statuses map back through the error body's code.
A fetch cancelled midway (a deadline) discards its connection, never reuses it.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections import defaultdict
from collections.abc import Awaitable, Callable

import trio

from p2pdist.core.errors import Busy, ChunkUnknown, P2PError, Unavailable, error_from_code
from p2pdist.net.http import parse_response_head
from p2pdist.net.throttle import TokenBucket
from p2pdist.net.tls import open_tls_stream

MAX_HEAD = 16 * 1024
RECV_LOWAT = 256 * 1024  # bytes a body read waits for (SO_RCVLOWAT) before it wakes
MAX_ERROR_BODY = 64 * 1024
MAX_HAVE_BODY = 256 * 1024  # a have bitmap of 2^20 chunks (wire.tracker's limit), base64, in JSON


class _Conn:
    __slots__ = ("stream", "sock", "pending")

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType | None):
        self.stream = stream
        self.sock = sock  # for recv_into; None over TLS
        self.pending = bytearray()  # bytes received past the end of a response head


class ChunkClient:
    def __init__(self, *, headers: dict[str, str] | None = None, connect_timeout: float = 5.0,
                 max_idle_per_host: int = 8, throttle: TokenBucket | None = None,
                 tls: ssl.SSLContext | None = None):
        self._idle: dict[str, list[_Conn]] = defaultdict(list)
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_host
        self.bytes_received = 0
        self.throttle = throttle  # a download cap, shared by every fetch of this client
        self._tls = tls  # a client context: present our certificate, verify the peer's

    async def _connect(self, addr: str) -> _Conn:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        try:
            with trio.fail_after(self._connect_timeout):
                if self._tls is not None:
                    return _Conn(await open_tls_stream(host, int(port), self._tls), None)
                stream = await trio.open_tcp_stream(host, int(port))
        except (OSError, trio.TooSlowError, ValueError) as exc:
            raise Unavailable(f"cannot connect to peer {addr}: {exc}") from exc
        except trio.BrokenResourceError as exc:
            raise Unavailable(f"TLS handshake with peer {addr} failed: {exc.__cause__ or exc}") from exc
        return _Conn(stream, stream.socket)

    async def fetch(self, addr: str, name: str, buf: bytearray | memoryview, *,
                    accept_zstd: bool = False) -> tuple[int, str | None]:
        """Fetch chunk ``name`` from ``addr`` into ``buf``; return ``(nbytes, content_encoding)``.

        ``buf`` must hold the whole body (a chunk is never bigger than its chunk size, and
        a zstd body is only sent when smaller). The bytes are NOT verified here."""

        async def into(headers: dict[str, str], length: int) -> memoryview:
            view = memoryview(buf)
            if length > len(view):
                raise Unavailable(f"peer {addr} sent {length} bytes for a chunk of at most {len(view)}")
            return view

        n, headers = await self._request(addr, f"/chunks/{name}", into, accept_zstd, f"chunk {name[:16]}…")
        return n, headers.get("content-encoding")

    async def fetch_fresh(self, addr: str, task_id: str, wait: int,
                          claim: Callable[[dict[str, str], int], Awaitable[memoryview]]
                          ) -> tuple[int, dict[str, str]]:
        """The seed's ``/fresh`` long poll on ``addr``: wait up to ``wait`` seconds for a
        chunk the seed hands this peer unasked. ``await claim(headers, length)`` is called
        on a 200 head (``x-chunk-index``, ``x-chunk-name``, ``content-encoding``) and returns
        the buffer for the body, or raises to refuse it (the connection is then closed, so
        the seed stops sending). Returns ``(nbytes, headers)``; ``nbytes`` is -1 for a 204
        (nothing came: ``headers["x-fresh"]`` is ``end`` once the seed will hand out
        nothing more). The bytes are NOT verified here."""
        return await self._request(addr, f"/api/v1/tasks/{task_id}/fresh?wait={wait}", claim, True,
                                   "a fresh chunk")

    async def fetch_have(self, addr: str, task_id: str) -> str:
        """A neighbour's ``GET /have/<task>``: what it holds of the task, as the tracker's
        wire bitmap (undecoded: the caller knows the chunk count)."""
        body = bytearray()

        async def into(headers: dict[str, str], length: int) -> memoryview:
            if length > MAX_HAVE_BODY:
                raise Unavailable(f"peer {addr} sent a {length}-byte have list")
            body.extend(bytes(length))
            return memoryview(body)

        await self._request(addr, f"/have/{task_id}", into, False, f"the have list of task {task_id[:16]}…")
        try:
            have = json.loads(body)["have"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable(f"peer {addr} sent an unreadable have list") from exc
        if not isinstance(have, str):
            raise Unavailable(f"peer {addr} sent an unreadable have list")
        return have

    async def _request(self, addr: str, path: str,
                       into: Callable[[dict[str, str], int], Awaitable[memoryview]],
                       accept_zstd: bool, what: str) -> tuple[int, dict[str, str]]:
        conns = self._idle[addr]
        reused = bool(conns)
        conn = conns.pop() if conns else await self._connect(addr)
        ok = False
        try:
            try:
                result = await self._exchange(conn, addr, path, into, accept_zstd, what)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, _ShortRead) as exc:
                if not reused:
                    raise Unavailable(f"peer {addr} broke the connection: {exc}") from exc
                # a kept-alive connection may have been closed by the server meanwhile: retry once fresh
                await trio.aclose_forcefully(conn.stream)
                conn = await self._connect(addr)
                try:
                    result = await self._exchange(conn, addr, path, into, accept_zstd, what)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, _ShortRead) as exc2:
                    raise Unavailable(f"peer {addr} broke the connection: {exc2}") from exc2
            ok = result[2]
            return result[0], result[1]
        except P2PError as exc:
            # a refusal (busy, missing …) read to its end leaves the connection reusable:
            # closing it cost the next ask a TCP handshake and the server a new connection
            ok = getattr(exc, "reusable", False)
            raise
        finally:
            if ok and len(self._idle[addr]) < self._max_idle:
                self._idle[addr].append(conn)
            else:
                # forcefully: a TLS close_notify could wait on a peer that stopped reading
                await trio.aclose_forcefully(conn.stream)

    async def _exchange(self, conn: _Conn, addr: str, path: str,
                        into: Callable[[dict[str, str], int], Awaitable[memoryview]],
                        accept_zstd: bool, what: str) -> tuple[int, dict[str, str], bool]:
        enc = "accept-encoding: zstd\r\n" if accept_zstd else ""
        req = f"GET {path} HTTP/1.1\r\nhost: {addr}\r\n{enc}{self._extra}\r\n".encode()
        await conn.stream.send_all(req)
        status, headers = await self._read_head(conn)
        length_s = headers.get("content-length")
        if length_s is None or not length_s.isdigit():
            raise Unavailable(f"peer {addr} sent no Content-Length")
        length = int(length_s)
        keep = headers.get("connection", "").lower() != "close"
        if status == 204 and length == 0:
            return -1, headers, keep
        if status != 200:
            if length > MAX_ERROR_BODY:
                raise Unavailable(f"peer {addr} sent a {length}-byte error body")
            body = bytearray(length)
            await self._read_into(conn, memoryview(body), length)
            raise self._error(status, bytes(body), addr, what, keep)
        view = await into(headers, length)
        await self._read_into(conn, view, length)
        self.bytes_received += length
        return length, headers, keep

    def _error(self, status: int, body: bytes, addr: str, what: str, keep: bool) -> P2PError:
        try:
            err = json.loads(body)["errors"][0]
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, IndexError, TypeError):
            code, message = "", f"HTTP {status}"
        if status == 404:
            exc: P2PError = ChunkUnknown(f"peer {addr} does not hold {what}")
        elif status == 503:
            exc = Busy(f"peer {addr} is busy: {message}")
        else:
            exc = error_from_code(code, f"peer {addr}: {message}", status)
        exc.reusable = keep  # type: ignore[attr-defined]
        return exc

    async def _read_head(self, conn: _Conn) -> tuple[int, dict[str, str]]:
        data = conn.pending
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(data) > MAX_HEAD:
                raise Unavailable("response head too large")
            piece = await conn.stream.receive_some(65536)
            if not piece:
                raise _ShortRead("connection closed before the response head")
            data += piece
        conn.pending = bytearray(data[end + 4:])
        try:
            return parse_response_head(bytes(data[:end]))
        except ValueError as exc:
            raise Unavailable(f"peer sent {exc}") from exc

    async def _read_into(self, conn: _Conn, view: memoryview, length: int) -> None:
        got = 0
        if conn.pending:
            take = min(len(conn.pending), length)
            view[:take] = conn.pending[:take]
            del conn.pending[:take]
            got = take
        lowat = 1
        try:
            while got < length:
                if conn.sock is not None:
                    # wake when a good piece is in, not for every segment: on a capped link a
                    # body trickles in and each wake-up costs the event loop more than the copy
                    want = min(RECV_LOWAT, length - got)
                    if want != lowat:
                        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
                        lowat = want
                    n = await conn.sock.recv_into(view[got:length], length - got)
                else:
                    data = await conn.stream.receive_some(length - got)
                    n = len(data)
                    view[got:got + n] = data
                if n == 0:
                    raise _ShortRead(f"connection closed after {got} of {length} bytes")
                got += n
                if self.throttle is not None:
                    await self.throttle.consume(n)
        finally:
            if lowat != 1 and conn.sock is not None:
                try:
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)  # the next head may be short
                except OSError:
                    pass  # a broken connection is discarded anyway

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                await trio.aclose_forcefully(c.stream)
        self._idle.clear()


class _ShortRead(Exception):
    pass
