"""A small HTTP/1.1 server: h11 pumped over trio sockets, with a sendfile fast path.

Why not hypercorn: the chunk data path needs ``os.sendfile`` on the socket and the
tracker's announce path needs many small requests per second; both measured several
times faster on a bare h11 pump (``shared/notes/perf-facts.md``). Control-plane code
stays simple: a handler is ``async def handler(request) -> Response``.

Contracts:
- A handler raising :class:`P2PError` is rendered as ``{"errors":[{"code","message"}]}``
  with the error's status; any other exception becomes a 500 whose body says nothing of
  the cause (the cause is logged). A malformed request gets a 400 and the connection closes.
- Request bodies are read on demand with a limit (:meth:`Request.read_body`); header
  blocks are capped at 16 KiB.
- A streamed body that fails midway cuts the connection: a client never sees a short body
  as a complete one.
- With a TLS server context (``serve_http(tls=…)``) one port speaks both: a connection
  whose first byte opens a TLS handshake is served over TLS (``Request.client_cert`` names
  a verified client certificate), anything else as plain HTTP, as dockerd, containerd and
  Prometheus speak to the mirror and the probes. File bodies then go out in pieces through
  the TLS stream instead of ``os.sendfile``, still paced by their throttle.
- A file body whose fd is ``O_DIRECT`` (the chunk store's, storage.direct) is read into the
  server's reused aligned buffers, a chunk per worker-thread call, and sent from there:
  ``os.sendfile`` would pull it through the page cache the store avoids.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

from p2pdist.core.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    P2PError,
    RangeInvalid,
    TooLarge,
)
from p2pdist.net.throttle import TokenBucket
from p2pdist.net.tls import TLS_HANDSHAKE, PrefixedStream, client_certificate
from p2pdist.storage.direct import ALIGN, AlignedBuffers, is_direct, read_span

log = logging.getLogger("p2pdist.http")

MAX_HEADER_BYTES = 16 * 1024
IDLE_TIMEOUT = 120.0
RECV_SIZE = 256 * 1024
HANDSHAKE_TIMEOUT = 10.0
TLS_FILE_PIECE = 1024 * 1024  # a file body's read size over TLS (256 KiB when throttled)
FILE_PIECE = 4 * 1024 * 1024  # an O_DIRECT file body's read size: a whole chunk per thread hop
FILE_BUFFERS = 4  # read buffers a server keeps for reuse (FILE_PIECE each): the default upload slots


class Request:
    """One parsed request. ``headers`` keeps every header line (names lower-cased).
    ``client_cert``: the subject of the client certificate the connection presented,
    verified against the cluster CA; None over plain HTTP or TLS without one."""

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]],
                 client: tuple[str, int] | None, conn: _ServerConn | None = None,
                 body: bytes | None = None, *, client_cert: str | None = None):
        self.method = method
        self.target = target
        split = urlsplit(target)
        self.raw_path = split.path
        self.path = unquote(split.path)
        self.query: dict[str, list[str]] = parse_qs(split.query, keep_blank_values=True)
        self.headers = headers
        self.client = client
        self.client_cert = client_cert
        self.params: dict[str, str] = {}
        self._conn = conn
        self._body = body
        self._body_consumed = body is not None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    async def read_body(self, limit: int) -> bytes:
        """The whole request body; :class:`TooLarge` past ``limit`` bytes."""
        if self._body is not None:
            if len(self._body) > limit:
                raise TooLarge(f"request body over {limit} bytes")
            return self._body
        length = self.header("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise TooLarge(f"request body of {length} bytes is over the {limit}-byte limit")
        assert self._conn is not None
        parts: list[bytes] = []
        total = 0
        async for data in self._conn.iter_body():
            total += len(data)
            if total > limit:
                raise TooLarge(f"request body over {limit} bytes")
            parts.append(data)
        self._body_consumed = True
        self._body = b"".join(parts)
        return self._body

    async def json(self, limit: int = 1024 * 1024) -> Any:
        body = await self.read_body(limit)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}", code="BODY_INVALID") from exc


@dataclass
class FileBody:
    """A body sent with ``os.sendfile`` from ``fd`` (closed after sending)."""

    fd: int
    offset: int
    count: int
    throttle: TokenBucket | None = None  # paces the send (an upload cap)


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterable[bytes | FileBody] | FileBody = b""  # a stream may mix bytes and file spans
    content_length: int | None = None  # for streamed bodies; None = chunked encoding
    on_close: Callable[[], None] | None = None  # called once the response is over, sent or not

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, [("content-type", "application/json"), *headers], body)

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, [("content-type", content_type)], text.encode())


def error_response(exc: P2PError) -> Response:
    body = {"errors": [{"code": exc.code, "message": exc.message, "detail": {}}]}
    extra = getattr(exc, "headers", ())
    return Response.json(body, exc.status, extra)


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Method + path-pattern routing. Patterns use ``{name}`` for one path segment, or
    ``{name:.+}`` for a regex of your own."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], str, dict[str, Handler]]] = []
        # called with (route pattern, seconds) after each handled request; the pattern, not
        # the path, so a metric's label set stays small
        self.observe: Callable[[str, float], None] | None = None

    def route(self, methods: str | Iterable[str], pattern: str, handler: Handler) -> None:
        if isinstance(methods, str):
            methods = [methods]
        regex = re.sub(r"\{(\w+)(?::([^}]+))?\}", lambda m: f"(?P<{m[1]}>{m[2] or '[^/]+'})", pattern)
        compiled = re.compile(regex + r"\Z")
        for existing, _, table in self._routes:
            if existing.pattern == compiled.pattern:
                for m in methods:
                    table[m] = handler
                return
        self._routes.append((compiled, pattern, {m: handler for m in methods}))

    async def __call__(self, request: Request) -> Response:
        for regex, pattern, table in self._routes:
            m = regex.match(request.path)
            if m is None:
                continue
            handler = table.get(request.method)
            if handler is None and request.method == "HEAD":
                handler = table.get("GET")
            if handler is None:
                raise MethodNotAllowed(f"{request.method} is not supported on {request.path}")
            request.params = m.groupdict()
            if self.observe is None:
                return await handler(request)
            start = time.perf_counter()
            try:
                return await handler(request)
            finally:
                self.observe(pattern, time.perf_counter() - start)
        raise NotFound(f"no such endpoint: {request.path[:200]}")


class _Placeholder:
    """Stands in for a sendfile body in h11's byte accounting (see h11 docs: sendfile)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _peer_of(sock: trio.socket.SocketType) -> tuple[str, int] | None:
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    return peer[0], peer[1]


