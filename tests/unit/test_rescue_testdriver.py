"""Rescue mode on libvirt's test driver (SQLite and PostgreSQL): states, refusals, rollback."""

from __future__ import annotations

import pytest
from lxml import etree
from sqlalchemy import select

from kvmvps.errors import Conflict, NotFound, Suspended
from kvmvps.models import Image, Vps
from kvmvps.services import (
    Context,
    actions,
    inventory,
    orders,
    provisioning,
    reconcile,
    rescue,
    suspension,
    vps_extra,
)
from kvmvps.services import vps as vps_service
from kvmvps.services.facts import rescue_volume_of
from kvmvps.services.provisioning import OrderRequest
from kvmvps.services.runner import run_or_follow
from tests.badinput import assert_one_line_error, run_cli

OP = "os:operator"


def _disks(ctx: Context, domain: str) -> dict[str, str]:
    """target dev -> source volume of the domain's definition."""
    xml = ctx.hypervisor(ctx.settings.libvirt_uri).domain_xml(domain, inactive=True)
    root = etree.fromstring(xml.encode())
    return {
        d.find("target").get("dev"): d.find("source").get("volume")
        for d in root.iterfind("devices/disk")
    }


def _do(ctx: Context, uuid: str, action: str, **kw: object) -> actions.Requested:
    req = actions.request(ctx, uuid, action, actor=OP, **kw)  # type: ignore[arg-type]
    run_or_follow(ctx, req.job)
    return req


@pytest.fixture
def rescuable(td_ctx: Context) -> tuple[Context, str]:
    """A running VPS, and image 'base' marked as the rescue image."""
    inventory.edit_image(td_ctx, "base", rescue=True, actor=OP)
    uuid = orders.create(td_ctx, OrderRequest(plan="small", image="base", hostname="web1")).uuid
    return td_ctx, uuid


def test_rescue_boots_the_rescue_disk_with_the_own_disk_second(
    rescuable: tuple[Context, str],
) -> None:
    ctx, uuid = rescuable
    shown = vps_service.show(ctx, uuid)
    domain, pool = shown["domain"], ctx.settings.storage_pool
    own = _disks(ctx, domain)
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    _do(ctx, uuid, "rescue")
    shown = vps_service.show(ctx, uuid)
    assert shown["rescue"] is True and shown["state"] == "running"
    assert _disks(ctx, domain) == {"vda": rescue_volume_of(domain), "vdb": own["vda"]}
    assert 'mode="rescue"' in hv.domain_xml(domain)
    assert hv.volume_exists(pool, rescue_volume_of(domain))
    report = reconcile.run(ctx)
    assert report.drift == [] and report.orphan_volumes == [] and report.orphan_domains == []
    assert vps_service.show(ctx, uuid)["rescue"] is True
    # the rescue system can be powered like the VPS; it stays in rescue mode
    _do(ctx, uuid, "shutdown", timeout=1, force=True)
    _do(ctx, uuid, "start")
    assert _disks(ctx, domain)["vda"] == rescue_volume_of(domain)
    assert hv.state(domain) == "running"
    _do(ctx, uuid, "unrescue")
    shown = vps_service.show(ctx, uuid)
    assert shown["rescue"] is False and shown["state"] == "running"
    assert _disks(ctx, domain) == own
    assert not hv.volume_exists(pool, rescue_volume_of(domain))
    assert 'mode="rescue"' not in hv.domain_xml(domain)


@pytest.mark.parametrize("action", ["reinstall", "password_reset", "delete", "suspend", "rescue"])
def test_in_rescue_other_actions_are_refused(rescuable: tuple[Context, str], action: str) -> None:
    ctx, uuid = rescuable
    _do(ctx, uuid, "rescue")
    with pytest.raises(Conflict, match="rescue mode"):
        actions.request(ctx, uuid, action, actor=OP)
    with ctx.db.session() as s:
        assert s.scalar(select(Vps.pending_password).where(Vps.uuid == uuid)) is None
    with pytest.raises(Conflict, match="rescue mode"):
        vps_extra.resize(ctx, uuid, "small", actor=OP)


