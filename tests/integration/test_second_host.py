"""scripts/second-host.sh: a second, independent libvirtd reached over pinned SSH."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from kvmvps.errors import HypervisorError
from kvmvps.hypervisor import Hypervisor
from tests import conftest

pytestmark = [pytest.mark.libvirt]

NAME = conftest.SECOND_HOST
script, fields = conftest.second_host_script, conftest.script_fields


def test_it_is_a_daemon_of_its_own(second_host: dict[str, str]) -> None:
    far, near = Hypervisor(second_host["uri"]), Hypervisor(conftest.REAL_URI)
    try:
        far.ping()
        assert not set(far.list_domains()) & set(near.list_domains())  # none of the first's
        xml = (
            "<domain type='qemu'><name>kvmvps-second-probe</name><memory unit='MiB'>32</memory>"
            "<os><type arch='x86_64'>hvm</type></os></domain>"
        )
        far.define_domain(xml)
        assert "kvmvps-second-probe" in far.list_domains()
        assert "kvmvps-second-probe" not in near.list_domains()
        far.undefine("kvmvps-second-probe")
    finally:
        far.close()
        near.close()
    # its own network namespace: its public address answers, and is not one of ours
    ours = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert f" {second_host['address']}/" not in ours
    with socket.create_connection((second_host["address"], 22), timeout=5) as sshd:
        assert sshd.recv(64).startswith(b"SSH-2.0-")


def test_its_host_key_is_pinned(second_host: dict[str, str], tmp_path: Path) -> None:
    root = Path(second_host["KVMVPS_SECOND_HOST_DIR"]) / NAME
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = root / "known_hosts"
    pinned = known.read_text()
    known.write_text(
        f"{second_host['address']} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n"
    )
    try:
        with pytest.raises(HypervisorError):
            Hypervisor(second_host["uri"]).ping()
    finally:
        known.write_text(pinned)


def test_status_up_again_and_bad_names(second_host: dict[str, str]) -> None:
    env = {"KVMVPS_SECOND_HOST_DIR": second_host["KVMVPS_SECOND_HOST_DIR"]}
    status = script("status", NAME, env=env)
    assert status.returncode == 0 and fields(status.stdout)["uri"] == second_host["uri"]
    again = script("up", NAME, env=env)  # running already: the same access, nothing restarted
    assert again.returncode == 0 and fields(again.stdout) == fields(status.stdout)
    for bad in ("Hv2", "hv2;reboot", "a" * 9, "-x"):
        refused = script("up", bad, env=env)
        assert refused.returncode == 2 and refused.stderr.startswith("error: host name")
    assert script("status", "nosuch", env=env).returncode == 1
    assert script("frobnicate").returncode == 2
