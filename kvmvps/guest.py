"""Talking to a guest over SSH with paramiko, host key pinned.

kvmvps always knows a guest's host key before it connects: it generated the
key itself (cloud-init seed) or read it from the guest's first-boot serial
console. Connections reject any other key; there is no trust on first use.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import secrets
import shlex
import socket
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
from passlib.hash import sha512_crypt

from kvmvps import interrupt
from kvmvps.errors import GuestError, HostKeyMismatch

log = logging.getLogger(__name__)

BEGIN_KEYS = "-----BEGIN SSH HOST KEY KEYS-----"
END_KEYS = "-----END SSH HOST KEY KEYS-----"
PASSWORD_ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")
PASSWORD_LENGTH = 20
PREFERRED_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "ssh-rsa")

# Fixed scripts run on the guest. User-controlled values reach them only as
# quoted positional arguments (already validated) or on stdin, never as code.
# Each external command is a fork and an exec, about 20 ms on an emulated guest:
# the shell's own read, printf and redirections do what they can (the kernel's
# hostname is written through /proc; passwd is read by a read loop, not awk).
SET_HOSTNAME = (
    'set -e; printf "%s\\n" "$1" > /etc/hostname; '
    '{ printf "%s" "$1" > /proc/sys/kernel/hostname; } 2>/dev/null || hostname "$1"; '
    'if [ -f /etc/hosts ] && ! grep -q "^127.0.1.1" /etc/hosts; then '
    'printf "127.0.1.1\\t%s\\n" "$1" >> /etc/hosts; '
    'elif [ -f /etc/hosts ]; then sed -i "s/^127.0.1.1.*/127.0.1.1\\t$1/" /etc/hosts; fi'
)
INSTALL_KEYS = (
    'set -e; u="$1"; home=; gid=; '
    "while IFS=: read -r name pw uid g gecos h shell; do "
    'if [ "$name" = "$u" ]; then home=$h; gid=$g; break; fi; done < /etc/passwd; '
    '[ -n "$home" ] || { echo "no such user: $u" >&2; exit 1; }; '
    'mkdir -p "$home/.ssh"; chmod 700 "$home/.ssh"; '
    'while IFS= read -r key; do printf "%s\\n" "$key"; done > "$home/.ssh/authorized_keys.new"; '
    'chmod 600 "$home/.ssh/authorized_keys.new"; '
    'mv "$home/.ssh/authorized_keys.new" "$home/.ssh/authorized_keys"; '
    'chown -R "$u:$gid" "$home/.ssh"'
)
FORCE_CHANGE = 'if command -v chage >/dev/null 2>&1; then chage -d 0 "$1"; echo forced; fi'
# The fixed IPv6 address ($1: "ADDRESS/64 GATEWAY"), kept in /etc/kvmvps/ipv6
# (the tiny image's boot script applies it on every boot; the Debian image's
# kvmvps-ipv6 makes it systemd-networkd's) and applied now on the
# interface of the IPv4 default route; router advertisements are ignored.
SET_IPV6 = (
    'mkdir -p /etc/kvmvps; printf "%s\\n" "$1" > /etc/kvmvps/ipv6.new; '
    "mv /etc/kvmvps/ipv6.new /etc/kvmvps/ipv6; "
    "if [ -x /usr/local/sbin/kvmvps-ipv6 ]; then /usr/local/sbin/kvmvps-ipv6; fi; "
    "i=$(ip route show default 2>/dev/null | awk '{print $5; exit}'); i=${i:-eth0}; "
    "for k in accept_ra autoconf accept_dad; do "
    'echo 0 > "/proc/sys/net/ipv6/conf/$i/$k" || true; done; '
    "set -- $1; "
    'ip -6 addr flush dev "$i" scope global dynamic 2>/dev/null || true; '
    'ip -6 addr add "$1" dev "$i" 2>/dev/null || true; '
    'ip -6 route replace default via "$2" dev "$i"'
)
# All of the above in one command (one channel, one shell on the guest): $1 is
# the hostname, $2 the user, $3 the IPv6 setup or empty; stdin is the shadow
# line for ``chpasswd -e``, then the authorized keys.
PUSH_ALL = (
    f"set_hostname() {{ {SET_HOSTNAME}; }}; "
    f"install_keys() {{ {INSTALL_KEYS}; }}; "
    f"force_change() {{ {FORCE_CHANGE}; }}; "
    f"set_ipv6() {{ {SET_IPV6}; }}; "
    'set -e; set_hostname "$1" </dev/null; '
    'if [ -n "$3" ]; then set_ipv6 "$3" </dev/null; fi; '
    'IFS= read -r line; printf "%s\\n" "$line" | chpasswd -e; '
    'install_keys "$2"; force_change "$2" </dev/null'
)


def new_password() -> str:
    """A fresh random password (20 characters, about 115 bits)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def hash_password(password: str) -> str:
    """A SHA-512 crypt hash, as /etc/shadow and ``chpasswd -e`` expect."""
    return sha512_crypt.using(rounds=5000).hash(password)


