"""``vps resize`` on the real libvirtd: vCPUs, memory and a grown qcow2 overlay."""

from __future__ import annotations

import json
import re
import subprocess

import paramiko
import pytest

from kvmvps.errors import HypervisorError
from kvmvps.hypervisor import Hypervisor
from kvmvps.services import Context, inventory, vps_extra
from kvmvps.services.runner import run_inline
from kvmvps.storage import GIB
from tests.badinput import assert_one_line_error, create_args, run_cli
from tests.conftest import REAL_URI
from tests.guestcheck import paramiko_client, scanned_host_key
from tests.snapshots import snapshot

pytestmark = pytest.mark.libvirt


def ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args, "--json")
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", REAL_URI, *args], capture_output=True, text=True, check=True
    ).stdout


def field(text: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}:\s+(.+)$", text, re.MULTILINE)
    assert match, (name, text)
    return match.group(1).strip()


def volume_bytes(ctx: Context, volume: str) -> int:
    info = virsh("vol-info", "--bytes", "--pool", ctx.settings.storage_pool, volume)
    return int(field(info, "Capacity").split()[0])


def stopped_vps(ctx: Context) -> dict:
    created = ok(ctx, *[a for a in create_args() if a != "--json"])
    assert created["state"] == "running"
    assert ok(ctx, "vps", "destroy", "web1")["state"] == "stopped"
    return created


def test_resize_stopped_vps_then_start(fresh_ctx: Context) -> None:
    vps = stopped_vps(fresh_ctx)
    domain, volume = vps["domain"], f"{vps['domain']}.qcow2"
    assert volume_bytes(fresh_ctx, volume) == 1 * GIB
    inventory.add_plan(fresh_ctx, "bigger", 2, 512, 2)

    view = ok(fresh_ctx, "vps", "resize", "web1", "--plan", "bigger")
    assert (view["vcpus"], view["memory_mib"], view["disk_gib"]) == (2, 512, 2)
    assert len(view["pinned_cpus"]) == 2

    info = virsh("dominfo", domain)
    assert field(info, "CPU(s)") == "2"
    assert field(info, "Max memory") == f"{512 * 1024} KiB"
    assert field(info, "State") == "shut off"
    assert volume_bytes(fresh_ctx, volume) == 2 * GIB
    pins = virsh("vcpupin", domain, "--config")
    assert len(re.findall(r"^\s*\d+\s+\S+", pins, re.MULTILINE)) == 2

    assert ok(fresh_ctx, "vps", "start", "web1")["state"] == "running"
    assert field(virsh("dominfo", domain), "State") == "running"


def test_failed_grow_restores_the_definition(
    fresh_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirt's own XML of the old definition goes back when growing the disk fails."""
    vps = stopped_vps(fresh_ctx)
    inventory.add_plan(fresh_ctx, "bigger", 2, 512, 2)
    before = snapshot(fresh_ctx), virsh("dumpxml", "--inactive", vps["domain"])

    def broken(self: Hypervisor, pool: str, name: str, size: int) -> None:
        raise HypervisorError(f"resize volume {name}: injected failure")

    monkeypatch.setattr(Hypervisor, "resize_volume", broken)
    result = run_cli(fresh_ctx, "vps", "resize", "web1", "--plan", "bigger")
    assert_one_line_error(result, 1, "injected failure")
    assert (snapshot(fresh_ctx), virsh("dumpxml", "--inactive", vps["domain"])) == before
    assert volume_bytes(fresh_ctx, f"{vps['domain']}.qcow2") == 1 * GIB
    assert_one_line_error(
        run_cli(fresh_ctx, "vps", "resize", "web1", "--plan", "small"),
        2,
        "already has plan 'small'",
    )


def guest_root_kib(client: paramiko.SSHClient, at_least_kib: int = 0) -> int:
    """The size of the guest's root filesystem, as ``df`` in the guest says (KiB); with
    ``at_least_kib``, once it is that large or after 60 s (polled in the guest, one channel)."""
    size = "$(df -k / | awk 'NR==2 {print $2}')"
    wait = f"i=0; while [ {size} -lt {at_least_kib} ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done"
    _, out, _ = client.exec_command(f"{wait}; df -k /")
    return int(out.read().decode().split("\n")[1].split()[1])


def test_tiny_root_fills_its_disk_and_grows_live(fresh_ctx: Context) -> None:
    """A new tiny VPS's / is its plan's disk; a resize of the running VPS (the customer's
    queued job, run by the worker's code) grows the disk and the guest's / at once."""
    created = ok(fresh_ctx, *[a for a in create_args() if a != "--json"])
    served = scanned_host_key(created["ip"])
    client = paramiko_client(
        created["ip"], 22, served, created["username"], password=created["password"]
    )
    try:
        # grown at boot, in the background (sshd does not wait for it)
        assert 0.9 * GIB / 1024 < guest_root_kib(client, int(0.9 * GIB / 1024)) <= GIB / 1024
        inventory.add_plan(fresh_ctx, "deeper", 1, 256, 2)
        asked = vps_extra.request_resize(fresh_ctx, "web1", "deeper", owner_id=None)
        assert asked.note == "the disk grows now, its filesystem with it"
        assert run_inline(fresh_ctx, asked.job)
        assert volume_bytes(fresh_ctx, f"{created['domain']}.qcow2") == 2 * GIB
        grown = guest_root_kib(client, int(1.9 * GIB / 1024))
        assert 1.9 * GIB / 1024 < grown <= 2 * GIB / 1024
    finally:
        client.close()
    assert field(virsh("dominfo", created["domain"]), "State") == "running"
    shown = ok(fresh_ctx, "vps", "show", "web1")
    assert (shown["plan"], shown["disk_gib"]) == ("deeper", 2)
    refused = run_cli(fresh_ctx, "vps", "resize", "web1", "--plan", "small")
    assert_one_line_error(refused, 2, "a disk cannot shrink: plan 'small' has 1 GiB")
