"""Workers against the real libvirtd: SIGKILL at every step, events, drift, orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvmvps.guest import wait_for_ssh_banner
from kvmvps.services import Context, jobs, provisioning, reconcile
from kvmvps.services import vps as vps_service
from kvmvps.worker import Worker
from tests.badinput import _env_of, create_args, run_cli
from tests.guestcheck import domstate, virsh
from tests.snapshots import libvirt_snapshot

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]


def spawn_worker(
    ctx: Context, log: Path, pause_after: str | None = None, marker: Path | None = None
) -> subprocess.Popen:
    env = {
        **os.environ,
        **_env_of(ctx),
        "KVMVPS_JOB_LEASE_SECONDS": "4",
        "KVMVPS_WORKER_HEARTBEAT_SECONDS": "1",
        "KVMVPS_RECONCILE_INTERVAL": "0",
    }
    argv = [sys.executable, "-m", "kvmvps", "worker"]
    if pause_after:
        env.update(PAUSE_AFTER=pause_after, PAUSE_MARKER=str(marker))
        argv = [sys.executable, str(Path(__file__).with_name("pausing_worker.py"))]
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_job(ctx: Context, job: str, states: tuple[str, ...], timeout: float, step=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = jobs.get_job(ctx, job)
        if view["state"] in states and (step is None or view["step"] == step):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job} never reached {states} {step or ''}: {view}")


@pytest.mark.parametrize("step", [s.name for s in provisioning.STEPS])
def test_sigkill_at_each_step_then_a_fresh_worker(
    fresh_ctx: Context, tmp_path: Path, step: str
) -> None:
    """The worker dies right after ``step`` did its work; another one takes over."""
    before = libvirt_snapshot(fresh_ctx)
    marker = tmp_path / "paused"
    first = spawn_worker(fresh_ctx, tmp_path / "w1.log", pause_after=step, marker=marker)
    try:
        order = provisioning.record_order(
            fresh_ctx, provisioning.OrderRequest("small", "base", "victim")
        )
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert time.monotonic() < deadline, (tmp_path / "w1.log").read_text()[-2000:]
            time.sleep(0.05)
        assert jobs.get_job(fresh_ctx, order.job)["step"] == step
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = spawn_worker(fresh_ctx, tmp_path / "w2.log")
    try:
        job = wait_job(fresh_ctx, order.job, ("succeeded", "failed"), 180)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    shown = vps_service.show(fresh_ctx, order.uuid)
    if job["state"] == "succeeded":
        assert shown["state"] == "running" and domstate(shown["domain"]) == "running"
        assert wait_for_ssh_banner(shown["ip"], 22, time.monotonic() + 30).startswith("SSH-")
        assert job["attempts"] == 2
    else:
        assert shown["state"] == "error", job["error"]
        assert libvirt_snapshot(fresh_ctx) == before, job["error"]
    result = run_cli(fresh_ctx, "vps", "delete", order.uuid, "--yes")
    assert result.exit_code == 0, result.stderr
    assert libvirt_snapshot(fresh_ctx) == before


def test_sigterm_finishes_the_step_and_hands_the_job_back(
    fresh_ctx: Context, tmp_path: Path
) -> None:
    worker = spawn_worker(fresh_ctx, tmp_path / "w.log")
    order = provisioning.record_order(fresh_ctx, provisioning.OrderRequest("small", "base", "t"))
    wait_job(fresh_ctx, order.job, ("running",), 60, step="host-key")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    job = jobs.get_job(fresh_ctx, order.job)
    assert job["state"] in ("queued", "succeeded")  # handed back, or it was the last step
    assert jobs.live_workers(fresh_ctx) == []


def test_drift_is_seen_through_lifecycle_events(fresh_ctx: Context) -> None:
    vps = json.loads(run_cli(fresh_ctx, *create_args()).stdout)
    import dataclasses

    fresh_ctx.settings = dataclasses.replace(fresh_ctx.settings, reconcile_interval=0)
    worker = Worker(fresh_ctx, name="events")
    worker.watch_events()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        virsh("destroy", vps["domain"])  # behind kvmvps's back
        deadline = time.monotonic() + 15
        while vps_service.show(fresh_ctx, vps["id"])["state"] != "stopped":
            assert time.monotonic() < deadline, "the event never reached the database"
            time.sleep(0.2)
    finally:
        worker.stopping.set()
        thread.join(timeout=30)


def test_virsh_destroy_corrected_and_orphan_domain_reported(
    fresh_ctx: Context, tmp_path: Path
) -> None:
    vps = json.loads(run_cli(fresh_ctx, *create_args()).stdout)
    virsh("destroy", vps["domain"])
    orphan = tmp_path / "orphan.xml"
    orphan.write_text(
        "<domain type='qemu'><name>kvmvps-behindback01</name>"
        "<memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>"
        "</domain>"
    )
    virsh("define", str(orphan))
    try:
        report = reconcile.run(fresh_ctx)
        assert [d["to"] for d in report.drift] == ["stopped"]
        assert [d["domain"] for d in report.orphan_domains] == ["kvmvps-behindback01"]
        out = run_cli(fresh_ctx, "reconcile", "--fix")
        assert "removed   domain kvmvps-behindback01" in out.stdout
        assert "kvmvps-behindback01" not in virsh("list", "--all", "--name")
        assert vps_service.show(fresh_ctx, vps["id"])["state"] == "stopped"
    finally:
        subprocess.run(["virsh", "-q", "undefine", "kvmvps-behindback01"], capture_output=True)
