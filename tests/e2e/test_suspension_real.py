"""A suspension on the real libvirtd survives a "host reboot" and a ``virsh start`` behind
kvmvps's back: reconcile pauses the guest again. virsh is the witness.
"""

from __future__ import annotations

import json

import pytest

from kvmvps.services import Context, reconcile
from tests.badinput import assert_one_line_error, create_args, run_cli
from tests.guestcheck import domstate, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

REASON = "abuse report 7"


def ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def test_suspension_holds_through_reboot_and_virsh_start(fresh_ctx: Context) -> None:
    created = ok(fresh_ctx, *create_args(hostname="held"))
    domain = created["domain"]
    shown = ok(fresh_ctx, "vps", "suspend", "held", "--reason", REASON, "--json")
    assert shown["state"] == "suspended" and shown["suspended_reason"] == REASON
    assert domstate(domain) == "paused"

    virsh("destroy", domain)  # the host goes down...
    report = reconcile.run(fresh_ctx)
    assert [d["to"] for d in report.drift] == ["stopped"]
    shown = ok(fresh_ctx, "vps", "show", "held", "--json")
    assert shown["state"] == "stopped" and shown["suspended_reason"] == REASON

    virsh("start", domain)  # ...and comes back with the guest autostarted
    assert domstate(domain) == "running"
    report = reconcile.run(fresh_ctx)
    assert [h["hostname"] for h in report.held] == ["held"]
    assert domstate(domain) == "paused"
    assert ok(fresh_ctx, "vps", "show", "held", "--json")["state"] == "suspended"

    for args in (("start",), ("resume",), ("reboot",), ("reinstall", "--yes")):
        assert_one_line_error(run_cli(fresh_ctx, "vps", *args[:1], "held", *args[1:]), 1, REASON)
    assert domstate(domain) == "paused"

    lifted = ok(fresh_ctx, "vps", "unsuspend", "held", "--json")
    assert lifted["state"] == "running" and lifted["suspended_reason"] is None
    assert domstate(domain) == "running"
