"""The backup directory's files: what a restore accepts, and what tampering it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from kvmvps import backupstore
from kvmvps.backupstore import BackupDamaged
from kvmvps.errors import InvalidInput
from kvmvps.storage import GIB


def qcow2(path: Path, size: str = "64M", *extra: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), size], check=True)


def made(root: Path) -> tuple[str, int]:
    """A finished backup as the worker leaves it: its id and size."""
    backup = str(uuid.uuid4())
    backupstore.ensure_dir(root)
    qcow2(backupstore.partial_path(root, backup))
    size = backupstore.finish(root, backup, {"backup": backup, "hostname": "web1"})
    return backup, size


def test_a_finished_backup_is_a_plain_qcow2_and_its_metadata(tmp_path: Path) -> None:
    backup, size = made(tmp_path)
    disk = backupstore.check(tmp_path, backup, size, GIB)
    assert disk == tmp_path / f"{backup}.qcow2" and oct(disk.stat().st_mode)[-3:] == "600"
    meta = json.loads((tmp_path / f"{backup}.json").read_text())
    assert meta["format"] == backupstore.FORMAT and meta["disk"] == disk.name
    assert meta["size_bytes"] == size and meta["hostname"] == "web1"
    assert not backupstore.partial_path(tmp_path, backup).exists()
    assert oct(tmp_path.stat().st_mode)[-3:] == "711"  # QEMU reaches its file; nobody lists
    backupstore.remove(tmp_path, backup)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ref", ["../../etc/passwd", "x", "", "a" * 200, "\x00"])
def test_names_come_only_from_a_uuid(tmp_path: Path, ref: str) -> None:
    with pytest.raises(InvalidInput):
        backupstore.disk_path(tmp_path, ref)


def test_a_missing_or_swapped_file_is_refused(tmp_path: Path) -> None:
    backup, size = made(tmp_path)
    with pytest.raises(BackupDamaged, match="changed since it was made"):
        backupstore.check(tmp_path, backup, size + 1, GIB)
    os.unlink(tmp_path / f"{backup}.qcow2")
    with pytest.raises(BackupDamaged, match="missing"):
        backupstore.check(tmp_path, backup, size, GIB)


def test_a_link_in_place_of_the_disk_is_refused(tmp_path: Path) -> None:
    """A link to another customer's disk (or any host file) is never read."""
    backup, size = made(tmp_path)
    other = tmp_path / "someone-elses.qcow2"
    qcow2(other)
    disk = tmp_path / f"{backup}.qcow2"
    disk.unlink()
    disk.symlink_to(other)
    with pytest.raises(BackupDamaged, match="not a regular file"):
        backupstore.check(tmp_path, backup, None, GIB)


def test_a_backing_file_or_an_external_data_file_is_refused(tmp_path: Path) -> None:
    """A qcow2 that would read another file (e.g. /etc/shadow) through its backing chain."""
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"root:$6$secret\n" * 100)
    for extra in (["-b", str(secret), "-F", "raw"], ["-o", f"data_file={tmp_path / 'data.raw'}"]):
        backup, _ = made(tmp_path)
        disk = tmp_path / f"{backup}.qcow2"
        disk.unlink()
        qcow2(disk, "64M", *extra)
        with pytest.raises(BackupDamaged, match="not a standalone qcow2"):
            backupstore.check(tmp_path, backup, None, GIB)


def test_a_raw_file_or_a_bigger_disk_is_refused(tmp_path: Path) -> None:
    backup, _ = made(tmp_path)
    disk = tmp_path / f"{backup}.qcow2"
    disk.write_bytes(b"\0" * 4096)  # not qcow2: never probed as raw
    with pytest.raises(BackupDamaged):
        backupstore.check(tmp_path, backup, None, GIB)
    disk.unlink()
    qcow2(disk, "2G")
    with pytest.raises(BackupDamaged, match="larger than the disk"):
        backupstore.check(tmp_path, backup, None, GIB)


def test_tampered_metadata_is_only_read_never_followed(tmp_path: Path) -> None:
    backup, size = made(tmp_path)
    meta = tmp_path / f"{backup}.json"
    meta.write_text('{"disk": "../../etc/shadow", "vps": "someone else"')  # not even JSON
    assert backupstore.read_metadata(tmp_path, backup) == {}
    meta.unlink()
    meta.symlink_to("/etc/hostname")
    assert backupstore.read_metadata(tmp_path, backup) == {}
    assert backupstore.check(tmp_path, backup, size, GIB).name == f"{backup}.qcow2"
