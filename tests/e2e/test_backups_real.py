"""Backups and snapshots on the real libvirtd: a running tiny guest snapshotted and
reverted, backed up, changed, restored, and restored again as a new VPS."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kvmvps import guest
from kvmvps.services import Context, inventory
from tests.badinput import create_args, run_cli
from tests.guestcheck import paramiko_client, scanned_host_key
from tests.tools import needs

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]


def ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args, "--json")
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def ssh(vps: dict, password: str, command: str) -> str:
    guest.wait_for_ssh_banner(vps["ip"], 22, time.monotonic() + 180)  # a busy host boots slowly
    client = paramiko_client(vps["ip"], 22, scanned_host_key(vps["ip"]), "vps", password=password)
    try:
        _, out, _ = client.exec_command(command)
        return out.read().decode().strip()
    finally:
        client.close()


@needs(shutil.which("e2fsck") is not None, "e2fsck (e2fsprogs) checks the backed-up filesystem")
def test_backup_running_change_restore(real_ctx: Context, tiny_image: str, tmp_path: Path) -> None:
    if "small" not in [p.name for p in inventory.list_plans(real_ctx)]:
        inventory.add_plan(real_ctx, "small", 1, 256, 1)
    vps = ok(real_ctx, *[a for a in create_args("small", "tiny", "bk1") if a != "--json"])
    password, fingerprint = vps["password"], vps["host_key_fingerprint"]
    assert ssh(vps, password, "echo before > marker && sync && cat marker") == "before"

    # a snapshot of the running guest (with its memory); the marker deleted, then reverted
    ok(real_ctx, "plan", "snapshots", "small", "--limit", "1")
    snap = ok(real_ctx, "vps", "snapshot", "create", "bk1", "--label", "before upgrade")
    assert snap["state"] == "ready" and snap["with_memory"] is True
    assert ssh(vps, password, "rm marker && sync && ls marker 2>/dev/null || echo gone") == "gone"
    reverted = ok(real_ctx, "vps", "snapshot", "revert", "bk1", snap["id"][:8], "--yes")
    assert reverted["state"] == "running" and reverted["host_key_fingerprint"] == fingerprint
    assert ssh(vps, password, "cat marker") == "before"  # same password, same pinned key
    assert guest.fingerprint(scanned_host_key(vps["ip"])) == fingerprint
    assert run_cli(real_ctx, "vps", "snapshot", "delete", "bk1", snap["id"]).exit_code == 0
    assert ok(real_ctx, "vps", "snapshot", "list", "bk1") == []

    backup = ok(real_ctx, "vps", "backup", "create", "bk1")
    assert backup["state"] == "ready" and backup["consistency"] in ("crash", "frozen")
    root = real_ctx.settings.backup_path
    disk, meta = root / f"{backup['id']}.qcow2", root / f"{backup['id']}.json"
    assert json.loads(meta.read_text())["vps"] == vps["id"]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(disk)], capture_output=True, check=True
        ).stdout
    )
    assert info["format"] == "qcow2" and "backing-filename" not in info  # restorable by hand
    raw = tmp_path / "backup.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    # crash-consistent: what a power cut leaves. Its journal is replayed first, as any
    # mount of it does (without it, metadata the guest had committed to the journal but
    # not yet written in place reads as errors); then not one error may be left
    replay = subprocess.run(
        ["e2fsck", "-E", "journal_only", "-y", str(raw)], capture_output=True, text=True
    )
    assert replay.returncode in (0, 1), replay.stdout + replay.stderr  # 1: journal replayed
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    assert ssh(vps, password, "echo after > marker && touch extra && sync && cat marker") == "after"
    restored = ok(real_ctx, "vps", "backup", "restore", "bk1", backup["id"][:8], "--yes")
    assert restored["state"] == "running" and restored["ip"] == vps["ip"]
    assert restored["host_key_fingerprint"] == fingerprint
    # the old marker is back, the extra file gone; the same password and host key work
    assert ssh(vps, password, "cat marker; ls extra 2>/dev/null || echo gone") == "before\ngone"
    served = scanned_host_key(vps["ip"])
    assert guest.fingerprint(served) == fingerprint

    listed = ok(real_ctx, "vps", "backup", "list", "bk1")
    assert [b["id"] for b in listed] == [backup["id"]]
    deleted = run_cli(real_ctx, "vps", "delete", "bk1", "--yes")  # its backups are kept
    assert deleted.exit_code == 0, deleted.stderr
    assert disk.exists() and [b["id"] for b in ok(real_ctx, "vps", "backup", "list", "bk1")] == [
        backup["id"]
    ]

    # the kept backup of the deleted VPS becomes a new VPS with its own credentials
    new = ok(
        real_ctx,
        "vps",
        "backup",
        "restore",
        "bk1",
        backup["id"][:8],
        "--as-new",
        "bk2",
        "--plan",
        "small",
    )
    assert new["state"] == "running" and new["hostname"] == "bk2"
    assert new["password"] and new["password"] != password and new["id"] != vps["id"]
    assert ssh(new, new["password"], "cat marker; hostname") == "before\nbk2"
    assert guest.fingerprint(scanned_host_key(new["ip"])) == new["host_key_fingerprint"]
    gone = run_cli(real_ctx, "vps", "delete", "bk2", "--yes")
    assert gone.exit_code == 0, gone.stderr
    dropped = run_cli(real_ctx, "vps", "backup", "delete", "bk1", backup["id"])
    assert dropped.exit_code == 0, dropped.stderr
    assert not disk.exists() and not meta.exists()
