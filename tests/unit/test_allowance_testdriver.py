"""The monthly transfer allowance enforced: notices, throttle, suspension, lifting.

On libvirt's test driver with SQLite and PostgreSQL; mail goes to a real SMTP
server (aiosmtpd) on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree
from sqlalchemy import select

from kvmvps.hypervisor import DomainStats
from kvmvps.models import AuditEntry, Job, TransferMonth, Vps
from kvmvps.services import Context, allowance, metering, reconcile, suspension, tuning
from kvmvps.services.usage import GIB
from tests.badinput import assert_one_line_error, create_args, run_cli
from tests.snapshots import snapshot
from tests.web.test_account_self import Mailbox
from tests.web.test_account_self import mailbox as mailbox

ZERO = dict.fromkeys(metering.COUNTERS, 0)
PLAN = ("--vcpus", "1", "--memory-mib", "256", "--disk-gib", "1", "--transfer-gib", "1")


def ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args, "--json")
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture
def mail_td(td_ctx: Context, mailbox: tuple[Mailbox, int]) -> Iterator[Context]:
    """A second process's view of the installation, with SMTP configured."""
    settings = dataclasses.replace(
        td_ctx.settings, smtp_host="127.0.0.1", smtp_port=mailbox[1], smtp_starttls=0
    )
    ctx = Context(settings)
    yield ctx
    ctx.close()


def use(ctx: Context, vps: dict, total_bytes: int, now: datetime, instance: int = 1) -> None:
    """The guest's counters read ``total_bytes`` received since it started."""
    with ctx.db.reading() as s:
        host_id = s.scalars(select(Vps.host_id).where(Vps.uuid == vps["id"])).one()
    st = DomainStats(name=vps["domain"], instance=instance, memory_kib=1, **ZERO)
    metering.record(ctx, host_id, [dataclasses.replace(st, rx_bytes=total_bytes)], now)


def bandwidth(ctx: Context, domain: str, inactive: bool) -> dict[str, str | None]:
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    root = etree.fromstring(hv.domain_xml(domain, inactive=inactive).encode())
    nic = root.find("devices/interface")
    out = {}
    for way in ("inbound", "outbound"):
        node = nic.find(f"bandwidth/{way}")
        out[way] = None if node is None else node.get("average")
    return out


def actions(ctx: Context, uuid: str) -> list[tuple[str, str, str]]:
    with ctx.db.reading() as s:
        rows = s.scalars(
            select(AuditEntry).where(AuditEntry.target == uuid).order_by(AuditEntry.id)
        )
        return [(e.action, e.actor, e.result) for e in rows]


def test_throttle_holds_through_restart_edit_reconcile_and_lifts_on_reset(
    td_ctx: Context, mail_td: Context, mailbox: tuple[Mailbox, int]
) -> None:
    box = mailbox[0]
    ok(td_ctx, "plan", "add", "metered", *PLAN, "--over-limit-kibps", "64", "--net-in-kibps", "900")
    vps = ok(td_ctx, *create_args(plan="metered"))
    now = datetime.now(UTC)
    assert bandwidth(td_ctx, vps["domain"], False) == {"inbound": "900", "outbound": None}

    use(td_ctx, vps, int(0.85 * GIB), now)
    assert allowance.enforce(mail_td, now).notified == ["web1: 80 %"]
    # a restarted worker, and a second one: the 80 % notice is not sent again
    assert allowance.enforce(mail_td, now).notified == []
    assert allowance.enforce(td_ctx, now).notified == []
    assert len(box.wait(1)) == 1
    assert bandwidth(td_ctx, vps["domain"], False)["inbound"] == "900"  # not yet over

    use(td_ctx, vps, int(1.1 * GIB), now)
    report = allowance.enforce(mail_td, now)
    assert (report.notified, report.throttled, report.errors) == (["web1: 100 %"], ["web1"], [])
    mails = box.wait(2)
    assert len(mails) == 2 and "held to 64 KiB/s" in mails[1][1]
    held = {"inbound": "64", "outbound": "64"}
    assert bandwidth(td_ctx, vps["domain"], False) == held  # live
    assert bandwidth(td_ctx, vps["domain"], True) == held  # and the next start
    shown = ok(td_ctx, "vps", "show", "web1")
    assert shown["id"] == vps["id"]

    # the customer stops and starts it, an operator edits the plan, reconcile runs
    ok(td_ctx, "vps", "destroy", "web1")
    ok(td_ctx, "vps", "start", "web1")
    assert bandwidth(td_ctx, vps["domain"], False) == held
    tuning.edit_plan(td_ctx, "metered", {"net_in_kibps": 2000}, actor="os:test")
    assert bandwidth(td_ctx, vps["domain"], False) == held
    reconcile.run(td_ctx)
    assert bandwidth(td_ctx, vps["domain"], False) == held
    assert allowance.enforce(td_ctx, now).throttled == []  # held once, not again

    done = ok(td_ctx, "vps", "transfer-reset", "web1")
    assert done["was_bytes"] == int(1.1 * GIB) and done["lifted"] == ["web1: throttle"]
    # back to the plan's own limits (as edited meanwhile), live and in the definition
    assert bandwidth(td_ctx, vps["domain"], False) == {"inbound": "2000", "outbound": None}
    assert bandwidth(td_ctx, vps["domain"], True) == {"inbound": "2000", "outbound": None}
    trail = actions(td_ctx, vps["id"])
    assert [a for a in trail if a[1] == allowance.ACTOR] == [
        ("vps.transfer_notice", allowance.ACTOR, "ok"),
        ("vps.transfer_notice", allowance.ACTOR, "ok"),
        ("vps.throttle", allowance.ACTOR, "ok"),
        ("vps.unthrottle", allowance.ACTOR, "ok"),
    ]
    assert len(box.wait(2, timeout=0.2)) == 2  # nothing more was sent


