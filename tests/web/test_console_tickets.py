"""Console tickets: who gets one, and every way a WebSocket handshake is refused.

The handshake is refused before any upgrade (a plain 403 with its reason), so
the refusals are tested here with the test client on the test driver; the
accepted session runs against a real guest in tests/e2e/test_console_real.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from kvmvps.errors import Forbidden, NotFound
from kvmvps.models import ConsoleTicket, utcnow
from kvmvps.services import console, suspension
from kvmvps.services.inventory import user_by_email
from tests.web.conftest import OP, A, B, World, make_app
from tests.web.helpers import assert_not_stored, forbid_libvirt

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
SITE = "http://localhost"


def ticket_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["ticket"][0]


def handshake(
    client: FlaskClient, ticket: str, origin: str | None = SITE, **headers: str
) -> tuple[int, str]:
    sent = {**UPGRADE, **headers, **({"Origin": origin} if origin else {})}
    response = client.get(f"/console/ws?ticket={ticket}", headers=sent)
    return response.status_code, response.get_data(as_text=True)


def issue(world: World, email: str, vps: str) -> dict:
    response = world.client(None).post(
        f"/api/v1/servers/{vps}/console", headers=world.bearer(email)
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_api_ticket_is_random_short_lived_and_stored_hashed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    vps = world.order(A).uuid
    forbid_libvirt(monkeypatch)  # handing out a ticket never touches the hypervisor
    first, second = issue(world, A, vps), issue(world, A, vps)
    assert first["server"] == vps
    assert first["url"].startswith("ws://localhost/console/ws?ticket=")
    secret = ticket_of(first["url"])
    assert len(secret) >= 40 and secret != ticket_of(second["url"])
    lifetime = datetime.fromisoformat(first["expires_at"]) - utcnow()
    assert timedelta(seconds=20) < lifetime <= timedelta(seconds=console.TICKET_SECONDS)
    assert_not_stored(world.ctx, secret)
    with world.ctx.db.reading() as s:
        assert console.digest(secret) in s.scalars(select(ConsoleTicket.ticket_hash)).all()


def test_the_site_hands_tickets_to_the_owner_and_operators(world: World) -> None:
    vps = world.order(A).uuid
    owner = world.client(A)
    page = owner.get(f"/servers/{vps}/console")
    assert page.status_code == 200
    assert "style-src 'self' 'unsafe-inline'" in page.headers["Content-Security-Policy"]
    assert "script-src" not in page.headers["Content-Security-Policy"]  # 'self' only
    assert b"<script>" not in page.data and b"console.js" in page.data
    assert f"/servers/{vps}/console".encode() in owner.get(f"/servers/{vps}").data
    got = owner.post(f"/servers/{vps}/console/ticket")
    assert got.status_code == 200 and "ticket=" in got.get_json()["url"]
    assert world.client(OP).post(f"/servers/{vps}/console/ticket").status_code == 200


def test_other_customers_are_refused(world: World) -> None:
    vps = world.order(A).uuid
    other = world.client(B)
    assert other.get(f"/servers/{vps}/console").status_code == 404
    assert other.post(f"/servers/{vps}/console/ticket").status_code == 404
    refused = other.post(f"/api/v1/servers/{vps}/console", headers=world.bearer(B))
    assert refused.status_code == 404
    with world.ctx.db.reading() as s:
        bob = user_by_email(s, B).id
    with pytest.raises(NotFound, match="no VPS matches"):
        console.issue_ticket(world.ctx, vps, bob)


def test_anonymous_users_are_refused(world: World) -> None:
    vps = world.order(A).uuid
    anonymous = world.client(None)
    assert anonymous.get(f"/servers/{vps}/console").status_code == 302  # to the login page
    assert anonymous.post(f"/servers/{vps}/console/ticket").status_code == 401
    assert anonymous.post(f"/api/v1/servers/{vps}/console").status_code == 401
    status, body = handshake(anonymous, "")
    assert status == 403 and "no valid console ticket" in body
    status, body = handshake(anonymous, "made-up-ticket-" + "x" * 30)
    assert status == 403 and "unknown, expired or already used" in body


def test_expired_tickets_are_refused(world: World) -> None:
    secret = ticket_of(issue(world, A, world.order(A).uuid)["url"])
    with world.ctx.db.session() as s:
        s.execute(update(ConsoleTicket).values(expires_at=utcnow() - timedelta(seconds=1)))
    status, body = handshake(world.client(None), secret)
    assert status == 403 and "unknown, expired or already used" in body


def test_reused_tickets_are_refused(world: World) -> None:
    vps = world.order(A).uuid
    secret = ticket_of(issue(world, A, vps)["url"])
    redeemed = console.redeem_ticket(world.ctx, secret)  # the first use succeeds
    assert redeemed.target.vps == vps and redeemed.actor == f"user:{A}"
    status, body = handshake(world.client(None), secret)
    assert status == 403 and "already used" in body


def test_wrong_origin_is_refused_and_leaves_the_ticket_unused(world: World) -> None:
    vps = world.order(A).uuid
    secret = ticket_of(issue(world, A, vps)["url"])
    for origin in ("https://evil.example", "http://localhost.evil.example", "null"):
        status, body = handshake(world.client(None), secret, origin=origin)
        assert status == 403 and "own pages" in body
    assert console.redeem_ticket(world.ctx, secret).target.vps == vps


def test_behind_a_tls_proxy_the_url_is_wss_and_the_origin_is_the_proxys(world: World) -> None:
    app = make_app(world.ctx, PROXIES=1)
    proxied = World(world.ctx, app)
    vps = proxied.order(A).uuid
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "panel.example"}
    got = app.test_client().post(
        f"/api/v1/servers/{vps}/console", headers={**proxied.bearer(A), **forwarded}
    )
    url = got.get_json()["url"]
    assert url.startswith("wss://panel.example/console/ws?ticket=")
    client = app.test_client()
    status, body = handshake(client, ticket_of(url), origin=SITE, **forwarded)
    assert status == 403 and "own pages" in body  # http://localhost is not the site now
    secret = ticket_of(url)
    with pytest.raises(Forbidden):  # the right origin gets past the check to the ticket
        console.redeem_ticket(world.ctx, secret + "x")
    status, body = handshake(client, secret + "x", origin="https://panel.example", **forwarded)
    assert status == 403 and "unknown, expired" in body


def test_suspended_servers_are_refused(world: World) -> None:
    vps = world.order(A).uuid
    secret = ticket_of(issue(world, A, vps)["url"])
    suspension.suspend(world.ctx, vps, "unpaid invoice", f"user:{OP}")
    status, body = handshake(world.client(None), secret)
    assert status == 403 and "suspended" in body
    refused = world.client(A).post(f"/servers/{vps}/console/ticket")
    assert refused.status_code == 403 and "suspended" in refused.get_json()["error"]
    assert b"data-console-link" not in world.client(A).get(f"/servers/{vps}").data


def test_a_server_that_is_not_running_has_no_console(world: World) -> None:
    vps = world.order(A, running=False).uuid
    refused = world.client(None).post(f"/api/v1/servers/{vps}/console", headers=world.bearer(A))
    assert refused.status_code == 409 and "start it" in refused.get_json()["error"]
