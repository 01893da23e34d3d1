"""The tiny guest image: busybox + dropbear on Debian's cloud kernel.

Everything comes from Debian packages fetched with ``apt-get download`` into
a cache directory and unpacked with ``dpkg -x``; nothing is mounted. The root
filesystem is made with ``mkfs.ext4 -d`` on the whole disk (no partition
table) and converted to qcow2. The guest-side scripts live in ``guest/tiny-*``
next to this module (package data).

Guest facts: busybox init with ``guest/tiny-inittab``; DHCP on eth0 with udhcpc;
dropbear (ed25519 host key made on first boot) with root login by key only;
busybox acpid turns the ACPI power button into a clean poweroff; a POSIX-sh
``chpasswd`` shim; e2fsprogs' ``resize2fs`` grows the root filesystem to fill
the disk at every boot and whenever the disk grows while the guest runs
(``guest/tiny-grow-root``, run by rcS and by busybox ``uevent``). The build must run as root (file ownership in the image).
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from kvmvps.errors import ImageBuildError, InvalidInput
from kvmvps.images import BuiltImage, publish

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
ROOTFS_PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
    "libcrypt1",
    "libc6",
    "e2fsprogs",
    "libext2fs2",
    "libcom-err2",
)
# Load order matters: each module needs the ones before it.
# What mounting the root disk (/dev/vda) needs; ext4 is built into the cloud kernel.
ROOT_DISK_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
)
INITRD_MODULES = (
    *ROOT_DISK_MODULES,
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_balloon",  # free page reporting: memory the guest frees goes back to the host
    # the host's entropy (the domain's <rng>): without it the kernel's random
    # pool is ready only seconds into an emulated boot, and sshd waits for it
    "virtio-rng",
    "button",
    "evdev",
)
# no_timer_check: under emulation on a busy host the boot-time timer IRQ check
# can time out and panic ("IO-APIC + timer doesn't work"); VMs skip it.
# The kernel writes to the serial console only: drawing its messages on the
# emulated VGA text screen as well slows an emulated boot; the screen (the
# graphical console) shows the login prompt of the getty on tty1.
CMDLINE = "console=ttyS0 root=/dev/vda rw quiet no_timer_check"
DISK_SIZE = 256 * 1024 * 1024
# Under emulation, the translated-code cache of its VPSes (the image's own, instead
# of KVMVPS_TCG_TB_CACHE_MIB's 128): an idle tiny guest's QEMU held 198 MiB instead
# of 263, and an order took 3.79 s to working credentials instead of 3.53 s
# (bench/guest_memory.py, medians of 2).
TCG_CACHE_MIB = 32
DEFAULT_CACHE_DIR = Path("/var/cache/kvmvps/debs")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
HOST_TOOLS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg": "dpkg",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
}
# guest/ file -> (path in the root filesystem, mode)
GUEST_FILES = {
    "tiny-inittab": ("etc/inittab", 0o644),
    "tiny-rcS": ("etc/init.d/rcS", 0o755),
    "tiny-rcK": ("etc/init.d/rcK", 0o755),
    "tiny-udhcpc.script": ("usr/share/udhcpc/default.script", 0o755),
    "tiny-acpi-power": ("etc/acpi/PWRF/00000080", 0o755),
    "tiny-chpasswd": ("usr/sbin/chpasswd", 0o755),
    "tiny-profile": ("etc/profile", 0o644),
    "tiny-grow-root": ("usr/sbin/grow-root", 0o755),
}
ROOTFS_DIRS = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "lib64",
    "etc/init.d",
    "etc/dropbear",
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "mnt",
    "var/log",
    "home",
    "root",
)
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
KEY_RE = re.compile(r"(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?")

Progress = Callable[[str], None]


def build_tiny_image(
    dest_dir: Path,
    provisioning_pubkey: str,
    *,
    login_user: str = "vps",
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> BuiltImage:
    """Build the tiny image into dest_dir: disk.qcow2, vmlinuz and initrd.img."""
    say = progress or (lambda _msg: None)
    pubkey = _check_arguments(provisioning_pubkey, login_user)
    _check_host()
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    dest = Path(dest_dir)
    try:
        return _build(dest, cache, pubkey, login_user, say)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ImageBuildError(
            f"building the tiny image failed: {exc.strerror or exc}{where}"
        ) from exc


def _build(dest: Path, cache: Path, pubkey: str, login_user: str, say: Progress) -> BuiltImage:
    """Do the build of build_tiny_image (OSError escapes to the caller)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tiny-build-", dir=dest) as tmpname:
        work = Path(tmpname)
        say("resolving Debian packages")
        kernel_pkg = _kernel_package()
        say("fetching packages into the cache")
        debs = _fetch_debs((kernel_pkg, *ROOTFS_PACKAGES), cache, say)
        say("unpacking packages")
        ktree, ptree = work / "kernel", work / "pkgs"
        _unpack([debs[kernel_pkg]], ktree)
        _unpack([debs[p] for p in ROOTFS_PACKAGES], ptree)
        applets = _busybox_applets(ptree / "bin/busybox")
        say("assembling the initramfs")
        write_initrd(ktree, ptree / "bin/busybox", applets, INITRD_MODULES, work / "initrd.img")
        shutil.copyfile(_find_kernel(ktree), work / "vmlinuz")
        say("assembling the root filesystem")
        root = work / "rootfs"
        _make_rootfs(root, ptree, applets, login_user, pubkey)
        say("making the disk image")
        _make_disk(root, work, work / "disk.qcow2")
        built = publish(
            work,
            dest,
            cmdline=CMDLINE,
            login_user=login_user,
            cloud_init=False,
            os_family="tiny",
            tcg_tb_cache_mib=TCG_CACHE_MIB,
        )
    say("tiny image ready")
    return built


