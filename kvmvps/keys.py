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
    """Write ``data`` to a new file that only root can read, atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def provisioning_key_path(settings: Settings) -> Path:
    return settings.keys_dir / PROVISIONING_KEY


def ensure_provisioning_key(settings: Settings) -> str:
    """Create the provisioning key pair once; return the public half (OpenSSH line)."""
    private = provisioning_key_path(settings)
    public = private.with_suffix(".pub")
    settings.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        _write_private(private, pem)
        public.write_text(pub.decode() + " kvmvps-provisioning\n")
    return public.read_text().strip()


def provisioning_public_key(settings: Settings) -> str:
    return provisioning_key_path(settings).with_suffix(".pub").read_text().strip()


def seal_key(settings: Settings) -> Fernet:
    """The Fernet key that encrypts passwords until the worker has pushed them."""
    path = settings.keys_dir / SEAL_KEY
    if not path.exists():
        settings.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(path, Fernet.generate_key())
    return Fernet(path.read_bytes())
