"""Base images: check them without letting anything probe their format.

The qcow2 header is read directly (magic, backing file, virtual size), so a
raw file that merely looks like qcow2 to a prober can never slip through.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from kvmvps.errors import ImageError

QCOW2_MAGIC = b"QFI\xfb"
GIB = 1 << 30


@dataclass(frozen=True)
class Qcow2Info:
    version: int
    virtual_size: int
    has_backing_file: bool


def read_qcow2_header(path: Path) -> Qcow2Info:
    """Read the header of a qcow2 file; raise :class:`ImageError` if it is not one."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(32)
    except FileNotFoundError:
        raise ImageError(f"base image {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"base image {path} cannot be read: {exc.strerror}") from None
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        raise ImageError(f"base image {path} is not a qcow2 file")
    version, backing_offset, _backing_len, _bits, size = struct.unpack(">IQIIQ", header[4:32])
    return Qcow2Info(version=version, virtual_size=size, has_backing_file=backing_offset != 0)


def check_base_image(path: Path) -> Qcow2Info:
    """A usable base image: qcow2 with no backing file of its own."""
    info = read_qcow2_header(path)
    if info.has_backing_file:
        raise ImageError(f"base image {path} has a backing file of its own; flatten it first")
    return info


def overlay_capacity(disk_gib: int, base: Qcow2Info, image_name: str) -> int:
    """The overlay size in bytes: the plan's disk, never smaller than the image."""
    capacity = disk_gib * GIB
    if capacity < base.virtual_size:
        raise ImageError(
            f"the plan's {disk_gib} GiB disk is smaller than image {image_name!r} "
            f"({base.virtual_size / GIB:.1f} GiB)"
        )
    return capacity
