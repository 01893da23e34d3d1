"""Backups through the API: within the plan's slots, one's own only, refusals that change nothing."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from kvmvps import backupstore
from kvmvps.errors import InvalidInput
from kvmvps.models import Backup, BackupState, Job, Plan
from kvmvps.services import backups, suspension
from tests.snapshots import db_snapshot
from tests.web.conftest import OP, A, B, World, finish_job
from tests.web.helpers import forbid_libvirt_work


def state(world: World) -> dict:
    """Every row but the API tokens' (a token's use is recorded on it)."""
    return {k: v for k, v in db_snapshot(world.ctx).items() if k != "api_tokens"}


@pytest.fixture
def calls(world: World, monkeypatch: pytest.MonkeyPatch):
    """Callers with A's and B's tokens; no request may do libvirt work."""
    tried = forbid_libvirt_work(monkeypatch)
    tokens = {A: world.bearer(A), B: world.bearer(B)}
    client = world.app.test_client()

    def call(who: str, method: str, path: str, **kwargs):
        return client.open(f"/api/v1{path}", method=method, headers=tokens[who], **kwargs)

    yield call
    assert tried == []


def ready(world: World, backup_id: str, job: str) -> None:
    """What a worker's finished backup leaves: the row ready and files in the directory."""
    finish_job(world.ctx, job)
    root = world.ctx.settings.backup_path
    backupstore.ensure_dir(root)
    backupstore.partial_path(root, backup_id).write_bytes(b"qcow2 stand-in")
    size = backupstore.finish(root, backup_id, {"backup": backup_id})
    with world.ctx.db.session() as s:
        s.execute(
            update(Backup)
            .where(Backup.uuid == backup_id)
            .values(state=BackupState.READY, size_bytes=size)
        )


def test_backup_list_restore_delete_own_server(world: World, calls) -> None:
    vps = world.order(A).uuid
    made = calls(A, "POST", f"/servers/{vps}/backups")
    assert made.status_code == 202, made.get_json()
    body = made.get_json()
    assert body["server"] == vps and made.headers["Location"].endswith(body["job"])
    listed = calls(A, "GET", f"/servers/{vps}/backups").get_json()["backups"]
    assert [(b["id"], b["state"], b["kind"]) for b in listed] == [(body["id"], "queued", "manual")]
    with world.ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.uuid == body["job"]))
        assert job is not None and job.kind == "backup"
        assert json.loads(job.params) == {"backup": body["id"]}

    early = calls(A, "POST", f"/servers/{vps}/backups/{body['id'][:8]}/restore")
    assert early.status_code == 409 and "not ready" in early.get_json()["error"]
    ready(world, body["id"], body["job"])
    restore = calls(A, "POST", f"/servers/{vps}/backups/{body['id'][:8]}/restore")
    assert restore.status_code == 202, restore.get_json()
    in_use = calls(A, "DELETE", f"/servers/{vps}/backups/{body['id']}")
    assert in_use.status_code == 409 and "in use" in in_use.get_json()["error"]

    finish_job(world.ctx, restore.get_json()["job"])
    gone = calls(A, "DELETE", f"/servers/{vps}/backups/{body['id']}")
    assert gone.status_code == 200 and gone.get_json()["id"] == body["id"]
    assert calls(A, "GET", f"/servers/{vps}/backups").get_json()["backups"] == []
    assert list(world.ctx.settings.backup_path.iterdir()) == []


def test_slots_and_double_submits_are_refused_and_change_nothing(world: World, calls) -> None:
    vps = world.order(A).uuid
    first = calls(A, "POST", f"/servers/{vps}/backups").get_json()
    before = state(world)
    again = calls(A, "POST", f"/servers/{vps}/backups")  # the first is still pending
    assert again.status_code == 409 and "already has an action pending" in again.get_json()["error"]
    assert state(world) == before
    ready(world, first["id"], first["job"])
    before = state(world)
    full = calls(A, "POST", f"/servers/{vps}/backups")
    assert full.status_code == 409
    assert full.get_json()["error"].startswith("no backup slot left for vm1: its plan has 1")
    assert state(world) == before
    with world.ctx.db.session() as s:
        s.execute(update(Plan).where(Plan.name == "nano").values(backup_slots=2))
    assert calls(A, "POST", f"/servers/{vps}/backups").status_code == 202


def test_another_customers_backups_are_out_of_reach(world: World, calls) -> None:
    mine, theirs = world.order(A).uuid, world.order(B).uuid
    body = calls(A, "POST", f"/servers/{mine}/backups").get_json()
    ready(world, body["id"], body["job"])
    before = state(world)
    for method, path in (
        ("GET", f"/servers/{mine}/backups"),
        ("POST", f"/servers/{mine}/backups"),
        ("POST", f"/servers/{mine}/backups/{body['id']}/restore"),
        ("DELETE", f"/servers/{mine}/backups/{body['id']}"),
    ):
        r = calls(B, method, path)
        assert r.status_code == 404 and "no VPS matches" in r.get_json()["error"], (method, path)
    # A's backup id through B's own server: not a backup of that server
    for method, path in (
        ("POST", f"/servers/{theirs}/backups/{body['id']}/restore"),
        ("DELETE", f"/servers/{theirs}/backups/{body['id']}"),
    ):
        r = calls(B, method, path)
        assert r.status_code == 404 and "no backup of this VPS" in r.get_json()["error"]
    assert state(world) == before
    assert backupstore.disk_path(world.ctx.settings.backup_path, body["id"]).exists()


