"""Reading a built image without booting it: its filesystem (debugfs on a raw copy,
never mounted) and its initramfs (a newc cpio archive)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kvmvps.images import BuiltImage


def raw_copy(image: BuiltImage, dest: Path) -> Path:
    raw = dest / "disk.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image.base_path), str(raw)],
        check=True,
    )
    return raw


def debugfs(raw: Path, request: str) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", request, str(raw)], capture_output=True, text=True, check=True
    )
    return proc.stdout


def read_newc(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """Parse a newc cpio archive into {name: (mode, data)}."""
    entries: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701", f"bad cpio header at {pos}"
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, archive[pos : pos + size])
        pos = (pos + size + 3) & ~3
