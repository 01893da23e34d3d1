"""Moving a server and evacuating a host from the admin area (test driver, two hosts).

The test driver cannot migrate, so these tests check what the pages queue and
refuse; tests/e2e/test_migration_real.py moves real guests between two libvirtds.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from kvmvps.models import Host, Job, JobState
from kvmvps.services import audit, hosts
from kvmvps.services.runner import run_inline
from tests.snapshots import db_snapshot
from tests.unit.test_admin_cli import node_uri
from tests.web.conftest import OP, A, World
from tests.web.helpers import text


def _local(world: World) -> str:
    """The test driver's host that 'init' made (named after this machine)."""
    return next(h["name"] for h in hosts.list_hosts(world.ctx) if h["name"] != "node2")


def _second_host(world: World, tmp_path: Path) -> str:
    local = _local(world)
    hosts.add_host(world.ctx, "node2", node_uri(tmp_path), actor="test")
    for name in ("node2", local):
        hosts.set_public_address(world.ctx, name, "203.0.113.9", actor="test")
    return "node2"


def _built(world: World) -> str:
    placed = world.order(A, running=False)
    assert run_inline(world.ctx, placed.job)
    return placed.uuid


def _migrate_jobs(world: World) -> list[tuple[str | None, str, str]]:
    with world.ctx.db.reading() as s:
        rows = s.execute(
            select(Job.vps_uuid, Job.state, Job.params)
            .where(Job.kind == "migrate")
            .order_by(Job.id)
        )
        return [(r[0], r[1], r[2]) for r in rows]


def test_an_operator_queues_a_move_and_bad_requests_change_nothing(
    world: World, tmp_path: Path
) -> None:
    uuid = _built(world)
    target = _second_host(world, tmp_path)
    op = world.client(OP)
    page = text(op.get(f"/admin/servers/{uuid}"))
    assert "Move to host" in page and target in page
    before = db_snapshot(world.ctx)
    bad = [
        ({"to": "nosuch"}, "no enabled host named 'nosuch'"),
        ({"to": ""}, "name the host"),
        ({"to": "node2\n"}, "no enabled host"),
        ({"to": "n" * 5000}, "no enabled host"),
        ({"to": target, "mode": "sideways"}, "live, cold or auto"),
        ({"to": _local(world)}, "already"),
    ]
    for form, fragment in bad:
        r = op.post(f"/admin/servers/{uuid}/migrate", data=form)
        assert 400 <= r.status_code < 500, (form, r.status_code)
        assert fragment in text(r), (form, text(r)[:300])
    assert db_snapshot(world.ctx) == before
    r = op.post(f"/admin/servers/{uuid}/migrate", data={"to": target, "mode": "auto"})
    assert r.status_code == 302, text(r)
    assert _migrate_jobs(world) == [(uuid, JobState.QUEUED, '{"live": true, "to": "node2"}')]
    assert "queued to move to node2 (live)" in text(op.get(f"/admin/servers/{uuid}"))
    again = op.post(f"/admin/servers/{uuid}/migrate", data={"to": target})  # a double submit
    assert again.status_code == 409 and "a job is still working on it" in text(again)
    assert len(_migrate_jobs(world)) == 1
    entries = audit.list_entries(world.ctx, action="vps.migrate")
    assert entries[0]["actor"] == f"user:{OP}" and entries[0]["result"] == "failed"


def test_a_customer_cannot_move_servers_or_evacuate_hosts(world: World, tmp_path: Path) -> None:
    uuid = _built(world)
    target = _second_host(world, tmp_path)
    before = db_snapshot(world.ctx)
    customer = world.client(A)
    assert customer.post(f"/admin/servers/{uuid}/migrate", data={"to": target}).status_code == 403
    local = _local(world)
    assert customer.post(f"/admin/hosts/{local}/evacuate").status_code == 403
    assert db_snapshot(world.ctx) == before
    assert "Move to host" not in text(customer.get(f"/servers/{uuid}"))


def test_evacuate_queues_every_server_or_none(world: World, tmp_path: Path) -> None:
    first, second = _built(world), _built(world)
    op = world.client(OP)
    local = _local(world)
    before = db_snapshot(world.ctx)
    alone = op.post(f"/admin/hosts/{local}/evacuate")  # no other host: nothing moves
    assert 400 <= alone.status_code < 600 and alone.status_code != 500, alone.status_code
    assert "no other host can take VPSes" in text(alone)
    assert db_snapshot(world.ctx) == before
    assert op.post("/admin/hosts/nosuch/evacuate").status_code == 404
    _second_host(world, tmp_path)
    assert "Evacuate" in text(op.get("/admin/hosts"))
    r = op.post(f"/admin/hosts/{local}/evacuate")
    assert r.status_code == 302, text(r)
    assert {(v, s) for v, s, _p in _migrate_jobs(world)} == {
        (first, JobState.QUEUED),
        (second, JobState.QUEUED),
    }
    with world.ctx.db.reading() as s:
        assert s.scalar(select(Host.maintenance).where(Host.name == local)) is True
    assert "2 server(s) queued to move off it" in text(op.get("/admin/hosts"))
