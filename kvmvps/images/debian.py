"""The Debian image: a debootstrapped Debian with systemd, OpenSSH and cloud-init.

``debootstrap --variant=minbase`` builds the root filesystem from the Debian
mirror the host's apt already uses. The packages are cached as a debootstrap
tarball (``--make-tarball`` / ``--unpack-tarball``), so a rebuild downloads
nothing; the installed tree (before any per-build configuration) is cached
as a plain tar beside it, so a rebuild from the same packages installs
nothing either. The filesystem is made with ``mkfs.ext4 -d`` on the whole disk (no
partition table, nothing mounted) and converted to a compressed qcow2; the
kernel and initrd are copied out for direct kernel boot.

Two kinds, one tree. By default cloud-init is installed but off
(``/etc/cloud/cloud-init.disabled``): kvmvps needs nothing from it, and under
emulation its two boot stages (Python starting twice, ordered before
``sysinit.target`` and so before sshd) cost about half a minute of every boot.
The image then works like the tiny one: the login user exists already, locked;
sshd's unit makes the host keys on the first boot (ed25519 and ECDSA) and
prints the public keys on the serial console, where kvmvps reads and pins
them; a unit grows the root filesystem to the disk at every boot. A customer
who wants cloud-init removes that one file.

With ``cloud_init=True`` cloud-init runs as in a cloud image:
``datasource_list: [NoCloud, None]`` (the seed is an ISO9660 ``cidata``
CD-ROM on a virtio-scsi bus: the cloud kernel has no AHCI driver); without a
seed it still runs with the None datasource. It creates the login user,
installs or generates the SSH host keys before sshd starts, prints them to the
serial console and grows the root filesystem (resize2fs, every boot, in the
background).

Both: root accepts the provisioning key. DHCP on eth0 by systemd-networkd as
soon as udev announces the NIC (the boot does not wait for the lease);
/etc/resolv.conf is written from the lease (guest/debian-resolv-conf);
ifupdown, which took 3-5 s more of an emulated vCPU to get the lease, is not
installed. systemd-logind powers off on the ACPI button.

Boot time under emulation: the VPS boots with the tiny image's busybox initrd,
which loads the virtio modules the root disk needs and mounts it (no udev in
the initrd); the image's own initrd (``update-initramfs``, kept for a customer
who boots the disk another way) holds only those modules too. The root
filesystem (mounted read-write by the kernel) has no fsck pass that would wait
for udev to announce /dev/vda. The build runs as root (debootstrap, file
ownership in the image).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from kvmvps import validation
from kvmvps.cloudinit import LOGIN_USER_GROUPS, LOGIN_USER_SUDO
from kvmvps.errors import ImageBuildError, InvalidInput
from kvmvps.images import BuiltImage, publish, tiny
from kvmvps.images.aptsources import MIRROR_SCHEMES, host_mirror

PACKAGES = (
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "iproute2",
    "passwd",
    "login",
    "cloud-init",
    "sudo",
    # debootstrap's resolver does not follow virtual packages: python3-cryptography
    # needs python3-cffi-backend-api-*, which python3-cffi-backend provides.
    "python3-cffi-backend",
)
ARCH = "amd64"
CMDLINE = "console=ttyS0 root=/dev/vda rw net.ifnames=0 no_timer_check"  # see images/tiny.py
DEFAULT_HOSTNAME = "debian"  # until the credentials step (or cloud-init) sets the VPS's
ETC_HOSTS = (
    f"127.0.0.1\tlocalhost\n127.0.1.1\t{DEFAULT_HOSTNAME}\n"
    "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\n"
    "ff02::2\t\tip6-allrouters\n"
)
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_CACHE_DIR = Path("/var/cache/kvmvps/debootstrap")
TARBALL_MAX_AGE = 7 * 24 * 3600  # then fetch the packages again (security updates)
DEBOOTSTRAP_TIMEOUT = 1800
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "umount": "mount",
    "tar": "tar",
    "apt-get": "apt",  # busybox-static, for the initrd (as the tiny image)
    "apt-cache": "apt",
}
_SUITE_RE = re.compile(r"[a-z][a-z0-9-]{1,30}")
# guest/ file -> (path in the root filesystem, mode)
GUEST_FILES = {
    "debian-cloud.cfg": ("etc/cloud/cloud.cfg.d/90_kvmvps.cfg", 0o644),
    "debian-eth0.network": ("etc/systemd/network/50-kvmvps-eth0.network", 0o644),
    "debian-ipv6": ("usr/local/sbin/kvmvps-ipv6", 0o755),
    "debian-resolv-conf": ("usr/local/sbin/kvmvps-resolv-conf", 0o755),
    "debian-resolv-conf.path": ("etc/systemd/system/kvmvps-resolv-conf.path", 0o644),
    "debian-resolv-conf.service": ("etc/systemd/system/kvmvps-resolv-conf.service", 0o644),
    "debian-ipv6.conf": ("etc/sysctl.d/90-kvmvps-ipv6.conf", 0o644),
    "debian-grow-root.rules": ("etc/udev/rules.d/90-kvmvps-grow-root.rules", 0o644),
    "debian-ssh-hostkeys.conf": ("etc/systemd/system/ssh.service.d/kvmvps-hostkeys.conf", 0o644),
    "debian-host-keys": ("usr/local/sbin/kvmvps-host-keys", 0o755),
    "debian-grow-root.service": ("etc/systemd/system/kvmvps-grow-root.service", 0o644),
}
# openssh-server's ordering, and the header of kvmvps's copy of its unit without it
SSH_UNIT_AFTER = "After=network.target auditd.service"
SSH_UNIT_HEADER = (
    "# kvmvps: Debian's ssh.service (/usr/lib/systemd/system), without After=network.target:\n"
    "# sshd listens on every address and needs no interface up. Delete this file to\n"
    "# go back to the package's unit.\n"
)
# Enabled in the image (``systemctl enable`` in the chroot): the network (DHCP
# on eth0: guest/debian-eth0.network), resolv.conf from its lease and the root
# filesystem's growth.
ENABLED_UNITS = (
    "systemd-networkd.service",
    "kvmvps-resolv-conf.path",
    "kvmvps-grow-root.service",
)
# cloud-init's documented off switch; a customer deletes it to turn cloud-init on
CLOUD_INIT_OFF = "etc/cloud/cloud-init.disabled"
# The initrd: only what mounting /dev/vda needs (ext4 is built into the cloud kernel).
INITRAMFS_CONF = (
    "# kvmvps: a small initrd for direct kernel boot on virtio\n"
    "MODULES=list\nCOMPRESS=gzip\nFSTYPE=ext4\n"
)
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk")
# The initrd the VPS boots with: the tiny image's busybox one, loading these modules
# of the image's own kernel (load order) and mounting /dev/vda. initramfs-tools'
# initrd runs udev to find the disk: about 5 s of an emulated boot instead of 1.
# The rng is the host's entropy (the domain's <rng>): ready before systemd starts,
# so nothing waits for the kernel's random pool.
BOOT_MODULES = (*tiny.ROOT_DISK_MODULES, "virtio-rng")
ROOTFS_RECIPE = hashlib.sha256(json.dumps([INITRAMFS_CONF, INITRAMFS_MODULES]).encode()).hexdigest()
# Trimmed from the image: apt's lists and caches, docs (copyright files stay), logs.
STRIP_CONTENTS = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/man",
    "usr/share/info",
    "var/log",
    "tmp",
    "var/tmp",
)

Progress = Callable[[str], None]


def build_debian_image(
    dest_dir: Path,
    provisioning_pubkey: str,
    *,
    login_user: str = "debian",
    suite: str = "bookworm",
    mirror: str | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    cloud_init: bool = False,
) -> BuiltImage:
    """Build the Debian image into dest_dir: disk.qcow2, vmlinuz and initrd.img.

    ``cloud_init``: cloud-init runs at boot and kvmvps gives the VPS a seed;
    otherwise cloud-init stays installed but off (see the module docstring).
    """
    say = progress or (lambda _msg: None)
    pubkey, user = _check_arguments(provisioning_pubkey, login_user, suite)
    mirror_url = _check_mirror(mirror) if mirror else host_mirror(suite)
    _check_host()
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with _workdir(dest) as work:
        root = work / "rootfs"
        tarball = _package_tarball(cache, suite, mirror_url, work, say)
        _installed_tree(tarball, suite, root, mirror_url, say)
        say("configuring the guest")
        _configure(root, pubkey, user, suite, mirror_url)
        _run(["chroot", str(root), "systemctl", "enable", *ENABLED_UNITS], "systemctl enable")
        if not cloud_init:
            _without_cloud_init(root, user)
        _strip(root)
        kernel, _initrd = _find_boot_files(root)
        shutil.copyfile(kernel, work / "vmlinuz")
        say("assembling the initramfs")
        busybox, applets = tiny.busybox(cache, work, say)
        tiny.write_initrd(root, busybox, applets, BOOT_MODULES, work / "initrd.img")
        say("making the disk image")
        _make_disk(root, work)
        built = publish(
            work, dest, cmdline=CMDLINE, login_user=user, cloud_init=cloud_init, os_family="debian"
        )
    say("Debian image ready")
    return built


def _check_arguments(pubkey: str, login_user: str, suite: str) -> tuple[str, str]:
    """Validate the provisioning key, login user and suite; return key and user."""
    key = validation.ssh_public_key(pubkey)
    user = validation.unix_user(login_user)
    if user == "root":
        raise InvalidInput("the login user cannot be root")
    if not _SUITE_RE.fullmatch(suite or ""):
        raise InvalidInput(f"invalid Debian suite name: {suite!r}")
    return key, user


def _check_mirror(mirror: str) -> str:
    if not mirror.startswith(MIRROR_SCHEMES) or any(c.isspace() for c in mirror):
        raise InvalidInput(f"invalid Debian mirror URL: {mirror!r}")
    return mirror.rstrip("/")


def _check_host() -> None:
    """Fail early, with the package to install, if the build cannot work here."""
    if os.geteuid() != 0:
        raise ImageBuildError("building the Debian image needs root (debootstrap, chroot)")
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} not found: apt-get install {package}")
    arch = _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").strip()
    if arch != ARCH:
        raise ImageBuildError(f"the Debian image is built on {ARCH} hosts only, not {arch}")


def _run(argv: list[str], what: str, timeout: float | None = None) -> str:
    """Run a command and return its stdout; raise ImageBuildError on failure."""
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise ImageBuildError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{what} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        detail = _last_message(output) if output else f"exit status {proc.returncode}"
        raise ImageBuildError(f"{what} failed: {detail}")
    return proc.stdout


def _last_message(output: str) -> str:
    """The most telling line of a tool's output: its last error, else its last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "W:")) or "rror" in ln]
    return (errors or lines)[-1][:300]


