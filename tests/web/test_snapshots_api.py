"""Snapshots and restoring a backup as a new server through the API: one's own only,
within the plan's limit, bad labels and double submits refused without changing anything."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from kvmvps.models import Job, Vps
from kvmvps.services import snapshots, suspension
from tests.snapshots import db_snapshot
from tests.web.conftest import A, B, World, finish_job
from tests.web.helpers import forbid_libvirt_work
from tests.web.test_backups_api import ready


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


def test_snapshots_own_server_limit_labels_double_submit(world: World, calls) -> None:
    vps = world.order(A).uuid
    before = state(world)
    none = calls(A, "POST", f"/servers/{vps}/snapshots")
    assert none.status_code == 409 and "allows 0" in none.get_json()["error"]
    snapshots.set_plan_snapshots(world.ctx, "nano", 1)
    before = state(world)
    for label in ("\x1b]0;pwned\x07", "a\nb", "x" * 65, 42):
        bad = calls(A, "POST", f"/servers/{vps}/snapshots", json={"label": label})
        assert bad.status_code == 400, (label, bad.get_json())
    huge = calls(A, "POST", f"/servers/{vps}/snapshots", json={"label": "y" * 100_000})
    assert huge.status_code in (400, 413)  # refused either way
    theirs = calls(B, "POST", f"/servers/{vps}/snapshots", json={"label": "mine now"})
    assert theirs.status_code == 404
    assert state(world) == before

    made = calls(A, "POST", f"/servers/{vps}/snapshots", json={"label": "before upgrade"})
    assert made.status_code == 202, made.get_json()
    body = made.get_json()
    with world.ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.uuid == body["job"]))
        assert job is not None and job.kind == "snapshot"
        assert json.loads(job.params) == {"snapshot": body["id"]}
    twice = calls(A, "POST", f"/servers/{vps}/snapshots", json={"label": "again"})
    assert twice.status_code == 409 and "pending" in twice.get_json()["error"]
    finish_job(world.ctx, body["job"])
    over = calls(A, "POST", f"/servers/{vps}/snapshots")
    assert over.status_code == 409 and "allows 1" in over.get_json()["error"]

    listed = calls(A, "GET", f"/servers/{vps}/snapshots").get_json()
    assert listed["limit"] == 1 and [x["label"] for x in listed["snapshots"]] == ["before upgrade"]
    assert calls(B, "GET", f"/servers/{vps}/snapshots").status_code == 404
    for method, tail in (("POST", "/revert"), ("DELETE", "")):
        other = calls(B, method, f"/servers/{vps}/snapshots/{body['id']}{tail}")
        assert other.status_code == 404
        early = calls(A, method, f"/servers/{vps}/snapshots/{body['id'][:8]}{tail}")
        assert early.status_code == 409 and "not ready" in early.get_json()["error"]


def test_restore_as_new_server_own_backup_only(world: World, calls) -> None:
    vps = world.order(A).uuid
    made = calls(A, "POST", f"/servers/{vps}/backups").get_json()
    ready(world, made["id"], made["job"])
    before = state(world)
    path = f"/servers/{vps}/backups/{made['id'][:8]}/new-server"
    stolen = calls(B, "POST", path, json={"hostname": "stolen"})
    assert stolen.status_code == 404
    b_vps = world.order(B).uuid  # B's own server, A's backup id: still not found
    before = state(world)
    other = f"/servers/{b_vps}/backups/{made['id']}/new-server"
    assert calls(B, "POST", other, json={"hostname": "stolen"}).status_code == 404
    for body in ({}, {"hostname": "bad\x00name"}, {"hostname": "ok", "extra": 1}, [1]):
        assert calls(A, "POST", path, json=body).status_code == 400, body
    assert calls(A, "POST", path, json={"hostname": "copy", "plan": "nope"}).status_code == 404
    assert state(world) == before

    copy = calls(A, "POST", path, json={"hostname": "copy"})
    assert copy.status_code == 202, copy.get_json()
    new = copy.get_json()
    assert new["hostname"] == "copy" and new["id"] != vps and "password" in new
    with world.ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.uuid == new["job"]))
        assert job is not None and job.kind == "create"
        assert json.loads(job.params) == {"backup": made["id"]}
        row = s.scalar(select(Vps).where(Vps.uuid == new["id"]))
        assert row is not None and row.owner.email == A
    again = calls(A, "POST", path, json={"hostname": "copy"})  # a double submit
    assert again.status_code == 409
    in_use = calls(A, "DELETE", f"/servers/{vps}/backups/{made['id']}")
    assert in_use.status_code == 409 and "in use" in in_use.get_json()["error"]
    suspension.suspend(world.ctx, vps, "abuse", "os:operator")
    before = state(world)
    held = calls(A, "POST", path, json={"hostname": "escape"})  # not out of its suspension
    assert held.status_code == 403 and state(world) == before
