"""The admin area: every page and action, bad input, double submits, a hostile customer.

Runs over ``td_ctx`` (test driver; SQLite and PostgreSQL). No page or
action may reach for libvirt: the work is queued for a worker.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from kvmvps import cpupin, ipam
from kvmvps.errors import Conflict
from kvmvps.models import Job, JobState, Plan, Vps, VpsState
from kvmvps.services import admin_views, audit, forwards, hosts, jobs, operators, users
from tests.snapshots import db_snapshot
from tests.web.conftest import OP, A, B, World
from tests.web.helpers import forbid_libvirt_work, text


@pytest.fixture(autouse=True)
def _no_libvirt_work(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """No request here may do work on a host (undone before the installation is wiped)."""
    forbid_libvirt_work(monkeypatch)


def _id(world: World, email: str) -> int:
    return users.get_user(world.ctx, email).id


def _fail(world: World, job: str, error: str) -> None:
    with world.ctx.db.session() as s:
        s.execute(
            update(Job)
            .where(Job.uuid == job)
            .values(
                state=JobState.FAILED,
                error=error,
                started_at=jobs.now(),
                finished_at=jobs.now(),
            )
        )


def _gone(world: World, uuid: str) -> None:
    """The database side of a finished delete job (the worker's part, without a guest)."""
    with world.ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        assert vps is not None
        ipam.release(s, vps)
        cpupin.release(s, vps)
        forwards.release(s, vps)
        s.delete(vps)


def _snap(world: World) -> dict[str, Any]:
    """The database but the tokens (an API call notes when a token was last used)."""
    return {k: v for k, v in db_snapshot(world.ctx).items() if k != "api_tokens"}


def _jobs_of(world: World, uuid: str) -> list[dict[str, Any]]:
    return list(jobs.list_jobs(world.ctx, vps_uuid=uuid))


def _home_counts_failed_jobs_and_hosts(world: World) -> None:
    ok, bad = world.order(A), world.order(B, running=False)
    _fail(world, bad.job, "no host key on the console after 120 s")
    page = text(world.client(OP).get("/admin"))
    assert "Overview" in page and "no host key on the console after 120 s" in page
    assert 'data-count="vps-running"><a href="/admin/servers?state=running">1<' in page
    assert "in service" in page
    assert world.client(OP).get("/admin/").status_code == 200
    assert ok.uuid not in page  # only the failed job's server is named


def test_home_and_a_server_page_show_what_operators_need(world: World) -> None:
    _home_counts_failed_jobs_and_hosts(world)
    placed = world.order(A)
    page = text(world.client(OP).get(f"/admin/servers/{placed.uuid}"))
    detail = admin_views.vps_detail(world.ctx, placed.uuid)
    vps = detail["vps"]
    assert vps["domain"] in page and f"data-host>{vps['host']}<" in page
    assert f"CPU {vps['pinned_cpus'][0]}" in page
    assert "vps.create" in page and ">create<" in page  # its audit entry and its job
    assert A in page and "Force delete" in page
    assert world.client(OP).get("/admin/servers/ffffffff").status_code == 404
    assert world.client(OP).get("/admin/servers/" + "x" * 500).status_code == 400


def test_operator_power_and_destructive_actions(world: World) -> None:
    op = world.client(OP)
    placed = world.order(A)
    r = op.post(f"/admin/servers/{placed.uuid}/actions/reboot")
    assert r.status_code == 302 and _jobs_of(world, placed.uuid)[0]["kind"] == "reboot"
    assert op.post(f"/admin/servers/{placed.uuid}/actions/start").status_code == 409
    assert op.post(f"/admin/servers/{placed.uuid}/actions/bogus").status_code == 404
    # a destructive action needs the hostname typed
    url = f"/admin/servers/{placed.uuid}/actions/password_reset"
    assert "Type vm" in text(op.get(url))
    before = db_snapshot(world.ctx)
    r = op.post(url, data={"hostname": "wrong"})
    assert r.status_code == 400 and "to confirm" in text(r)
    assert db_snapshot(world.ctx) == before
    assert op.post(url, data={"hostname": "vm1"}).status_code == 302
    # a second password change while one is pending: 409, and nothing more is queued
    queued = len(_jobs_of(world, placed.uuid))
    r = op.post(url, data={"hostname": "vm1"})
    assert r.status_code == 409 and "new password pending" in text(r)
    assert len(_jobs_of(world, placed.uuid)) == queued


def test_force_delete_cancels_queued_jobs_and_refuses_a_double_submit(world: World) -> None:
    op = world.client(OP)
    placed = world.order(A, running=False)  # its build is still queued
    url = f"/admin/servers/{placed.uuid}/actions/force_delete"
    assert op.post(url, data={"hostname": "nope"}).status_code == 400
    r = op.post(url, data={"hostname": "vm1"})
    assert r.status_code == 302
    rows = {j["kind"]: j for j in _jobs_of(world, placed.uuid)}
    assert rows["create"]["state"] == JobState.FAILED and "cancelled" in rows["create"]["error"]
    assert rows["delete"]["state"] == JobState.QUEUED
    assert admin_views.vps_detail(world.ctx, placed.uuid)["vps"]["state"] == VpsState.DELETING
    before = db_snapshot(world.ctx)
    r = op.post(url, data={"hostname": "vm1"})
    assert r.status_code == 409 and "being deleted already" in text(r)
    assert db_snapshot(world.ctx) == before
    entries = audit.list_entries(world.ctx, action="vps.force-delete")
    assert [e["result"] for e in entries] == ["failed", "ok"]
    assert entries[1]["actor"] == f"user:{OP}" and entries[1]["target"] == "vm1"


def test_make_and_remove_admin_never_ones_own(world: World) -> None:
    op = world.client(OP)
    a_id, me = _id(world, A), _id(world, OP)
    assert op.post(f"/admin/users/{a_id}/promote").status_code == 302
    assert users.get_user(world.ctx, A).is_admin
    assert world.client(A).get("/admin").status_code == 200  # at their next request
    r = op.post(f"/admin/users/{a_id}/promote")  # a double submit
    assert r.status_code == 409 and "already" in text(r)
    assert op.post(f"/admin/users/{a_id}/demote").status_code == 302
    assert not users.get_user(world.ctx, A).is_admin
    assert world.client(A).get("/admin").status_code == 403
    r = op.post(f"/admin/users/{me}/demote")
    assert r.status_code == 409 and "your own admin right" in text(r)
    assert users.get_user(world.ctx, OP).is_admin
    assert op.post("/admin/users/999999/promote").status_code == 404
    assert op.post("/admin/users/0/promote").status_code == 404
    with pytest.raises(Conflict, match="your own admin right"):  # the service itself refuses
        operators.set_admin(world.ctx, me, False, me, actor="os:root")
    with pytest.raises(Conflict, match="your own account"):
        operators.delete_user(world.ctx, me, me, actor="os:root")
    kinds = [(e["target"], e["result"]) for e in audit.list_entries(world.ctx, action="user.admin")]
    assert (OP, "failed") in kinds and (A, "ok") in kinds


def test_delete_users_with_their_vpses_never_oneself(world: World) -> None:
    op = world.client(OP)
    placed = world.order(A)
    a_id, b_id, me = _id(world, A), _id(world, B), _id(world, OP)
    assert B in text(op.get(f"/admin/users/{b_id}/delete"))
    r = op.post(f"/admin/users/{b_id}/delete", data={"email": A})
    assert r.status_code == 400 and f"type {B} to confirm" in text(r)
    assert op.post(f"/admin/users/{b_id}/delete", data={"email": B}).status_code == 302
    assert users.user_by_id(world.ctx, b_id) is None
    assert op.post(f"/admin/users/{b_id}/delete", data={"email": B}).status_code == 404
    # a user with a VPS: disabled, and the VPS is deleted by a job
    assert op.post(f"/admin/users/{a_id}/delete", data={"email": A}).status_code == 302
    assert users.user_by_id(world.ctx, a_id).is_active is False
    assert _jobs_of(world, placed.uuid)[0]["kind"] == "delete"
    assert world.client(None).post("/login", data={"email": A, "password": "x"}).status_code != 302
    r = op.post(f"/admin/users/{me}/delete", data={"email": OP})
    assert r.status_code == 409 and "your own account" in text(r)
    assert users.user_by_id(world.ctx, me) is not None
    _gone(world, placed.uuid)  # what the delete job leaves: no row
    assert op.post(f"/admin/users/{a_id}/delete", data={"email": A}).status_code == 302
    assert users.user_by_id(world.ctx, a_id) is None


def test_hidden_plans_and_images_leave_the_shop_and_cannot_be_ordered(world: World) -> None:
    op, shop, api = world.client(OP), world.client(A), world.app.test_client()
    bearer = world.bearer(A)
    assert op.post("/admin/plans/nano/hide").status_code == 302
    assert "data-shelf>hidden" in op.get("/admin/plans").get_data(as_text=True)
    assert 'value="nano"' not in shop.get("/order").get_data(as_text=True)
    names = [p["name"] for p in api.get("/api/v1/plans", headers=bearer).get_json()["plans"]]
    assert "nano" not in names and "small" in names
    before = _snap(world)
    order = {"plan": "nano", "image": "base", "hostname": "hid1"}
    r = api.post("/api/v1/servers", headers=bearer, json=order)
    assert r.status_code == 400 and "no plan named 'nano'" in r.get_data(as_text=True)
    r = shop.post("/order", data=order)
    assert r.status_code == 400 and "no plan named 'nano'" in text(r)
    assert _snap(world) == before
    assert op.post("/admin/images/base/hide").status_code == 302
    before = _snap(world)
    shown = api.get("/api/v1/images", headers=bearer).get_json()["images"]
    assert "base" not in [i["name"] for i in shown] and "linux" in [i["name"] for i in shown]
    r = api.post("/api/v1/servers", headers=bearer, json={**order, "plan": "small"})
    assert r.status_code == 400 and "no image named 'base'" in r.get_data(as_text=True)
    assert _snap(world) == before
    for name, kind in (("nano", "plans"), ("base", "images")):
        assert op.post(f"/admin/{kind}/{name}/show").status_code == 302
    mine = world.order(A, image="linux")  # a customer reinstalls only with what the shop has
    assert op.post("/admin/images/linux/hide").status_code == 302
    before = _snap(world)
    r = api.post(
        f"/api/v1/servers/{mine.uuid}/actions",
        headers=bearer,
        json={"action": "reinstall", "image": "linux"},
    )
    assert r.status_code == 404 and "no image named 'linux'" in r.get_json()["error"]
    assert _snap(world) == before
    assert op.post("/admin/images/linux/show").status_code == 302
    assert op.post("/admin/plans/nope/hide").status_code == 404
    r = api.post("/api/v1/servers", headers=bearer, json=order)
    assert r.status_code == 202


def test_plan_price_and_add_refuse_bad_input(world: World) -> None:
    op = world.client(OP)
    before = db_snapshot(world.ctx)
    for price in ("abc", "-1", "1.234", "9" * 40, "1e3", ""):
        r = op.post("/admin/plans/nano/price", data={"price": price})
        assert r.status_code == 400 and ("price" in text(r)), price
    bad_plans: list[dict[str, str]] = [
        {},
        {"name": "x y", "vcpus": "1", "memory_mib": "64", "disk_gib": "1"},
        {"name": "big", "vcpus": "0", "memory_mib": "64", "disk_gib": "1"},
        {"name": "big", "vcpus": "1", "memory_mib": "9" * 30, "disk_gib": "1"},
        {"name": "nano", "vcpus": "1", "memory_mib": "64", "disk_gib": "1"},
        {"name": "bell\x07", "vcpus": "1", "memory_mib": "64", "disk_gib": "1"},
    ]
    for form in bad_plans:
        r = op.post("/admin/plans", data=form)
        assert r.status_code in (400, 409) and "error" in r.get_data(as_text=True), form
    assert db_snapshot(world.ctx) == before
    assert op.post("/admin/plans/nano/price", data={"price": "4.5"}).status_code == 302
    form = {"name": "big", "vcpus": "2", "memory_mib": "512", "disk_gib": "5", "price": "12"}
    assert op.post("/admin/plans", data=form).status_code == 302
    with world.ctx.db.reading() as s:
        prices = dict(s.execute(select(Plan.name, Plan.price_cents)).all())
    assert prices["nano"] == 450 and prices["big"] == 1200
    assert op.post("/admin/plans", data=form).status_code == 409  # a double submit


def test_host_maintenance_stops_placement(world: World) -> None:
    op, api = world.client(OP), world.app.test_client()
    name = hosts.list_hosts(world.ctx)[0]["name"]
    assert op.post(f"/admin/hosts/{name}/maintenance/on").status_code == 302
    page = op.get("/admin/hosts").get_data(as_text=True)
    assert "data-maintenance" in page and "MiB" not in page
    before = _snap(world)
    r = api.post(
        "/api/v1/servers",
        headers=world.bearer(A),
        json={"plan": "nano", "image": "base", "hostname": "mx1"},
    )
    assert r.status_code == 503 and "maintenance" in r.get_json()["error"]
    assert _snap(world) == before
    assert op.post(f"/admin/hosts/{name}/maintenance/off").status_code == 302
    assert not hosts.show_host(world.ctx, name)["maintenance"]
    world.order(A)  # placed again
    assert op.post("/admin/hosts/nope/maintenance/on").status_code == 404
    assert [e["result"] for e in audit.list_entries(world.ctx, action="host.maintenance")] == [
        "failed",
        "ok",
        "ok",
    ]


def test_jobs_show_hostnames_durations_and_filter(world: World) -> None:
    op = world.client(OP)
    a_vps, b_vps = world.order(A), world.order(B)
    _fail(world, b_vps.job, "boom")
    page = text(op.get("/admin/jobs"))
    assert ">vm1</a>" in page and ">vm2</a>" in page and "0.0 s" in page
    only_a = text(op.get(f"/admin/jobs?user={A}"))
    assert ">vm1</a>" in only_a and ">vm2</a>" not in only_a
    failed = text(op.get("/admin/jobs?state=failed&kind=create"))
    assert ">vm2</a>" in failed and ">vm1</a>" not in failed
    host = hosts.list_hosts(world.ctx)[0]["name"]
    assert ">vm1</a>" in text(op.get(f"/admin/jobs?host={host}"))
    assert ">vm1</a>" not in text(op.get("/admin/jobs?host=elsewhere"))
    for query in ("state=bogus", "kind=bogus", "page=0", "page=abc", "page=" + "9" * 40):
        r = op.get(f"/admin/jobs?{query}")
        assert r.status_code == 400, query
    assert op.get("/admin/jobs?user=%1b%5b31m").status_code == 400
    assert a_vps.uuid != b_vps.uuid


def test_lists_paginate_and_filter_in_the_query(world: World) -> None:
    op = world.client(OP)
    for _ in range(3):
        world.order(A)
    world.order(B)
    first = admin_views.vps_page(world.ctx, 1, per_page=2)
    second = admin_views.vps_page(world.ctx, 2, per_page=2)
    assert first.total == 4 and first.pages == 2 and first.has_next and not second.has_next
    assert {v["id"] for v in first.items}.isdisjoint(v["id"] for v in second.items)
    assert [v["owner"] for v in admin_views.vps_page(world.ctx, search="bob").items] == [B]
    assert admin_views.vps_page(world.ctx, state="error").total == 0
    people = admin_views.user_page(world.ctx, per_page=1, role="admin")  # OP and init's
    assert people.total == 2 and people.pages == 2 and len(people.items) == 1
    assert admin_views.user_page(world.ctx, search="ops@", role="admin").items[0]["email"] == OP
    assert admin_views.user_page(world.ctx, search="ali").items[0]["vps_count"] == 3
    page = text(op.get("/admin/servers?q=bob"))
    assert B in page and A not in page
    assert "No servers match" in text(op.get("/admin/servers?page=9"))
    assert op.get("/admin/servers?state=nope").status_code == 400
    assert op.get("/admin/users?role=nope").status_code == 400
    assert op.get("/admin/audit?page=2").status_code == 200


def test_a_customer_gets_403_on_every_admin_url_and_changes_nothing(world: World) -> None:
    placed = world.order(A)
    b_id, host = _id(world, B), hosts.list_hosts(world.ctx)[0]["name"]
    v = placed.uuid
    gets = [
        "/admin",
        "/admin/servers",
        f"/admin/servers/{v}",
        f"/admin/servers/{v}/actions/force_delete",
        "/admin/users",
        f"/admin/users/{b_id}/delete",
        "/admin/plans",
        "/admin/hosts",
        "/admin/jobs",
        "/admin/audit",
    ]
    posts = [
        f"/admin/servers/{v}/suspend",
        f"/admin/servers/{v}/actions/destroy",
        f"/admin/servers/{v}/actions/force_delete",
        f"/admin/users/{_id(world, A)}/promote",
        f"/admin/users/{b_id}/delete",
        f"/admin/users/{b_id}/disable",
        f"/admin/users/{b_id}/quota",
        "/admin/plans",
        "/admin/plans/nano/hide",
        "/admin/plans/nano/price",
        "/admin/images/base/hide",
        f"/admin/hosts/{host}/maintenance/on",
    ]
    before = db_snapshot(world.ctx)
    entries = len(audit.list_entries(world.ctx, limit=1000))
    customer = world.client(A)
    form = {"hostname": "vm1", "email": B, "reason": "x", "price": "0", "vps": "99"}
    for url in gets:
        assert customer.get(url).status_code == 403, url
    for url in posts:
        assert customer.post(url, data=form).status_code == 403, url
    assert db_snapshot(world.ctx) == before
    assert len(audit.list_entries(world.ctx, limit=1000)) == entries
    assert not users.get_user(world.ctx, A).is_admin
