"""Jobs and workers on the test driver: queueing, claiming, leases, recovery."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, select, update

from kvmvps.errors import NotFound
from kvmvps.models import Job, JobState, Vps
from kvmvps.services import Context, actions, claims, jobs, provisioning
from kvmvps.services import vps as vps_service
from kvmvps.services.provisioning import OrderRequest
from kvmvps.worker import Worker
from tests.badinput import create_args, run_cli


def order(ctx: Context, name: str = "web1") -> provisioning.Order:
    return provisioning.record_order(ctx, OrderRequest("small", "base", name), actor="test")


def test_order_is_queued_and_a_worker_builds_it(td_ctx: Context) -> None:
    args = [a for a in create_args() if a != "--wait"]
    queued = json.loads(run_cli(td_ctx, *args).stdout)
    assert queued["state"] == "queued" and queued["job"]
    assert jobs.get_job(td_ctx, queued["job"])["state"] == "queued"
    assert Worker(td_ctx).run(max_jobs=1) == 1
    job = jobs.get_job(td_ctx, queued["job"])
    assert job["state"] == "succeeded" and job["progress"] == 100 and job["attempts"] == 1
    assert vps_service.show(td_ctx, queued["id"])["state"] == "running"


def test_order_and_job_are_one_transaction(
    td_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If recording the job fails, the VPS row and its allocations are not recorded."""

    def broken(*_a, **_k):
        raise RuntimeError("job table unavailable")

    monkeypatch.setattr(jobs, "enqueue", broken)
    with pytest.raises(RuntimeError):
        order(td_ctx)
    with td_ctx.db.session() as s:
        assert s.scalars(select(Vps)).all() == []


def test_jobs_of_one_vps_run_in_order_never_together(td_ctx: Context) -> None:
    first = order(td_ctx)
    second = actions.request(td_ctx, first.uuid, "delete")  # queued behind the build
    other = order(td_ctx, "web2")
    a = claims.claim(td_ctx, "w1")
    b = claims.claim(td_ctx, "w2")
    assert a.uuid == first.job
    assert b.uuid == other.job  # the delete waits for the build of the same VPS
    assert claims.claim(td_ctx, "w3") is None
    claims.finish(td_ctx, a.id, "w1")
    c = claims.claim(td_ctx, "w3")
    assert c.uuid == second.job


def test_build_limit_per_host(td_ctx: Context) -> None:
    import dataclasses

    td_ctx.settings = dataclasses.replace(td_ctx.settings, build_limit=2)
    for i in range(3):
        order(td_ctx, f"b{i}")
    assert claims.claim(td_ctx, "w1") and claims.claim(td_ctx, "w2")
    assert claims.claim(td_ctx, "w3") is None


def test_blocked_builds_never_starve_other_jobs(td_ctx: Context) -> None:
    """Build limit 1, one build running and 25 queued for that full host: a reboot goes first."""
    import dataclasses

    running = order(td_ctx, "web0")
    Worker(td_ctx).run(max_jobs=1)
    td_ctx.settings = dataclasses.replace(td_ctx.settings, build_limit=1)
    with td_ctx.db.session() as s:
        host = s.scalar(select(Vps.host_id).where(Vps.uuid == running.uuid))
        for i in range(26):
            jobs.enqueue(s, "create", f"blocked-{i}", host, actor="test")
    first = claims.claim(td_ctx, "w1")
    assert first is not None and first.kind == "create"  # takes the host's only build slot
    reboot = actions.request(td_ctx, running.uuid, "reboot")
    started = time.monotonic()
    claimed = claims.claim(td_ctx, "w2")
    assert claimed is not None and claimed.uuid == reboot.job
    assert time.monotonic() - started < 2
    assert claims.claim(td_ctx, "w3") is None  # the 25 builds still wait for the slot
    claims.finish(td_ctx, first.id, "w1")
    assert claims.claim(td_ctx, "w3").kind == "create"