def fingerprint(public_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key line."""
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def parse_console_host_keys(text: str) -> list[str]:
    """The public host keys of the last key block a guest printed on its console."""
    block: list[str] | None = None
    found: list[str] = []
    for raw in text.splitlines():
        line = raw.strip().strip("\r")
        if line.endswith(BEGIN_KEYS):
            block = []
        elif line.endswith(END_KEYS) and block is not None:
            found, block = block, None
        elif block is not None and line:
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-")):
                block.append(f"{parts[0]} {parts[1]}")
    return found


def preferred_key(keys: list[str]) -> str:
    for kind in PREFERRED_KEY_TYPES:
        for key in keys:
            if key.split()[0] == kind:
                return key
    raise GuestError("the guest printed no usable SSH host key")


def wait_for_console_host_key(log_path: Path, deadline: float) -> str:
    """Poll the serial console log until the guest prints its host keys."""
    delay = 0.2
    while True:
        try:
            keys = parse_console_host_keys(log_path.read_text(errors="replace"))
        except FileNotFoundError:
            keys = []
        if keys:
            return preferred_key(keys)
        if time.monotonic() >= deadline:
            raise GuestError("the guest never printed its SSH host key on the serial console")
        interrupt.sleep(delay)
        delay = min(delay * 1.5, 0.5)


BANNER_POLL = 0.05  # seconds between attempts while a booting guest's sshd is not up yet


def wait_for_ssh_socket(host: str, port: int, deadline: float) -> socket.socket:
    """Poll until host:port greets with an SSH banner; the connected socket, banner unread.

    The banner is only peeked at, so the SSH connection that follows runs on
    this very socket: no extra connection (and no extra process on the guest)
    just to learn that sshd is up. Polls every 50 ms: a late look costs more
    than a refused connection.
    """
    while True:
        sock = None
        try:
            sock = socket.create_connection((host, port), timeout=1)
            sock.settimeout(5)
            if sock.recv(4, socket.MSG_PEEK) == b"SSH-":
                sock.settimeout(None)
                return sock
        except OSError:
            pass
        if sock is not None:
            sock.close()
        if time.monotonic() >= deadline:
            raise GuestError(f"the guest did not answer SSH on {host}:{port} in time")
        interrupt.sleep(BANNER_POLL)


def wait_for_ssh_banner(host: str, port: int, deadline: float) -> str:
    """Poll until something on host:port greets with an SSH banner; return it."""
    delay = 0.2
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                sock.settimeout(5)
                banner = sock.recv(256).decode(errors="replace").strip()
                if banner.startswith("SSH-"):
                    return banner
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise GuestError(f"the guest did not answer SSH on {host}:{port} in time")
        interrupt.sleep(delay)
        delay = min(delay * 1.5, 0.5)


@dataclass(frozen=True)
class Target:
    """Where a guest's sshd is and which key it must present."""

    host: str
    port: int
    host_key: str

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _pinned_client(target: Target) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    kind, blob = target.host_key.split()[:2]
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
    client.get_host_keys().add(target.known_hosts_name, key.get_name(), key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _connect(
    target: Target,
    username: str,
    *,
    pkey: paramiko.PKey | None = None,
    password: str | None = None,
    sock: socket.socket | None = None,
) -> paramiko.SSHClient:
    client = _pinned_client(target)
    try:
        client.connect(
            target.host,
            target.port,
            username=username,
            pkey=pkey,
            password=password,
            allow_agent=False,
            look_for_keys=False,
            timeout=5,
            banner_timeout=10,
            auth_timeout=10,
            sock=sock,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyMismatch(
            f"{target.host}:{target.port} presented host key {fingerprint_of(exc.key)}, "
            f"not the pinned {fingerprint(target.host_key)}; refusing to connect"
        ) from None
    except BaseException:
        client.close()
        raise
    return client


def fingerprint_of(key: paramiko.PKey) -> str:
    return fingerprint(f"{key.get_name()} {key.get_base64()}")


@contextmanager
def root_session(target: Target, key_path: Path, deadline: float) -> Iterator[paramiko.SSHClient]:
    """A root session over the provisioning key, retried with backoff until ``deadline``."""
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key_path))
    delay = 0.5
    while True:
        try:
            client = _connect(target, "root", pkey=pkey)
            break
        except HostKeyMismatch:
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            if time.monotonic() >= deadline:
                raise GuestError(f"cannot log in to {target.host} as root: {exc}") from None
            log.debug("SSH to %s not ready yet: %s", target.host, exc)
            interrupt.sleep(delay)
            delay = min(delay * 1.5, 3.0)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def key_session(target: Target, user: str, private_openssh: str) -> Iterator[paramiko.SSHClient]:
    """One login as ``user`` with an ed25519 key (OpenSSH format), the host key pinned; no retry."""
    pkey = paramiko.Ed25519Key(file_obj=io.StringIO(private_openssh))
    try:
        client = _connect(target, user, pkey=pkey)
    except paramiko.AuthenticationException:
        raise GuestError(f"the guest refused the key for {user}") from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise GuestError(f"cannot log in to {target.host}:{target.port} as {user}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


def run(client: paramiko.SSHClient, script: str, args: list[str], stdin: bytes = b"") -> str:
    """Run a fixed ``sh -c`` script with quoted arguments; raise on a non-zero exit."""
    command = shlex.join(["sh", "-c", script, "sh", *args])
    chan_in, chan_out, chan_err = client.exec_command(command, timeout=60)
    if stdin:
        chan_in.write(stdin)
    chan_in.channel.shutdown_write()
    out = chan_out.read().decode(errors="replace")
    status = chan_out.channel.recv_exit_status()
    if status != 0:
        err = chan_err.read().decode(errors="replace").strip().splitlines()
        raise GuestError(f"a command on the guest failed ({status}): {err[-1] if err else ''}")
    return out


def push_credentials(
    client: paramiko.SSHClient,
    *,
    hostname: str,
    user: str,
    password: str,
    ssh_keys: list[str],
    ipv6: str = "",
) -> bool:
    """Set hostname, password and keys; force a password change where possible.

    Returns True when the image supports (and got) a forced password change.
    One command does it all: each further command costs a channel and a
    shell on an emulated guest (about 0.2 s each under TCG).
    """
    line = f"{user}:{hash_password(password)}\n"
    keys = "".join(f"{k}\n" for k in ssh_keys)
    args = [hostname, user, ipv6]
    return "forced" in run(client, PUSH_ALL, args, stdin=(line + keys).encode())


def deliver_credentials(
    target: Target,
    key_path: Path,
    deadline: float,
    *,
    hostname: str,
    user: str,
    password: str,
    ssh_keys: list[str],
    ipv6: str = "",
) -> dict[str, float]:
    """The credentials step on a booting guest; seconds per phase.

    One root connection does all the work in one remote command (hostname,
    IPv6, password, keys, forced change), on the socket that first saw sshd's
    banner. Then a second connection proves the new password; if its
    handshake fails (sshd still busy), one more is tried. The two
    connections run one after the other: on an emulated single-vCPU guest a
    handshake beside the root session only slowed both (measured: median
    6.3 s side by side, 4.0 s one after the other, on a loaded host). Phases:
    ``banner`` (waiting for sshd), ``push`` (root login and the command),
    ``proof`` (the password login).
    """
    started = time.monotonic()
    sock = wait_for_ssh_socket(target.host, target.port, deadline)
    banner = time.monotonic()
    with _root_on(sock, target, key_path, deadline) as client:
        push_credentials(
            client, hostname=hostname, user=user, password=password, ssh_keys=ssh_keys, ipv6=ipv6
        )
    pushed = time.monotonic()
    proof = PasswordProof(target)
    if not proof.usable():
        proof.close()
        proof = PasswordProof(target)
    verify_password_login(target, user, password, ready=proof)
    done = time.monotonic()
    return {"banner": banner - started, "push": pushed - banner, "proof": done - pushed}


@contextmanager
def _root_on(
    sock: socket.socket, target: Target, key_path: Path, deadline: float
) -> Iterator[paramiko.SSHClient]:
    """A root session on an already connected socket; a fresh, retried one if that fails."""
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key_path))
    try:
        client = _connect(target, "root", pkey=pkey, sock=sock)
    except HostKeyMismatch:
        raise
    except (OSError, paramiko.SSHException, EOFError) as exc:
        sock.close()
        log.debug("SSH to %s on the first socket failed (%s); retrying", target.host, exc)
        with root_session(target, key_path, deadline) as retried:
            yield retried
        return
    try:
        yield client
    finally:
        client.close()


