"""Build the tiny guest image for real and inspect the result without booting.

Needs root, apt (with package lists), e2fsprogs (mkfs.ext4, debugfs) and
qemu-utils. The disk is read with ``debugfs`` on a raw conversion, never
mounted. The guest's own chpasswd and dropbear binaries are then run in a
chroot of the unpacked root filesystem, which checks that the shim works and
that dropbear finds every library it needs inside the image.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmvps.errors import InvalidInput
from kvmvps.images import BuiltImage
from kvmvps.images.tiny import CMDLINE, DISK_SIZE, INITRD_MODULES, build_tiny_image
from tests.imagecheck import debugfs, raw_copy, read_newc
from tests.tools import missing_tool

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("KVMVPS_TEST_CACHE", "/var/cache/kvmvps-tests")) / "tiny-debs"
TOOLS = ("apt-get", "dpkg", "mkfs.ext4", "debugfs", "e2fsck", "qemu-img")
SHA512_HASH = (
    "$6$saltsaltsalt$PMWE8DTlam1JU37Piyk43bHcMxTJq6sgu5DKB0/tGPja"
    "nN35jcY68QkpDfPFUGPWX5uCxIQkSPzMmqEiVNgts."
)  # openssl passwd -6 -salt saltsaltsalt secret


def _skip_unless_buildable() -> None:
    if os.geteuid() != 0:
        missing_tool("building the tiny image needs root")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        missing_tool(f"missing tools: {' '.join(missing)}")


def _pubkey() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " kvmvps-provisioning@test"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltImage, str, Path]:
    """Build once into a fresh directory; return the image, its key and a raw copy."""
    _skip_unless_buildable()
    key = _pubkey()
    dest = tmp_path_factory.mktemp("tiny")
    image = build_tiny_image(dest / "out", key, login_user="alice", cache_dir=CACHE)
    return image, key, raw_copy(image, dest)


def _debugfs(raw: Path, request: str) -> str:
    return debugfs(raw, request)


def _stat(raw: Path, path: str) -> tuple[str, int, int, int]:
    """Return (type, permission bits, uid, gid) of a path in the image."""
    out = _debugfs(raw, f"stat {path}")
    assert "Type:" in out, f"{path} is missing from the image"
    kind = out.split("Type:")[1].split()[0]
    mode = int(out.split("Mode:")[1].split()[0], 8)
    uid = int(out.split("User:")[1].split()[0])
    gid = int(out.split("Group:")[1].split()[0])
    return kind, mode, uid, gid


def test_result_describes_a_tiny_direct_boot_image(built: tuple[BuiltImage, str, Path]) -> None:
    image, _, _ = built
    out = image.base_path.parent
    assert image.base_path == out / "disk.qcow2"
    assert image.kernel_path == out / "vmlinuz"
    assert image.initrd_path == out / "initrd.img"
    assert image.cmdline == CMDLINE
    assert "root=/dev/vda" in image.cmdline and "console=ttyS0" in image.cmdline
    assert (image.login_user, image.cloud_init, image.os_family) == ("alice", False, "tiny")
    assert image.tcg_tb_cache_mib == 32  # its VPSes' code cache under emulation
    assert sorted(p.name for p in out.iterdir()) == ["disk.qcow2", "initrd.img", "vmlinuz"]


def test_disk_is_a_standalone_small_qcow2(built: tuple[BuiltImage, str, Path]) -> None:
    image, _, _ = built
    header = image.base_path.read_bytes()[:16]
    assert header[:4] == b"QFI\xfb"
    backing_offset = struct.unpack(">Q", header[8:16])[0]
    assert backing_offset == 0, "the base image must not have a backing file"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(image.base_path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == DISK_SIZE
    assert "backing-filename" not in info
    assert image.base_path.stat().st_size < 20 * 1024 * 1024


def test_whole_disk_is_a_clean_ext4_filesystem(built: tuple[BuiltImage, str, Path]) -> None:
    _, _, raw = built
    with open(raw, "rb") as f:
        f.seek(1024 + 0x38)
        assert f.read(2) == b"\x53\xef", "no ext4 superblock at the start of the disk"
    subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, check=True)


def test_kernel_and_initrd(built: tuple[BuiltImage, str, Path]) -> None:
    image, _, _ = built
    assert image.kernel_path is not None and image.initrd_path is not None
    assert image.kernel_path.read_bytes()[0x202:0x206] == b"HdrS", "not a bzImage"
    entries = read_newc(gzip.decompress(image.initrd_path.read_bytes()))
    mode, init = entries["init"]
    assert stat.S_ISREG(mode) and mode & 0o111
    assert init.startswith(b"#!/bin/sh") and b"switch_root /newroot /sbin/init" in init
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    assert entries["bin/sh"] == (stat.S_IFLNK | 0o777, b"/bin/busybox")
    for name in INITRD_MODULES:
        assert entries[f"lib/modules/{name}.ko"][1][:4] == b"\x7fELF", name
    order = entries["etc/modules"][1].decode().split()
    assert order[:2] == ["virtio_ring", "virtio"] and order.index("virtio_blk") > order.index(
        "virtio_pci"
    )
    assert "button" in order and "evdev" in order and order == list(INITRD_MODULES)


def test_root_accepts_exactly_the_provisioning_key(built: tuple[BuiltImage, str, Path]) -> None:
    _, key, raw = built
    assert _debugfs(raw, "cat /root/.ssh/authorized_keys") == key + "\n"
    assert _stat(raw, "/root/.ssh/authorized_keys") == ("regular", 0o600, 0, 0)
    assert _stat(raw, "/root/.ssh") == ("directory", 0o700, 0, 0)


def test_accounts(built: tuple[BuiltImage, str, Path]) -> None:
    _, _, raw = built
    passwd = _debugfs(raw, "cat /etc/passwd").splitlines()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd
    assert "alice:x:1000:1000:alice:/home/alice:/bin/sh" in passwd
    assert "alice:x:1000:" in _debugfs(raw, "cat /etc/group").splitlines()
    assert "/bin/sh" in _debugfs(raw, "cat /etc/shells").splitlines()
    shadow = {
        ln.split(":")[0]: ln.split(":") for ln in _debugfs(raw, "cat /etc/shadow").splitlines()
    }
    assert shadow["alice"][1] in ("!", "*"), "the login user must start locked"
    assert shadow["root"][1] in ("!", "*")
    assert _stat(raw, "/etc/shadow")[1:] == (0o600, 0, 0)
    assert _stat(raw, "/home/alice") == ("directory", 0o700, 1000, 1000)


def test_guest_programs_are_installed(built: tuple[BuiltImage, str, Path]) -> None:
    _, _, raw = built
    for path in (
        "/usr/sbin/chpasswd",
        "/etc/init.d/rcS",
        "/etc/init.d/rcK",
        "/usr/share/udhcpc/default.script",
        "/etc/acpi/PWRF/00000080",
        "/bin/busybox",
        "/usr/sbin/dropbear",
        "/usr/bin/dropbearkey",
        "/sbin/resize2fs",
        "/usr/sbin/grow-root",
    ):
        kind, mode, uid, _ = _stat(raw, path)
        assert (kind, uid) == ("regular", 0), path
        assert mode & 0o111 == 0o111, f"{path} is not executable"
    assert _debugfs(raw, "cat /usr/sbin/chpasswd").startswith("#!/bin/sh")
    inittab = _debugfs(raw, "cat /etc/inittab")
    assert "::sysinit:/etc/init.d/rcS" in inittab and "::shutdown:/etc/init.d/rcK" in inittab
    assert "dropbear -F -g" in inittab and "acpid" in inittab
    assert "/sbin/uevent /usr/sbin/grow-root" in inittab
    rcs = _debugfs(raw, "cat /etc/init.d/rcS")
    assert "/usr/sbin/grow-root boot &" in rcs  # in the background: sshd does not wait
    assert "renice -n 19 -p $!" in rcs and _stat(raw, "/usr/bin/renice")[0] == "symlink"
    assert _stat(raw, "/sbin/init")[0] == "symlink"


@pytest.fixture(scope="module")
def rootfs(built: tuple[BuiltImage, str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's root filesystem, copied out with debugfs rdump."""
    _, _, raw = built
    out = tmp_path_factory.mktemp("rootfs")
    subprocess.run(["debugfs", "-R", f"rdump / {out}", str(raw)], capture_output=True, check=True)
    return out


