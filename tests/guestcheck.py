"""Independent checks of a running guest: paramiko, OpenSSH's client, virsh."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import paramiko

from kvmvps.guest import fingerprint


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def domstate(domain: str) -> str:
    return virsh("domstate", domain)


def scanned_host_key(ip: str, port: int = 22) -> str:
    """The ed25519 host key the guest really serves, as ssh-keyscan sees it."""
    out = subprocess.run(
        ["ssh-keyscan", "-T", "10", "-p", str(port), "-t", "ed25519", ip],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if not ln.startswith("#"))
    return " ".join(line.split()[1:3])


def keygen_fingerprint(public_line: str, tmp: Path) -> str:
    """What ``ssh-keygen -lf`` reports for a key."""
    path = tmp / "hostkey.pub"
    path.write_text(public_line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


def known_hosts(tmp: Path, ip: str, port: int, public_line: str) -> Path:
    path = tmp / "known_hosts"
    name = ip if port == 22 else f"[{ip}]:{port}"
    path.write_text(f"{name} {public_line}\n")
    return path


def paramiko_client(ip: str, port: int, host_key: str, user: str, **auth) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    kind, blob = host_key.split()[:2]
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
    client.get_host_keys().add(ip if port == 22 else f"[{ip}]:{port}", key.get_name(), key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        ip, port, username=user, allow_agent=False, look_for_keys=False, timeout=10, **auth
    )
    return client


def openssh(
    tmp: Path,
    ip: str,
    port: int,
    host_key: str,
    user: str,
    command: str,
    *,
    password: str | None = None,
    identity: Path | None = None,
    netns: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``command`` with the stock OpenSSH client (and sshpass for a password).

    ``netns``: from that network namespace (a customer's machine elsewhere).
    """
    kh = known_hosts(tmp, ip, port, host_key)
    opts = [
        "-o",
        f"UserKnownHostsFile={kh}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
        "-p",
        str(port),
    ]
    if identity:
        opts += ["-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no", "-i", str(identity)]
    else:
        opts += ["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"]
    argv = ["ssh", *opts, f"{user}@{ip}", command]
    env = None
    if password is not None:
        assert shutil.which("sshpass"), "sshpass is needed (apt-get install sshpass)"
        argv = ["sshpass", "-e", *argv]
        env = {"SSHPASS": password, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL
    )


def customer_keypair(tmp: Path) -> tuple[Path, str]:
    path = tmp / "customer_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "customer@example", "-f", str(path)],
        check=True,
    )
    return path, Path(f"{path}.pub").read_text().strip()


__all__ = ["fingerprint"]
