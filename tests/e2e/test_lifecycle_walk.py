"""One VPS walked through its whole life with kvmvps-admin; virsh is the witness."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from kvmvps.services import Context
from tests.badinput import create_args, run_cli
from tests.guestcheck import domstate

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

# kvmvps state -> what `virsh domstate` says
WITNESS = {"running": "running", "stopped": "shut off", "suspended": "paused"}


def step(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def agree(ctx: Context, domain: str, expected: str) -> None:
    shown = step(ctx, "vps", "show", "walker", "--json")
    assert shown["state"] == expected
    assert domstate(domain) == WITNESS[expected]


def answers_ping(address: str, seconds: float) -> bool:
    """Whether ``address`` answers an ICMP echo within ``seconds`` (polled, 1 s a try)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ping = ["busybox", "ping", "-c", "1", "-W", "1", address]
        if subprocess.run(ping, capture_output=True).returncode == 0:
            return True
    return False


def test_walk(fresh_ctx: Context) -> None:
    created = step(fresh_ctx, *create_args(hostname="walker"))
    domain, first_password = created["domain"], created["password"]
    agree(fresh_ctx, domain, "running")
    walk = [
        (("vps", "shutdown", "walker", "--timeout", "60", "--json"), "stopped"),
        (("vps", "start", "walker", "--json"), "running"),
        (("vps", "pause", "walker", "--json"), "suspended"),
        (("vps", "resume", "walker", "--json"), "running"),
        (("vps", "reboot", "walker", "--json"), "running"),
        (("vps", "destroy", "walker", "--json"), "stopped"),
        (("vps", "start", "walker", "--json"), "running"),
    ]
    for args, expected in walk:
        assert step(fresh_ctx, *args)["state"] == expected, args
        agree(fresh_ctx, domain, expected)
    # after a power cycle the guest's boot script put its fixed IPv6 address back
    assert created["ipv6"] and answers_ping(created["ipv6"], 90), created["ipv6"]
    reinstalled = step(fresh_ctx, "vps", "reinstall", "walker", "--yes", "--json")
    assert reinstalled["state"] == "running" and reinstalled["password"] != first_password
    assert reinstalled["host_key_fingerprint"] != created["host_key_fingerprint"]
    agree(fresh_ctx, domain, "running")
    deleted = run_cli(fresh_ctx, "vps", "delete", "walker", "--yes")
    assert deleted.exit_code == 0, deleted.stderr
    gone = subprocess.run(["virsh", "-q", "domstate", domain], capture_output=True, text=True)
    assert gone.returncode != 0 and "failed to get domain" in gone.stderr
    assert run_cli(fresh_ctx, "vps", "show", "walker").exit_code == 2
