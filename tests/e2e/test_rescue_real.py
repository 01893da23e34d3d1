"""Rescue mode on a real tiny guest: OpenSSH is the witness, host keys pinned.

The customer's VPS boots the rescue system; root logs in there with the
one-time password (the rescue system's own host key), mounts the VPS's disk
(/dev/vdb) and writes a file. Back in its own system (its own pinned host key,
its own password) the file is there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from kvmvps import guest
from kvmvps.errors import GuestError
from kvmvps.models import Vps
from kvmvps.services import Context, reconcile
from kvmvps.services.facts import rescue_volume_of
from tests.badinput import assert_one_line_error, create_args, run_cli
from tests.guestcheck import domstate, openssh, virsh
from tests.tools import file_bytes

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

MARK = "written-in-rescue"
WRITE_MARKER = (
    "set -e; mkdir -p /tmp/own; mount /dev/vdb /tmp/own; cat /tmp/own/etc/hostname; "
    f"echo {MARK} > /tmp/own/etc/rescue-marker; chmod 644 /tmp/own/etc/rescue-marker; "
    "umount /tmp/own; readlink -f /dev/root 2>/dev/null; awk '$2 == \"/\" {print $1}' /proc/mounts"
)


def ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def _keys(ctx: Context, hostname: str) -> tuple[str, str | None]:
    with ctx.db.reading() as s:
        vps = s.scalars(select(Vps).where(Vps.hostname == hostname)).one()
        return vps.host_key or "", vps.rescue_host_key


def test_rescue_writes_a_file_the_own_system_then_sees(fresh_ctx: Context, tmp_path: Path) -> None:
    created = ok(fresh_ctx, *create_args(hostname="sick"))
    ip, user, own_password = created["ip"], created["username"], created["password"]
    own_key, _ = _keys(fresh_ctx, "sick")
    assert_one_line_error(run_cli(fresh_ctx, "vps", "rescue", "sick"), 1, "no rescue image")
    ok(fresh_ctx, "image", "edit", "base", "--rescue", "--json")

    rescued = ok(fresh_ctx, "vps", "rescue", "sick", "--json")
    password = rescued["password"]
    assert rescued["rescue"] is True and rescued["state"] == "running" and password
    own_after, rescue_key = _keys(fresh_ctx, "sick")
    assert own_after == own_key and rescue_key and rescue_key != own_key
    assert rescued["host_key_fingerprint"] == guest.fingerprint(own_key)
    assert rescued["rescue_host_key_fingerprint"] == guest.fingerprint(rescue_key)
    assert "-rescue.qcow2" in virsh("dumpxml", created["domain"])
    report = reconcile.run(fresh_ctx)  # a rescued VPS is neither drift nor an orphan
    assert report.drift == [] and report.orphan_volumes == [] and report.clean, report

    in_rescue = openssh(tmp_path, ip, 22, rescue_key, "root", WRITE_MARKER, password=password)
    assert in_rescue.returncode == 0, in_rescue.stderr
    assert in_rescue.stdout.split()[0] == "sick"  # vdb is the VPS's own disk
    assert in_rescue.stdout.split()[-1] == "/dev/vda"  # and the rescue system runs from vda
    wrong = openssh(tmp_path, ip, 22, own_key, "root", "true", password=password)
    assert wrong.returncode != 0 and "host key" in wrong.stderr.lower()
    assert_one_line_error(run_cli(fresh_ctx, "vps", "password-reset", "sick"), 1, "rescue mode")

    back = ok(fresh_ctx, "vps", "unrescue", "sick", "--json")
    assert back["rescue"] is False and back["rescue_host_key_fingerprint"] is None
    assert back["host_key_fingerprint"] == guest.fingerprint(own_key)
    assert _keys(fresh_ctx, "sick") == (own_key, None)
    hv = fresh_ctx.hypervisor(fresh_ctx.settings.libvirt_uri)
    assert not hv.volume_exists(fresh_ctx.settings.storage_pool, rescue_volume_of(back["domain"]))
    assert "-rescue.qcow2" not in virsh("dumpxml", back["domain"])
    assert domstate(back["domain"]) == "running"

    console = Path(fresh_ctx.settings.console_dir) / f"{back['domain']}.log"
    try:
        guest.wait_for_ssh_banner(ip, 22, time.monotonic() + 300)
    except GuestError:
        pytest.fail("own system never answered SSH; its console:\n" + file_bytes(console).decode())
    own = openssh(tmp_path, ip, 22, own_key, user, "cat /etc/rescue-marker", password=own_password)
    assert own.returncode == 0, own.stderr
    assert own.stdout.strip() == MARK
