"""A host that stops answering during work (test driver).

The host "goes away" the way a dead libvirtd looks from kvmvps: every call
finds no daemon at its socket (a real connection attempt to a socket nobody
serves, translated by the real adapter). The builds and jobs around it are
the real ones. tests/e2e/test_second_host_agent.py kills a real second
libvirtd during a build and while idle.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select

from kvmvps.config import load_settings
from kvmvps.errors import InvalidInput, StepFailed
from kvmvps.hypervisor import Hypervisor
from kvmvps.models import Host, IpLease, Job, JobState, Vps, VpsState
from kvmvps.services import (
    Context,
    failures,
    jobs,
    orders,
    provisioning,
    reconcile,
    runner,
    steps,
    vps,
)
from kvmvps.services.provisioning import OrderRequest
from tests.badinput import run_cli
from tests.snapshots import snapshot
from tests.unit.test_provisioning_testdriver import EMPTY, leftovers

ORDER = OrderRequest(plan="small", image="base", hostname="web1")
REAL_STEPS = provisioning.STEPS
NOBODY = "qemu+unix:///system?socket=/nonexistent/kvmvps-test/libvirt-sock"


class Outage:
    """Makes the installation's host answer like a host whose libvirtd is gone."""

    def __init__(self, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hv = ctx.hypervisor(ctx.settings.libvirt_uri)
        self._real = self.hv._connection
        self._dead = Hypervisor(NOBODY)._connection
        self._back_at: float | None = None
        monkeypatch.setattr(self.hv, "_connection", self._connect)

    def _connect(self) -> object:
        if self._back_at is not None and time.monotonic() < self._back_at:
            return self._dead()  # raises HypervisorUnavailable, as for a dead daemon
        return self._real()

    def begin(self, seconds: float = 1e9) -> None:
        self._back_at = time.monotonic() + seconds

    def end(self) -> None:
        self._back_at = None


@pytest.fixture
def outage(td_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    td_ctx.settings = dataclasses.replace(td_ctx.settings, host_wait=0.8)
    yield Outage(td_ctx, monkeypatch)


def _host_goes_away_after(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    outage: Outage,
    seconds: float,
    then: Callable[[], None] = lambda: None,
) -> None:
    """After build step ``name`` did its work, the host stops answering for ``seconds``."""

    def wrap(step: steps.Step) -> steps.Step:
        if step.name != name:
            return step

        def do(b: steps.Build) -> None:
            step.do(b)
            outage.begin()
            then()  # looks while the host is away, however long that takes
            outage.begin(seconds)

        return dataclasses.replace(step, do=do)

    monkeypatch.setattr(provisioning, "STEPS", tuple(wrap(s) for s in provisioning.STEPS))


@pytest.mark.parametrize("after", ["define", "start"])  # "start": the DHCP entry is retried
def test_a_build_waits_for_its_host_and_goes_on_when_it_answers(
    td_ctx: Context, outage: Outage, monkeypatch: pytest.MonkeyPatch, after: str
) -> None:
    seen: list[str] = []

    def look() -> None:  # another process looks while the build waits for the host
        reconcile.run(td_ctx, holder="look")
        seen.append(json.loads(run_cli(td_ctx, "vps", "show", "web1", "--json").stdout)["state"])

    _host_goes_away_after(monkeypatch, after, outage, 0.6, then=look)  # < KVMVPS_HOST_WAIT
    uuid = orders.create(td_ctx, ORDER).uuid
    assert seen == ["unknown"]  # not "building": its host does not answer
    assert vps.show(td_ctx, uuid)["state"] == "unknown"  # until reconcile sees it back
    assert reconcile.run(td_ctx).errors == []
    shown = vps.show(td_ctx, uuid)
    assert shown["state"] == "running" and shown["error"] is None
    found = leftovers(td_ctx)
    assert found["domains"] == [shown["domain"]] and found["IpLease"] == 1
    assert [(e.mac, e.ip) for e in found["dhcp"]] == [(shown["mac"], shown["ip"])]
    with td_ctx.db.session() as s:
        assert s.scalar(select(Vps.rollback_pending)) is False
        assert s.scalar(select(Host.down_since)) is None  # back in service


def test_a_build_whose_host_stays_away_fails_and_reconcile_rolls_it_back_later(
    td_ctx: Context, outage: Outage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host_goes_away_after(monkeypatch, "start", outage, 1e9)
    with pytest.raises(StepFailed, match="rolled back when the host answers again"):
        orders.create(td_ctx, ORDER)
    with td_ctx.db.session() as s:
        row = s.scalars(select(Vps)).one()
        assert (row.state, row.rollback_pending) == (VpsState.ERROR, True)
        assert row.pending_password is None
        held = (row.ip, row.mac, row.pinned_cpus)
        assert row.ip and row.pinned_cpus  # kept: the half-made guest may still run there
        job = s.scalars(select(Job)).one()
        assert job.state == JobState.FAILED and "does not answer" in (job.error or "")
    # while it is away, reconcile marks the host down and leaves the VPS alone
    report = reconcile.run(td_ctx)
    assert report.errors and not report.rolled_back
    with td_ctx.db.session() as s:
        assert s.scalar(select(Host.down_since)) is not None
        assert s.scalar(select(IpLease.vps_id).where(IpLease.address == held[0])) is not None
    outage.end()
    report = reconcile.run(td_ctx)
    assert [r["hostname"] for r in report.rolled_back] == ["web1"], report
    assert leftovers(td_ctx) == EMPTY
    with td_ctx.db.session() as s:
        row = s.scalars(select(Vps)).one()
        assert (row.state, row.rollback_pending, row.ip, row.mac) == ("error", False, None, None)
        assert row.error and row.error.endswith("rolled back once its host answered again")
        assert s.scalar(select(Host.down_since)) is None
    assert reconcile.run(td_ctx).rolled_back == []  # once


def test_a_reinstall_of_a_vps_waiting_for_its_rollback_clears_it(
    td_ctx: Context, outage: Outage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host_goes_away_after(monkeypatch, "start", outage, 1e9)
    with pytest.raises(StepFailed):
        orders.create(td_ctx, ORDER)
    outage.end()
    monkeypatch.setattr(provisioning, "STEPS", REAL_STEPS)
    with td_ctx.db.session() as s:
        uuid = s.scalars(select(Vps.uuid)).one()
    provisioning.reinstall(td_ctx, uuid)
    assert reconcile.run(td_ctx).rolled_back == []  # nothing to undo: it was built again
    assert vps.show(td_ctx, uuid)["state"] == "running"


def _running(ctx: Context) -> str:
    return orders.create(ctx, ORDER).uuid


def _queue(ctx: Context, kind: str, uuid: str) -> str:
    with ctx.db.session() as s:
        host_id = s.scalar(select(Vps.host_id).where(Vps.uuid == uuid))
        return jobs.enqueue(s, kind, uuid, host_id).uuid


def _run(ctx: Context, job: str) -> dict:
    assert runner.run_inline(ctx, job)
    return dict(jobs.get_job(ctx, job))


def test_power_jobs_wait_for_their_host_then_go_on_or_fail_cleanly(
    td_ctx: Context, outage: Outage
) -> None:
    uuid = _running(td_ctx)
    outage.begin(0.4)  # back within KVMVPS_HOST_WAIT: the job goes on
    done = _run(td_ctx, _queue(td_ctx, "destroy", uuid))
    assert done["state"] == JobState.SUCCEEDED, done
    assert vps.show(td_ctx, uuid)["state"] == "stopped"
    job = _queue(td_ctx, "start", uuid)
    before = snapshot(td_ctx)
    outage.begin()  # away for good
    started = time.monotonic()
    done = _run(td_ctx, job)
    assert time.monotonic() - started >= 0.8  # KVMVPS_HOST_WAIT of this test
    assert done["state"] == JobState.FAILED
    assert done["error"].startswith("host ") and "did not answer for 0.8 s" in done["error"]
    assert "\n" not in done["error"]
    outage.end()
    after = snapshot(td_ctx)
    assert after[1] == before[1]  # nothing changed in libvirt, nor in the database but the job
    assert {k: v for k, v in after[0].items() if k != "jobs"} == {
        k: v for k, v in before[0].items() if k != "jobs"
    }
    assert vps.sync_state(td_ctx, uuid)["state"] == "stopped"


@pytest.mark.parametrize("bad", ["-1", "3601", "nan", "inf", "soon", "1e400"])
def test_a_bad_host_wait_is_one_line(bad: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_settings({"KVMVPS_HOST_WAIT": bad})
    assert "KVMVPS_HOST_WAIT" in str(caught.value) and "\n" not in str(caught.value)


def test_an_order_pinned_to_a_host_that_is_down_changes_nothing(
    td_ctx: Context, outage: Outage
) -> None:
    outage.begin()
    reconcile.run(td_ctx)  # marks it down; it stays so until the next pass
    outage.end()
    before = snapshot(td_ctx)
    with td_ctx.db.session() as s:
        host = s.scalars(select(Host.name)).one()
        vpses = s.scalar(select(func.count()).select_from(Vps))
    refused = run_cli(
        td_ctx, "vps", "create", "--plan", "small", "--image", "base", "--hostname", "x1",
        "--host", host,
    )  # fmt: skip
    assert refused.exit_code == 1 and "not answering" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert snapshot(td_ctx) == before
    with td_ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Vps)) == vpses


def test_customers_read_that_the_host_is_away_not_that_all_was_undone() -> None:
    waiting = (
        "building web1 failed at step 'start': libvirt is unavailable; its host does not "
        "answer: it is rolled back when the host answers again"
    )
    said = failures.plain(waiting, "create")
    assert said is not None and "Nothing was left half-made" not in said
    assert said.startswith("The server did not start.") and "cleaned up" in said
    power = failures.plain("host hv2 did not answer for 300 s: libvirt is unavailable", "reboot")
    assert power == f"The server did not reboot. {failures.HOST_DID_NOT_ANSWER}"
    assert "hv2" not in power and "libvirt" not in power