@contextmanager
def _workdir(dest: Path) -> Iterator[Path]:
    """A scratch directory in dest, removed afterwards (after unmounting leftovers)."""
    work = Path(tempfile.mkdtemp(prefix=".debian-build-", dir=dest))
    try:
        yield work
    finally:
        _unmount_below(work)
        if _mounts_below(work):
            raise ImageBuildError(f"{work} still has mounts; not deleting it")
        shutil.rmtree(work, ignore_errors=True)


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or under path, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _unmount_below(path: Path) -> None:
    """Unmount what an interrupted debootstrap may have left mounted in the tree."""
    for point in _mounts_below(path):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _package_tarball(cache: Path, suite: str, mirror: str, work: Path, say: Progress) -> Path:
    """The cached debootstrap tarball of all packages; downloaded when missing or old."""
    key = hashlib.sha256(json.dumps([suite, mirror, ARCH, sorted(PACKAGES)]).encode())
    tarball = cache / f"debootstrap-{suite}-{ARCH}-{key.hexdigest()[:16]}.tgz"
    try:
        if time.time() - tarball.stat().st_mtime < TARBALL_MAX_AGE:
            say(f"using cached packages {tarball}")
            return tarball
    except FileNotFoundError:
        pass
    say(f"downloading Debian {suite} packages from {mirror}")
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{tarball.name}.{os.getpid()}.partial"
    try:
        _debootstrap(["--make-tarball", str(partial)], suite, work / "download", mirror)
        os.replace(partial, tarball)
    finally:
        partial.unlink(missing_ok=True)
    return tarball


