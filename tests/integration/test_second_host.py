"""scripts/second-host.sh: a second, independent libvirtd reached over pinned SSH."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmvps.errors import HypervisorError
from kvmvps.hypervisor import Hypervisor
from tests import conftest

pytestmark = [pytest.mark.libvirt]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "second-host.sh"
NAME = f"t{os.getpid() % 10_000}"


def script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def fields(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def second() -> Iterator[dict[str, str]]:
    # not under /tmp: sshd refuses keys below a world-writable directory
    env = {"KVMVPS_SECOND_HOST_DIR": str(conftest.make_state_dir("hosts-"))}
    up = script("up", NAME, env=env)
    assert up.returncode == 0, up.stderr
    yield {**fields(up.stdout), **env}
    down = script("down", NAME, env=env)
    assert down.returncode == 0, down.stderr
    assert (
        f"kvh-{NAME}" not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    )
    assert subprocess.run(["ip", "link", "show", f"kvh{NAME}h"], capture_output=True).returncode
    assert not (Path(env["KVMVPS_SECOND_HOST_DIR"]) / NAME).exists()
    Path(env["KVMVPS_SECOND_HOST_DIR"]).rmdir()


def test_it_is_a_daemon_of_its_own(second: dict[str, str]) -> None:
    far, near = Hypervisor(second["uri"]), Hypervisor(conftest.REAL_URI)
    try:
        far.ping()
        assert far.list_domains() == {}  # none of the first daemon's domains
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
    assert f" {second['address']}/" not in ours
    with socket.create_connection((second["address"], 22), timeout=5) as sshd:
        assert sshd.recv(64).startswith(b"SSH-2.0-")


def test_its_host_key_is_pinned(second: dict[str, str], tmp_path: Path) -> None:
    root = Path(second["KVMVPS_SECOND_HOST_DIR"]) / NAME
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = root / "known_hosts"
    pinned = known.read_text()
    known.write_text(
        f"{second['address']} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n"
    )
    try:
        with pytest.raises(HypervisorError):
            Hypervisor(second["uri"]).ping()
    finally:
        known.write_text(pinned)


def test_status_up_again_and_bad_names(second: dict[str, str]) -> None:
    env = {"KVMVPS_SECOND_HOST_DIR": second["KVMVPS_SECOND_HOST_DIR"]}
    status = script("status", NAME, env=env)
    assert status.returncode == 0 and fields(status.stdout)["uri"] == second["uri"]
    again = script("up", NAME, env=env)  # running already: the same access, nothing restarted
    assert again.returncode == 0 and fields(again.stdout) == fields(status.stdout)
    for bad in ("Hv2", "hv2;reboot", "a" * 9, "-x"):
        refused = script("up", bad, env=env)
        assert refused.returncode == 2 and refused.stderr.startswith("error: host name")
    assert script("status", "nosuch", env=env).returncode == 1
    assert script("frobnicate").returncode == 2
