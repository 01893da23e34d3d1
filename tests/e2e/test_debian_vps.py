"""Real Debian 12 VPSes (systemd, OpenSSH, cloud-init) on the real libvirtd.

The image's default kind (cloud-init installed but off: the host key read from
the console) gets the whole walk; the cloud-init kind (the seed's host key)
gets an order, a look at what cloud-init did, and a password login.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paramiko
import pytest

from kvmvps import keys
from kvmvps.config import resolve_domain_type
from kvmvps.services import Context, inventory, vps_extra
from kvmvps.services.runner import run_inline
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

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def debian(real_ctx: Context, debian_image: str) -> str:
    if "deb" not in [p.name for p in inventory.list_plans(real_ctx)]:
        inventory.add_plan(real_ctx, "deb", 1, 512, 2)
    return debian_image


def _order(
    real_ctx: Context, image: str, hostname: str, tmp_path: Path, *extra: str
) -> tuple[dict[str, Any], str]:
    """Order a VPS through the CLI; its ``vps create`` JSON and the host key it serves,
    checked to be the one kvmvps pinned."""
    # a deadline, not a speed check (bench/provision.py --debian measures): an emulated
    # systemd boot on a busy two-core machine can take longer than the default two minutes
    result = run_cli(
        real_ctx,
        *create_args("deb", image, hostname, *extra),
        extra_env={"KVMVPS_SSH_TIMEOUT": "300"},
    )
    assert result.exit_code == 0, result.stderr
    vps = json.loads(result.stdout)
    served = scanned_host_key(vps["ip"])
    assert keygen_fingerprint(served, tmp_path) == vps["host_key_fingerprint"]
    return vps, served


def test_debian_vps_end_to_end(real_ctx: Context, debian: str, tmp_path: Path) -> None:
    before = libvirt_snapshot(real_ctx)
    key_path, pubkey = customer_keypair(tmp_path)
    # the key the guest printed on its console at its first boot is the one it serves
    vps, served = _order(real_ctx, debian, "deb1", tmp_path, "--ssh-key", f"{key_path}.pub")
    ip, user, password = vps["ip"], vps["username"], vps["password"]
    assert vps["state"] == "running" and user == "debian" and len(password) >= 16
    assert domstate(vps["domain"]) == "running"

    # root (provisioning key) sees the hostname, the customer's key and the forced change
    root = paramiko_client(
        ip, 22, served, "root", key_filename=str(keys.provisioning_key_path(real_ctx.settings))
    )
    _, out, _ = root.exec_command(
        f"hostname; cat /home/{user}/.ssh/authorized_keys; chage -l {user} | head -1; "
        "systemctl is-active cloud-init-local.service cloud-init.service | sort -u; "
        "ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'"
    )
    hostname, authorized, last_change, cloud_init, host_keys = out.read().decode().splitlines()[:5]
    assert hostname == "deb1" and authorized == pubkey
    assert "password must be changed" in last_change
    # cloud-init stayed off; the first boot made two host keys (ed25519 and ECDSA)
    assert (cloud_init, host_keys) == ("inactive", "2")
    # sshd ran from kvmvps's copy of its unit, which does not wait for the network
    _, out, _ = root.exec_command(
        "systemctl show -P FragmentPath ssh.service; systemctl show -P After ssh.service; "
        "systemctl is-active ssh.service systemd-networkd.service"
    )
    fragment, after, ssh_active, networking = out.read().decode().splitlines()[:4]
    assert fragment == "/etc/systemd/system/ssh.service"
    assert "network.target" not in after.split() and "auditd.service" in after.split()
    assert (ssh_active, networking) == ("active", "active")
    # under emulation its CPU offers no SVM, so its kernel loaded no kvm module
    _, out, _ = root.exec_command(
        "grep -cw svm /proc/cpuinfo || true; lsmod | grep -c '^kvm' || true"
    )
    svm, kvm_modules = out.read().decode().split()[:2]
    if resolve_domain_type(real_ctx.settings) == "qemu":
        assert (svm, kvm_modules) == ("0", "0")
    # the fixed IPv6 address is set now, and is networkd's: a restart of networkd (as an
    # upgrade of systemd makes, or a boot) puts it back; /etc/resolv.conf names the
    # lease's DNS server (the gateway's dnsmasq)
    assert vps["ipv6"]
    _, out, _ = root.exec_command(
        "ip -6 -o addr show dev eth0 scope global; ip -6 addr flush dev eth0 scope global; "
        "ip -6 -o addr show dev eth0 scope global | wc -l; systemctl restart systemd-networkd; "
        "for i in $(seq 50); do ip -6 -o addr show dev eth0 scope global | grep -q . && break; "
        "sleep 0.2; done; ip -6 -o addr show dev eth0 scope global; "
        "ip -6 route show default; ip -4 route show default; "
        f"grep -v '^#' /etc/resolv.conf; getent hosts {vps['domain']} || echo unresolved"
    )
    now, flushed, again, route6, route4, nameserver, resolved = out.read().decode().splitlines()[:7]
    assert f" {vps['ipv6']}/64 " in now and flushed == "0" and f" {vps['ipv6']}/64 " in again
    assert route6.startswith("default via ")
    assert nameserver == f"nameserver {route4.split()[2]}"
    assert resolved.split() == [ip, vps["domain"]]  # the name dnsmasq has from its DHCP entry
    # a line in /etc/kvmvps/ipv6 that is no address and gateway changes nothing
    dropin = "/etc/systemd/network/50-kvmvps-eth0.network.d/kvmvps-ipv6.conf"
    _, out, _ = root.exec_command(
        "cp /etc/kvmvps/ipv6 /root/ipv6.kept; "
        "printf '%s\\n' '$(touch /tmp/pwned)/64 fd00::1;x' > /etc/kvmvps/ipv6; "
        f"/usr/local/sbin/kvmvps-ipv6 2>&1; echo rc=$?; grep '^Address=' {dropin}; "
        "test -e /tmp/pwned; echo pwned=$?; mv /root/ipv6.kept /etc/kvmvps/ipv6"
    )
    refused, status, address, pwned = out.read().decode().splitlines()[:4]
    assert "not an IPv6 address" in refused and status == "rc=1" and pwned == "pwned=1"
    assert address == f"Address={vps['ipv6']}/64"

    # the customer moves to a plan with a bigger disk: it grows while the guest runs, and
    # the root filesystem with it (the image's udev rule), no reboot
    if "deb3" not in [p.name for p in inventory.list_plans(real_ctx)]:
        inventory.add_plan(real_ctx, "deb3", 1, 512, 3)
    asked = vps_extra.request_resize(real_ctx, "deb1", "deb3", owner_id=None)
    assert asked.note == "the disk grows now, its filesystem with it"
    assert run_inline(real_ctx, asked.job)
    size = "$(df -k / | awk 'NR==2 {print $2}')"
    _, out, _ = root.exec_command(
        f"i=0; while [ {size} -lt {int(2.9 * 2**20)} ] && [ $i -lt 300 ]; do "
        "sleep 0.2; i=$((i+1)); done; df -k / | awk 'NR==2 {print $2}'"
    )
    grown = int(out.read().decode().split()[0])
    root.close()
    assert 2.9 * 2**20 < grown <= 3 * 2**20, grown

    # the shown password authenticates (paramiko and OpenSSH); a wrong one does not
    paramiko_client(ip, 22, served, user, password=password).close()
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_client(ip, 22, served, user, password="not-" + password)
    first = openssh(tmp_path, ip, 22, served, user, "true", password=password)
    assert (
        "change your password" in first.stderr + first.stdout
        or "Password change required" in first.stderr
    ), first.stderr
    wrong = openssh(tmp_path, ip, 22, served, user, "true", password="wrong-password")
    assert wrong.returncode != 0 and "Permission denied" in wrong.stderr
    by_key = openssh(tmp_path, ip, 22, served, user, "true", identity=key_path)
    assert "Permission denied" not in by_key.stderr  # the key is accepted (then: change pw)

    # root may not log in with a password at all
    root_pw = openssh(tmp_path, ip, 22, served, "root", "true", password=password)
    assert root_pw.returncode != 0

    assert run_cli(real_ctx, "vps", "delete", "deb1", "--yes").exit_code == 0
    assert libvirt_snapshot(real_ctx) == before


@pytest.fixture(scope="module")
def debian_cloud_init(real_ctx: Context, debian: str) -> str:
    """The cloud-init kind of the image: the same cached tree, cloud-init on."""
    from kvmvps.services import images

    if "bookworm-ci" not in [i.name for i in inventory.list_images(real_ctx)]:
        images.build_debian(real_ctx, "bookworm-ci", cloud_init=True)
    return "bookworm-ci"


def test_cloud_init_kind_serves_the_seeds_host_key(
    real_ctx: Context, debian_cloud_init: str, tmp_path: Path
) -> None:
    before = libvirt_snapshot(real_ctx)
    # the key kvmvps generated and put in the seed is the one the guest serves
    vps, served = _order(real_ctx, debian_cloud_init, "debci1", tmp_path)
    ip, user, password = vps["ip"], vps["username"], vps["password"]
    root = paramiko_client(
        ip, 22, served, "root", key_filename=str(keys.provisioning_key_path(real_ctx.settings))
    )
    _, out, _ = root.exec_command(
        "cat /var/lib/cloud/data/instance-id; hostname; "
        "ls /etc/ssh/ | grep '^ssh_host_.*_key$'; test -e /etc/cloud/cloud-init.disabled; echo $?"
    )
    instance, hostname, *host_keys, switch = out.read().decode().splitlines()
    root.close()
    # cloud-init ran with this VPS's seed, and installed its one key instead of making any
    assert (instance, hostname) == (vps["id"], "debci1")
    assert host_keys == ["ssh_host_ed25519_key"] and switch == "1"
    paramiko_client(ip, 22, served, user, password=password).close()

    assert run_cli(real_ctx, "vps", "delete", "debci1", "--yes").exit_code == 0
    assert libvirt_snapshot(real_ctx) == before
