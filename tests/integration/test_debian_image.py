"""Build the Debian image for real and inspect the result without booting it.

Needs root, debootstrap, e2fsprogs (debugfs) and qemu-utils, and the Debian
mirror. The packages are cached as a debootstrap tarball under the test cache
(a warm rebuild takes about a minute, a cold one about a minute and a half).
The disk is read with ``debugfs`` on a raw conversion, never mounted.

The first tests (mirror discovery and argument checks) are quick and need none
of that.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmvps import guest, keys
from kvmvps.errors import ImageBuildError, InvalidInput
from kvmvps.images import BuiltImage, debian
from kvmvps.images.debian import CMDLINE, build_debian_image, host_mirror
from kvmvps.models import Image
from kvmvps.services import Context, inventory
from tests.imagecheck import debugfs, raw_copy, read_newc
from tests.tools import missing_tool

CACHE = Path(os.environ.get("KVMVPS_TEST_CACHE", "/var/cache/kvmvps-tests")) / "debian-debootstrap"
TOOLS = ("debootstrap", "debugfs", "e2fsck", "mkfs.ext4", "qemu-img")


def _pubkey() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " kvmvps-provisioning@test"


# --- quick: mirror discovery and argument checks ------------------------------------------


def test_host_mirror_reads_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
    )
    assert (
        host_mirror("bookworm", tmp_path, tmp_path / "none.list") == "http://mirror.example/debian"
    )
    assert (
        host_mirror("bookworm-security", tmp_path, tmp_path / "none.list")
        == "http://security.example/debian-security"
    )


def test_host_mirror_skips_disabled_stanzas_and_reads_one_line_lists(tmp_path: Path) -> None:
    (tmp_path / "a.sources").write_text(
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
    )
    listing = tmp_path / "sources.list"
    listing.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n"
    )
    assert host_mirror("bookworm", tmp_path, listing) == "http://one.example/debian"


def test_host_mirror_falls_back_to_deb_debian_org(tmp_path: Path) -> None:
    (tmp_path / "x.sources").write_text("Types: deb\nURIs: cdrom:/media\nSuites: bookworm\n")
    assert (
        host_mirror("bookworm", tmp_path, tmp_path / "none.list") == "http://deb.debian.org/debian"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"login_user": "root"},
        {"login_user": "Bad User"},
        {"suite": "bookworm; rm -rf /"},
        {"mirror": "http://x/ --include=evil"},
        {"mirror": "ftp.example"},
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InvalidInput):
        build_debian_image(tmp_path / "out", _pubkey(), **kwargs)
    assert not (tmp_path / "out").exists()


def test_bad_provisioning_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        build_debian_image(tmp_path / "out", 'ssh-ed25519 AAAA\ncommand="sh" ssh-ed25519 B')


def test_building_without_root_is_an_image_build_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError, match="needs root"):
        build_debian_image(tmp_path / "out", _pubkey())


def test_a_chosen_login_user_is_the_one_cloud_init_creates(tmp_path: Path) -> None:
    """The session's real build uses the default user; a chosen one reaches the same files."""
    key = _pubkey()
    for rel in ("root", "etc/ssh", "etc/systemd/system", "var/lib/systemd"):
        (tmp_path / rel).mkdir(parents=True)  # the bits of a debootstrapped tree it edits
    _package_ssh_unit(tmp_path)
    debian._configure(tmp_path, key, "alice", "bookworm", "http://deb.debian.org/debian")
    user = yaml.safe_load((tmp_path / "etc/cloud/cloud.cfg.d/91_kvmvps_user.cfg").read_text())
    assert user["system_info"]["default_user"]["name"] == "alice"
    assert user["system_info"]["default_user"]["lock_passwd"] is True
    assert (tmp_path / "root/.ssh/authorized_keys").read_text() == key + "\n"
    assert not (tmp_path / "etc/passwd").exists()  # the user is made by useradd, or cloud-init
    # both kinds: the boot-time grow unit (enabled by the build, with the network; it runs
    # only while cloud-init is off)
    assert "kvmvps-grow-root.service" in debian.ENABLED_UNITS
    unit = (tmp_path / "etc/systemd/system/kvmvps-grow-root.service").read_text()
    assert "ConditionPathExists=/etc/cloud/cloud-init.disabled" in unit
    assert not (tmp_path / debian.CLOUD_INIT_OFF).exists()  # _without_cloud_init writes it


