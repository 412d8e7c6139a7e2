"""TLS on component connections (the contexts: :mod:`p2pdist.core.tls`).

- :func:`open_tls_stream`: a client connection that presents our certificate and
  verifies the server's chain (not its host name: see ``core.tls``).
- :class:`PrefixedStream`: a stream that hands back bytes already read off its transport
  first; the server reads a connection's first bytes to tell a TLS handshake from plain
  HTTP on one port, then lets TLS read them again.
- :func:`client_certificate`: who a server-side TLS stream's verified client is.
"""

from __future__ import annotations

import ipaddress
import ssl

import trio

TLS_HANDSHAKE = 0x16  # the first byte of every TLS record carrying a handshake (ClientHello)


class PrefixedStream(trio.abc.Stream):
    """``transport`` with ``prefix`` read back before anything new."""

    def __init__(self, transport: trio.abc.Stream, prefix: bytes):
        self.transport = transport
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.transport.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport.aclose()


def client_certificate(stream: trio.SSLStream[trio.abc.Stream]) -> str | None:
    """The subject CN (else the whole subject) of the client certificate of a server-side
    stream after its handshake, or None when the client sent none.

    A certificate that is returned was verified: the server context is ``CERT_OPTIONAL``, so
    a client certificate that does not chain to the cluster CA fails the handshake, and
    ``getpeercert()`` is empty unless the certificate was validated."""
    cert = stream.getpeercert()
    if not cert:
        return None
    parts = [(k, v) for rdn in cert.get("subject", ()) for k, v in rdn]
    cn = next((v for k, v in parts if k == "commonName"), None)
    return cn if cn is not None else ",".join(f"{k}={v}" for k, v in parts)


def _sni(host: str) -> str | None:
    """The name to send as SNI: a DNS name, never an IP address (RFC 6066 §3)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host or None
    return None


async def open_tls_stream(host: str, port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    """A TCP connection to ``host:port`` with its TLS handshake done. Raises OSError (no
    connection) or :class:`trio.BrokenResourceError` (the handshake failed: its cause is the
    :class:`ssl.SSLError`); the caller bounds the time."""
    tcp = await trio.open_tcp_stream(host, port)
    # https_compatible: the server may close without close_notify; our framing (lengths) never
    # depends on reading to the end of the stream
    stream = trio.SSLStream(tcp, context, server_hostname=_sni(host), https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return stream
