"""Benchmark: how long a customer's reboot waits behind another customer's stuck shutdowns.

    .venv/bin/python bench/fair_queue.py [--timeout 30] [--json out.json]

Customer A has three VPSes whose guests ignore the ACPI power button (root
killed acpid) and asks each to shut down with a long timeout and force
false. Customer B then asks for a reboot of their own VPS. One worker
service (``kvmvps-admin worker`` in its own process) runs the queue.

The figure is the reboot's wait, from its request to its end: with the
default ``KVMVPS_WORKER_CONCURRENCY`` and, as the "before", with 1 (one job
at a time, as kvmvps used to run). Real libvirtd and tiny guests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provision import installation, machine, teardown
from sqlalchemy import select, update

from kvmvps import guest, keys
from kvmvps.config import Settings
from kvmvps.models import Job, JobState, Vps
from kvmvps.services import Context, actions, images, inventory, jobs, provisioning, users
from kvmvps.services.provisioning import OrderRequest
from kvmvps.worker import Worker

STUCK = 3  # shutdowns that the guests ignore
# what root in the guest may do: the power button's handler does nothing now
IGNORE_ACPI = "printf '#!/bin/sh\\nexit 0\\n' >/etc/acpi/PWRF/00000080"


def worker_env(s: Settings, concurrency: int) -> dict[str, str]:
    """The environment of a worker service for this installation."""
    return {
        **os.environ,
        "KVMVPS_STATE_DIR": str(s.state_dir),
        "KVMVPS_DATABASE_URL": s.database_url,
        "KVMVPS_LIBVIRT_URI": s.libvirt_uri,
        "KVMVPS_DOMAIN_TYPE": s.domain_type,
        "KVMVPS_STORAGE_POOL": s.storage_pool,
        "KVMVPS_NETWORK": s.network,
        "KVMVPS_NETWORK_BRIDGE": s.network_bridge,
        "KVMVPS_NETWORK_SUBNET": s.network_subnet,
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": str(s.host_memory_reserve_mib),
        "KVMVPS_CACHE_DIR": s.cache_dir,
        "KVMVPS_SSH_TIMEOUT": str(s.ssh_timeout),
        "KVMVPS_CPU_OVERCOMMIT": str(s.cpu_overcommit),
        "KVMVPS_RECONCILE_INTERVAL": "0",
        "KVMVPS_IMAGE_TEST_INTERVAL": "0",
        "KVMVPS_WORKER_CONCURRENCY": str(concurrency),
        "KVMVPS_CONFIG": "",
    }


def build_guests(ctx: Context) -> tuple[list[str], str]:
    """A's stuck guests and B's guest, built one by one; A's then ignore ACPI."""
    inventory.add_plan(ctx, "bench", 1, 256, 1)
    for email in ("a@example.com", "b@example.com"):
        users.add_user(ctx, email, "bench-password-123456")
    wanted = [(f"a{i}", "a@example.com") for i in range(STUCK)] + [("b0", "b@example.com")]
    built = [build_one(ctx, name, owner) for name, owner in wanted]
    for uuid in built[:STUCK]:
        ignore_acpi(ctx, uuid)
    return built[:STUCK], built[-1]


def build_one(ctx: Context, name: str, owner: str, attempts: int = 3) -> str:
    """Order and build one guest; on a loaded machine a TCG guest may panic at boot, so retry."""
    error = ""
    for attempt in range(attempts):
        order = provisioning.record_order(
            ctx, OrderRequest("bench", "tiny", f"{name}x{attempt}", owner)
        )
        Worker(ctx, name="builder").run(max_jobs=1)
        job = jobs.get_job(ctx, order.job)
        if job["state"] == "succeeded":
            return order.uuid
        error = job["error"] or ""
        print(f"building {name} failed ({error}); trying again", file=sys.stderr)
    raise SystemExit(f"building a guest failed {attempts} times: {error}")


def ignore_acpi(ctx: Context, uuid: str) -> None:
    """What a careless customer's root does: the guest no longer hears the power button."""
    with ctx.db.session() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == uuid)).one()
        target = guest.Target(host=vps.ip or "", port=22, host_key=vps.host_key or "")
    key = keys.provisioning_key_path(ctx.settings)
    with guest.root_session(target, key, time.monotonic() + 60) as client:
        guest.run(client, IGNORE_ACPI, [])


def owner_of(ctx: Context, uuid: str) -> int:
    with ctx.db.session() as s:
        owner = s.scalar(select(Vps.owner_id).where(Vps.uuid == uuid))
    assert owner is not None
    return owner


def reboot_wait(
    ctx: Context, stuck: list[str], victim: str, concurrency: int, timeout: float
) -> float:
    """Start a worker service, queue the stuck shutdowns, then B's reboot; its wait in seconds."""
    log = open(ctx.settings.state_dir / f"worker-{concurrency}.log", "wb")  # noqa: SIM115 - the worker writes it
    worker = subprocess.Popen(
        [sys.executable, "-m", "kvmvps", "worker"],
        env=worker_env(ctx.settings, concurrency),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        shutdowns = [
            actions.request(
                ctx,
                uuid,
                "shutdown",
                actor="bench:a",
                owner_id=owner_of(ctx, uuid),
                timeout=timeout,
                force=False,
            ).job
            for uuid in stuck
        ]
        wait_until_running(ctx, shutdowns[:concurrency])  # the worker holds them: the worst case
        asked = time.perf_counter()
        reboot = actions.request(
            ctx, victim, "reboot", actor="bench:b", owner_id=owner_of(ctx, victim)
        )
        while jobs.get_job(ctx, reboot.job)["state"] not in ("succeeded", "failed"):
            if time.perf_counter() - asked > STUCK * timeout + 120:
                raise SystemExit("the reboot never ran")
            time.sleep(0.05)
        waited = time.perf_counter() - asked
    finally:
        worker.terminate()
        worker.wait(timeout=120)
        log.close()
    with ctx.db.session() as s:  # the shutdowns handed back: drop them for the next round
        s.execute(
            update(Job)
            .where(Job.state.in_(JobState.UNFINISHED))
            .values(state=JobState.FAILED, error="benchmark round over", worker=None)
        )
    return waited


def wait_until_running(ctx: Context, job_ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    while any(jobs.get_job(ctx, j)["state"] != "running" for j in job_ids):
        if time.monotonic() > deadline:
            raise SystemExit("the worker never started the shutdowns")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=30.0, help="the stuck shutdowns' timeout")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    ctx = installation()
    # give a loaded machine time to boot the guests (the figure is the reboot's)
    ctx.settings = dataclasses.replace(ctx.settings, ssh_timeout=180.0)
    try:
        images.build_tiny(ctx, "tiny")
        stuck, victim = build_guests(ctx)
        default = Settings().worker_concurrency
        after = reboot_wait(ctx, stuck, victim, default, args.timeout)
        before = reboot_wait(ctx, stuck, victim, 1, args.timeout)
        result = {
            "machine": machine(ctx),
            "stuck_shutdowns": STUCK,
            "shutdown_timeout_s": args.timeout,
            "reboot_wait_s": {
                f"concurrency_{default}": round(after, 2),
                "concurrency_1": round(before, 2),
            },
        }
        print(
            f"{STUCK} ignored shutdowns queued first, each waiting {args.timeout:g} s (force false)"
        )
        print(f"customer B's reboot waited {after:6.2f} s with one worker, concurrency {default}")
        print(f"customer B's reboot waited {before:6.2f} s with one worker, concurrency 1 (before)")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        teardown(ctx)


if __name__ == "__main__":
    main()