@contextlib.contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements every engine runs meanwhile, in order (two words of each)."""
    seen: list[str] = []

    def record(_conn, _cursor, sql, *_rest) -> None:
        words = " ".join(sql.split()[:2]).upper()
        if words != "BEGIN IMMEDIATE":  # SQLite's way to begin a write
            seen.append(words)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_a_claim_and_a_finish_are_one_statement_each(td_ctx: Context) -> None:
    """The hot path: the oldest job that is not a build for a host is taken by one
    ``UPDATE ... RETURNING`` and finished by one ``UPDATE``; a build for a host is
    looked at again under the host's lock, and still claimed first, in order."""
    running = order(td_ctx, "web0")
    Worker(td_ctx).run(max_jobs=1)
    reboot = actions.request(td_ctx, running.uuid, "reboot")
    with statements() as seen:
        claimed = claims.claim(td_ctx, "w1")
        assert claimed is not None and claimed.uuid == reboot.job and claimed.kind == "reboot"
        claims.finish(td_ctx, claimed.id, "w1")
    assert seen == ["UPDATE JOBS", "UPDATE JOBS"]
    assert jobs.get_job(td_ctx, reboot.job)["state"] == "succeeded"

    build = order(td_ctx, "web1")  # a build for a host, older than the start behind it
    shutdown = actions.request(td_ctx, running.uuid, "shutdown")
    with statements() as seen:
        first = claims.claim(td_ctx, "w1")
    assert first is not None and first.uuid == build.job  # order kept
    assert seen[0] == "UPDATE JOBS" and len(seen) > 2  # the one statement took nothing
    second = claims.claim(td_ctx, "w2")
    assert second is not None and second.uuid == shutdown.job
    assert claims.claim(td_ctx, "w3") is None


def test_expired_lease_is_queued_again_then_resumed(td_ctx: Context) -> None:
    o = order(td_ctx)
    claimed = claims.claim(td_ctx, "dead-worker")
    assert claimed.uuid == o.job
    with td_ctx.db.session() as s:
        s.execute(update(Job).values(lease_expires_at=jobs.now() - timedelta(seconds=1)))
    Worker(td_ctx, name="rescuer").run(max_jobs=1)
    job = jobs.get_job(td_ctx, o.job)
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["worker"] == "rescuer"
    assert vps_service.show(td_ctx, o.uuid)["state"] == "running"


def test_job_whose_workers_keep_dying_is_rolled_back(td_ctx: Context) -> None:
    o = order(td_ctx)
    provisioning.build(td_ctx, o.uuid)  # the dead worker got far: the guest even runs
    with td_ctx.db.session() as s:
        s.execute(
            update(Job).values(
                state=JobState.RUNNING,
                worker="dead",
                attempts=jobs.MAX_ATTEMPTS,
                lease_expires_at=jobs.now() - timedelta(seconds=1),
            )
        )
    Worker(td_ctx, name="rescuer").recover_expired()
    job = jobs.get_job(td_ctx, o.job)
    assert job["state"] == "failed" and "abandoned after 3 attempts" in job["error"]
    shown = vps_service.show(td_ctx, o.uuid)
    assert shown["state"] == "error" and shown["ip"] is None
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    assert hv.list_domains(prefix="kvmvps-") == {}
    assert hv.list_volumes(td_ctx.settings.storage_pool) == []


def test_stopping_worker_hands_the_job_back_between_steps(td_ctx: Context) -> None:
    o = order(td_ctx)
    claimed = claims.claim(td_ctx, "w1")
    steps_seen: list[str] = []

    def stop_after_two() -> bool:
        return len(steps_seen) >= 2

    from kvmvps.services.runner import run_claimed

    run_claimed(
        td_ctx,
        claimed,
        "w1",
        stop_after_two,
        on_progress=lambda step, i, n: steps_seen.append(step),
    )
    job = jobs.get_job(td_ctx, o.job)
    assert job["state"] == "queued" and job["worker"] is None and job["attempts"] == 0
    assert steps_seen == ["clone", "seed"]
    Worker(td_ctx).run(max_jobs=1)  # another worker resumes it
    assert vps_service.show(td_ctx, o.uuid)["state"] == "running"


def test_failed_action_is_reported_on_the_job(td_ctx: Context) -> None:
    created = json.loads(run_cli(td_ctx, *create_args()).stdout)
    req = actions.request(td_ctx, created["id"], "suspend")
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    hv.destroy(created["domain"])  # behind kvmvps's back: suspend must now fail
    Worker(td_ctx).run(max_jobs=1)
    job = jobs.get_job(td_ctx, req.job)
    assert job["state"] == "failed" and job["error"]


def test_actions_check_state_at_once(td_ctx: Context) -> None:
    from kvmvps.errors import Conflict

    created = json.loads(run_cli(td_ctx, *create_args()).stdout)
    with pytest.raises(Conflict, match="cannot start web1: it is running"):
        actions.request(td_ctx, created["id"], "start")
    with pytest.raises(Conflict, match="cannot resume"):
        actions.request(td_ctx, created["id"], "resume")


def test_worker_heartbeat_and_live_detection(td_ctx: Context) -> None:
    w = Worker(td_ctx, name="alive")
    w.tick()
    assert "alive" in jobs.live_workers(td_ctx)
    w._goodbye()
    assert "alive" not in jobs.live_workers(td_ctx)


