"""The fair queue on the real libvirtd, with one shared tiny guest.

- A second password change while one is pending is refused, in both orders,
  and the password shown first is the one OpenSSH logs in with (pinned host
  key, sshpass).
- A guest that ignores ACPI (root emptied its
  power-button handler) holds a shutdown job in
  its wait; SIGTERM makes the worker hand it back at once, not after the wait.

The tests run in this order and share the guest; the last one breaks its
ACPI handling, and the module's teardown deletes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from kvmvps import guest, keys
from kvmvps.errors import Conflict
from kvmvps.models import Job, JobState, Vps
from kvmvps.services import Context, actions, inventory, jobs, orders, provisioning, runner
from kvmvps.services import vps as vps_service
from tests.badinput import _env_of, assert_one_line_error, run_cli
from tests.guestcheck import domstate, openssh

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]
# what root in the guest may do: the power button's handler does nothing now
IGNORE_ACPI = "printf '#!/bin/sh\\nexit 0\\n' >/etc/acpi/PWRF/00000080"


@pytest.fixture(scope="module")
def shared(real_ctx: Context, tiny_image: str) -> Iterator[dict]:
    """One running tiny guest for this module: its view, owner id and first password."""
    if "small" not in [p.name for p in inventory.list_plans(real_ctx)]:
        inventory.add_plan(real_ctx, "small", 1, 256, 1)
    order = orders.create(real_ctx, provisioning.OrderRequest("small", tiny_image, "fairq"))
    with real_ctx.db.session() as s:
        owner_id = s.scalar(select(Vps.owner_id).where(Vps.uuid == order.uuid))
    yield {"uuid": order.uuid, "owner_id": owner_id, "password": order.password}
    with real_ctx.db.session() as s:  # nothing of ours may be left for another test's worker
        s.execute(
            update(Job)
            .where(Job.vps_uuid == order.uuid, Job.state.in_(JobState.UNFINISHED))
            .values(state=JobState.FAILED, error="test teardown", worker=None)
        )
    provisioning.delete(real_ctx, order.uuid)


def login_works(ctx: Context, uuid: str, password: str, tmp: Path) -> bool:
    """OpenSSH with the host key kvmvps pinned (never a scanned one), password by sshpass."""
    with ctx.db.session() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == uuid)).one()
        ip, user, host_key = vps.ip or "", vps.username or "root", vps.host_key or ""
    done = openssh(tmp, ip, 22, host_key, user, "echo in", password=password)
    return done.returncode == 0 and done.stdout.strip() == "in"


@pytest.mark.parametrize(
    ("first", "second"), [("password_reset", "reinstall"), ("reinstall", "password_reset")]
)
def test_second_password_change_is_refused_and_the_first_password_works(
    real_ctx: Context, shared: dict, tmp_path: Path, first: str, second: str
) -> None:
    uuid, owner = shared["uuid"], shared["owner_id"]
    asked = actions.request(real_ctx, uuid, first, actor="customer", owner_id=owner)
    assert asked.password
    with pytest.raises(Conflict, match="already has an action pending"):
        actions.request(real_ctx, uuid, second, actor="customer", owner_id=owner)
    argv = ["password-reset", uuid] if second == "password_reset" else ["reinstall", uuid, "--yes"]
    refused = run_cli(real_ctx, "vps", *argv)  # the operator is refused too
    assert_one_line_error(refused, 1, "has a new password pending")
    runner.run_or_follow(real_ctx, asked.job)
    assert vps_service.show(real_ctx, uuid)["state"] == "running"
    assert login_works(real_ctx, uuid, asked.password, tmp_path)
    assert not login_works(real_ctx, uuid, shared["password"], tmp_path)
    shared["password"] = asked.password


def test_sigterm_interrupts_a_shutdown_the_guest_ignores(
    real_ctx: Context, shared: dict, tmp_path: Path
) -> None:
    uuid = shared["uuid"]
    with real_ctx.db.session() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == uuid)).one()
        target = guest.Target(host=vps.ip or "", port=22, host_key=vps.host_key or "")
        domain = vps.domain_name
    key = keys.provisioning_key_path(real_ctx.settings)
    with guest.root_session(target, key, time.monotonic() + 30) as client:
        guest.run(client, IGNORE_ACPI, [])
    env = {
        **os.environ,
        **_env_of(real_ctx),
        "KVMVPS_JOB_LEASE_SECONDS": "6",
        "KVMVPS_WORKER_HEARTBEAT_SECONDS": "1",
        "KVMVPS_RECONCILE_INTERVAL": "0",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "kvmvps", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        asked = actions.request(real_ctx, uuid, "shutdown", actor="op", timeout=600, force=False)
        deadline = time.monotonic() + 60
        while jobs.get_job(real_ctx, asked.job)["state"] != "running":
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(3)  # well inside the 600 s wait
        assert domstate(domain) == "running"
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - sent < 10, "the worker sat out the guest's shutdown wait"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    job = jobs.get_job(real_ctx, asked.job)
    assert job["state"] == "queued" and job["worker"] is None and job["attempts"] == 0
    assert domstate(domain) == "running"
    assert vps_service.show(real_ctx, uuid)["state"] == "running"
    assert jobs.live_workers(real_ctx) == []
