"""The consoles in the browser: the pages, their tickets and the WebSockets.

A page asks for a ticket (a POST with the CSRF token, ``{"type": "vnc"}`` for
the graphical console), then opens ``/console/ws?ticket=...`` (serial) or
``/console/vnc?ticket=...`` (graphical). The WebSocket's handshake is refused
(403, before any upgrade) unless the ticket is live, unused and of that
route's kind and the ``Origin`` is this site's own, as the client sees it
through ``KVMVPS_WEB_PROXIES``. The serial console's output goes out as
binary messages, text messages from the browser are keystrokes; the
graphical one relays the RFB protocol both ways as binary messages (noVNC
speaks it in the page). Pings every :data:`PING_SECONDS` keep idle sessions
open through proxies.
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

from kvmvps.errors import InvalidInput, KvmvpsError
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
WS_ENDPOINTS = {"console.websocket": console.SERIAL, "console.vnc_websocket": console.VNC}
# the site's policy, but xterm.js sets its cell styles through a <style> element
CONSOLE_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def init_app(app: Flask) -> None:
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"ping_interval": PING_SECONDS})
    app.register_blueprint(bp)


# -- tickets -------------------------------------------------------------------
def ws_url(ticket: str, kind: str = console.SERIAL) -> str:
    """The WebSocket URL as the client reaches this site (``wss://`` behind TLS)."""
    scheme = "wss" if request.scheme == "https" else "ws"
    endpoint = next(name for name, of in WS_ENDPOINTS.items() if of == kind)
    path = urlsplit(url_for(endpoint)).path  # websocket rules build whole URLs
    return f"{scheme}://{request.host}{path}?ticket={ticket}"


def requested_kind() -> str:
    """The console type a ticket request asks for: JSON ``{"type": ...}``, default serial."""
    if not (request.is_json and request.content_length):
        return console.SERIAL  # the serial page's POST (no body, or its CSRF form)
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidInput("the body is not valid JSON")
    if not isinstance(body, dict):
        raise InvalidInput('send a JSON object such as {"type": "vnc"}')
    return console.check_kind(body.get("type", console.SERIAL))


def ticket_for(user: WebUser, ref: str, kind: str = console.SERIAL) -> dict[str, str]:
    """A fresh ticket for ``user`` to VPS ``ref``, as the page and the API hand it out."""
    with write_turn():
        issued = console.issue_ticket(services(), ref, user.id, kind)
    return {
        "server": issued.vps,
        "type": issued.kind,
        "url": ws_url(issued.secret, issued.kind),
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


@bp.get("/servers/<id>/console/vnc")
def vnc_page(id: str) -> ResponseReturnValue:
    """The graphical console: noVNC (ES modules from the site, no inline script)."""
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    scope = None if current_user.is_admin else current_user.id
    vps = vps_service.show(services(), id, scope)
    response = Response(render_template("dash/vnc.html", vps=vps))
    response.headers["Content-Security-Policy"] = CONSOLE_CSP
    return response


@bp.post("/servers/<id>/console/ticket")
def ticket(id: str) -> ResponseReturnValue:
    """The page's ticket, as JSON (errors too: the page's script shows them)."""
    if not current_user.is_authenticated:
        return json_error("log in first", 401)
    try:
        return jsonify(ticket_for(current_user, id, requested_kind()))
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
    kind = WS_ENDPOINTS.get(request.endpoint or "")
    if kind is None:
        return
    if not _origin_allowed():
        abort(403, "this console may only be opened from this site's own pages")
    try:
        g.console = console.redeem_ticket(services(), request.args.get("ticket", ""), kind)
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
    except (ConnectionClosed, OSError):  # the browser went away mid-send
        return


def _relay(ws: Server, kind: str) -> None:
    """One session of the redeemed ticket's console, relayed until either side ends."""
    redeemed: console.Redeemed = g.console
    try:
        session = console.open_session(services(), redeemed.target, redeemed.actor, kind)
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
                if len(data) > MAX_INPUT and kind == console.VNC:
                    ws.close(1009, "message too big")  # a cut one would garble the protocol
                    break
                session.write(data[:MAX_INPUT])
        except (ConnectionClosed, KvmvpsError):
            pass
        finally:
            ws.close()
            pump.join(timeout=2)


@sock.route("/console/ws", bp=bp, endpoint="websocket")
def websocket(ws: Server) -> None:
    """The serial console: the guest's output out, keystrokes in."""
    _relay(ws, console.SERIAL)


@sock.route("/console/vnc", bp=bp, endpoint="vnc_websocket")
def vnc_websocket(ws: Server) -> None:
    """The graphical console: RFB bytes both ways between the browser and the VNC display."""
    _relay(ws, console.VNC)
