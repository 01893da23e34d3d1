"""The backup directory: one plain qcow2 and one small JSON file per backup.

``<uuid>.qcow2`` is a standalone disk image (no backing file); ``<uuid>.json``
says what it is. Anyone can restore one by hand::

    qemu-img convert -f qcow2 -O qcow2 <uuid>.qcow2 /var/lib/kvmvps/pool/<domain>.qcow2

File names come from the backup's uuid only, never from user text, and a
file is checked before it is restored: a regular file (not a link), the
size recorded when it was made, qcow2 without a backing file or an external
data file, no larger than the disk it goes to. Nothing here talks to libvirt.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid as uuidlib
from pathlib import Path
from typing import Any

from kvmvps.errors import InvalidInput, KvmvpsError

FORMAT = "kvmvps-backup-1"
PARTIAL = ".part"
QEMU_IMG_TIMEOUT = 3600.0


class BackupDamaged(KvmvpsError):
    """A backup file is missing or not what kvmvps wrote."""


def _name(backup_uuid: str) -> str:
    try:
        return str(uuidlib.UUID(backup_uuid))
    except ValueError:
        raise InvalidInput(f"{backup_uuid!r} is not a backup id") from None


def disk_path(root: Path, backup_uuid: str) -> Path:
    return root / f"{_name(backup_uuid)}.qcow2"


def partial_path(root: Path, backup_uuid: str) -> Path:
    """Where a backup is written until it is complete."""
    return root / f"{_name(backup_uuid)}.qcow2{PARTIAL}"


def meta_path(root: Path, backup_uuid: str) -> Path:
    return root / f"{_name(backup_uuid)}.json"


def ensure_dir(root: Path) -> None:
    """The directory, searchable by QEMU (which writes a running guest's backup) but not listable."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # noqa: S103 - QEMU (libvirt-qemu) must reach its target file


def finish(root: Path, backup_uuid: str, metadata: dict[str, Any]) -> int:
    """Give the complete copy its final name, write its metadata; return its size in bytes."""
    part, final = partial_path(root, backup_uuid), disk_path(root, backup_uuid)
    os.chmod(part, 0o600)
    os.replace(part, final)
    size = final.stat().st_size
    meta = {"format": FORMAT, "disk": final.name, "size_bytes": size, **metadata}
    tmp = meta_path(root, backup_uuid).with_suffix(".json" + PARTIAL)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(meta, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, meta_path(root, backup_uuid))
    return size


def remove(root: Path, backup_uuid: str) -> None:
    """Delete every file of a backup (missing ones are fine)."""
    for path in (
        disk_path(root, backup_uuid),
        partial_path(root, backup_uuid),
        meta_path(root, backup_uuid),
    ):
        path.unlink(missing_ok=True)


def convert(source: Path, target: Path, source_format: str = "qcow2") -> None:
    """Copy a disk (through its backing chain) into a standalone qcow2 with qemu-img."""
    run_qemu_img(
        "convert", "-f", source_format, "-O", "qcow2", "-U", "--", str(source), str(target)
    )


def run_qemu_img(*args: str) -> str:
    try:
        done = subprocess.run(
            ["qemu-img", *args],
            capture_output=True,
            text=True,
            timeout=QEMU_IMG_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KvmvpsError(f"qemu-img {args[0]} failed: {exc}") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise KvmvpsError(f"qemu-img {args[0]} failed: {reason}")
    return done.stdout


def check(root: Path, backup_uuid: str, size_bytes: int | None, max_virtual: int) -> Path:
    """The backup's disk, after checking it is exactly what kvmvps wrote; else BackupDamaged."""
    path = disk_path(root, backup_uuid)
    short = _name(backup_uuid)[:8]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BackupDamaged(f"backup {short} is missing from the backup directory") from None
    if not stat.S_ISREG(st.st_mode):
        raise BackupDamaged(f"backup {short} is not a regular file; refusing to restore it")
    if size_bytes is not None and st.st_size != size_bytes:
        raise BackupDamaged(
            f"backup {short} has changed since it was made ({st.st_size} bytes, not {size_bytes})"
        )
    try:
        info = json.loads(run_qemu_img("info", "--output=json", "-f", "qcow2", "--", str(path)))
    except (KvmvpsError, ValueError):
        raise BackupDamaged(
            f"backup {short} is not a qcow2 image; refusing to restore it"
        ) from None
    data_file = info.get("format-specific", {}).get("data", {}).get("data-file")
    if info.get("format") != "qcow2" or info.get("backing-filename") or data_file:
        raise BackupDamaged(f"backup {short} is not a standalone qcow2; refusing to restore it")
    if int(info.get("virtual-size", 0)) > max_virtual:
        raise BackupDamaged(f"backup {short} is larger than the disk it would replace")
    return path


def read_metadata(root: Path, backup_uuid: str) -> dict[str, Any]:
    """The backup's JSON file (for people and tools; restores trust the database)."""
    path = meta_path(root, backup_uuid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(fd) as src:
        try:
            data = json.load(src)
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}