# openssh-server's unit in Debian 12 (/usr/lib/systemd/system/ssh.service)
PACKAGE_SSH_UNIT = """[Unit]
Description=OpenBSD Secure Shell server
Documentation=man:sshd(8) man:sshd_config(5)
After=network.target auditd.service
ConditionPathExists=!/etc/ssh/sshd_not_to_be_run

[Service]
EnvironmentFile=-/etc/default/ssh
ExecStartPre=/usr/sbin/sshd -t
ExecStart=/usr/sbin/sshd -D $SSHD_OPTS
Type=notify

[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""


def _package_ssh_unit(root: Path, text: str = PACKAGE_SSH_UNIT) -> None:
    unit = root / "usr/lib/systemd/system/ssh.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(text)


def test_sshd_does_not_wait_for_the_network(tmp_path: Path) -> None:
    """The package's unit, copied to /etc without After=network.target; the rest unchanged."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    _package_ssh_unit(tmp_path)
    debian._ssh_unit_without_network_wait(tmp_path)
    copy = (tmp_path / "etc/systemd/system/ssh.service").read_text()
    assert copy.startswith("# kvmvps: ")
    body = [ln for ln in copy.splitlines() if not ln.startswith("#")]
    expected = PACKAGE_SSH_UNIT.replace(
        "After=network.target auditd.service", "After=auditd.service"
    ).splitlines()
    assert body == expected
    assert "network.target" not in "\n".join(body)


