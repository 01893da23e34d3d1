"""Failures injected at each provisioning step on the real libvirtd roll back completely."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from kvmvps.errors import StepFailed
from kvmvps.models import CpuPin, Image, IpLease, Vps
from kvmvps.services import Context, orders, provisioning, steps
from tests.badinput import assert_one_line_error, create_args, run_cli
from tests.snapshots import libvirt_snapshot

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]


def held(ctx: Context) -> tuple[int, int]:
    with ctx.db.session() as s:
        leases = s.scalar(
            select(func.count()).select_from(IpLease).where(IpLease.vps_id.is_not(None))
        )
        return leases, s.scalar(select(func.count()).select_from(CpuPin))


def assert_rolled_back(ctx: Context, before: dict, fragment: str) -> None:
    assert libvirt_snapshot(ctx) == before
    assert held(ctx) == (0, 0)
    assert list(Path(ctx.settings.console_dir).iterdir()) == []
    with ctx.db.session() as s:
        row = s.scalar(select(Vps).order_by(Vps.id.desc()))
        assert row.state == "error" and fragment in row.error
        assert row.pending_password is None and row.host_key is None


@pytest.mark.parametrize("failing", [s.name for s in provisioning.STEPS])
def test_failure_after_each_step(
    reused_ctx: Context, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The step does its work, then fails: that work and all before it are undone.

    The cases share one installation: each leaves nothing behind (asserted).
    """

    def inject(step: steps.Step) -> steps.Step:
        if step.name != failing:
            return step

        def broken(b: steps.Build) -> None:
            step.do(b)
            raise RuntimeError(f"injected after {failing}")

        return dataclasses.replace(step, do=broken)

    before = libvirt_snapshot(reused_ctx)
    monkeypatch.setattr(provisioning, "STEPS", tuple(inject(s) for s in provisioning.STEPS))
    with pytest.raises(StepFailed, match=f"at step '{failing}'"):
        orders.create(reused_ctx, provisioning.OrderRequest("small", "base", f"f-{failing}"))
    assert_rolled_back(reused_ctx, before, f"injected after {failing}")


def test_push_failing_half_way_rolls_back(
    fresh_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostname is set, then the password push fails on the guest."""
    from kvmvps import guest

    real_run = guest.run

    def failing_run(client, script, args, stdin=b""):
        if script == guest.PUSH_ALL:  # the hostname is set, then chpasswd fails (set -e)
            keys = stdin.split(b"\n", 1)[1]
            return real_run(client, script, args, stdin=b"nosuchuser:$6$x$y\n" + keys)
        return real_run(client, script, args, stdin)

    monkeypatch.setattr(guest, "run", failing_run)
    before = libvirt_snapshot(fresh_ctx)
    result = run_cli(fresh_ctx, *create_args())
    assert_one_line_error(result, 1, "at step 'credentials'", "a command on the guest failed")
    assert_rolled_back(fresh_ctx, before, "a command on the guest failed")


def test_guest_that_never_answers(fresh_ctx: Context) -> None:
    """A guest that cannot boot: the SSH budget runs out, the order rolls back."""
    with fresh_ctx.db.session() as s:
        s.execute(update(Image).values(cmdline="console=ttyS0 root=/dev/nonexistent panic=0"))
    fresh_ctx.settings = dataclasses.replace(fresh_ctx.settings, ssh_timeout=15)
    env_timeout = {"KVMVPS_SSH_TIMEOUT": "15"}
    before = libvirt_snapshot(fresh_ctx)
    result = run_cli(fresh_ctx, *create_args(), extra_env=env_timeout)
    assert_one_line_error(result, 1, "at step 'host-key'", "never printed its SSH host key")
    assert_rolled_back(fresh_ctx, before, "never printed")


def test_success_after_failures_reuses_nothing_stale(fresh_ctx: Context) -> None:
    """After a rolled-back order the same hostname can be ordered and works."""
    result = run_cli(fresh_ctx, *create_args())
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "running"
