"""The serial console in the browser: the page, its tickets and the WebSocket.

The page asks for a ticket (a POST with the CSRF token), then opens
``/console/ws?ticket=...``. The WebSocket's handshake is refused (403, before
any upgrade) unless the ticket is live and unused and the ``Origin`` is this
site's own, as the client sees it through ``KVMVPS_WEB_PROXIES``. Output of
the guest goes out as binary messages; text messages from the browser are
keystrokes. Pings every :data:`PING_SECONDS` keep idle sessions open through
proxies.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, abort, g, jsonify, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server

from kvmvps.errors import KvmvpsError
from kvmvps.services import console
from kvmvps.services import vps as vps_service
from web.common import WebUser, services, status_for, write_turn
from web.errors import json_error
from web.extensions import login_manager

log = logging.getLogger(__name__)

bp = Blueprint("console", __name__)
sock = Sock()
PING_SECONDS = 20
MAX_INPUT = 64 * 1024  # one message of keystrokes or a paste
WS_ENDPOINT = "console.websocket"
# the site's policy, but xterm.js sets its cell styles through a <style> element
CONSOLE_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"ping_interval": PING_SECONDS})
    app.register_blueprint(bp)


# -- tickets -------------------------------------------------------------------
def ws_url(ticket: str) -> str:
    """The WebSocket URL as the client reaches this site (``wss://`` behind TLS)."""
    scheme = "wss" if request.scheme == "https" else "ws"
    path = urlsplit(url_for(WS_ENDPOINT)).path  # websocket rules build whole URLs
    return f"{scheme}://{request.host}{path}?ticket={ticket}"


def ticket_for(user: WebUser, ref: str) -> dict[str, str]:
    """A fresh ticket for ``user`` to VPS ``ref``, as the page and the API hand it out."""
    with write_turn():
        issued = console.issue_ticket(services(), ref, user.id)
    return {
        "server": issued.vps,
        "url": ws_url(issued.secret),
        "expires_at": issued.expires_at.isoformat(),
    }


# -- the page ------------------------------------------------------------------
@bp.get("/servers/<id>/console")
def page(id: str) -> ResponseReturnValue:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    scope = None if current_user.is_admin else current_user.id
    vps = vps_service.show(services(), id, scope)
    html = render_template("dash/console.html", vps=vps)
    response = Response(html)
    response.headers["Content-Security-Policy"] = CONSOLE_CSP
    return response


@bp.post("/servers/<id>/console/ticket")
def ticket(id: str) -> ResponseReturnValue:
    """The page's ticket, as JSON (errors too: the page's script shows them)."""
    if not current_user.is_authenticated:
        return json_error("log in first", 401)
    try:
        return jsonify(ticket_for(current_user, id))
    except KvmvpsError as exc:
        return json_error(str(exc), status_for(exc))


# -- the WebSocket ---------------------------------------------------------------
def _origin_allowed() -> bool:
    """No Origin (a program, not a browser) or exactly this site's own origin."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


@bp.before_request
def _check_ticket() -> None:
    """Refuse the handshake itself: a 403 before any upgrade, with its reason."""
    if request.endpoint != WS_ENDPOINT:
        return
    if not _origin_allowed():
        abort(403, "this console may only be opened from this site's own pages")
    try:
        g.console = console.redeem_ticket(services(), request.args.get("ticket", ""))
    except KvmvpsError as exc:
        abort(403, str(exc))


def _pump_output(session: console.ConsoleSession, ws: Server) -> None:
    """Guest output to the browser until the console or the socket ends."""
    try:
        while ws.connected:
            data = session.read(0.5)
            if data == b"":
                ws.close(1000, "the console has closed")
                return
            if data:
                ws.send(data)
    except ConnectionClosed:
        return


@sock.route("/console/ws", bp=bp, endpoint="websocket")
def websocket(ws: Server) -> None:
    redeemed: console.Redeemed = g.console
    try:
        session = console.open_session(services(), redeemed.target, redeemed.actor)
    except KvmvpsError as exc:
        ws.close(1011, str(exc)[:120])
        return
    with session:
        pump = threading.Thread(target=_pump_output, args=(session, ws), daemon=True)
        pump.start()
        try:
            while True:
                message = ws.receive()
                if message is None:
                    break
                data = message.encode() if isinstance(message, str) else message
                session.write(data[:MAX_INPUT])
        except (ConnectionClosed, KvmvpsError):
            pass
        finally:
            ws.close()
            pump.join(timeout=2)
