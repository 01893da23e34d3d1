"""A customer changes plan: the website and the API queue a resize the worker does.

The test driver keeps the domain real to libvirt; it cannot resize disks, so the plans
here move vCPUs and memory (tests/integration/test_resize_real.py grows real disks).
"""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from kvmvps.models import Image, Job, Plan, Vps
from kvmvps.services import Context, audit, inventory, operators, quotas, suspension
from kvmvps.services.runner import run_inline
from tests.snapshots import db_snapshot as full_snapshot
from tests.web.conftest import OP, A, B, World, csrf_token
from tests.web.helpers import text


@pytest.fixture
def plans(world: World) -> None:
    inventory.add_plan(world.ctx, "nano2", 2, 32, 1)  # more vCPUs and memory, same disk
    inventory.add_plan(world.ctx, "secret", 2, 32, 1)
    operators.set_plan_hidden(world.ctx, "secret", True)
    inventory.add_plan(world.ctx, "deep", 1, 16, 3)
    inventory.add_plan(world.ctx, "flat", 1, 16, 2)


def db_snapshot(ctx: Context) -> dict:
    """Every row but the audit log and the API tokens (whose last use moves)."""
    return {k: v for k, v in full_snapshot(ctx).items() if k != "api_tokens"}


def built(world: World, email: str = A) -> str:
    """A VPS of ``email``'s, built by the runner on the test driver (its domain exists)."""
    placed = world.order(email, running=False)
    assert run_inline(world.ctx, placed.job)
    return placed.uuid


def plan_of(world: World, uuid: str) -> str:
    with world.ctx.db.reading() as s:
        query = select(Plan.name).join(Vps, Vps.plan_id == Plan.id).where(Vps.uuid == uuid)
        return s.scalars(query).one()


def jobs_of(world: World, uuid: str) -> list[str]:
    with world.ctx.db.reading() as s:
        return list(s.scalars(select(Job.kind).where(Job.vps_uuid == uuid).order_by(Job.id)))


def test_api_resize_is_queued_and_the_worker_moves_the_vps(world: World, plans: None) -> None:
    uuid = built(world)
    client = world.app.test_client()
    r = client.post(
        f"/api/v1/servers/{uuid}/resize", json={"plan": "nano2"}, headers=world.bearer(A)
    )
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert (body["id"], body["action"], body["plan"]) == (uuid, "resize", "nano2")
    assert "next start" in body["note"] and r.headers["Location"].endswith(body["job"])
    # a double submit: one job only
    again = client.post(
        f"/api/v1/servers/{uuid}/resize", json={"plan": "nano2"}, headers=world.bearer(A)
    )
    assert again.status_code == 409 and "pending" in again.get_json()["error"]
    assert jobs_of(world, uuid) == ["create", "resize"]
    assert plan_of(world, uuid) == "nano"
    assert run_inline(world.ctx, body["job"])
    assert plan_of(world, uuid) == "nano2"
    shown = client.get(f"/api/v1/servers/{uuid}", headers=world.bearer(A)).get_json()
    assert (shown["vcpus"], shown["memory_mib"]) == (2, 32)
    entries = audit.list_entries(world.ctx, action="vps.resize.request")
    assert [e["result"] for e in entries] == ["failed", "ok"]  # newest first
    assert {e["actor"] for e in entries} == {A} or all(A in e["actor"] for e in entries)


BAD = [
    ({"plan": "nosuch"}, 404, "no plan named 'nosuch'"),
    ({"plan": "secret"}, 404, "no plan named 'secret'"),
    ({"plan": "nano"}, 400, "already has plan 'nano'"),
    ({"plan": "x" * 300}, 400, "is not valid"),
    ({"plan": "nänö"}, 400, "is not valid"),
    ({"plan": "nano\u202e"}, 400, "control characters"),
    ({"plan": "nano\x07"}, 400, "control characters"),
    ({"plan": 10**30}, 400, "must be a string"),
    ({"plan": ""}, 400, "required"),
    ({}, 400, "required"),
    ({"plan": "nano2", "vcpus": 64}, 400, "unknown field"),
]


def test_api_bad_resizes_change_nothing(world: World, plans: None) -> None:
    uuid, headers = built(world), world.bearer(A)
    client = world.app.test_client()
    before = db_snapshot(world.ctx)
    for body, status, fragment in BAD:
        r = client.post(f"/api/v1/servers/{uuid}/resize", json=body, headers=headers)
        assert r.status_code == status, (body, r.get_json())
        assert fragment in str(r.get_json()), (body, r.get_json())
        assert db_snapshot(world.ctx) == before, body


