"""Backups on the website: the server page's section and its forms, one's own server only."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update

from kvmvps.models import Job, JobState
from kvmvps.services import backups, snapshots
from kvmvps.services import vps as vps_service
from tests.web.conftest import A, B, World, csrf_token
from tests.web.helpers import forbid_libvirt_work, text
from tests.web.test_backups_api import ready


def test_back_up_restore_delete_from_the_server_page(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = forbid_libvirt_work(monkeypatch)
    vps = world.order(A).uuid
    alice = world.client(A)
    page = text(alice.get(f"/servers/{vps}"))
    assert "Back up now" in page and "Your plan keeps 1 backup." in page
    made = alice.post(f"/servers/{vps}/backups")
    assert made.status_code == 302
    [backup] = backups.list_backups(world.ctx, vps)
    assert backup["state"] == "queued"
    again = alice.post(f"/servers/{vps}/backups")  # the first is pending: the page, and why
    assert again.status_code == 409 and "already has an action pending" in text(again)
    assert len(backups.list_backups(world.ctx, vps)) == 1

    bob = world.client(B)
    for path in (
        f"/servers/{vps}/backups",
        f"/servers/{vps}/backups/{backup['id']}/restore",
        f"/servers/{vps}/backups/{backup['id']}/delete",
    ):
        assert bob.post(path).status_code == 404, path
    assert backups.list_backups(world.ctx, vps) == [backup]
    assert tried == []


def test_a_form_without_its_csrf_token_changes_nothing(csrf_world: World) -> None:
    vps = csrf_world.order(A).uuid
    alice = csrf_world.client(A)
    assert alice.post(f"/servers/{vps}/backups").status_code == 400
    assert backups.list_backups(csrf_world.ctx, vps) == []
    token = csrf_token(alice.get(f"/servers/{vps}").get_data(as_text=True))
    assert alice.post(f"/servers/{vps}/backups", data={"csrf_token": token}).status_code == 302
    assert len(backups.list_backups(csrf_world.ctx, vps)) == 1


def test_new_server_from_a_backup_snapshots_and_delete_keeping_backups(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = forbid_libvirt_work(monkeypatch)
    vps = world.order(A).uuid
    made = backups.create(world.ctx, vps)
    ready(world, made.backup, made.job)
    alice, bob = world.client(A), world.client(B)
    page = text(alice.get(f"/servers/{vps}"))
    assert "New server" in page and "Snapshots" in page and "Take a snapshot" not in page
    path = f"/servers/{vps}/backups/{made.backup}/new-server"
    assert bob.post(path, data={"hostname": "theirs"}).status_code == 404
    bad = alice.post(path, data={"hostname": "bad\x1bname"})
    assert bad.status_code == 302 and len(vps_service.list_vps(world.ctx)) == 1
    copy = alice.post(path, data={"hostname": "copy"})
    assert copy.status_code == 302 and "/jobs/" in copy.headers["Location"]
    assert "copy" in [v["hostname"] for v in vps_service.list_vps(world.ctx)]

    snapshots.set_plan_snapshots(world.ctx, "nano", 1)
    assert "Take a snapshot" in text(alice.get(f"/servers/{vps}"))
    bad_label = alice.post(f"/servers/{vps}/snapshots", data={"label": "x" * 65})
    assert bad_label.status_code == 400 and snapshots.list_snapshots(world.ctx, vps) == []
    assert bob.post(f"/servers/{vps}/snapshots").status_code == 404
    took = alice.post(f"/servers/{vps}/snapshots", data={"label": "pre"})
    assert took.status_code == 302
    assert [x["label"] for x in snapshots.list_snapshots(world.ctx, vps)] == ["pre"]

    confirm = text(alice.get(f"/servers/{vps}/actions/delete"))
    assert "Delete its backups too" in confirm and "backups are kept" in confirm
    with world.ctx.db.session() as s:  # let the snapshot's job be done
        s.execute(update(Job).where(Job.vps_uuid == vps).values(state=JobState.SUCCEEDED))
    hostname = vps_service.show(world.ctx, vps)["hostname"]
    gone = alice.post(f"/servers/{vps}/actions/delete", data={"hostname": hostname})
    assert gone.status_code == 302
    with world.ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.vps_uuid == vps, Job.kind == "delete"))
        assert job is not None and json.loads(job.params) == {}  # its backups are kept
    assert tried == []