def _check_arguments(pubkey: str, login_user: str) -> str:
    """Validate the provisioning key and login user; return the key stripped."""
    key = pubkey.strip()
    if not KEY_RE.fullmatch(key):
        raise InvalidInput("the provisioning key must be one OpenSSH public key line")
    if not USER_RE.fullmatch(login_user) or login_user == "root":
        raise InvalidInput(f"invalid login user name: {login_user!r}")
    return key


def _check_host() -> None:
    """Fail early, with the package to install, if the build cannot work here."""
    if os.geteuid() != 0:
        raise ImageBuildError("building the tiny image needs root (file ownership in the image)")
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} not found: apt-get install {package}")
    arch = _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").strip()
    if arch != "amd64":
        raise ImageBuildError(f"the tiny image is built on amd64 hosts only, not {arch}")


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    """Run a command and return its stdout; raise ImageBuildError on failure."""
    env = {**os.environ, "LC_ALL": "C"}
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ImageBuildError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise ImageBuildError(f"{what} failed: {detail}")
    return proc.stdout


def _kernel_package() -> str:
    """Name the kernel package linux-image-cloud-amd64 currently depends on."""
    out = _run(
        ["apt-cache", "depends", KERNEL_METAPACKAGE],
        f"apt-cache depends {KERNEL_METAPACKAGE} (run apt-get update?)",
    )
    for line in out.splitlines():
        match = re.match(r"^\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", line)
        if match:
            return match.group(1)
    raise ImageBuildError(f"{KERNEL_METAPACKAGE} names no kernel package (run apt-get update?)")


def _deb_names(packages: Iterable[str]) -> dict[str, str]:
    """Map each package to the file name apt-get download gives its candidate."""
    wanted = list(packages)
    out = _run(
        ["apt-cache", "show", "--no-all-versions", *wanted], "apt-cache show (run apt-get update?)"
    )
    names: dict[str, str] = {}
    for stanza in out.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version|Architecture): (\S+)$", stanza, re.M))
        if len(fields) == 3 and fields["Package"] in wanted:
            version = fields["Version"].replace(":", "%3a")
            names[fields["Package"]] = f"{fields['Package']}_{version}_{fields['Architecture']}.deb"
    missing = [p for p in wanted if p not in names]
    if missing:
        raise ImageBuildError(
            f"no installable version of {', '.join(missing)} (run apt-get update?)"
        )
    return names


def _fetch_debs(packages: Iterable[str], cache: Path, say: Progress) -> dict[str, Path]:
    """Return the cached .deb of each package, downloading the missing ones."""
    names = _deb_names(packages)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageBuildError(f"cannot create the package cache {cache}: {exc.strerror}") from exc
    missing = [p for p, name in names.items() if not (cache / name).is_file()]
    if missing:
        say(f"downloading {len(missing)} package(s): {' '.join(missing)}")
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
            _run(
                ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *missing],
                "apt-get download",
                cwd=Path(tmp),
            )
            for pkg in missing:
                got = Path(tmp) / names[pkg]
                if not got.is_file():
                    raise ImageBuildError(f"apt-get download did not produce {names[pkg]}")
                os.replace(got, cache / names[pkg])
    return {p: cache / name for p, name in names.items()}


