"""The credentials delivery: one root connection, one command, then the password proof.

A real SSH server (paramiko, on loopback) plays the guest: root logs in with
the provisioning key and runs commands; the login user's password is whatever
hash the last command gave ``chpasswd -e`` on its stdin. So the proof passes
only if the pushed hash matches the password kvmvps proves with. The server
counts connections: the delivery opens two (root and proof), not a third
just to see sshd's banner.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from passlib.hash import sha512_crypt

from kvmvps import guest
from kvmvps.errors import GuestError, HostKeyMismatch


def _new_key() -> tuple[paramiko.Ed25519Key, str]:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem.decode())), pem.decode()


@dataclass
class Guest(paramiko.ServerInterface):
    """What the fake guest saw: connections, commands, the pushed hash, password tries."""

    root_key: paramiko.PKey
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    shadow: str = ""
    password_tries: int = 0
    refuse_password: bool = False
    drop: int = 0  # the n-th connection is closed at once (0: none)

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "root" and key.get_base64() == self.root_key.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        self.password_tries += 1
        user, _, hashed = self.shadow.partition(":")
        ok = (
            not self.refuse_password
            and username == user
            and bool(hashed)
            and sha512_crypt.verify(password, hashed)
        )
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return (
            paramiko.OPEN_SUCCEEDED
            if kind == "session"
            else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        )

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.commands.append(command.decode())
        threading.Thread(target=self._run, args=(channel,), daemon=True).start()
        return True

    def _run(self, channel: paramiko.Channel) -> None:
        data = b""
        while chunk := channel.recv(65536):
            data += chunk
        self.shadow = data.decode().splitlines()[0]
        channel.sendall(b"forced\n")
        channel.send_exit_status(0)
        channel.close()


@dataclass
class Served:
    port: int
    host_key: str
    guest: Guest
    key_path: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """An SSH server on loopback standing in for a booted guest."""
    host_key, _ = _new_key()
    root_key, root_pem = _new_key()
    key_path = tmp_path / "provisioning"
    key_path.write_text(root_pem)
    fake = Guest(root_key)
    listener = socket.create_server(("127.0.0.1", 0))
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            fake.connections += 1
            if fake.connections == fake.drop:
                conn.close()
                continue
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            transport.start_server(event=threading.Event(), server=fake)  # in its own thread
            transports.append(transport)

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    yield Served(port, f"{host_key.get_name()} {host_key.get_base64()}", fake, key_path)
    listener.close()
    for transport in transports:
        transport.close()


def _deliver(
    served: Served,
    host_key: str | None = None,
    password: str = "Pw-1",  # noqa: S107 - a test password
) -> dict[str, float]:
    target = guest.Target("127.0.0.1", served.port, host_key or served.host_key)
    return guest.deliver_credentials(
        target,
        served.key_path,
        time.monotonic() + 10,
        hostname="web1",
        user="vps",
        password=password,
        ssh_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey customer"],
    )


def test_one_root_connection_one_command_then_the_proof(served: Served) -> None:
    phases = _deliver(served, password="Correct-Horse-9")
    assert set(phases) == {"banner", "push", "proof"}
    assert all(v >= 0 for v in phases.values())
    assert served.guest.connections == 2  # root (on the banner's socket) and the proof
    assert len(served.guest.commands) == 1
    command = served.guest.commands[0]
    assert "chpasswd -e" in command and "web1" in command and " vps " in command
    assert served.guest.shadow.startswith("vps:$6$")
    assert sha512_crypt.verify("Correct-Horse-9", served.guest.shadow.split(":", 1)[1])
    assert served.guest.password_tries == 1


def test_a_dropped_proof_connection_is_made_again(served: Served) -> None:
    """sshd closes the proof's first connection (busy at boot): a fresh one proves the password."""
    served.guest.drop = 2  # 1: root, on the banner's socket; 2: the proof's first try
    _deliver(served, password="Correct-Horse-9")
    assert served.guest.connections == 3 and served.guest.password_tries == 1


def test_a_refused_password_fails_the_delivery(served: Served) -> None:
    served.guest.refuse_password = True
    with pytest.raises(GuestError, match="refused the new password"):
        _deliver(served)


def test_another_host_key_pushes_nothing(served: Served) -> None:
    """A guest (or a man in the middle) with another key gets no command and no password."""
    other, _ = _new_key()
    with pytest.raises(HostKeyMismatch, match="not the pinned"):
        _deliver(served, host_key=f"ssh-ed25519 {other.get_base64()}")
    assert served.guest.commands == [] and served.guest.shadow == ""
    assert served.guest.password_tries == 0


def test_nothing_listening_ends_at_the_deadline() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(GuestError, match="did not answer SSH"):
        guest.wait_for_ssh_socket("127.0.0.1", port, time.monotonic() + 0.3)
    assert time.monotonic() - started < 3


def test_a_port_that_speaks_no_ssh_is_not_taken_for_sshd() -> None:
    """Something that answers, but not with an SSH banner, is polled past until the deadline."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(GuestError, match="did not answer SSH"):
            guest.wait_for_ssh_socket(
                "127.0.0.1", listener.getsockname()[1], time.monotonic() + 0.3
            )
    finally:
        listener.close()
