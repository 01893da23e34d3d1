"""The graphical console's tickets, page and WebSocket refusals, on the test driver.

A ticket names its kind: a serial one opens no VNC display and a VNC one no
serial console. The accepted relay runs against real QEMU in
tests/e2e/test_console_real.py.
"""

from __future__ import annotations

from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from kvmvps.models import ConsoleTicket, utcnow
from kvmvps.services import console, suspension
from tests.web.conftest import OP, A, B, World, make_app
from tests.web.helpers import assert_not_stored, forbid_libvirt
from tests.web.test_console_tickets import SITE, UPGRADE, ticket_of


def vnc_handshake(client: FlaskClient, ticket: str, origin: str | None = SITE) -> tuple[int, str]:
    sent = {**UPGRADE, **({"Origin": origin} if origin else {})}
    response = client.get(f"/console/vnc?ticket={ticket}", headers=sent)
    return response.status_code, response.get_data(as_text=True)


def vnc_ticket(world: World, email: str, vps: str) -> dict:
    response = world.client(None).post(
        f"/api/v1/servers/{vps}/console", headers=world.bearer(email), json={"type": "vnc"}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def tickets(world: World) -> int:
    with world.ctx.db.reading() as s:
        return s.scalar(select(func.count()).select_from(ConsoleTicket)) or 0


def test_the_api_hands_out_vnc_tickets_for_the_vnc_route(world: World, monkeypatch) -> None:
    vps = world.order(A).uuid
    forbid_libvirt(monkeypatch)
    got = vnc_ticket(world, A, vps)
    assert got["type"] == "vnc" and got["server"] == vps
    assert got["url"].startswith("ws://localhost/console/vnc?ticket=")
    secret = ticket_of(got["url"])
    assert_not_stored(world.ctx, secret)
    with world.ctx.db.reading() as s:
        row = s.scalars(
            select(ConsoleTicket).where(ConsoleTicket.ticket_hash == console.digest(secret))
        ).one()
        assert row.kind == "vnc" and row.used_at is None
    plain = world.client(None).post(f"/api/v1/servers/{vps}/console", headers=world.bearer(A))
    assert plain.get_json()["type"] == "serial" and "/console/ws?" in plain.get_json()["url"]
    before = tickets(world)
    for body in (
        {"type": "spice"},
        {"type": "vnc\x00"},
        {"type": 5},
        ["vnc"],
        {"type": "v" * 5000},
    ):
        bad = world.client(None).post(
            f"/api/v1/servers/{vps}/console", headers=world.bearer(A), json=body
        )
        assert bad.status_code == 400 and "error" in bad.get_json()
    garbled = world.client(None).post(
        f"/api/v1/servers/{vps}/console",
        headers={**world.bearer(A), "Content-Type": "application/json"},
        data=b'{"type": "vnc"',
    )
    assert garbled.status_code == 400
    assert tickets(world) == before  # nothing half-made


def test_a_ticket_opens_only_the_console_of_its_kind(world: World) -> None:
    vps = world.order(A).uuid
    serial = ticket_of(world.client(A).post(f"/servers/{vps}/console/ticket").get_json()["url"])
    status, body = vnc_handshake(world.client(None), serial)
    assert status == 403 and "unknown, expired or already used" in body
    graphical = ticket_of(vnc_ticket(world, A, vps)["url"])
    refused = world.client(None).get(f"/console/ws?ticket={graphical}", headers=UPGRADE)
    assert refused.status_code == 403
    # both stayed unused: each still opens its own kind, once
    assert console.redeem_ticket(world.ctx, serial).kind == "serial"
    assert console.redeem_ticket(world.ctx, graphical, "vnc").target.vps == vps
    status, body = vnc_handshake(world.client(None), graphical)
    assert status == 403 and "already used" in body


def test_strangers_expired_tickets_wrong_origins_and_suspensions_are_refused(
    world: World,
) -> None:
    vps = world.order(A).uuid
    other, anonymous = world.client(B), world.client(None)
    assert other.get(f"/servers/{vps}/console/vnc").status_code == 404
    stolen = other.post(f"/servers/{vps}/console/ticket", json={"type": "vnc"})
    assert stolen.status_code == 404
    assert anonymous.get(f"/servers/{vps}/console/vnc").status_code == 302
    assert anonymous.post(f"/servers/{vps}/console/ticket", json={"type": "vnc"}).status_code == 401
    assert vnc_handshake(anonymous, "")[0] == 403
    assert vnc_handshake(anonymous, "guessed-" + "x" * 40)[0] == 403
    secret = ticket_of(vnc_ticket(world, A, vps)["url"])
    for origin in ("https://evil.example", "null"):
        status, body = vnc_handshake(anonymous, secret, origin)
        assert status == 403 and "own pages" in body
    with world.ctx.db.session() as s:
        s.execute(update(ConsoleTicket).values(expires_at=utcnow() - timedelta(seconds=1)))
    status, body = vnc_handshake(anonymous, secret)
    assert status == 403 and "expired" in body
    fresh = ticket_of(vnc_ticket(world, A, vps)["url"])
    suspension.suspend(world.ctx, vps, "unpaid invoice", f"user:{OP}")
    status, body = vnc_handshake(anonymous, fresh)
    assert status == 403 and "suspended" in body
    page = world.client(A).get(f"/servers/{vps}").data
    assert b"data-vnc-link" not in page and b"data-console-link" not in page


def test_the_page_loads_novnc_from_the_site_under_its_policy(world: World) -> None:
    vps = world.order(A).uuid
    owner = world.client(A)
    assert f"/servers/{vps}/console/vnc".encode() in owner.get(f"/servers/{vps}").data
    page = owner.get(f"/servers/{vps}/console/vnc")
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src" not in policy
    assert b"<script>" not in page.data and b'type="module"' in page.data
    assert b"vnc.js" in page.data
    module = owner.get("/static/vnc.js").get_data(as_text=True)
    assert 'from "./vendor/novnc/core/rfb.js"' in module
    assert owner.get("/static/vendor/novnc/core/rfb.js").status_code == 200
    assert b"MPL 2.0" in owner.get("/static/vendor/novnc/LICENSE.txt").data
    got = owner.post(f"/servers/{vps}/console/ticket", json={"type": "vnc"})
    assert got.status_code == 200 and "/console/vnc?ticket=" in got.get_json()["url"]
    assert world.client(OP).get(f"/servers/{vps}/console/vnc").status_code == 200


def test_behind_a_tls_proxy_the_vnc_url_is_wss(world: World) -> None:
    app = make_app(world.ctx, PROXIES=1)
    proxied = World(world.ctx, app)
    vps = proxied.order(A).uuid
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "panel.example"}
    got = app.test_client().post(
        f"/api/v1/servers/{vps}/console",
        headers={**proxied.bearer(A), **forwarded},
        json={"type": "vnc"},
    )
    assert got.get_json()["url"].startswith("wss://panel.example/console/vnc?ticket=")
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    asked = doc["paths"]["/servers/{id}/console"]["post"]["requestBody"]["content"]
    assert asked["application/json"]["schema"]["properties"]["type"]["enum"] == ["serial", "vnc"]