def _installed_tree(tarball: Path, suite: str, root: Path, mirror: str, say: Progress) -> None:
    """The debootstrapped tree with its small initrd, from the cached tar of an earlier
    build from the same package tarball; else installed and then cached."""
    cached = tree_cache_path(tarball)
    tar = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]
    if cached.is_file():
        say(f"using the cached installed tree {cached}")
        root.mkdir()
        _run([*tar, "-xpf", str(cached), "-C", str(root)], "unpacking the cached tree")
        return
    say(f"installing Debian {suite} with debootstrap")
    _debootstrap(["--unpack-tarball", str(tarball)], suite, root, mirror, invalid_cache=tarball)
    _small_initrd(root)
    for old in tarball.parent.glob(f"rootfs-{tarball.stem}-*.tar"):
        old.unlink(missing_ok=True)  # made from an older package tarball or recipe
    partial = cached.with_name(f".{cached.name}.{os.getpid()}.partial")
    try:
        _run([*tar, "-cf", str(partial), "-C", str(root), "."], "caching the installed tree")
        os.replace(partial, cached)
    except ImageBuildError as exc:  # only the next build's speed is lost
        say(f"not caching the installed tree: {exc}")
    finally:
        partial.unlink(missing_ok=True)


def tree_cache_path(tarball: Path) -> Path:
    """Where the installed tree made from this package tarball (and recipe) is cached."""
    stamp = int(tarball.stat().st_mtime)
    return tarball.with_name(f"rootfs-{tarball.stem}-{stamp}-{ROOTFS_RECIPE[:12]}.tar")


