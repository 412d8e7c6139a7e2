"""Component authentication: the tracker API and the peer-to-peer chunk API answer only
callers presenting the cluster's shared secret in ``X-P2pdist-Token``.

The registry mirror (``/v2/``), ``/healthz``, ``/readyz`` and ``/metrics`` stay open:
dockerd, containerd and Prometheus cannot present it. A peer's local API also answers
callers on its own loopback (the CLI on that node) without the token. Tokens are compared
in constant time and never logged.
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


def require_token(secret: str | None, handler: Handler, *, allow_loopback: bool = False) -> Handler:
    """``handler`` guarded by the shared secret (no secret configured: unguarded)."""
    if not secret:
        return handler
    expected = secret.encode()

    async def guarded(request: Request) -> Response:
        if not (allow_loopback and _is_loopback(request)):
            given = (request.header(TOKEN_HEADER) or "").encode()
            if not hmac.compare_digest(given, expected):
                raise Unauthorized("this endpoint needs the cluster's shared secret (X-P2pdist-Token)")
        return await handler(request)

    return guarded


def token_headers(secret: str | None) -> dict[str, str]:
    return {TOKEN_HEADER: secret} if secret else {}
