"""Reading a built image's filesystem without mounting it (debugfs on a raw copy)."""

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