def _file_buffers() -> AlignedBuffers:
    """Read buffers for file bodies that do not go by sendfile, shared by a server's
    connections (fresh memory per response is what O_DIRECT avoids)."""
    return AlignedBuffers(FILE_PIECE + 2 * ALIGN, keep=FILE_BUFFERS)


class _ServerConn:
    """One connection's request loop. ``sock``: the raw socket for ``os.sendfile``, None
    when ``stream`` is not the socket itself (TLS); ``initial``: bytes already read off it."""

    def __init__(self, stream: trio.abc.Stream, handler: Handler, *, sock: trio.socket.SocketType | None,
                 client: tuple[str, int] | None, client_cert: str | None = None, initial: bytes = b"",
                 buffers: AlignedBuffers | None = None):
        self.stream = stream
        self.buffers = buffers or _file_buffers()
        self.handler = handler
        self.sock = sock
        self.client = client
        self.client_cert = client_cert
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        if initial:
            self.conn.receive_data(initial)  # (never b"": h11 reads that as the end of the stream)

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(IDLE_TIMEOUT) as scope:
                    data = await self.stream.receive_some(RECV_SIZE)
                if scope.cancelled_caught:
                    raise _Close()
                self.conn.receive_data(data)
                continue
            return event

    async def iter_body(self) -> AsyncIterable[bytes]:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise _Close()

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def run(self) -> None:
        try:
            while True:
                try:
                    event = await self._next_event()
                except h11.RemoteProtocolError as exc:
                    await self._send_protocol_error(exc)
                    return
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    return
                # h11 caps only a head still incomplete after a read; one that arrives
                # whole in a single (256 KiB) read must be measured here.
                if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > MAX_HEADER_BYTES:
                    await self._send_protocol_error(h11.RemoteProtocolError(
                        f"request head over {MAX_HEADER_BYTES} bytes", error_status_hint=431))
                    return
                request = Request(
                    event.method.decode("ascii", "replace"),
                    event.target.decode("ascii", "replace"),
                    [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers],
                    self.client,
                    self,
                    client_cert=self.client_cert,
                )
                response = await self._dispatch(request)
                keep = await self._respond(request, response)
                if not keep or self.conn.our_state is not h11.DONE:
                    return
                if not request._body_consumed and self.conn.their_state is not h11.DONE:
                    # drain a small unread body so the connection can be reused
                    try:
                        await request.read_body(64 * 1024)
                    except (TooLarge, _Close, h11.RemoteProtocolError):
                        return
                if self.conn.their_state is not h11.DONE:
                    return
                self.conn.start_next_cycle()
        except (_Close, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            return
        finally:
            with trio.move_on_after(0.5) as scope:
                scope.shield = True
                await self.stream.aclose()

    async def _send_protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        resp = error_response(BadRequest(f"malformed HTTP request: {exc}", code="BAD_REQUEST"))
        status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
        body = resp.body if isinstance(resp.body, bytes) else b""
        try:
            await self.send(h11.Response(status_code=status, headers=[
                ("content-type", "application/json"), ("content-length", str(len(body))),
                ("connection", "close")]))
            await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())
        except (trio.BrokenResourceError, h11.LocalProtocolError):
            pass

    async def _dispatch(self, request: Request) -> Response:
        try:
            return await self.handler(request)
        except P2PError as exc:
            return error_response(exc)
        except _Close:
            raise
        except Exception:
            log.exception("handler failed", extra={"method": request.method, "path": request.path[:200]})
            return error_response(P2PError("internal error"))

    async def _respond(self, request: Request, response: Response) -> bool:
        """Send ``response``; return whether the connection may be reused."""
        try:
            return await self._respond_inner(request, response)
        finally:
            if isinstance(response.body, FileBody) and response.body.fd >= 0:
                os.close(response.body.fd)
                response.body.fd = -1
            if response.on_close is not None:
                response.on_close()

    async def _respond_inner(self, request: Request, response: Response) -> bool:
        body = response.body
        headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
        if isinstance(body, bytes):
            # a HEAD answer has no body but the length of the one a GET would get
            length: int | None = len(body) if body or response.content_length is None else response.content_length
        elif isinstance(body, FileBody):
            length = body.count
        else:
            length = response.content_length
        if length is not None:
            headers.append(("content-length", str(length)))
        head = request.method == "HEAD"
        await self.send(h11.Response(status_code=response.status, headers=headers))
        if head:
            if not isinstance(body, bytes | FileBody) and hasattr(body, "aclose"):
                await body.aclose()  # type: ignore[union-attr]
            await self.send(h11.EndOfMessage())
            return True
        if isinstance(body, bytes):
            if body:
                await self.send(h11.Data(data=body))
        elif isinstance(body, FileBody):
            await self._send_file_body(body)
        else:
            sent = [0]
            try:
                await self._send_stream(body, sent)
            except P2PError as exc:
                log.warning("streamed body failed after %d bytes: %s", sent[0], exc)
                raise _Close() from exc
        await self.send(h11.EndOfMessage())
        return True

    async def _send_stream(self, body: AsyncIterable[bytes | FileBody], sent: list[int]) -> None:
        """A streamed body (a blob to dockerd: one file span per chunk). File spans that
        must be read (``O_DIRECT``, TLS) are read one piece ahead of the socket: the next
        piece comes off the disk while this one is sent, so neither waits for the other.
        Two buffers: the reader refills one only once the sender has taken the next."""
        bufs: list[Any] = []  # taken from the pool at the first span that must be read
        send_ch, recv_ch = trio.open_memory_channel[tuple[Any, FileBody | None]](0)

        async def read_ahead() -> None:
            k = 0
            async with send_ch:
                async for piece in body:
                    if not isinstance(piece, FileBody):
                        if piece:
                            await send_ch.send((piece, None))
                        continue
                    if self.sock is not None and not is_direct(piece.fd):
                        try:
                            await send_ch.send((piece, piece))  # sendfile; the sender closes the fd
                        except BaseException:
                            os.close(piece.fd)  # never handed over (the sender failed first)
                            raise
                        continue
                    if not bufs:
                        bufs.extend((self.buffers.get(), self.buffers.get()))
                    try:
                        step = self._file_piece(piece)
                        offset, end = piece.offset, piece.offset + piece.count
                        while offset < end:
                            want = min(step, end - offset)
                            data = await trio.to_thread.run_sync(read_span, piece.fd, bufs[k % 2], offset, want)
                            if len(data) < want:
                                raise _Close()  # the file shrank under us: cut the connection
                            k += 1
                            offset += want
                            await send_ch.send((data, piece))
                    finally:
                        os.close(piece.fd)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_ahead)
                async with recv_ch:
                    async for data, piece in recv_ch:
                        if isinstance(data, FileBody):
                            try:
                                await self._send_file_body(data)
                            finally:
                                os.close(data.fd)
                        elif piece is None:
                            await self.send(h11.Data(data=data))
                        else:
                            await self._send_passthrough(data)
                            if piece.throttle is not None:
                                await piece.throttle.consume(len(data))
                        sent[0] += len(data) if not isinstance(data, FileBody) else data.count
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:  # the reader's or the sender's failure, as itself
                raise group.exceptions[0] from None
            raise
        finally:
            for b in bufs:
                self.buffers.put(b)

    def _file_piece(self, body: FileBody) -> int:
        capped = body.throttle is not None and body.throttle.rate is not None
        return 256 * 1024 if capped else FILE_PIECE if self.sock is not None else TLS_FILE_PIECE

    async def _send_passthrough(self, data: memoryview | bytes) -> None:
        """Bytes of a body h11 frames but does not copy (its sendfile pattern)."""
        for part in self.conn.send_with_data_passthrough(h11.Data(data=_Placeholder(len(data)))) or []:
            await self.stream.send_all(data if isinstance(part, _Placeholder) else part)

    async def _send_file_body(self, body: FileBody) -> None:
        """A file span as (part of) the body: h11 counts it, ``os.sendfile`` moves it (over
        TLS: reads and encrypted sends)."""
        if body.count == 0:
            return
        for piece in self.conn.send_with_data_passthrough(h11.Data(data=_Placeholder(body.count))) or []:
            if not isinstance(piece, _Placeholder):
                await self.stream.send_all(piece)
            elif self.sock is not None and not is_direct(body.fd):
                await self._sendfile(self.sock, body)
            else:
                await self._send_file_pieces(body)

    async def _sendfile(self, sock: trio.socket.SocketType, body: FileBody) -> None:
        offset, remaining = body.offset, body.count
        capped = body.throttle is not None and body.throttle.rate is not None
        piece = 256 * 1024 if capped else 8 * 1024 * 1024  # small pieces keep a capped rate smooth
        while remaining > 0:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                n = os.sendfile(sock.fileno(), body.fd, offset, min(remaining, piece))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            if n == 0:
                raise _Close()  # the file shrank under us: cut the connection
            offset += n
            remaining -= n
            if body.throttle is not None:
                await body.throttle.consume(n)

    async def _send_file_pieces(self, body: FileBody) -> None:
        """The file span read in pieces into a reused buffer (in a thread: a disk read
        blocks) and sent through the stream: over TLS, which encrypts (``os.sendfile``
        would bypass it), or from an ``O_DIRECT`` fd (sendfile would fill the page cache)."""
        offset, remaining = body.offset, body.count
        piece = self._file_piece(body)
        buf = self.buffers.get()
        try:
            while remaining > 0:
                data = await trio.to_thread.run_sync(read_span, body.fd, buf, offset, min(remaining, piece))
                if not data:
                    raise _Close()  # the file shrank under us: cut the connection
                await self.stream.send_all(data)
                offset += len(data)
                remaining -= len(data)
                if body.throttle is not None:
                    await body.throttle.consume(len(data))
        finally:
            self.buffers.put(buf)


