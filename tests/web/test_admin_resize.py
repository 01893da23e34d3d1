"""Resizing from the admin area (test driver: the domain is real to libvirt's test driver)."""

from __future__ import annotations

from sqlalchemy import select

from kvmvps.models import Plan, Vps
from kvmvps.services import inventory
from kvmvps.services import vps as vps_service
from kvmvps.services.runner import run_inline
from tests.snapshots import db_snapshot
from tests.web.conftest import OP, A, World
from tests.web.helpers import text


def built(world: World) -> str:
    """A VPS of A's, built by the runner on the test driver (so its domain exists)."""
    placed = world.order(A, running=False)
    assert run_inline(world.ctx, placed.job)
    return placed.uuid


def _domain(world: World, uuid: str) -> str:
    with world.ctx.db.reading() as s:
        return s.scalars(select(Vps.domain_name).where(Vps.uuid == uuid)).one()


def plan_of(world: World, uuid: str) -> str:
    with world.ctx.db.reading() as s:
        return s.scalars(
            select(Plan.name).join(Vps, Vps.plan_id == Plan.id).where(Vps.uuid == uuid)
        ).one()


def test_an_operator_resizes_and_bad_requests_change_nothing(world: World) -> None:
    uuid = built(world)
    op = world.client(OP)
    inventory.add_plan(world.ctx, "bigger", 2, 32, 1)
    page = text(op.get(f"/admin/servers/{uuid}"))
    assert "bigger" in page and "Resize" in page
    before = db_snapshot(world.ctx)
    for bad in ("nosuch", "", "nano\x07", "x" * 300):
        r = op.post(f"/admin/servers/{uuid}/resize", data={"plan": bad})
        assert 400 <= r.status_code < 500, (bad, r.status_code)
    assert db_snapshot(world.ctx) == before
    # stopped (or running: at its next start), it moves: vCPUs, memory and disk follow
    vps_service.destroy(world.ctx, uuid)
    r = op.post(f"/admin/servers/{uuid}/resize", data={"plan": "bigger"})
    assert r.status_code == 302, text(r)
    assert plan_of(world, uuid) == "bigger"
    assert "now has plan bigger" in text(op.get(f"/admin/servers/{uuid}"))
    xml = world.ctx.hypervisor(world.ctx.settings.libvirt_uri).domain_xml(_domain(world, uuid))
    assert "<vcpu placement='static'>2</vcpu>" in xml or ">2</vcpu>" in xml


def test_a_customer_cannot_resize_through_the_admin_area(world: World) -> None:
    uuid = built(world)
    before = db_snapshot(world.ctx)
    r = world.client(A).post(f"/admin/servers/{uuid}/resize", data={"plan": "nano"})
    assert r.status_code == 403
    assert db_snapshot(world.ctx) == before
