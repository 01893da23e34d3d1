"""A second libvirt host reached over SSH (qemu+ssh to an sshd of the test's own)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from kvmvps.models import Host
from kvmvps.services import Context
from tests.badinput import create_args, run_cli
from tests.guestcheck import domstate

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def remote_uri(tmp_path: Path) -> Iterator[str]:
    """An sshd on a loopback port with its own keys; the URI that reaches libvirt through it."""
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists():
        pytest.fail("openssh-server is missing (scripts/setup-host.sh installs it)")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    d = tmp_path
    for name in ("hostkey", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PidFile {d}/sshd.pid\nStrictModes no\n"
    )  # the key lives under /tmp
    host_pub = (d / "hostkey.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n")
    wrapper = d / "ssh"  # pins the test sshd's host key; no trust on first use
    wrapper.write_text(
        "#!/bin/sh\nexec ssh -o UserKnownHostsFile="
        + str(d / "known_hosts")
        + ' -o StrictHostKeyChecking=yes "$@"\n'
    )
    wrapper.chmod(0o755)
    proc = subprocess.Popen(
        [str(sshd), "-D", "-e", "-f", str(d / "sshd_config")], stderr=(d / "sshd.log").open("wb")
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, (d / "sshd.log").read_text()
            time.sleep(0.1)
    yield (f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={d}/client&command={wrapper}&no_tty=1")
    proc.terminate()
    proc.wait(timeout=10)


def test_order_lands_on_the_remote_host(fresh_ctx: Context, remote_uri: str) -> None:
    added = run_cli(fresh_ctx, "host", "add", "hv2", "--uri", remote_uri, "--json")
    assert added.exit_code == 0, added.stderr
    # the local host is full, so placement must pick hv2
    with fresh_ctx.db.session() as s:
        s.execute(update(Host).where(Host.name != "hv2").values(enabled=False))
    result = run_cli(fresh_ctx, *create_args(hostname="remote1"))
    assert result.exit_code == 0, result.stderr
    vps = json.loads(result.stdout)
    assert vps["host"] == "hv2" and vps["state"] == "running"
    assert domstate(vps["domain"]) == "running"
    shown = json.loads(run_cli(fresh_ctx, "host", "show", "hv2", "--json").stdout)
    assert json.dumps(shown).count("vps") >= 1
    assert run_cli(fresh_ctx, "vps", "delete", "remote1", "--yes").exit_code == 0
    gone = subprocess.run(["virsh", "-q", "domstate", vps["domain"]], capture_output=True)
    assert gone.returncode != 0
    assert run_cli(fresh_ctx, "host", "remove", "hv2").exit_code == 0