class _Close(Exception):
    pass


async def _serve_sniffed(stream: trio.SocketStream, handler: Handler, tls: ssl.SSLContext,
                         buffers: AlignedBuffers) -> None:
    """One connection on a port that speaks TLS and plain HTTP: its first byte decides."""
    client = _peer_of(stream.socket)
    first = b""
    with trio.move_on_after(IDLE_TIMEOUT):
        try:
            first = await stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
    if not first:
        await trio.aclose_forcefully(stream)
        return
    if first[0] != TLS_HANDSHAKE:
        await _ServerConn(stream, handler, sock=stream.socket, client=client, initial=first,
                          buffers=buffers).run()
        return
    tls_stream = trio.SSLStream(PrefixedStream(stream, first), tls, server_side=True, https_compatible=True)
    with trio.move_on_after(HANDSHAKE_TIMEOUT) as scope:
        try:
            await tls_stream.do_handshake()
        except trio.BrokenResourceError as exc:
            # a certificate from another CA, an expired one, a scanner: nothing to answer
            log.info("TLS handshake from %s failed: %s", client[0] if client else "?", exc.__cause__ or exc)
            await trio.aclose_forcefully(stream)
            return
    if scope.cancelled_caught:
        await trio.aclose_forcefully(stream)
        return
    await _ServerConn(tls_stream, handler, sock=None, client=client,
                      client_cert=client_certificate(tls_stream), buffers=buffers).run()