@pytest.mark.parametrize("ref", ["%00", "x" * 300, "%0a1", "..%2F..%2Fetc"])
def test_bad_backup_ids_are_plain_4xx(world: World, calls, ref: str) -> None:
    vps = world.order(A).uuid
    before = state(world)
    r = calls(A, "POST", f"/servers/{vps}/backups/{ref}/restore")
    assert 400 <= r.status_code < 500 and r.get_json()["error"], r.get_data()
    assert state(world) == before


def test_suspended_or_stopped_in_the_wrong_state(world: World, calls) -> None:
    placed = world.order(A, image="linux")
    shown = suspension.suspend(world.ctx, placed.uuid, "unpaid invoice", f"user:{OP}")
    finish_job(world.ctx, shown["job"])
    before = state(world)
    r = calls(A, "POST", f"/servers/{placed.uuid}/backups")
    assert r.status_code == 403 and "suspended by the operators" in r.get_json()["error"]
    assert state(world) == before
    building = world.order(A, running=False).uuid
    r = calls(A, "POST", f"/servers/{building}/backups")
    assert r.status_code == 409 and "it is queued" in r.get_json()["error"]


def test_delete_server_keeps_or_drops_its_backups(world: World, calls) -> None:
    vps = world.order(A).uuid
    bad = calls(A, "DELETE", f"/servers/{vps}?backups=shred")
    assert bad.status_code == 400
    dropped = calls(A, "DELETE", f"/servers/{vps}?backups=drop")
    assert dropped.status_code == 202
    with world.ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.uuid == dropped.get_json()["job"]))
        assert job is not None and json.loads(job.params) == {"drop_backups": True}


def test_drop_all_removes_rows_and_files(world: World) -> None:
    vps = world.order(A).uuid
    made = backups.create(world.ctx, vps, actor="user:" + A)
    ready(world, made.backup, made.job)
    assert backups.drop_all(world.ctx, vps) == 1
    assert not backupstore.disk_path(world.ctx.settings.backup_path, made.backup).exists()
    assert backups.list_backups(world.ctx, vps) == []
    assert str(uuid.UUID(made.backup)) == made.backup


def test_the_schedule_queues_once_per_period_and_prunes(world: World) -> None:
    vps = world.order(A).uuid
    assert backups.run_schedule(world.ctx) == []  # the plan has no schedule
    with pytest.raises(InvalidInput, match="a schedule keeps 1 to 1 backups"):
        backups.set_plan_backups(world.ctx, "nano", schedule="daily", keep=2, actor="os:root")
    shown = backups.set_plan_backups(
        world.ctx, "nano", slots=3, schedule="daily", keep=2, actor="os:root"
    )
    assert shown == {
        "plan": "nano",
        "backup_slots": 3,
        "backup_schedule": "daily",
        "backup_keep": 2,
    }
    made = []
    for _day in range(3):
        queued = backups.run_schedule(world.ctx)
        assert len(queued) == 1
        assert backups.run_schedule(world.ctx) == []  # not twice in a period
        with world.ctx.db.session() as s:
            backup = s.scalars(select(Backup).order_by(Backup.id.desc())).first()
            assert backup is not None and backup.kind == "scheduled"
            made.append(backup.uuid)
        ready(world, made[-1], queued[0])
        backups.prune(world.ctx, vps)
        with world.ctx.db.session() as s:  # a day passes
            for row in s.scalars(select(Backup)):
                row.created_at = row.created_at - timedelta(days=1, seconds=1)
    kept = [b["id"] for b in backups.list_backups(world.ctx, vps)]
    assert kept == made[:0:-1]  # the two newest; the oldest and its files are gone
    assert not backupstore.disk_path(world.ctx.settings.backup_path, made[0]).exists()


def test_a_failed_backup_is_explained_without_host_paths(world: World, calls) -> None:
    vps = world.order(A).uuid
    body = calls(A, "POST", f"/servers/{vps}/backups").get_json()
    with world.ctx.db.session() as s:
        s.execute(
            update(Backup)
            .where(Backup.uuid == body["id"])
            .values(state=BackupState.FAILED, error="qemu-img convert failed: /var/lib/kvmvps/x")
        )
    [shown] = calls(A, "GET", f"/servers/{vps}/backups").get_json()["backups"]
    assert shown["error"].startswith("The backup could not be made.")
    assert "/var/lib" not in shown["error"]
    assert backups.list_backups(world.ctx, vps)[0]["error"].endswith("/var/lib/kvmvps/x")
    finish_job(world.ctx, body["job"])
    assert calls(A, "POST", f"/servers/{vps}/backups").status_code == 202  # no slot taken
