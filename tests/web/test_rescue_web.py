"""Rescue mode through the website and the REST API (test driver, SQLite and PostgreSQL).

Requests only: the jobs are not run here (tests/unit/test_rescue_testdriver.py
runs them). Refusals are 4xx with one plain line and change nothing.
"""

from __future__ import annotations

from sqlalchemy import func, select, update

from kvmvps.models import Image, Job, Vps
from kvmvps.services import Context, inventory, suspension
from tests.web.conftest import OP, A, B, World, finish_job
from tests.web.helpers import text


def _mark_rescue(ctx: Context) -> None:
    inventory.edit_image(ctx, "linux", rescue=True, actor="os:test")


def _jobs(ctx: Context, kind: str) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.kind == kind)) or 0


def _in_rescue(ctx: Context, uuid: str) -> None:
    """What a finished rescue job leaves in the database."""
    with ctx.db.session() as s:
        image_id = s.scalar(select(Image.id).where(Image.name == "linux"))
        s.execute(
            update(Vps)
            .where(Vps.uuid == uuid)
            .values(rescue_image_id=image_id, rescue_host_key_fingerprint="SHA256:rescueKEY")
        )


def test_api_rescue_returns_a_password_once_and_sealed(world: World) -> None:
    _mark_rescue(world.ctx)
    placed = world.order(A, image="linux")
    client, headers = world.app.test_client(), world.bearer(A)
    url = f"/api/v1/servers/{placed.uuid}/actions"
    r = client.post(url, json={"action": "rescue"}, headers=headers)
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["action"] == "rescue" and len(body["password"]) == 20
    with world.ctx.db.session() as s:
        sealed = s.scalar(select(Vps.pending_password).where(Vps.uuid == placed.uuid))
    assert sealed and body["password"] not in sealed
    again = client.post(url, json={"action": "rescue"}, headers=headers)  # a double submit
    assert again.status_code == 409 and "pending" in again.get_json()["error"]
    assert _jobs(world.ctx, "rescue") == 1


def test_api_in_rescue_refuses_other_actions_with_409(world: World) -> None:
    _mark_rescue(world.ctx)
    placed = world.order(A, image="linux")
    _in_rescue(world.ctx, placed.uuid)
    client, headers = world.app.test_client(), world.bearer(A)
    url = f"/api/v1/servers/{placed.uuid}/actions"
    shown = client.get(f"/api/v1/servers/{placed.uuid}", headers=headers).get_json()
    assert shown["rescue"] is True and shown["rescue_host_key_fingerprint"] == "SHA256:rescueKEY"
    for action in ("reinstall", "password_reset", "rescue"):
        r = client.post(url, json={"action": action}, headers=headers)
        assert r.status_code == 409, (action, r.get_json())
        message = r.get_json()["error"]
        assert "rescue mode" in message and "\n" not in message
    assert client.delete(f"/api/v1/servers/{placed.uuid}", headers=headers).status_code == 409
    assert _jobs(world.ctx, "reinstall") == _jobs(world.ctx, "delete") == 0
    r = client.post(url, json={"action": "unrescue"}, headers=headers)
    assert r.status_code == 202 and r.get_json()["password"] is None
    finish_job(world.ctx, r.get_json()["job"])


def test_api_unrescue_outside_rescue_and_no_rescue_image_are_409(world: World) -> None:
    placed = world.order(A, image="linux")
    client, headers = world.app.test_client(), world.bearer(A)
    url = f"/api/v1/servers/{placed.uuid}/actions"
    r = client.post(url, json={"action": "rescue"}, headers=headers)
    assert r.status_code == 409 and "no rescue image" in r.get_json()["error"]
    r = client.post(url, json={"action": "unrescue"}, headers=headers)
    assert r.status_code == 409 and "not in rescue mode" in r.get_json()["error"]
    with world.ctx.db.session() as s:
        assert s.scalar(select(Vps.pending_password).where(Vps.uuid == placed.uuid)) is None


def test_another_customers_vps_and_a_suspended_one_are_refused(world: World) -> None:
    _mark_rescue(world.ctx)
    theirs = world.order(B, image="linux")
    client, headers = world.app.test_client(), world.bearer(A)
    r = client.post(
        f"/api/v1/servers/{theirs.uuid}/actions", json={"action": "rescue"}, headers=headers
    )
    assert r.status_code == 404
    page = world.client(A).post(f"/servers/{theirs.uuid}/actions/rescue", data={"hostname": "vm1"})
    assert page.status_code == 404
    mine = world.order(A, image="linux")
    suspension.suspend(world.ctx, mine.uuid, "unpaid invoice", actor=f"user:{OP}")
    r = client.post(
        f"/api/v1/servers/{mine.uuid}/actions", json={"action": "rescue"}, headers=headers
    )
    assert r.status_code == 403 and "unpaid invoice" in r.get_json()["error"]
    assert _jobs(world.ctx, "rescue") == 0


def test_web_rescue_asks_to_confirm_then_shows_the_password_page(world: World) -> None:
    _mark_rescue(world.ctx)
    placed = world.order(A, image="linux")
    client = world.client(A)
    page = client.get(f"/servers/{placed.uuid}/actions/rescue")
    assert page.status_code == 200 and "/dev/vdb" in text(page)
    r = client.post(f"/servers/{placed.uuid}/actions/rescue", data={"hostname": "vm1"})
    assert r.status_code == 302 and "/jobs/" in r.headers["Location"]
    assert _jobs(world.ctx, "rescue") == 1
    server = client.get(f"/servers/{placed.uuid}")
    assert "Rescue mode" in text(server)


def test_web_server_page_in_rescue_offers_only_leaving_and_power(world: World) -> None:
    _mark_rescue(world.ctx)
    placed = world.order(A, image="linux")
    _in_rescue(world.ctx, placed.uuid)
    client = world.client(A)
    html = client.get(f"/servers/{placed.uuid}").get_data(as_text=True)
    assert "data-rescue" in html and "/dev/vdb" in html
    assert f'href="/servers/{placed.uuid}/actions/reinstall"' not in html
    r = client.post(
        f"/servers/{placed.uuid}/actions/reinstall", data={"hostname": "vm1", "image": "linux"}
    )
    assert r.status_code == 409 and "rescue mode" in text(r)
    r = client.post(f"/servers/{placed.uuid}/actions/unrescue")
    assert r.status_code == 302
    assert _jobs(world.ctx, "unrescue") == 1
    creds = client.get(f"/servers/{placed.uuid}/credentials")
    assert "SHA256:rescueKEY" in text(creds)
