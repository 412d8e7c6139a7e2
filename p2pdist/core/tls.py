"""Component TLS material: this component's certificate and key and the cluster CA,
loaded once into the two :mod:`ssl` contexts every component uses for mutual TLS.

Trust model. The cluster CA signs the certificate of every tracker and peer (one shared
certificate, or one per component: either works). Both sides of a component connection
present their certificate and check the other's chain against ``tls_ca``:

- a server asks for a client certificate but does not demand one in the handshake
  (``CERT_OPTIONAL``): the registry mirror, ``/healthz`` and ``/metrics`` share the port
  with the component routes, and those answer callers without a certificate. A client
  certificate that does not chain to the CA (or is expired) fails the handshake; one that
  does marks the connection as a cluster member's (``net.auth`` lets it through).
- a client demands the server's certificate and verifies its chain, but does NOT check
  the host name against it: peers are dialled by the ``host:port`` they announce (node IPs
  under hostNetwork) and a tracker Service name expands into pod IPs, so no SAN list could
  be written in advance. Membership of the cluster — a certificate from its CA — is the
  identity that matters, exactly what the shared secret proves in its own mode. So the CA
  must be one made for this cluster alone, not one that signs anything else; and the data
  itself never needs the channel's word for it (every chunk is BLAKE3-checked against a
  map the tracker sealed).

Errors are :class:`ConfigError` naming the key (``tls_cert``, ``tls_key``, ``tls_ca``) and
the reason; nothing read from the files (a key above all) is ever put in a message.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from p2pdist.core.errors import ConfigError

TLS_KEYS = ("tls_cert", "tls_key", "tls_ca")
MAX_PEM_BYTES = 1 << 20
ALPN = ["http/1.1"]


@dataclass(frozen=True)
class ClusterTls:
    server: ssl.SSLContext  # presents our certificate; verifies a client certificate when one is sent
    client: ssl.SSLContext  # presents our certificate; requires and verifies the server's


def _config_key(key: str) -> str:
    return f"config key {key!r}"


def load_cluster_tls(cert: str | None, key: str | None, ca: str | None, *,
                     names: Mapping[str, str] | None = None) -> ClusterTls | None:
    """The contexts for ``tls_cert``/``tls_key``/``tls_ca`` (paths of PEM files); None when
    none is set. ``names`` renames the keys in error messages (the CLI reads them from
    ``P2PDIST_TLS_*``).

    Checks, each a :class:`ConfigError` naming its key: all three or none; each readable;
    the CA and the certificate are PEM certificates; the key is an unencrypted PEM private
    key matching the certificate; and an in-memory handshake of the two contexts with each
    other succeeds — the certificate chains to the CA, is in date and is usable by a
    server and by a client (extended key usage serverAuth and clientAuth, or none)."""
    def label(k: str) -> str:
        return names[k] if names and k in names else _config_key(k)

    values = {"tls_cert": cert, "tls_key": key, "tls_ca": ca}
    given = [k for k, v in values.items() if v]
    if not given:
        return None
    if len(given) < len(values):
        missing = [k for k in values if k not in given]
        raise ConfigError(f"{' and '.join(label(k) for k in missing)}: missing; component TLS needs "
                          f"tls_cert, tls_key and tls_ca together (only {', '.join(given)} set)")
    paths: dict[str, str] = {k: v for k, v in values.items() if v}
    texts: dict[str, bytes] = {}
    for k, path in paths.items():
        try:
            with open(path, "rb") as fh:
                texts[k] = fh.read(MAX_PEM_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{label(k)}: cannot read {path}: {exc.strerror or exc}") from exc
        if len(texts[k]) > MAX_PEM_BYTES:
            raise ConfigError(f"{label(k)}: {path} is over {MAX_PEM_BYTES} bytes; not a PEM file")
    for k in ("tls_ca", "tls_cert"):
        try:
            ssl.create_default_context(cadata=texts[k].decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{label(k)}: {paths[k]} holds no PEM certificate "
                              f"(-----BEGIN CERTIFICATE-----): {_reason(exc)}") from exc
    if b"PRIVATE KEY-----" not in texts["tls_key"]:
        raise ConfigError(f"{label('tls_key')}: {paths['tls_key']} holds no PEM private key "
                          f"(-----BEGIN … PRIVATE KEY-----)")

    def encrypted() -> bytes:
        raise ConfigError(f"{label('tls_key')}: {paths['tls_key']} is encrypted; "
                          f"give the component an unencrypted key (mounted from a Secret, mode 0600)")

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=paths["tls_ca"])
    server.verify_mode = ssl.CERT_OPTIONAL
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=paths["tls_ca"])
    client.check_hostname = False  # see the module docstring: the chain is the identity
    client.verify_mode = ssl.CERT_REQUIRED
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(ALPN)
        try:
            ctx.load_cert_chain(paths["tls_cert"], paths["tls_key"], password=encrypted)
        except ssl.SSLError as exc:
            raise ConfigError(f"{label('tls_key')}: {paths['tls_key']} is not the PEM private key of "
                              f"the certificate in {paths['tls_cert']}: {_reason(exc)}") from exc
    try:
        _handshake_in_memory(server, client)
    except ssl.SSLError as exc:
        raise ConfigError(f"{label('tls_cert')}: {paths['tls_cert']} is not usable for mutual TLS "
                          f"with the CA in {paths['tls_ca']}: {_reason(exc)}") from exc
    return ClusterTls(server, client)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return exc.verify_message
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return re.sub(r" \(_ssl\.c:\d+\)", "", str(exc))


def _handshake_in_memory(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """A whole handshake between the two contexts over memory BIOs: what every peer and
    tracker will do with each other, checked once at start instead of failing on the wire.
    Raises the first side's :class:`ssl.SSLError`."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    steps: list[tuple[Callable[[], None], ssl.MemoryBIO, ssl.MemoryBIO]] = [
        (client.do_handshake, c_out, s_in), (server.do_handshake, s_out, c_in)]
    done = [False, False]
    for _ in range(8):
        for i, (step, out, other_in) in enumerate(steps):
            try:
                step()
                done[i] = True
            except ssl.SSLWantReadError:
                pass
            data = out.read()
            if data:
                other_in.write(data)
        if all(done):
            break
    if not all(done):
        raise ssl.SSLError("the in-memory handshake did not finish")
    if not server.getpeercert():
        raise ssl.SSLError("the certificate was not accepted as a client certificate")