def _unpack(debs: Iterable[Path], tree: Path) -> None:
    """Unpack .deb files into one directory tree with dpkg -x."""
    tree.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(tree)], f"dpkg -x {deb.name}")


def _busybox_applets(busybox: Path) -> list[str]:
    """List busybox's applets as root-relative paths (bin/sh, sbin/init, ...)."""
    out = _run([str(busybox), "--list-full"], "busybox --list-full")
    return [a for a in out.split() if "/" in a and ".." not in a and not a.startswith("/")]


def _find_kernel(ktree: Path) -> Path:
    """Return the vmlinuz in an unpacked kernel package."""
    found = sorted(ktree.glob("boot/vmlinuz-*"))
    if not found:
        raise ImageBuildError("the kernel package holds no boot/vmlinuz-*")
    return found[0]


def _find_module(ktree: Path, name: str) -> bytes:
    """Return the contents of kernel module name (.ko, or .ko.xz decompressed)."""
    for suffix in (".ko", ".ko.xz"):
        found = sorted(ktree.glob(f"lib/modules/*/kernel/**/{name}{suffix}"))
        if found:
            data = found[0].read_bytes()
            return lzma.decompress(data) if suffix == ".ko.xz" else data
    raise ImageBuildError(f"kernel module {name} is missing from the kernel package")


def busybox(cache: Path, work: Path, say: Progress) -> tuple[Path, list[str]]:
    """busybox-static from the package cache, unpacked in work: its path and applets."""
    debs = _fetch_debs(("busybox-static",), cache, say)
    tree = work / "busybox"
    _unpack([debs["busybox-static"]], tree)
    return tree / "bin/busybox", _busybox_applets(tree / "bin/busybox")


def write_initrd(
    ktree: Path, busybox_path: Path, applets: list[str], modules: Iterable[str], out: Path
) -> None:
    """Write a gzip'd newc initramfs: busybox, the kernel modules (from ktree, in load
    order) and guest/tiny-initramfs-init, which loads them and mounts the root disk."""
    modules = tuple(modules)
    cpio = _Cpio()
    dirs = {"bin", "dev", "proc", "sys", "newroot", "etc", "lib", "lib/modules"}
    for applet in applets:
        parts = applet.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    for d in sorted(dirs):
        cpio.directory(d)
    cpio.device("dev/console", stat.S_IFCHR | 0o600, 5, 1)
    cpio.file("bin/busybox", busybox_path.read_bytes(), 0o755)
    for applet in applets:
        if applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")
    cpio.file("init", _guest_file("tiny-initramfs-init"), 0o755)
    cpio.file("etc/modules", "".join(f"{m}\n" for m in modules).encode(), 0o644)
    for name in modules:
        cpio.file(f"lib/modules/{name}.ko", _find_module(ktree, name), 0o644)
    out.write_bytes(gzip.compress(cpio.finish(), compresslevel=9, mtime=0))


