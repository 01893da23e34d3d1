"""``GET /metrics`` for the operators' Prometheus: a bearer token, never a customer's session.

With ``KVMVPS_METRICS_TOKEN`` unset the page does not exist (404). Otherwise
only ``Authorization: Bearer <that token>`` opens it; anything else,
including a logged-in customer or operator's session and any API token,
gets 401.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Blueprint, Response, abort, request

from kvmvps.services import exporter
from web.common import services

bp = Blueprint("metrics", __name__)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def token_matches(expected: str, header: str) -> bool:
    """Whether ``header`` is ``Bearer <expected>``, compared in constant time."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(_digest(given.strip()), _digest(expected))


@bp.get("/metrics")
def metrics() -> Response:
    expected = services().settings.metrics_token
    if not expected:
        abort(404)
    if not token_matches(expected, request.headers.get("Authorization", "")):
        response = Response("a valid metrics token is required\n", 401, mimetype="text/plain")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return Response(exporter.exposition(services()), 200, content_type=exporter.CONTENT_TYPE)
