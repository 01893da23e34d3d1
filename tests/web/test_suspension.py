"""An operator's suspension holds: every customer action is refused, on the site, the API
and in the service layer, with the reason; nothing changes; only an operator lifts it.
"""

from __future__ import annotations

import pytest

from kvmvps.errors import Conflict, InvalidInput, NotFound, Suspended
from kvmvps.models import VpsState
from kvmvps.services import (
    actions,
    audit,
    forwards,
    http_names,
    jobs,
    provisioning,
    reconcile,
    suspension,
    users,
)
from kvmvps.services import vps as vps_service
from kvmvps.services.runner import run_or_follow
from kvmvps.worker import Worker
from tests.snapshots import db_snapshot
from tests.web.conftest import OP, A, B, World, finish_job
from tests.web.helpers import forbid_libvirt_work, text

REASON = "unpaid invoice #42"
SITE_ACTIONS = ("start", "shutdown", "reboot", "reinstall", "password_reset", "delete")
API_ACTIONS = ("start", "shutdown", "reboot", "destroy", "reinstall", "password_reset")


def suspended_vps(world: World) -> str:
    """A running VPS of A's, suspended by the operator (its pausing job done)."""
    placed = world.order(A, image="linux")
    shown = suspension.suspend(world.ctx, placed.uuid, REASON, f"user:{OP}")
    finish_job(world.ctx, shown["job"])
    return placed.uuid


def state(world: World) -> dict:
    """Every row but the API tokens' (a token's use is recorded on it)."""
    return {k: v for k, v in db_snapshot(world.ctx).items() if k != "api_tokens"}


def _confirm_data(action: str) -> dict[str, str]:
    return (
        {"hostname": "vm1", "image": "linux"} if action in ("reinstall",) else {"hostname": "vm1"}
    )


def test_every_customer_action_is_refused_with_the_reason(world: World, monkeypatch) -> None:
    uuid = suspended_vps(world)
    tried = forbid_libvirt_work(monkeypatch)
    site, api = world.client(A), world.app.test_client()
    headers = world.bearer(A)
    before = state(world)
    for action in SITE_ACTIONS:
        r = site.post(
            f"/servers/{uuid}/actions/{action}", data=_confirm_data(action), follow_redirects=True
        )
        assert f"it is suspended by the operators ({REASON}); contact support" in text(r), action
    for action in API_ACTIONS:
        r = api.post(f"/api/v1/servers/{uuid}/actions", headers=headers, json={"action": action})
        assert r.status_code == 403, (action, r.get_json())
        assert REASON in r.get_json()["error"]
    r = api.delete(f"/api/v1/servers/{uuid}", headers=headers)
    assert r.status_code == 403 and REASON in r.get_json()["error"]
    assert state(world) == before and tried == []
    refused = [
        e for e in audit.list_entries(world.ctx, actor=f"user:{A}") if e["result"] == "failed"
    ]
    assert len(refused) == len(SITE_ACTIONS) + len(API_ACTIONS) + 1
    assert all(REASON in e["detail"] for e in refused)


def test_the_service_layer_refuses_forwards_and_names_too(world: World) -> None:
    uuid = suspended_vps(world)
    owner = users.get_user(world.ctx, A).id
    before = db_snapshot(world.ctx)
    for call in (
        lambda: forwards.add(world.ctx, uuid, 8080, owner_id=owner),
        lambda: forwards.remove(world.ctx, uuid, 20000, owner_id=owner),
        lambda: http_names.add(world.ctx, uuid, "shop.example.org", owner_id=owner),
        lambda: http_names.remove(world.ctx, uuid, "shop.example.org", owner_id=owner),
        lambda: actions.request(world.ctx, uuid, "start", owner_id=owner),
    ):
        with pytest.raises(Suspended, match=REASON):
            call()
    assert db_snapshot(world.ctx) == before


def test_the_customer_sees_the_reason(world: World) -> None:
    uuid = suspended_vps(world)
    site = world.client(A)
    page = text(site.get(f"/servers/{uuid}"))
    assert f"suspended by the operators: {REASON}" in page
    assert 'href="/servers/' + uuid + '/actions/reinstall"' not in page  # buttons are off
    assert REASON in text(site.get("/servers"))
    state = site.get("/servers/state.json").get_json()["servers"][0]
    assert state["suspended_reason"] == REASON
    shown = world.app.test_client().get(f"/api/v1/servers/{uuid}", headers=world.bearer(A))
    assert shown.get_json()["suspended_reason"] == REASON
    assert shown.get_json()["suspended_at"].endswith("+00:00")


def test_another_customer_cannot_see_or_touch_it(world: World) -> None:
    uuid = suspended_vps(world)
    site = world.client(B)
    assert site.get(f"/servers/{uuid}").status_code == 404
    r = world.app.test_client().post(
        f"/api/v1/servers/{uuid}/actions", headers=world.bearer(B), json={"action": "start"}
    )
    assert r.status_code == 404 and REASON not in r.get_data(as_text=True)
    for path in (f"/admin/servers/{uuid}/unsuspend", f"/admin/servers/{uuid}/suspend"):
        assert world.client(A).post(path, data={"reason": "x"}).status_code == 403
    assert vps_service.show(world.ctx, uuid)["suspended_reason"] == REASON