def verify_password_login(
    target: Target, user: str, password: str, ready: PasswordProof | None = None
) -> None:
    """Prove the new password works by authenticating with it (pinned host key).

    ``ready`` is a connection opened (and its key exchange done) beforehand,
    while the password was being set; without it, a new one is opened here.
    """
    proof = ready or PasswordProof(target)
    try:
        proof.login(user, password)
    finally:
        proof.close()


class PasswordProof:
    """A second SSH connection for the password proof, its handshake done in the background.

    The key exchange (the slow part on an emulated guest) starts at once, in
    paramiko's transport thread; :meth:`login` then checks the host key
    against the pin and authenticates with the password only.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.done = threading.Event()
        self.transport: paramiko.Transport | None = None
        self.error: Exception | None = None
        try:
            sock = socket.create_connection((target.host, target.port), timeout=5)
            self.transport = paramiko.Transport(sock)
            kind = target.host_key.split()[0]  # ask for the pinned kind, as SSHClient does
            rsa = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
            self.transport.get_security_options().key_types = rsa if kind == "ssh-rsa" else (kind,)
            self.transport.start_client(event=self.done, timeout=10)
        except (OSError, paramiko.SSHException) as exc:
            self.error = exc
            self.done.set()

    def usable(self) -> bool:
        """Whether the handshake (waited for up to 15 s) ended in a live connection."""
        self.done.wait(15)
        transport = self.transport
        return self.error is None and transport is not None and transport.is_active()

    def login(self, user: str, password: str) -> None:
        """Authenticate as ``user`` with ``password``; GuestError or HostKeyMismatch if not."""
        self.done.wait(15)
        transport = self.transport
        if self.error is not None or transport is None or not transport.is_active():
            why = self.error or (transport and transport.get_exception()) or "handshake failed"
            raise GuestError(f"could not check the new password: {why}")
        key = transport.get_remote_server_key()
        if f"{key.get_name()} {key.get_base64()}" != " ".join(self.target.host_key.split()[:2]):
            raise HostKeyMismatch(
                f"{self.target.host}:{self.target.port} presented host key {fingerprint_of(key)}, "
                f"not the pinned {fingerprint(self.target.host_key)}; refusing to connect"
            )
        try:
            transport.auth_password(user, password)
        except paramiko.AuthenticationException:
            raise GuestError(f"the guest refused the new password for {user}") from None
        except (OSError, paramiko.SSHException) as exc:
            raise GuestError(f"could not check the new password: {exc}") from None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