class _Cpio:
    """A minimal writer of the newc cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        raw = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(raw), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._parts += [
            header,
            raw,
            b"\0" * (-(len(header) + len(raw)) % 4),
            data,
            b"\0" * (-len(data) % 4),
        ]

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def device(self, name: str, mode: int, major: int, minor: int) -> None:
        self._entry(name, mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)


def _guest_file(name: str) -> bytes:
    """Read one of the guest-side files shipped in kvmvps/images/guest/."""
    return resources.files("kvmvps.images").joinpath("guest", name).read_bytes()


def _elf_needed(path: Path) -> list[str]:
    """Return the DT_NEEDED sonames of an ELF64 little-endian file."""
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        raise ImageBuildError(f"{path.name} is not a 64-bit little-endian ELF file")
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        ptype, _, offset, vaddr, _, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if ptype == 1:
            loads.append((vaddr, offset, filesz))
        elif ptype == 2:
            dynamic = (offset, filesz)
    if dynamic is None:
        return []
    needed, strtab = [], None
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:
            needed.append(value)
        elif tag == 5:
            strtab = value
    base = next(
        (
            off + strtab - va
            for va, off, size in loads
            if strtab is not None and va <= strtab < va + size
        ),
        None,
    )
    if base is None:
        raise ImageBuildError(f"{path.name}: cannot find the dynamic string table")
    return [data[base + n : data.index(b"\0", base + n)].decode() for n in needed]


def _copy_with_libraries(ptree: Path, root: Path, binaries: Iterable[str]) -> None:
    """Copy binaries from the unpacked packages with every library they need."""
    todo = list(binaries)
    done: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in done:
            continue
        done.add(rel)
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_resolve_in(ptree, rel), target)
        os.chmod(target, 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
        for soname in _elf_needed(target):
            libs = [f"{d}/{soname}" for d in LIB_DIRS if (ptree / d / soname).exists()]
            if not libs:
                raise ImageBuildError(
                    f"library {soname} (needed by {Path(rel).name}) is "
                    "in none of the downloaded packages"
                )
            todo.append(libs[0])


def _resolve_in(tree: Path, rel: str) -> Path:
    """Follow symlinks inside tree (absolute targets stay in tree, not the host)."""
    for _ in range(40):
        path = tree / rel
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        rel = os.path.normpath(
            target.lstrip("/")
            if target.startswith("/")
            else os.path.join(os.path.dirname(rel), target)
        )
        if rel.startswith(".."):
            break
    raise ImageBuildError(f"cannot resolve {rel} inside the unpacked packages")


def _make_rootfs(root: Path, ptree: Path, applets: list[str], login_user: str, pubkey: str) -> None:
    """Assemble the guest root filesystem tree under root."""
    for d in ROOTFS_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / d, 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    (root / "var/run").symlink_to("../run")
    (root / "etc/mtab").symlink_to("../proc/mounts")
    shutil.copyfile(ptree / "bin/busybox", root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    for applet in applets:
        link = root / applet
        if applet != "bin/busybox" and not applet.endswith("/chpasswd"):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    _copy_with_libraries(
        ptree, root, ["usr/sbin/dropbear", "usr/bin/dropbearkey", "sbin/resize2fs"]
    )
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    for name, (rel, mode) in GUEST_FILES.items():
        _write(root / rel, _guest_file(name), mode)
    os.mknod(root / "dev/console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    _write_config(root)
    _write_accounts(root, login_user, pubkey)


def _write(path: Path, data: bytes | str, mode: int, owner: tuple[int, int] = (0, 0)) -> None:
    """Write a file with the given mode and owner, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chown(path, *owner)
    os.chmod(path, mode)


def _write_config(root: Path) -> None:
    """Write the static /etc files."""
    _write(root / "etc/hostname", "localhost\n", 0o644)
    _write(root / "etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tlocalhost\n", 0o644)
    _write(root / "etc/shells", "/bin/sh\n/bin/ash\n", 0o644)
    _write(
        root / "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        0o644,
    )
    _write(root / "etc/resolv.conf", "", 0o644)
    _write(
        root / "etc/os-release",
        'NAME="kvmvps tiny"\nID=kvmvps-tiny\nPRETTY_NAME="kvmvps tiny (busybox)"\n',
        0o644,
    )
    _write(root / "etc/fstab", "/dev/vda\t/\text4\trw\t0 1\n", 0o644)


def _write_accounts(root: Path, login_user: str, pubkey: str) -> None:
    """Write passwd, group and shadow; install the provisioning key for root."""
    home = f"/home/{login_user}"
    days = int(time.time()) // 86400
    _write(
        root / "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n"
        f"{login_user}:x:1000:1000:{login_user}:{home}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
        0o644,
    )
    _write(
        root / "etc/group", f"root:x:0:\ntty:x:5:\n{login_user}:x:1000:\nnogroup:x:65534:\n", 0o644
    )
    # "*": root has no password at all; "!": the login user is locked until chpasswd.
    _write(
        root / "etc/shadow",
        f"root:*:{days}:0:99999:7:::\n{login_user}:!:{days}:0:99999:7:::\n"
        f"nobody:*:{days}:0:99999:7:::\n",
        0o600,
    )
    os.chmod(root / "root", 0o700)
    (root / "root/.ssh").mkdir(mode=0o700)
    _write(root / "root/.ssh/authorized_keys", pubkey + "\n", 0o600)
    for rel in (home.lstrip("/"), f"{home.lstrip('/')}/.ssh"):
        (root / rel).mkdir(mode=0o700)
        os.chown(root / rel, 1000, 1000)


def _make_disk(root: Path, work: Path, out: Path) -> None:
    """Make an ext4 filesystem of root on a whole raw disk, then a qcow2 of it."""
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(DISK_SIZE)
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-T",
            "default",
            "-m",
            "1",
            "-L",
            "kvmvps-root",
            "-E",
            "root_owner=0:0",
            "-d",
            str(root),
            str(raw),
        ],
        "mkfs.ext4 -d",
    )
    _run(
        ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
        "qemu-img convert",
    )
    raw.unlink()