def test_an_ssh_unit_whose_ordering_changed_stops_the_build(tmp_path: Path) -> None:
    """A later package with other ordering is not copied blindly: the build says so."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    _package_ssh_unit(tmp_path, PACKAGE_SSH_UNIT.replace("auditd.service", "other.service"))
    with pytest.raises(ImageBuildError, match="ordering changed"):
        debian._ssh_unit_without_network_wait(tmp_path)
    assert not (tmp_path / "etc/systemd/system/ssh.service").exists()


def _run_host_keys_script(ssh_dir: Path, console: Path) -> None:
    """Run the image's kvmvps-host-keys with ``ssh_dir`` as /etc/ssh and ``console`` as
    /dev/console, in a mount namespace of its own (the host's files are never touched)."""
    script = Path(debian.__file__).parent / "guest" / "debian-host-keys"
    console.write_text("")
    inner = (
        f"mount --bind {ssh_dir} /etc/ssh && mount --bind {console} /dev/console && "
        f"exec sh {script}"
    )
    subprocess.run(["unshare", "--mount", "sh", "-c", inner], check=True, timeout=60)


def test_host_key_script_makes_two_keys_once_and_prints_what_sshd_serves(tmp_path: Path) -> None:
    """The first boot without cloud-init: keys made, printed where kvmvps reads them."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ssh-keygen") is None:
        missing_tool("needs root, unshare and ssh-keygen")
    ssh_dir, console = tmp_path / "ssh", tmp_path / "console"
    ssh_dir.mkdir()
    _run_host_keys_script(ssh_dir, console)
    made = sorted(p.name for p in ssh_dir.iterdir())
    assert made == [
        "ssh_host_ecdsa_key",
        "ssh_host_ecdsa_key.pub",
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]
    printed = guest.parse_console_host_keys(console.read_text())
    ed25519 = " ".join((ssh_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    assert len(printed) == 2 and guest.preferred_key(printed) == ed25519
    # the next boot makes nothing new and prints the same keys, a missing .pub derived
    (ssh_dir / "ssh_host_ecdsa_key.pub").unlink()
    _run_host_keys_script(ssh_dir, console)
    assert sorted(guest.parse_console_host_keys(console.read_text())) == sorted(printed)
    assert len(list(ssh_dir.iterdir())) == 3


def test_host_key_script_adds_no_type_beside_a_seeded_key(tmp_path: Path) -> None:
    """cloud-init installed the seed's one key: sshd serves it alone, and it is printed."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ssh-keygen") is None:
        missing_tool("needs root, unshare and ssh-keygen")
    ssh_dir, console = tmp_path / "ssh", tmp_path / "console"
    ssh_dir.mkdir()
    key = ssh_dir / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    _run_host_keys_script(ssh_dir, console)
    assert sorted(p.name for p in ssh_dir.iterdir()) == [key.name, f"{key.name}.pub"]
    printed = guest.parse_console_host_keys(console.read_text())
    assert printed == [" ".join(Path(f"{key}.pub").read_text().split()[:2])]


def test_a_cached_installed_tree_is_unpacked_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild from the same package tarball unpacks the cached tree (owners kept)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (file owners in the tree)")
    tarball = tmp_path / "debootstrap-bookworm-amd64-0123.tgz"
    tarball.write_bytes(b"")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/marker").write_text("cached\n")
    os.chown(tree / "etc/marker", 1234, 5678)
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "-cf",
            str(debian.tree_cache_path(tarball)),
            "-C",
            str(tree),
            ".",
        ],
        check=True,
    )

    def no_debootstrap(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("debootstrap ran although the tree was cached")

    monkeypatch.setattr(debian, "_debootstrap", no_debootstrap)
    said: list[str] = []
    root = tmp_path / "work" / "rootfs"
    root.parent.mkdir()
    debian._installed_tree(tarball, "bookworm", root, "http://deb.debian.org/debian", said.append)
    assert (root / "etc/marker").read_text() == "cached\n"
    assert ((root / "etc/marker").stat().st_uid, (root / "etc/marker").stat().st_gid) == (
        1234,
        5678,
    )
    assert said == [f"using the cached installed tree {debian.tree_cache_path(tarball)}"]


# --- slow: the real build -------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(
    real_ctx: Context, debian_image: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[BuiltImage, str, Path]:
    """The session's Debian image (one build, shared with the e2e VPS test): the image,
    the provisioning key it was built with and a raw copy of its disk."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        missing_tool(f"missing tools: {' '.join(missing)}")
    with real_ctx.db.session() as s:
        row = inventory.get_by_name(s, Image, debian_image, "image")
        image = BuiltImage(
            base_path=Path(row.base_path),
            kernel_path=Path(row.kernel_path) if row.kernel_path else None,
            initrd_path=Path(row.initrd_path) if row.initrd_path else None,
            cmdline=row.cmdline,
            login_user=row.login_user,
            cloud_init=row.cloud_init,
            os_family=row.os_family,
        )
    key = keys.ensure_provisioning_key(real_ctx.settings)
    return image, key, raw_copy(image, tmp_path_factory.mktemp("debian"))


def _debugfs(raw: Path, request: str) -> str:
    return debugfs(raw, request)


def _cat(raw: Path, path: str) -> str:
    return _debugfs(raw, f"cat {path}")


def _ls(raw: Path, path: str) -> list[str]:
    """Names in a directory of the image (debugfs ``ls -p``: /ino/mode/uid/gid/name/size/)."""
    out = _debugfs(raw, f"ls -p {path}")
    return [line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6] or []


def _mode(raw: Path, path: str) -> int:
    out = _debugfs(raw, f"stat {path}")
    return int(out.split("Mode:")[1].split()[0], 8)


@pytest.mark.slow
@pytest.mark.libvirt  # the session's image lives in real_ctx
def test_output_files_and_boot_facts(built: tuple[BuiltImage, str, Path]) -> None:
    image, _key, _raw = built
    out = image.base_path.parent
    assert sorted(p.name for p in out.iterdir()) == ["disk.qcow2", "initrd.img", "vmlinuz"]
    assert image.kernel_path == out / "vmlinuz" and image.initrd_path == out / "initrd.img"
    assert image.cmdline == CMDLINE == "console=ttyS0 root=/dev/vda rw net.ifnames=0 no_timer_check"
    # the default kind: cloud-init installed but off, the host key read from the console
    assert (image.login_user, image.cloud_init, image.os_family) == ("debian", False, "debian")
    assert image.kernel_path.read_bytes()[0x202:0x206] == b"HdrS"  # Linux boot protocol
    head = image.initrd_path.read_bytes()[:6]
    assert head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd" or head == b"070701"
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
@pytest.mark.libvirt  # the session's image lives in real_ctx
def test_disk_is_a_standalone_compressed_qcow2(built: tuple[BuiltImage, str, Path]) -> None:
    image, _key, _raw = built
    assert image.base_path.read_bytes()[:4] == b"QFI\xfb"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(image.base_path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info and "full-backing-filename" not in info
    assert info["actual-size"] < info["virtual-size"] / 3  # compressed, and small
    assert info["actual-size"] < 300 * 1024 * 1024
    assert info["format-specific"]["data"]["compression-type"] == "zstd"


@pytest.mark.slow
@pytest.mark.libvirt  # the session's image lives in real_ctx
def test_whole_disk_ext4_that_checks_clean(built: tuple[BuiltImage, str, Path]) -> None:
    _image, _key, raw = built
    with open(raw, "rb") as fh:
        head = fh.read(2048)
    assert head[1080:1082] == b"\x53\xef"  # ext4 superblock magic at 1024 + 0x38
    assert head[510:512] != b"\x55\xaa"  # no MBR / partition table
    subprocess.run(["e2fsck", "-f", "-n", str(raw)], check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.libvirt  # the session's image lives in real_ctx
def test_kernel_and_initrd_are_the_images_own(
    built: tuple[BuiltImage, str, Path], tmp_path: Path
) -> None:
    image, _key, raw = built
    kernels = [n for n in _ls(raw, "/boot") if n.startswith("vmlinuz-")]
    assert len(kernels) == 1
    version = kernels[0].removeprefix("vmlinuz-")
    assert version.endswith("-cloud-amd64")
    _debugfs(raw, f"dump /boot/vmlinuz-{version} {tmp_path / 'k'}")
    assert (tmp_path / "k").read_bytes() == image.kernel_path.read_bytes()
    assert version in _ls(raw, "/usr/lib/modules")
    # the VPS boots the busybox initrd: it loads the image's own modules, in order
    entries = read_newc(gzip.decompress(image.initrd_path.read_bytes()))
    assert b"switch_root /newroot /sbin/init" in entries["init"][1]
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    assert entries["etc/modules"][1].decode().split() == list(debian.BOOT_MODULES)
    paths = {
        Path(line.split(":")[0]).name: line.split(":")[0]
        for line in _cat(raw, f"/usr/lib/modules/{version}/modules.dep").splitlines()
    }
    for name in debian.BOOT_MODULES:
        _debugfs(raw, f"dump /usr/lib/modules/{version}/{paths[name + '.ko']} {tmp_path / 'm'}")
        assert entries[f"lib/modules/{name}.ko"][1] == (tmp_path / "m").read_bytes(), name
    assert "udevadm" not in str(sorted(entries))
    assert image.initrd_path.stat().st_size < 2 * 1024 * 1024  # initramfs-tools' small one: 6 MiB
    # the image's own initrd (a customer booting the disk another way): virtio only
    assert "MODULES=list" in _cat(raw, "/etc/initramfs-tools/conf.d/kvmvps.conf")
    modules = _cat(raw, "/etc/initramfs-tools/modules").split()
    assert "virtio_blk" in modules and "virtio_pci" in modules
    assert f"initrd.img-{version}" in _ls(raw, "/boot")


@pytest.mark.slow
@pytest.mark.libvirt  # the session's image lives in real_ctx
def test_cloud_init_configuration(built: tuple[BuiltImage, str, Path]) -> None:
    _image, _key, raw = built
    text = _cat(raw, "/etc/cloud/cloud.cfg.d/90_kvmvps.cfg")
    # ds-identify only reads a datasource_list written on one line.
    assert "\ndatasource_list: [ NoCloud, None ]\n" in text
    config = yaml.safe_load(text)
    assert config["datasource_list"] == ["NoCloud", "None"]
    assert config["disable_root"] is False
    assert config["growpart"] == {"mode": "off"} and config["resize_rootfs"] == "noblock"
    assert config["network"] == {"config": "disabled"}  # the image's networkd file is
    assert "dsa" not in config["ssh_genkeytypes"]
    user = yaml.safe_load(_cat(raw, "/etc/cloud/cloud.cfg.d/91_kvmvps_user.cfg"))
    assert user["system_info"]["default_user"]["name"] == "debian"  # the default login user
    assert user["system_info"]["default_user"]["lock_passwd"] is True
    assert "cloud-init.service" in _ls(raw, "/etc/systemd/system/cloud-init.target.wants")
    # installed, and off until a customer deletes the documented switch
    assert "cloud-init is off" in _cat(raw, "/etc/cloud/cloud-init.disabled")


@pytest.mark.slow
@pytest.mark.libvirt  # the session's image lives in real_ctx
def test_root_key_and_ssh_setup(built: tuple[BuiltImage, str, Path]) -> None:
    image, key, raw = built
    assert _cat(raw, "/root/.ssh/authorized_keys") == key + "\n"
    assert _mode(raw, "/root/.ssh/authorized_keys") & 0o777 == 0o600
    assert _mode(raw, "/root/.ssh") & 0o777 == 0o700
    assert not [n for n in _ls(raw, "/etc/ssh") if n.startswith("ssh_host_")]
    assert _cat(raw, "/etc/ssh/sshd_config.d/50-cloud-init.conf") == "PasswordAuthentication yes\n"
    # sshd's unit: the package's own, without the wait for network.target
    unit = _cat(raw, "/etc/systemd/system/ssh.service")
    package = _cat(raw, "/usr/lib/systemd/system/ssh.service")
    assert "After=network.target auditd.service" in package.splitlines()
    assert [ln for ln in unit.splitlines() if not ln.startswith("#")] == package.replace(
        "After=network.target auditd.service", "After=auditd.service"
    ).splitlines()
    dropin = _cat(raw, "/etc/systemd/system/ssh.service.d/kvmvps-hostkeys.conf")
    starts = [ln for ln in dropin.splitlines() if ln.startswith("ExecStartPre=")]
    assert starts == ["ExecStartPre=", "ExecStartPre=/usr/local/sbin/kvmvps-host-keys"]
    script = _cat(raw, "/usr/local/sbin/kvmvps-host-keys")
    assert _mode(raw, "/usr/local/sbin/kvmvps-host-keys") & 0o777 == 0o755
    assert "for type in ed25519 ecdsa" in script and "-----BEGIN SSH HOST KEY KEYS-----" in script
    # cloud-init is off: the login user is made in the image, locked, as cloud-init makes it
    user = image.login_user
    entry = [ln for ln in _cat(raw, "/etc/passwd").splitlines() if ln.startswith(f"{user}:")]
    assert len(entry) == 1 and entry[0].endswith(f":/home/{user}:/bin/bash")
    shadow = [ln for ln in _cat(raw, "/etc/shadow").splitlines() if ln.startswith(f"{user}:")]
    assert shadow[0].split(":")[1].startswith("!")  # no password until the credentials step
    groups = _cat(raw, "/etc/group").splitlines()
    for group in ("adm", "sudo"):
        assert [g for g in groups if g.startswith(f"{group}:") and user in g.split(":")[3]]
    sudoers = "/etc/sudoers.d/90-kvmvps-login-user"
    assert _cat(raw, sudoers) == f"{user} ALL=(ALL) NOPASSWD:ALL\n"
    assert _mode(raw, sudoers) & 0o777 == 0o440


@pytest.mark.slow
@pytest.mark.libvirt  # the session's image lives in real_ctx
def test_system_configuration(built: tuple[BuiltImage, str, Path]) -> None:
    _image, _key, raw = built
    assert _cat(raw, "/etc/fstab").split() == [
        "/dev/vda",
        "/",
        "ext4",
        "errors=remount-ro",
        "0",
        "0",
    ]  # no fsck pass: the kernel mounts the root read-write
    # DHCP on eth0 by systemd-networkd (the lease by the MAC), no router advertisements
    eth0 = _cat(raw, "/etc/systemd/network/50-kvmvps-eth0.network")
    assert [ln for ln in eth0.splitlines() if ln and not ln.startswith("#")] == [
        "[Match]",
        "Name=eth0",
        "[Network]",
        "DHCP=ipv4",
        "IPv6AcceptRA=no",
        "[DHCPv4]",
        "ClientIdentifier=mac",
        "UseHostname=no",
    ]
    wants = "/etc/systemd/system/multi-user.target.wants"
    for unit in ("systemd-networkd.service", "kvmvps-resolv-conf.path"):
        assert unit in _ls(raw, wants), unit
    assert "kvmvps-grow-root.service" in _ls(raw, wants)
    units = _ls(raw, "/usr/lib/systemd/system")
    assert "networking.service" not in units and "systemd-resolved.service" not in units
    # resolv.conf: none in the image; written from the lease
    assert "resolv.conf" not in _ls(raw, "/etc")
    path = _cat(raw, "/etc/systemd/system/kvmvps-resolv-conf.path")
    assert "PathChanged=/run/systemd/netif/leases" in path
    writer = "/usr/local/sbin/kvmvps-resolv-conf"
    assert _mode(raw, writer) & 0o777 == 0o755
    assert "ExecStart=" + writer in _cat(raw, "/etc/systemd/system/kvmvps-resolv-conf.service")
    helper = "/usr/local/sbin/kvmvps-ipv6"  # the fixed IPv6 address, made networkd's
    assert "/etc/kvmvps/ipv6" in _cat(raw, helper) and _mode(raw, helper) & 0o777 == 0o755
    assert "autoconf = 0" in _cat(raw, "/etc/sysctl.d/90-kvmvps-ipv6.conf")  # no SLAAC
    rule = _cat(raw, "/etc/udev/rules.d/90-kvmvps-grow-root.rules")  # a live-grown disk
    assert 'ENV{RESIZE}=="1"' in rule and "resize2fs /dev/vda" in rule
    assert "machine-id" in _ls(raw, "/etc") and _cat(raw, "/etc/machine-id") == ""
    assert _cat(raw, "/etc/hostname") == "debian\n"
    assert "-security main" in _cat(raw, "/etc/apt/sources.list")
    assert "/dev/null" in _debugfs(raw, "stat /etc/systemd/system/systemd-firstboot.service")


@pytest.mark.slow
@pytest.mark.libvirt  # the session's image lives in real_ctx
def test_image_is_stripped(built: tuple[BuiltImage, str, Path]) -> None:
    _image, _key, raw = built
    assert [n for n in _ls(raw, "/var/lib/apt/lists") if n not in (".", "..")] == ["partial"]
    assert not [n for n in _ls(raw, "/var/cache/apt/archives") if n.endswith(".deb")]
    assert sorted(_ls(raw, "/usr/share/doc/openssh-client")) == [".", "..", "copyright"]
    assert "Fast link dest" in _debugfs(raw, "stat /usr/share/doc/openssh-server")
    assert sorted(_ls(raw, "/usr/share/man/man8")) == [".", ".."]  # layout kept, pages gone
    assert "debootstrap" not in _ls(raw, "/")