def test_suspension_over_the_allowance_lifts_in_a_new_month_an_operators_stays(
    td_ctx: Context,
) -> None:
    ok(td_ctx, "plan", "add", "strict", *PLAN, "--over-limit", "suspend")
    mine = ok(td_ctx, *create_args(plan="strict", hostname="mine"))
    theirs = ok(td_ctx, *create_args(plan="strict", hostname="theirs"))
    now = datetime.now(UTC)
    suspension.suspend(td_ctx, "theirs", "unpaid invoice", actor="user:ops@example.com")
    for vps in (mine, theirs):
        use(td_ctx, vps, 2 * GIB, now)
    report = allowance.enforce(td_ctx, now)
    assert report.suspended == ["mine"] and report.errors == []
    shown = ok(td_ctx, "vps", "show", "mine")
    assert shown["suspended_reason"].startswith("monthly transfer allowance used up")
    with td_ctx.db.reading() as s:
        kinds = list(s.scalars(select(Job.kind).where(Job.vps_uuid == mine["id"])))
        assert "suspend" in kinds
    # a customer action is refused while held
    assert_one_line_error(run_cli(td_ctx, "vps", "reboot", "mine"), 1, "suspended")

    next_month = (now.replace(day=1) + timedelta(days=32)).replace(day=2)
    report = allowance.enforce(td_ctx, next_month)
    assert report.lifted == ["mine: suspension"]
    assert ok(td_ctx, "vps", "show", "mine")["suspended_reason"] is None
    assert ok(td_ctx, "vps", "show", "theirs")["suspended_reason"] == "unpaid invoice"
    assert ("vps.unsuspend", allowance.ACTOR, "ok") in actions(td_ctx, mine["id"])


def test_a_month_that_ended_meanwhile_holds_nothing_two_workers_act_once(
    td_ctx: Context, mail_td: Context
) -> None:
    ok(td_ctx, "plan", "add", "metered", *PLAN)
    vps = ok(td_ctx, *create_args(plan="metered"))
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = start - timedelta(minutes=1)
    use(td_ctx, vps, 2 * GIB, last_month)
    report = allowance.enforce(td_ctx, last_month)  # a round that began before midnight
    assert report.throttled == []
    with td_ctx.db.reading() as s:
        assert s.scalars(select(Vps.throttle_kibps)).one() is None
        assert s.scalars(select(TransferMonth.enforced)).one() is None
    assert bandwidth(td_ctx, vps["domain"], False) == {"inbound": None, "outbound": None}

    now = datetime.now(UTC)
    use(td_ctx, vps, 3 * GIB, now, instance=2)
    other = Context(td_ctx.settings)
    reports: list[allowance.Report] = []
    workers = [
        threading.Thread(target=lambda c=c: reports.append(allowance.enforce(c, now)))
        for c in (mail_td, other)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    other.close()
    assert sum(len(r.throttled) for r in reports) == 1
    assert sum(len(r.notified) for r in reports) == 1
    mine = [a for a in actions(td_ctx, vps["id"]) if a[1] == allowance.ACTOR]
    assert sorted(mine) == [  # last month's notice, then this month's notice and hold
        ("vps.throttle", allowance.ACTOR, "ok"),
        ("vps.transfer_notice", allowance.ACTOR, "ok"),
        ("vps.transfer_notice", allowance.ACTOR, "ok"),
    ]


def test_bad_over_limit_changes_nothing(td_ctx: Context) -> None:
    before = snapshot(td_ctx)
    for extra, fragment in (
        (["--over-limit", "ignore"], "--over-limit"),
        (["--over-limit-kibps", "0"], "over-limit speed"),
        (["--over-limit-kibps", str(1 << 40)], "over-limit speed"),
        (["--over-limit-kibps", "12\x1b[2J"], "--over-limit-kibps"),
    ):
        assert_one_line_error(run_cli(td_ctx, "plan", "add", "bad", *PLAN, *extra), 2, fragment)
    assert snapshot(td_ctx) == before