async def serve_http(handler: Handler, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on ``host:port`` (port 0: any free port) until cancelled.
    ``task_status.started(port)`` reports the bound port. With ``tls`` (a server context)
    a connection opening with a TLS handshake is served over TLS, any other as plain HTTP."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    buffers = _file_buffers()

    async def on_connection(stream: trio.SocketStream) -> None:
        if tls is None:
            await _ServerConn(stream, handler, sock=stream.socket, client=_peer_of(stream.socket),
                              buffers=buffers).run()
        else:
            await _serve_sniffed(stream, handler, tls, buffers)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        task_status.started(bound)


def advertise_addr(listen: str, port: int, configured: str | None) -> str:
    """The ``host:port`` others should dial: the configured one, else the listen host
    (this host's address when listening on all interfaces) with the bound port."""
    if configured:
        return configured
    host = listen.rpartition(":")[0].strip("[]")
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"{host}:{port}"


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """``(status, headers)`` of a response head (without its blank line), header names
    lower-cased, the last of repeated headers kept: enough for the two raw clients, which
    read only status, length and encoding. ValueError for a malformed status line."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"malformed status line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=a-b`` range into ``(offset, length)``; None without a header.

    Raises :class:`RangeInvalid` for anything unsatisfiable or malformed (multi-ranges
    are refused too: nobody in this field sends them)."""

    if header is None:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (m[1] == "" and m[2] == ""):
        raise RangeInvalid(f"unsupported Range {header[:100]!r}: expected bytes=START-END")
    if m[1] == "":
        n = int(m[2])
        if n == 0:
            raise RangeInvalid("empty suffix range")
        start = max(0, size - n)
        end = size - 1
    else:
        start = int(m[1])
        end = int(m[2]) if m[2] else size - 1
        end = min(end, size - 1)
    if start >= size or end < start:
        err = RangeInvalid(f"range {header[:100]!r} is outside a blob of {size} bytes")
        err.headers = [("content-range", f"bytes */{size}")]  # type: ignore[attr-defined]
        raise err
    return start, end - start + 1