def _chroot(root: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(root), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_chpasswd_shim_sets_a_sha512_hash(rootfs: Path) -> None:
    result = _chroot(rootfs, "/usr/sbin/chpasswd", "-e", stdin=f"alice:{SHA512_HASH}\n")
    assert result.returncode == 0, result.stderr
    shadow = (rootfs / "etc/shadow").read_text().splitlines()
    alice = next(ln.split(":") for ln in shadow if ln.startswith("alice:"))
    assert alice[1] == SHA512_HASH and len(alice) == 9
    assert (rootfs / "etc/shadow").stat().st_mode & 0o777 == 0o600
    assert not list((rootfs / "etc").glob("shadow.*")), "temporary files left behind"


def test_chpasswd_shim_rejects_unknown_user_and_changes_nothing(rootfs: Path) -> None:
    before = (rootfs / "etc/shadow").read_text()
    result = _chroot(
        rootfs, "/usr/sbin/chpasswd", "-e", stdin=f"alice:{SHA512_HASH}\nmallory:{SHA512_HASH}\n"
    )
    assert result.returncode != 0
    assert "mallory" in result.stderr and "does not exist" in result.stderr
    assert (rootfs / "etc/shadow").read_text() == before
    bad = _chroot(rootfs, "/usr/sbin/chpasswd", "-e", stdin="alice:a:b\n")
    assert bad.returncode != 0 and (rootfs / "etc/shadow").read_text() == before


def test_chpasswd_shim_applies_every_line_and_keeps_the_other_fields(rootfs: Path) -> None:
    """Several users at once: the last line of a user wins, a user of /etc/passwd without a
    shadow line gets one, every field after the date stays; the temporary file a crashed run
    of the same PID left is no obstacle."""
    passwd, shadow = rootfs / "etc/passwd", rootfs / "etc/shadow"
    saved = passwd.read_text(), shadow.read_text()
    try:
        passwd.write_text(saved[0] + "carol:x:1002:1002::/home/carol:/bin/sh\n")
        lines = shadow.read_text().splitlines()
        alice = next(ln for ln in lines if ln.startswith("alice:")).split(":")
        alice[3:] = ["1", "60", "5", "9", "", ""]  # min, max, warn, inactive, expire, reserved
        shadow.write_text(
            "\n".join([ln for ln in lines if not ln.startswith("alice:")] + [":".join(alice)])
            + "\n"
        )
        (rootfs / "etc/shadow.chpasswd.1").write_text("left by a crashed run with PID 1")
        second = SHA512_HASH.replace("$6$", "$6$other")
        stdin = f"alice:{second}\ncarol:{SHA512_HASH}\nalice:{SHA512_HASH}"  # no last newline
        result = subprocess.run(  # as PID 1 of a PID namespace: its temporary file's name
            ["unshare", "--pid", "--fork", "chroot", str(rootfs), "/usr/sbin/chpasswd", "-e"],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        assert not list((rootfs / "etc").glob("shadow.*")), "temporary files left behind"
        after = {ln.split(":")[0]: ln.split(":") for ln in shadow.read_text().splitlines()}
        assert after["alice"][1] == SHA512_HASH and after["alice"][3:] == alice[3:]
        assert after["carol"][1] == SHA512_HASH
        assert ":".join(after["carol"][3:]) == "0:99999:7:::"  # a new line's defaults
        assert after["alice"][2] == after["carol"][2] and int(after["alice"][2]) > 19000  # today
        assert len(shadow.read_text().splitlines()) == len(lines) + 1  # one line for carol
        assert shadow.stat().st_mode & 0o777 == 0o600
    finally:
        passwd.write_text(saved[0])
        shadow.write_text(saved[1])
        for stale in (rootfs / "etc").glob("shadow.*"):
            stale.unlink()


def test_dropbear_runs_with_the_libraries_in_the_image(rootfs: Path) -> None:
    version = _chroot(rootfs, "/usr/sbin/dropbear", "-V")
    assert "Dropbear" in version.stderr + version.stdout, version.stderr
    made = _chroot(rootfs, "/usr/bin/dropbearkey", "-t", "ed25519", "-f", "/tmp/testkey")
    assert made.returncode == 0, made.stderr
    shown = _chroot(rootfs, "/usr/bin/dropbearkey", "-y", "-f", "/tmp/testkey")
    assert any(ln.startswith("ssh-ed25519 AAAA") for ln in shown.stdout.splitlines())


def test_resize2fs_runs_with_the_libraries_in_the_image(rootfs: Path, tmp_path: Path) -> None:
    """The guest's own resize2fs grows an ext4 filesystem (offline here, in a chroot)."""
    disk = rootfs / "tmp/disk.img"
    (rootfs / "proc/mounts").write_text("")  # /etc/mtab points there; no /proc in a chroot
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True, capture_output=True)
    with open(disk, "r+b") as f:
        f.truncate(64 << 20)
    grown = _chroot(rootfs, "/sbin/resize2fs", "/tmp/disk.img")
    assert grown.returncode == 0, grown.stderr
    assert "is now 65536 (1k) blocks long" in grown.stdout + grown.stderr or (
        "is now 16384 (4k) blocks long" in grown.stdout + grown.stderr
    ), grown.stdout
    disk.unlink()
    (rootfs / "proc/mounts").unlink()


def test_second_build_uses_the_cache(built: tuple[BuiltImage, str, Path], tmp_path: Path) -> None:
    messages: list[str] = []
    build_tiny_image(tmp_path / "again", _pubkey(), cache_dir=CACHE, progress=messages.append)
    assert not any("downloading" in m for m in messages), messages
    assert (tmp_path / "again" / "disk.qcow2").is_file()


@pytest.mark.parametrize("user", ["root", "Bad", "1abc", "a b", ""])
def test_rejects_bad_login_user(tmp_path: Path, user: str) -> None:
    with pytest.raises(InvalidInput):
        build_tiny_image(tmp_path, _pubkey(), login_user=user)


@pytest.mark.parametrize("key", ["", "not a key", "ssh-ed25519 AAAA\nssh-rsa AAAA"])
def test_rejects_bad_provisioning_key(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidInput):
        build_tiny_image(tmp_path, key)
