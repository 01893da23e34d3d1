"""The password proof's early handshake still pins the host key and checks the password.

The proof connection now does its key exchange while the credentials are
being pushed and authenticates afterwards. Here it talks real SSH to a
paramiko server on loopback: the right key and password pass, a wrong
password and a different host key are refused.
"""

from __future__ import annotations

import io
import socket
import subprocess
import threading
from collections.abc import Iterator

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmvps import guest
from kvmvps.errors import GuestError, HostKeyMismatch

PASSWORD = "Correct-Horse-9"


class PasswordOnly(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = username == "vps" and password == PASSWORD
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED


@pytest.fixture
def server() -> Iterator[tuple[int, str]]:
    """An SSH server on loopback (one connection at a time); its port and public key line."""
    key = _new_key()
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(key)
            transport.start_server(server=PasswordOnly())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], f"{key.get_name()} {key.get_base64()}"
    stop.set()
    listener.close()


def _new_key() -> paramiko.Ed25519Key:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem.decode()))


def test_right_key_and_password_pass(server: tuple[int, str]) -> None:
    port, host_key = server
    target = guest.Target("127.0.0.1", port, host_key)
    guest.verify_password_login(target, "vps", PASSWORD, ready=guest.PasswordProof(target))
    guest.verify_password_login(target, "vps", PASSWORD)  # no early handshake: the same


def test_wrong_password_is_refused(server: tuple[int, str]) -> None:
    port, host_key = server
    target = guest.Target("127.0.0.1", port, host_key)
    with pytest.raises(GuestError, match="refused the new password"):
        guest.verify_password_login(
            target, "vps", PASSWORD + "x", ready=guest.PasswordProof(target)
        )


def test_another_host_key_is_refused_before_the_password_is_sent(server: tuple[int, str]) -> None:
    port, _ = server
    other = _new_key()
    target = guest.Target("127.0.0.1", port, f"ssh-ed25519 {other.get_base64()}")
    with pytest.raises(HostKeyMismatch, match="not the pinned"):
        guest.verify_password_login(target, "vps", PASSWORD, ready=guest.PasswordProof(target))


def test_nothing_listening_is_a_guest_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    target = guest.Target("127.0.0.1", port, "ssh-ed25519 AAAA")
    with pytest.raises(GuestError, match="could not check the new password"):
        guest.verify_password_login(target, "vps", PASSWORD)


def test_the_one_push_command_is_valid_shell() -> None:
    """The combined script parses (sh -n); the real guest runs it in tests/e2e/test_tiny_vps.py."""
    for shell in (["sh"], ["busybox", "sh"]):  # the tiny image's shell is busybox's
        done = subprocess.run(
            [*shell, "-n", "-c", guest.PUSH_ALL], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