def _small_initrd(root: Path) -> None:
    """Rebuild the initrd with the virtio modules only (about a third of Debian's "most")."""
    _write(root / "etc/initramfs-tools/conf.d/kvmvps.conf", INITRAMFS_CONF)
    modules = root / "etc/initramfs-tools/modules"
    listed = modules.read_text(encoding="utf-8") if modules.is_file() else ""
    _write(modules, listed + "".join(f"{m}\n" for m in INITRAMFS_MODULES))
    _run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"], "update-initramfs")


def _debootstrap(
    mode: list[str], suite: str, target: Path, mirror: str, invalid_cache: Path | None = None
) -> None:
    """Run debootstrap --variant=minbase with our packages in the given mode."""
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--arch={ARCH}",
        f"--include={','.join(PACKAGES)}",
        *mode,
        suite,
        str(target),
        mirror,
    ]
    try:
        _run(argv, "debootstrap", timeout=DEBOOTSTRAP_TIMEOUT)
    except ImageBuildError:
        if invalid_cache is not None:  # maybe a bad tarball: fetch afresh next time
            invalid_cache.unlink(missing_ok=True)
        raise


def _configure(root: Path, pubkey: str, login_user: str, suite: str, mirror: str) -> None:
    """Turn the debootstrapped tree into a cloud guest (see the module docstring)."""
    for name, (rel, mode) in GUEST_FILES.items():
        _write(
            root / rel,
            resources.files("kvmvps.images").joinpath("guest", name).read_text(encoding="utf-8"),
            mode,
        )
    _write(root / "etc/cloud/cloud.cfg.d/91_kvmvps_user.cfg", _default_user_config(login_user))
    _write(root / "etc/hostname", f"{DEFAULT_HOSTNAME}\n")
    _write(root / "etc/hosts", ETC_HOSTS)
    # no fsck pass: the kernel mounts the root read-write, so systemd-fsck-root would
    # skip it anyway, after waiting for udev to announce /dev/vda
    _write(root / "etc/fstab", "/dev/vda\t/\text4\terrors=remount-ro\t0\t0\n")
    _write(root / "etc/default/locale", "LANG=C.UTF-8\n")
    _write(
        root / "etc/apt/sources.list",
        f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\n"
        f"deb {SECURITY_MIRROR} {suite}-security main\n",
    )
    # the host's; kvmvps-resolv-conf writes the lease's
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    _write(ssh_dir / "authorized_keys", pubkey + "\n", 0o600)
    _configure_sshd(root)
    _reset_identity(root)


def _without_cloud_init(root: Path, login_user: str) -> None:
    """cloud-init off: make here, once, the login user it would make at every first boot.

    The seed's groups and sudo rule (``kvmvps.cloudinit``); locked, like
    cloud-init's (``lock_passwd``): the credentials step sets its password.
    kvmvps-grow-root.service, which runs only while cloud-init is off, takes
    over from cloud-init's ``resize_rootfs``.
    """
    _write(root / CLOUD_INIT_OFF, "kvmvps: cloud-init is off; delete this file to turn it on\n")
    _run(
        [
            "chroot",
            str(root),
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "--groups",
            ",".join(LOGIN_USER_GROUPS),
            "--comment",
            login_user,
            login_user,
        ],
        "useradd",
    )
    _write(root / "etc/sudoers.d/90-kvmvps-login-user", f"{login_user} {LOGIN_USER_SUDO}\n", 0o440)


def _default_user_config(login_user: str) -> str:
    """cloud.cfg.d snippet: the login user cloud-init creates when there is no seed."""
    user = {
        "name": login_user,
        "lock_passwd": True,
        "gecos": login_user,
        "groups": list(LOGIN_USER_GROUPS),
        "sudo": [LOGIN_USER_SUDO],
        "shell": "/bin/bash",
    }
    # JSON is YAML; login_user is validated, but never formatted into YAML by hand.
    return (
        "# kvmvps: the default (login) user\n"
        + json.dumps({"system_info": {"default_user": user}}, indent=2)
        + "\n"
    )