def test_unrescue_outside_rescue_and_rescue_without_image_are_refused(td_ctx: Context) -> None:
    uuid = orders.create(td_ctx, OrderRequest(plan="small", image="base", hostname="web1")).uuid
    with pytest.raises(Conflict, match="not in rescue mode"):
        actions.request(td_ctx, uuid, "unrescue", actor=OP)
    with pytest.raises(Conflict, match="no rescue image"):
        actions.request(td_ctx, uuid, "rescue", actor=OP)
    assert_one_line_error(run_cli(td_ctx, "vps", "rescue", "web1"), 1, "no rescue image")
    assert_one_line_error(run_cli(td_ctx, "vps", "unrescue", "web1"), 1, "not in rescue mode")
    assert_one_line_error(run_cli(td_ctx, "vps", "rescue", "nope"), 2, "nope")
    assert_one_line_error(run_cli(td_ctx, "image", "edit", "nope", "--rescue"), 2, "nope")
    assert_one_line_error(run_cli(td_ctx, "image", "edit", "base"), 2, "nothing to change")


def test_customer_limits(rescuable: tuple[Context, str]) -> None:
    """Another customer's VPS, a double submit, a suspended VPS, a VPS being reinstalled."""
    ctx, uuid = rescuable
    with ctx.db.session() as s:
        owner_id = s.scalar(select(Vps.owner_id).where(Vps.uuid == uuid))
    assert owner_id is not None
    with pytest.raises(NotFound):
        actions.request(ctx, uuid, "rescue", actor="user:x", owner_id=owner_id + 1000)
    first = actions.request(ctx, uuid, "rescue", actor="user:a", owner_id=owner_id)
    with pytest.raises(Conflict, match="pending"):
        actions.request(ctx, uuid, "rescue", actor="user:a", owner_id=owner_id)
    run_or_follow(ctx, first.job)
    _do(ctx, uuid, "unrescue")
    reinstall = actions.request(ctx, uuid, "reinstall", actor=OP)
    for owner in (owner_id, None):  # the operator too: the reinstall's password is pending
        with pytest.raises(Conflict):
            actions.request(ctx, uuid, "rescue", actor="x", owner_id=owner)
    run_or_follow(ctx, reinstall.job)
    suspension.suspend(ctx, uuid, "unpaid", actor=OP)
    for owner in (owner_id, None):
        with pytest.raises(Suspended):
            actions.request(ctx, uuid, "rescue", actor="x", owner_id=owner)


@pytest.mark.parametrize("failing", [s.name for s in rescue.ENTER_STEPS])
def test_failure_at_each_step_puts_the_vps_back(
    rescuable: tuple[Context, str], monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    ctx, uuid = rescuable
    domain = vps_service.show(ctx, uuid)["domain"]
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    before_xml = hv.domain_xml(domain, inactive=True)

    def broken(step: rescue.RescueStep) -> rescue.RescueStep:
        if step.name != failing:
            return step

        def do(r: rescue.Rescue) -> None:
            step.do(r)  # the work is done, then it fails: the undo must clean it up
            raise RuntimeError(f"injected at {failing}")

        return rescue.RescueStep(step.name, do, step.undo)

    monkeypatch.setattr(rescue, "ENTER_STEPS", tuple(broken(s) for s in rescue.ENTER_STEPS))
    req = actions.request(ctx, uuid, "rescue", actor=OP)
    with pytest.raises(Exception, match=f"injected at {failing}"):
        run_or_follow(ctx, req.job)
    shown = vps_service.show(ctx, uuid)
    assert shown["rescue"] is False and shown["state"] == "running" and shown["error"] is None
    assert hv.domain_xml(domain, inactive=True) == before_xml
    assert hv.state(domain) == "running"
    assert not hv.volume_exists(ctx.settings.storage_pool, rescue_volume_of(domain))
    with ctx.db.session() as s:
        row = s.scalars(select(Vps).where(Vps.uuid == uuid)).one()
        assert row.pending_password is None and row.rescue_host_key is None


def test_a_deleted_rescued_vps_leaves_no_rescue_volume(rescuable: tuple[Context, str]) -> None:
    ctx, uuid = rescuable
    domain = vps_service.show(ctx, uuid)["domain"]
    _do(ctx, uuid, "rescue")
    provisioning.delete(ctx, uuid)  # e.g. an expiry: it deletes whatever state it finds
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    assert hv.list_volumes(ctx.settings.storage_pool) == []
    assert not hv.domain_exists(domain)


def test_image_edit_marks_the_rescue_image(td_ctx: Context) -> None:
    result = run_cli(td_ctx, "image", "edit", "base", "--rescue", "--json")
    assert result.exit_code == 0, result.stderr
    with td_ctx.db.session() as s:
        assert s.scalar(select(Image.rescue).where(Image.name == "base")) is True
    assert run_cli(td_ctx, "image", "edit", "base", "--no-rescue").exit_code == 0
    with td_ctx.db.session() as s:
        assert s.scalar(select(Image.rescue).where(Image.name == "base")) is False
