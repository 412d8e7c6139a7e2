"""Component authentication: the tracker API and the peer-to-peer chunk API answer only
cluster members. A member proves it one of two ways, whichever the cluster configured:

- the cluster's shared secret in ``X-P2pdist-Token`` (``cluster_secret``), over plain
  HTTP or TLS; compared in constant time and never logged;
- a client certificate signed by the cluster CA (mTLS: ``tls_cert``/``tls_key``/``tls_ca``,
  see ``core.tls``), verified in the TLS handshake (``Request.client_cert``).

With both configured either is enough; with only TLS, a plain-HTTP caller (no
certificate, no secret to check) is refused; with neither, the routes stay open.

The registry mirror (``/v2/``), ``/healthz``, ``/readyz`` and ``/metrics`` are never
guarded: dockerd, containerd and Prometheus present neither. A peer's local API also
answers callers on its own loopback (the CLI on that node) without either.
"""

from __future__ import annotations

import hmac
import ipaddress

from p2pdist.core.errors import Unauthorized
from p2pdist.net.http import Handler, Request, Response

TOKEN_HEADER = "x-p2pdist-token"


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client[0]).is_loopback
    except ValueError:
        return False


class ComponentAuth:
    """Who may call component routes: ``secret`` holders, and (``mtls``) callers whose
    connection presented a verified client certificate."""

    def __init__(self, secret: str | None, *, mtls: bool = False):
        self._expected = secret.encode() if secret else None
        self.mtls = mtls
        ways = []
        if self._expected is not None:
            ways.append("the cluster's shared secret (X-P2pdist-Token)")
        if mtls:
            ways.append("a client certificate signed by the cluster CA (connect with TLS)")
        self._refusal = f"this endpoint needs {' or '.join(ways)}"

    @property
    def open(self) -> bool:
        return self._expected is None and not self.mtls

    def allows(self, request: Request) -> bool:
        if self.open or (self.mtls and request.client_cert is not None):
            return True
        if self._expected is None:
            return False
        given = (request.header(TOKEN_HEADER) or "").encode()
        return hmac.compare_digest(given, self._expected)

    def guard(self, handler: Handler, *, allow_loopback: bool = False) -> Handler:
        """``handler`` answering members only (the loopback too, with ``allow_loopback``);
        others get 401 UNAUTHORIZED naming the ways in. Unguarded when the cluster has no
        component authentication."""
        if self.open:
            return handler

        async def guarded(request: Request) -> Response:
            if not (allow_loopback and _is_loopback(request)) and not self.allows(request):
                raise Unauthorized(self._refusal)
            return await handler(request)

        return guarded


def token_headers(secret: str | None) -> dict[str, str]:
    return {TOKEN_HEADER: secret} if secret else {}
