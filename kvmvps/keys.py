"""The operator's provisioning SSH key and the key that seals pending passwords."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmvps.config import Settings

PROVISIONING_KEY = "provisioning_ed25519"
SEAL_KEY = "password-seal.key"


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file that only its owner can read, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def provisioning_key_path(settings: Settings) -> Path:
    return settings.keys_dir / PROVISIONING_KEY


def ensure_provisioning_key(settings: Settings) -> str:
    """Create the provisioning key pair once; return the public half (OpenSSH line)."""
    private = provisioning_key_path(settings)
    settings.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not private.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        _create_once(private, pem)
    public = provisioning_public_key(settings)
    private.with_suffix(".pub").write_text(public + "\n")
    return public


def provisioning_public_key(settings: Settings) -> str:
    """The public half, derived from the private key (so the two always match)."""
    key = serialization.load_ssh_private_key(provisioning_key_path(settings).read_bytes(), None)
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return pub.decode() + " kvmvps-provisioning"


def seal_key(settings: Settings) -> Fernet:
    """The Fernet key that encrypts passwords until the worker has pushed them."""
    path = settings.keys_dir / SEAL_KEY
    if not path.exists():
        settings.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _create_once(path, Fernet.generate_key())
    return Fernet(path.read_bytes())


def _create_once(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data`` unless another process got there first."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    _write_private(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