def _configure_sshd(root: Path) -> None:
    """No host keys in the image; password logins on, in the drop-in cloud-init's
    ``ssh_pwauth`` edits, so it finds nothing to change and does not restart sshd."""
    _write(root / "etc/ssh/sshd_config.d/50-cloud-init.conf", "PasswordAuthentication yes\n", 0o600)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _ssh_unit_without_network_wait(root)
    # e2scrub_reap only cleans up LVM snapshots; there is no LVM here.
    (root / "etc/systemd/system/multi-user.target.wants/e2scrub_reap.service").unlink(
        missing_ok=True
    )


def _ssh_unit_without_network_wait(root: Path) -> None:
    """sshd starts without waiting for ``network.target``: the package's own unit,
    copied to /etc (as ``systemctl edit --full ssh`` does) minus that ordering.

    sshd listens on every address, so it needs no interface up; but Debian's unit
    waits for ``network.target``, which waited for ifupdown (``networking.service``
    and the DHCP lease of ``ifup@eth0``): under emulation, 10 s and more of every
    boot. A drop-in cannot remove an ordering, hence the copy; the package's
    drop-ins (``ssh.service.d``) still apply, and cloud-init, when on, still
    orders itself before sshd.
    """
    unit = (root / "usr/lib/systemd/system/ssh.service").read_text(encoding="utf-8")
    if SSH_UNIT_AFTER not in unit.splitlines():
        raise ImageBuildError(f"ssh.service has no line {SSH_UNIT_AFTER!r}; its ordering changed")
    _write(
        root / "etc/systemd/system/ssh.service",
        SSH_UNIT_HEADER + unit.replace(SSH_UNIT_AFTER, "After=auditd.service"),
    )


def _reset_identity(root: Path) -> None:
    """Each VPS gets its own machine-id on first boot; first boot must not prompt."""
    _write(root / "etc/machine-id", "")
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    firstboot = root / "etc/systemd/system/systemd-firstboot.service"
    firstboot.unlink(missing_ok=True)
    firstboot.symlink_to("/dev/null")  # masked: it would prompt on the console
    (root / "var/lib/systemd/random-seed").unlink(missing_ok=True)


def _strip(root: Path) -> None:
    """Drop apt's lists and caches, docs (keeping copyright files) and logs."""
    for rel in STRIP_CONTENTS:
        top = root / rel
        for entry in top.iterdir() if top.is_dir() else []:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
                entry.mkdir()  # keep the directory layout (apt wants partial/)
            else:
                entry.unlink()
    docs = root / "usr/share/doc"  # symlinks stay: /usr/share/doc/pkg -> its source's dir
    for path in sorted(docs.rglob("*"), reverse=True) if docs.is_dir() else []:
        if path.is_symlink():
            continue
        if path.is_file() and path.name != "copyright":
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for old in (root / "var/cache/debconf").glob("*-old"):
        old.unlink()
    shutil.rmtree(root / "debootstrap", ignore_errors=True)


def _find_boot_files(root: Path) -> tuple[Path, Path]:
    """The one installed kernel and its initrd under /boot."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one kernel in the image's /boot, found {len(kernels)}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise ImageBuildError(f"no initrd for kernel {version} in the image's /boot")
    return kernels[0], initrd


def _make_disk(root: Path, work: Path) -> None:
    """mkfs.ext4 -d the tree onto a raw file, check it, convert to (zstd) compressed qcow2."""
    raw = work / "disk.raw"
    size = _disk_size(root)
    with open(raw, "wb") as fh:
        fh.truncate(size)
    _run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root), str(raw)], "mkfs.ext4")
    _run(["e2fsck", "-f", "-n", str(raw)], "e2fsck")
    _run(
        [
            "qemu-img",
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",  # a quarter of zlib's CPU time, and smaller
            str(raw),
            str(work / "disk.qcow2"),
        ],
        "qemu-img convert",
    )
    raw.unlink()


def _disk_size(root: Path) -> int:
    """Room for the tree plus a third and 256 MiB, rounded up to 64 MiB."""
    used = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            used += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    step = 64 * 1024 * 1024
    want = used * 4 // 3 + 256 * 1024 * 1024
    return -(-want // step) * step


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file in the image (replacing a symlink rather than following it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
