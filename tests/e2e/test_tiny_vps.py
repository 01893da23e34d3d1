"""A real VPS from the tiny image on the real libvirtd: boots, answers SSH, goes away."""

from __future__ import annotations

import json
import logging
from ipaddress import ip_address, ip_network
from pathlib import Path

import paramiko
import pytest

from kvmvps.services import Context
from tests.badinput import create_args, run_cli
from tests.guestcheck import (
    customer_keypair,
    domstate,
    keygen_fingerprint,
    openssh,
    paramiko_client,
    scanned_host_key,
)
from tests.snapshots import libvirt_snapshot
from tests.tools import assert_no_trace

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]


def create(ctx: Context, hostname: str, *extra: str) -> dict:
    result = run_cli(ctx, *create_args("small", "tiny", hostname, *extra))
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def tiny_plan(real_ctx: Context, tiny_image: str) -> str:
    from kvmvps.services import inventory

    if "small" not in [p.name for p in inventory.list_plans(real_ctx)]:
        inventory.add_plan(real_ctx, "small", 1, 256, 1)
    return "small"


def test_tiny_vps_end_to_end(
    real_ctx: Context,
    tiny_plan: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    before = libvirt_snapshot(real_ctx)
    key_path, pubkey = customer_keypair(tmp_path)
    vps = create(real_ctx, "web1", "--ssh-key", f"{key_path}.pub")
    password, ip = vps["password"], vps["ip"]
    assert vps["state"] == "running" and len(password) >= 16
    assert ip_address(ip) in ip_network(real_ctx.settings.network_subnet)
    assert vps["ssh_host"] == ip and vps["ssh_port"] == 22
    assert domstate(vps["domain"]) == "running"

    # the guest took the address we allocated and serves the key we pinned
    served = scanned_host_key(ip)
    assert keygen_fingerprint(served, tmp_path) == vps["host_key_fingerprint"]

    # paramiko: the shown password works, a wrong one does not, the customer key works
    client = paramiko_client(ip, 22, served, vps["username"], password=password)
    _, out, _ = client.exec_command("hostname")
    assert out.read().decode().strip() == "web1"
    client.close()
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(ip, 22, served, vps["username"], password=password + "x")
    client = paramiko_client(ip, 22, served, vps["username"], key_filename=str(key_path))
    client.close()

    # the stock OpenSSH client agrees
    ok = openssh(tmp_path, ip, 22, served, vps["username"], "hostname", password=password)
    assert ok.returncode == 0 and ok.stdout.strip() == "web1", ok.stderr
    bad = openssh(tmp_path, ip, 22, served, vps["username"], "true", password="wrong-password")
    assert bad.returncode != 0
    by_key = openssh(
        tmp_path, ip, 22, served, vps["username"], "cat ~/.ssh/authorized_keys", identity=key_path
    )
    assert by_key.returncode == 0 and by_key.stdout.strip() == pubkey

    # show never shows the password again
    shown = json.loads(run_cli(real_ctx, "vps", "show", "web1", "--json").stdout)
    assert "password" not in shown and shown["host_key_fingerprint"] == vps["host_key_fingerprint"]

    # no trace of the password anywhere under the state dir, nor in any log
    assert_no_trace(real_ctx.settings.state_dir, password)
    captured = capfd.readouterr()
    assert password not in caplog.text
    assert password not in captured.err

    deleted = run_cli(real_ctx, "vps", "delete", "web1", "--yes")
    assert deleted.exit_code == 0, deleted.stderr
    assert libvirt_snapshot(real_ctx) == before
    assert not Path(real_ctx.settings.console_dir, f"{vps['domain']}.log").exists()


def test_password_reset_and_host_key_mismatch(
    real_ctx: Context, tiny_plan: str, tmp_path: Path
) -> None:
    vps = create(real_ctx, "resetme")
    reset = run_cli(real_ctx, "vps", "password-reset", "resetme", "--json")
    assert reset.exit_code == 0, reset.stderr
    new_password = json.loads(reset.stdout)["password"]
    assert new_password != vps["password"]
    served = scanned_host_key(vps["ip"])
    assert (
        openssh(tmp_path, vps["ip"], 22, served, "vps", "true", password=new_password).returncode
        == 0
    )
    assert (
        openssh(tmp_path, vps["ip"], 22, served, "vps", "true", password=vps["password"]).returncode
        != 0
    )

    # pin a different key: kvmvps must refuse to connect and record why
    from sqlalchemy import update

    from kvmvps.models import Vps

    _other_path, other = customer_keypair(tmp_path)
    with real_ctx.db.session() as s:
        s.execute(update(Vps).where(Vps.uuid == vps["id"]).values(host_key=other))
    refused = run_cli(real_ctx, "vps", "password-reset", "resetme")
    assert refused.exit_code == 1 and "not the pinned" in refused.stderr
    shown = json.loads(run_cli(real_ctx, "vps", "show", "resetme", "--json").stdout)
    assert shown["state"] == "error" and "refusing to connect" in shown["error"]
    assert run_cli(real_ctx, "vps", "delete", "resetme", "--yes").exit_code == 0