def test_hostile_customers_change_nothing(world: World, plans: None) -> None:
    uuid = built(world)
    client = world.app.test_client()
    bearers = {A: world.bearer(A), B: world.bearer(B)}

    def ask(plan: str, who: str = A) -> tuple[int, str]:
        r = client.post(f"/api/v1/servers/{uuid}/resize", json={"plan": plan}, headers=bearers[who])
        return r.status_code, str(r.get_json())

    before = db_snapshot(world.ctx)
    assert ask("nano2", B)[0] == 404  # another customer's VPS is not found
    assert db_snapshot(world.ctx) == before
    with world.ctx.db.session() as s:  # a disk larger than plan "flat" already
        vps = s.scalars(select(Vps).where(Vps.uuid == uuid)).one()
        vps.plan = inventory.get_by_name(s, Plan, "deep", "plan")
    before = db_snapshot(world.ctx)
    status, error = ask("flat")
    assert status == 400 and "a disk cannot shrink: plan 'flat' has 2 GiB" in error
    assert db_snapshot(world.ctx) == before
    with world.ctx.db.session() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == uuid)).one()
        vps.plan = inventory.get_by_name(s, Plan, "nano", "plan")
    quotas.set_quota(world.ctx, A, {"vcpus": 1}, actor="test")
    before = db_snapshot(world.ctx)
    status, error = ask("nano2")
    assert status == 403 and "needs 1 more vCPU(s)" in error
    assert db_snapshot(world.ctx) == before
    quotas.set_quota(world.ctx, A, {"vcpus": None}, actor="test")
    suspension.suspend(world.ctx, uuid, "unpaid invoice", actor="test")
    before = db_snapshot(world.ctx)
    status, error = ask("nano2")
    assert status == 403 and "unpaid invoice" in error
    assert db_snapshot(world.ctx) == before


def test_operator_may_use_a_hidden_plan_through_the_api(world: World, plans: None) -> None:
    uuid = built(world)
    r = world.app.test_client().post(
        f"/api/v1/servers/{uuid}/resize", json={"plan": "secret"}, headers=world.bearer(OP)
    )
    assert r.status_code == 202, r.get_json()


def test_website_resize_form(csrf_world: World, plans: None) -> None:
    world = csrf_world
    uuid = built(world)
    client = world.client(A)
    page = text(client.get(f"/servers/{uuid}"))
    assert 'value="nano2"' in page and 'value="secret"' not in page and "Change plan" in page
    before = db_snapshot(world.ctx)
    r = client.post(f"/servers/{uuid}/resize", data={"plan": "nano2"})  # no CSRF token
    assert r.status_code == 400
    assert db_snapshot(world.ctx) == before
    token = csrf_token(page)
    r = world.client(B).post(f"/servers/{uuid}/resize", data={"plan": "nano2", "csrf_token": token})
    assert r.status_code in (400, 404)
    for bad, status in (("secret", 404), ("nosuch", 404), ("x" * 300, 400), ("nano\x00", 400)):
        r = client.post(f"/servers/{uuid}/resize", data={"plan": bad, "csrf_token": token})
        assert r.status_code == status, (bad, r.status_code)
        assert db_snapshot(world.ctx) == before
    r = client.post(f"/servers/{uuid}/resize", data={"plan": "nano2", "csrf_token": token})
    assert r.status_code == 302 and "/jobs/" in r.headers["Location"]
    assert "next start" in text(client.get(r.headers["Location"]))
    r = client.post(f"/servers/{uuid}/resize", data={"plan": "nano2", "csrf_token": token})
    assert r.status_code == 409 and "pending" in text(r)
    assert jobs_of(world, uuid) == ["create", "resize"]


def test_the_shop_claims_only_what_images_deliver(world: World) -> None:
    with world.ctx.db.session() as s:
        s.execute(update(Image).where(Image.name == "base").values(os_family="tiny"))
        s.execute(update(Image).where(Image.name == "linux").values(os_family="debian"))
    home = text(world.app.test_client().get("/"))
    assert "root access over SSH" not in home and "noisy neighbours" not in home
    assert "no root access" in home and "root with <code>sudo</code>" in home
    assert "uses the plan's whole disk" in home
    images = world.app.test_client().get("/api/v1/images", headers=world.bearer(A)).get_json()
    facts = {i["name"]: (i["root_access"], i["fills_disk"]) for i in images["images"]}
    assert facts["base"] == ("none", True) and facts["linux"] == ("sudo", True)


def test_an_order_cannot_take_what_a_queued_resize_may_grow_into(world: World, plans: None) -> None:
    """Quota 3 vCPUs: a 1-vCPU VPS, its resize to 2 queued; a second 1-vCPU order is refused.

    Without the pending growth counted, the order would fit (1 + 1 <= 3), and
    once the resize ran the customer would hold 3 vCPUs... or 4 with one more order.
    """
    uuid = built(world)
    quotas.set_quota(world.ctx, A, {"vcpus": 3}, actor="test")
    client = world.app.test_client()
    r = client.post(
        f"/api/v1/servers/{uuid}/resize", json={"plan": "nano2"}, headers=world.bearer(A)
    )
    assert r.status_code == 202, r.get_json()
    assert quotas.quota_view(world.ctx, A)["vcpus"]["used"] == 2  # the pending growth counts
    before = db_snapshot(world.ctx)
    order = {"plan": "nano2", "image": "base", "hostname": "squeeze"}  # 2 more: 4 > 3
    refused = client.post("/api/v1/servers", json=order, headers=world.bearer(A))
    assert refused.status_code == 403, refused.get_json()
    assert "uses 2 of 3" in refused.get_json()["error"]
    assert db_snapshot(world.ctx) == before
    small = client.post("/api/v1/servers", json={**order, "plan": "nano"}, headers=world.bearer(A))
    assert small.status_code == 202, small.get_json()  # 2 + 1 fits
    assert run_inline(world.ctx, r.get_json()["job"])
    assert quotas.quota_view(world.ctx, A)["vcpus"]["used"] == 3  # done: counted once
