"""Snapshots on libvirt's test driver (SQLite and PostgreSQL): the plan's limit, the
interplay with backups, rescue, reinstall, resize and delete, and hostile requests."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.models import Backup, BackupState, Job, JobState, Snapshot, SnapshotState
from kvmvps.services import (
    Context,
    actions,
    backups,
    inventory,
    orders,
    snapshots,
    users,
    vps_extra,
)
from kvmvps.services import vps as vps_service
from kvmvps.services.provisioning import OrderRequest
from kvmvps.services.runner import run_or_follow
from tests.badinput import assert_one_line_error, run_cli
from tests.snapshots import db_snapshot

OP = "os:operator"


def _ordered(ctx: Context, hostname: str, owner: str | None = None) -> str:
    req = OrderRequest(plan="small", image="base", hostname=hostname, owner_email=owner)
    return orders.create(ctx, req).uuid


@pytest.fixture
def vps(td_ctx: Context) -> str:
    """A running VPS of a plan that allows two snapshots."""
    snapshots.set_plan_snapshots(td_ctx, "small", 2, actor=OP)
    return _ordered(td_ctx, "web1")


def _take(ctx: Context, ref: str, label: str = "") -> str:
    req = snapshots.create(ctx, ref, label, actor=OP)
    run_or_follow(ctx, req.job)
    return req.snapshot


def _names(ctx: Context, uuid: str) -> list[str]:
    domain = vps_service.show(ctx, uuid)["domain"]
    return ctx.hypervisor(ctx.settings.libvirt_uri).snapshot_names(domain)


def test_take_revert_delete_within_the_limit(td_ctx: Context, vps: str) -> None:
    first = _take(td_ctx, "web1", "before upgrade")
    listed = snapshots.list_snapshots(td_ctx, "web1")
    assert [(x["id"], x["label"], x["state"], x["with_memory"]) for x in listed] == [
        (first, "before upgrade", "ready", True)
    ]
    assert _names(td_ctx, vps) == [snapshots.libvirt_name(first)]  # our uuid, never the label

    second = _take(td_ctx, "web1")
    before = db_snapshot(td_ctx)
    with pytest.raises(Conflict, match="plan allows 2"):
        snapshots.create(td_ctx, "web1", actor=OP)
    assert db_snapshot(td_ctx) == before  # no row, no job

    req = snapshots.revert(td_ctx, "web1", first[:8], actor=OP)
    run_or_follow(td_ctx, req.job)
    assert vps_service.show(td_ctx, vps)["state"] == "running"

    run_or_follow(td_ctx, snapshots.delete(td_ctx, "web1", second, actor=OP).job)
    assert [x["id"] for x in snapshots.list_snapshots(td_ctx, "web1")] == [first]
    assert _names(td_ctx, vps) == [snapshots.libvirt_name(first)]


def test_another_customers_snapshot_is_not_found(td_ctx: Context, vps: str) -> None:
    a = users.add_user(td_ctx, "a@example.com", "correct horse battery").id
    users.add_user(td_ctx, "b@example.com", "correct horse battery")
    mine = _ordered(td_ctx, "mine", "a@example.com")
    theirs = _ordered(td_ctx, "theirs", "b@example.com")
    their_snap = _take(td_ctx, theirs)
    before = db_snapshot(td_ctx)
    for call in (snapshots.revert, snapshots.delete):
        with pytest.raises(NotFound):  # their VPS by id: not found for A
            call(td_ctx, theirs, their_snap, actor="user:a@example.com", owner_id=a)
        with pytest.raises(NotFound):  # their snapshot under A's own VPS: not found either
            call(td_ctx, mine, their_snap, actor="user:a@example.com", owner_id=a)
    with pytest.raises(NotFound):
        snapshots.list_snapshots(td_ctx, theirs, owner_id=a)
    assert {k: v for k, v in db_snapshot(td_ctx).items() if k != "audit_log"} == {
        k: v for k, v in before.items() if k != "audit_log"
    }
    # a double submit by the owner: the second waits for the first's job
    snapshots.create(td_ctx, mine, actor="user:a@example.com", owner_id=a)
    with pytest.raises(Conflict, match="pending"):
        snapshots.create(td_ctx, mine, actor="user:a@example.com", owner_id=a)
    snap = _take(td_ctx, "web1")  # an operator's snapshot of web1
    backups.create(td_ctx, "web1", actor=OP)  # queued, not run
    before = db_snapshot(td_ctx)
    with pytest.raises(Conflict, match="backup is pending"):
        snapshots.revert(td_ctx, "web1", snap, actor=OP)
    with pytest.raises(Conflict, match="backup is pending"):
        snapshots.create(td_ctx, "web1", actor=OP)
    assert db_snapshot(td_ctx) == before
    with td_ctx.db.session() as s:  # the backup never runs here: forget it
        for job in s.scalars(select(Job).where(Job.kind == "backup")):
            job.state = "failed"


def test_reinstall_drops_them_resize_and_restore_refuse(td_ctx: Context, vps: str) -> None:
    snapshots.set_plan_snapshots(td_ctx, "small", 3)
    backup = backups.create(td_ctx, "web1", actor=OP)
    with td_ctx.db.session() as s:  # as if the worker had made it
        row = s.scalar(select(Backup).where(Backup.uuid == backup.backup))
        job = s.scalar(select(Job).where(Job.uuid == backup.job))
        assert row is not None and job is not None
        row.state, job.state = BackupState.READY, JobState.SUCCEEDED
    _take(td_ctx, "web1")
    inventory.add_plan(td_ctx, "bigger", 1, 256, 2)
    with pytest.raises(Conflict, match="has snapshots"):
        vps_extra.resize(td_ctx, "web1", "bigger", actor=OP)
    with pytest.raises(Conflict, match="has snapshots"):
        backups.restore(td_ctx, "web1", backup.backup, actor=OP)
    _take(td_ctx, "web1")
    req = snapshots.create(td_ctx, "web1", actor=OP)
    with td_ctx.db.session() as s:
        row = s.scalar(select(Snapshot).where(Snapshot.uuid == req.snapshot))
        job = s.scalar(select(Job).where(Job.uuid == req.job))
        assert row is not None and job is not None
        row.state, job.state = SnapshotState.FAILED, "failed"
    gone = snapshots.delete(td_ctx, "web1", req.snapshot, actor=OP)
    assert gone.job == "" and len(snapshots.list_snapshots(td_ctx, "web1")) == 2

    req = actions.request(td_ctx, "web1", "reinstall", actor=OP)
    run_or_follow(td_ctx, req.job)
    assert snapshots.list_snapshots(td_ctx, "web1") == []
    assert _names(td_ctx, vps) == []
    _take(td_ctx, "web1")
    run_or_follow(td_ctx, actions.request(td_ctx, "web1", "delete", actor=OP).job)
    with td_ctx.db.reading() as s:
        assert s.scalars(select(Snapshot)).all() == []  # they went with their VPS


def test_cli_walk_and_one_line_errors(td_ctx: Context, vps: str) -> None:
    made = run_cli(td_ctx, "vps", "snapshot", "create", "web1", "--label", "pre", "--json")
    assert made.exit_code == 0, made.stderr
    listed = run_cli(td_ctx, "vps", "snapshot", "list", "web1")
    assert listed.exit_code == 0 and "pre" in listed.stdout
    over = run_cli(td_ctx, "plan", "snapshots", "small", "--limit", "99999999999999999999")
    assert_one_line_error(over, 2)
    bad = run_cli(td_ctx, "vps", "snapshot", "create", "web1", "--label", "\x07bell")
    assert_one_line_error(bad, 2, "control characters")
    nope = run_cli(td_ctx, "vps", "snapshot", "revert", "web1", "ffff", "--yes")
    assert_one_line_error(nope, 2, "no snapshot")
    before = db_snapshot(td_ctx)
    for label in ("a\x1b[31mred", "line\nbreak", "x" * 65, "tab\there"):
        with pytest.raises(InvalidInput):
            snapshots.create(td_ctx, "web1", label, actor=OP)
    with pytest.raises(InvalidInput):
        snapshots.set_plan_snapshots(td_ctx, "small", 10**20)
    assert db_snapshot(td_ctx) == before
    snapshots.set_plan_snapshots(td_ctx, "small", 0)
    before = db_snapshot(td_ctx)
    with pytest.raises(Conflict, match="plan allows 0"):
        snapshots.create(td_ctx, "web1", actor=OP)
    with pytest.raises(InvalidInput):
        snapshots.set_plan_snapshots(td_ctx, "small", 10**20)
    assert db_snapshot(td_ctx) == before