def test_only_an_operator_lifts_it_then_actions_work(world: World) -> None:
    uuid = suspended_vps(world)
    op = world.client(OP)
    r = op.post(f"/admin/servers/{uuid}/unsuspend", follow_redirects=True)
    assert "is unsuspended" in text(r)
    assert vps_service.show(world.ctx, uuid)["suspended_reason"] is None
    r = world.app.test_client().post(
        f"/api/v1/servers/{uuid}/actions", headers=world.bearer(A), json={"action": "reboot"}
    )
    assert r.status_code == 202, r.get_json()
    kinds = [e["action"] for e in audit.list_entries(world.ctx, actor=f"user:{OP}")]
    assert "vps.unsuspend" in kinds and "vps.suspend" in kinds


def test_hostile_reasons_and_double_submits_change_nothing(world: World) -> None:
    placed = world.order(A)
    op = world.client(OP)
    before = db_snapshot(world.ctx)
    for reason in ("", "   ", "late\nFAKE audit line", "bell\x07", "x" * 501, "rtl\u202eevil"):
        r = op.post(
            f"/admin/servers/{placed.uuid}/suspend", data={"reason": reason}, follow_redirects=True
        )
        shown = text(r)
        assert r.status_code == 200 and "Suspended:" not in shown
        assert any(m in shown for m in ("give a reason", "control characters", "too long"))
    assert db_snapshot(world.ctx) == before
    with pytest.raises(InvalidInput, match="control characters"):
        suspension.suspend(world.ctx, placed.uuid, "a\x1b[31mred", "os:root")
    suspension.suspend(world.ctx, placed.uuid, REASON, "os:root")
    once = db_snapshot(world.ctx)
    r = op.post(f"/admin/servers/{placed.uuid}/suspend", data={"reason": "again"})
    assert r.status_code == 302
    with pytest.raises(Conflict, match="suspended already"):
        suspension.suspend(world.ctx, placed.uuid, "again", "os:root")
    assert db_snapshot(world.ctx) == once
    with pytest.raises(NotFound):
        suspension.suspend(world.ctx, "0" * 36, REASON, "os:root")
    failed = [
        e for e in audit.list_entries(world.ctx, action="vps.suspend") if e["result"] == "failed"
    ]
    assert len(failed) >= 9 and all("\n" not in (e["detail"] or "") for e in failed)


def test_suspension_cancels_queued_customer_actions(world: World) -> None:
    placed = world.order(A, image="linux")
    owner = users.get_user(world.ctx, A).id
    asked = actions.request(world.ctx, placed.uuid, "password_reset", owner_id=owner)
    assert asked.password
    suspension.suspend(world.ctx, placed.uuid, REASON, "os:root")
    job = jobs.get_job(world.ctx, asked.job)
    assert job["state"] == "failed" and "suspended" in job["error"]


def test_the_worker_pauses_it_and_keeps_it_paused(world: World) -> None:
    """On the test driver: the suspension's job pauses the guest; a resume behind
    kvmvps's back is undone by the next sync (a libvirt event) and by reconcile."""
    order = provisioning.record_order(
        world.ctx, provisioning.OrderRequest("nano", "base", "held", owner_email=A)
    )
    run_or_follow(world.ctx, order.job)
    shown = suspension.suspend(world.ctx, order.uuid, REASON, "os:root")
    Worker(world.ctx).run(max_jobs=1)
    assert jobs.get_job(world.ctx, shown["job"])["state"] == "succeeded"
    view = vps_service.show(world.ctx, order.uuid)
    hv = world.ctx.hypervisor(world.ctx.settings.libvirt_uri)
    assert view["state"] == VpsState.SUSPENDED and hv.state(view["domain"]) == "paused"
    hv.resume(view["domain"])  # behind kvmvps's back
    assert vps_service.sync_state(world.ctx, order.uuid)["state"] == VpsState.SUSPENDED
    assert hv.state(view["domain"]) == "paused"
    hv.resume(view["domain"])
    report = reconcile.run(world.ctx)
    assert [h["hostname"] for h in report.held] == ["held"]
    assert hv.state(view["domain"]) == "paused"
    with pytest.raises(Suspended, match="lift the suspension first"):
        actions.request(world.ctx, order.uuid, "resume")  # not even an operator
    with pytest.raises(Suspended):
        vps_service.resume(world.ctx, order.uuid)  # nor the worker's own call
    lifted = suspension.unsuspend(world.ctx, order.uuid, "os:root")
    Worker(world.ctx).run(max_jobs=1)
    assert jobs.get_job(world.ctx, lifted["job"])["state"] == "succeeded"
    assert vps_service.show(world.ctx, order.uuid)["state"] == VpsState.RUNNING
