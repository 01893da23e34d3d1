from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmvps.errors import ImageError
from kvmvps.storage import GIB, check_base_image, overlay_capacity, read_qcow2_header


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_plain_qcow2_is_accepted(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "64M")
    info = check_base_image(base)
    assert info.virtual_size == 64 << 20
    assert not info.has_backing_file
    assert info.version == 3


def test_raw_file_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", str(raw), "16M")
    with pytest.raises(ImageError, match="is not a qcow2 file"):
        check_base_image(raw)


def test_raw_file_that_fakes_a_qcow2_name_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.qcow2"
    fake.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageError, match="is not a qcow2 file"):
        read_qcow2_header(fake)


def test_qcow2_with_backing_file_is_refused(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "64M")
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top))
    with pytest.raises(ImageError, match="backing file of its own"):
        check_base_image(top)


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        check_base_image(tmp_path / "nope.qcow2")


def test_overlay_never_smaller_than_image(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "2G")
    info = check_base_image(base)
    assert overlay_capacity(10, info, "deb") == 10 * GIB
    assert overlay_capacity(2, info, "deb") == 2 * GIB
    with pytest.raises(ImageError, match="smaller than image 'deb'"):
        overlay_capacity(1, info, "deb")