def test_time_limit_rolls_back(td_ctx: Context) -> None:
    o = order(td_ctx)
    with pytest.raises(Exception, match="time limit"):
        provisioning.build(td_ctx, o.uuid, deadline=time.monotonic() - 1)
    assert vps_service.show(td_ctx, o.uuid)["state"] == "error"


def _cli_in_thread(ctx: Context, *args: str, extra_env: dict[str, str] | None = None):
    """run_cli, but a hang fails the test instead of blocking it forever."""
    import threading

    box: list = []
    thread = threading.Thread(
        target=lambda: box.append(run_cli(ctx, *args, extra_env=extra_env)), daemon=True
    )
    started = time.monotonic()
    thread.start()
    thread.join(timeout=90)
    assert box, f"kvmvps-admin {' '.join(args)} still waits after 90 s"
    return box[0], time.monotonic() - started


def test_delete_of_a_queued_vps_with_no_worker_runs_the_build_first(td_ctx: Context) -> None:
    o = order(td_ctx)
    assert jobs.live_workers(td_ctx) == []
    result, _elapsed = _cli_in_thread(td_ctx, "vps", "delete", o.uuid, "--yes")
    assert result.exit_code == 0, result.stderr
    assert f"deleted web1 ({o.uuid})" in result.stdout
    assert "no worker is running: running job" in result.stderr
    assert result.stderr.count("\n") == 1  # one note line
    assert jobs.get_job(td_ctx, o.job)["state"] == "succeeded"
    assert vps_service.list_vps(td_ctx) == []


def test_delete_behind_a_dead_workers_job_takes_it_over(td_ctx: Context) -> None:
    o = order(td_ctx)
    claimed = claims.claim(td_ctx, "dead-worker")
    assert claimed is not None and claimed.uuid == o.job
    # it died 25 s into a 30 s lease (5 s left: time enough, on a busy machine, for
    # the command below to find the lease still held)
    with td_ctx.db.session() as s:
        s.execute(update(Job).values(lease_expires_at=jobs.now() + timedelta(seconds=5)))
    result, elapsed = _cli_in_thread(td_ctx, "vps", "delete", o.uuid, "--yes")
    assert result.exit_code == 0, result.stderr
    assert "dead-worker, which held job" in result.stderr and "has stopped" in result.stderr
    assert "kvmvps-admin worker" in result.stderr
    build = jobs.get_job(td_ctx, o.job)
    assert build["state"] == "succeeded" and build["attempts"] == 2
    assert vps_service.list_vps(td_ctx) == []
    assert elapsed >= 1.5  # it waited for the lease, never took a live one


def test_waiting_on_nothing_says_what_to_start_within_seconds(td_ctx: Context) -> None:
    """Build limit 1, held by another command that is alive: no worker, no way forward here."""
    import os
    import socket

    first, second = order(td_ctx, "a1"), order(td_ctx, "a2")
    alive = f"inline:{socket.gethostname()}:{os.getpid()}"
    assert claims.claim(td_ctx, alive, only_id=_job_id(td_ctx, first.job)) is not None
    result, elapsed = _cli_in_thread(
        td_ctx, "vps", "delete", second.uuid, "--yes", extra_env={"KVMVPS_BUILD_LIMIT": "1"}
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "no worker is running: start one with 'kvmvps-admin worker'" in result.stderr
    assert elapsed < 15
    assert jobs.get_job(td_ctx, second.job)["state"] == "queued"  # left for a worker


def _job_id(ctx: Context, uuid: str) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(Job.id).where(Job.uuid == uuid))


def test_resumed_delete_whose_row_is_gone_succeeds(td_ctx: Context) -> None:
    """A delete whose worker died after removing the row finishes on the next run."""
    o = order(td_ctx)
    Worker(td_ctx).run(max_jobs=1)
    requested = actions.request(td_ctx, o.uuid, "delete", actor="test")
    claimed = claims.claim(td_ctx, "dead-worker")
    assert claimed is not None and claimed.uuid == requested.job
    provisioning.delete(td_ctx, o.uuid)  # the dead worker got this far, then died
    with td_ctx.db.session() as s:
        s.execute(update(Job).values(lease_expires_at=jobs.now() - timedelta(seconds=1)))
    assert Worker(td_ctx, name="rescuer").run(max_jobs=1) == 1
    job = jobs.get_job(td_ctx, requested.job)
    assert job["state"] == "succeeded", job["error"]
    assert job["error"] is None and job["attempts"] == 2 and job["worker"] == "rescuer"
    with pytest.raises(NotFound):
        provisioning.delete(td_ctx, o.uuid)
    with td_ctx.db.session() as s:
        assert s.scalars(select(Vps)).all() == []
