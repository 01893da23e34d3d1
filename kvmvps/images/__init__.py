"""Guest image builders.

A builder turns Debian packages into a bootable qcow2 plus, for direct kernel
boot, a kernel and an initrd. Every builder returns a :class:`BuiltImage`
that the inventory service registers.

The guest contract every image built here honours (the credentials step
relies on it):

* root accepts the kvmvps provisioning key (``/root/.ssh/authorized_keys``);
* the login user (``BuiltImage.login_user``) exists with a home directory;
* ``chpasswd -e`` reads ``user:$6$...`` lines on stdin;
* ``/etc/hostname`` is applied at boot;
* at boot the guest prints its SSH host public keys to the serial console,
  between ``-----BEGIN SSH HOST KEY KEYS-----`` and
  ``-----END SSH HOST KEY KEYS-----`` lines, as cloud-init does;
* the ACPI power button powers it off cleanly.
"""

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltImage:
    """The files of a freshly built image and how to boot it."""

    base_path: Path
    kernel_path: Path | None
    initrd_path: Path | None
    cmdline: str | None
    login_user: str
    cloud_init: bool
    os_family: str
    # under TCG, the code cache its VPSes need in MiB; None: KVMVPS_TCG_TB_CACHE_MIB
    tcg_tb_cache_mib: int | None = None


OUTPUTS = ("disk.qcow2", "vmlinuz", "initrd.img")


def publish(
    work: Path,
    dest: Path,
    *,
    cmdline: str,
    login_user: str,
    cloud_init: bool,
    os_family: str,
    tcg_tb_cache_mib: int | None = None,
) -> BuiltImage:
    """Move a finished build's files from ``work`` into ``dest`` (world-readable)."""
    for name in OUTPUTS:
        os.chmod(work / name, 0o644)
        os.replace(work / name, dest / name)
    return BuiltImage(
        base_path=dest / "disk.qcow2",
        kernel_path=dest / "vmlinuz",
        initrd_path=dest / "initrd.img",
        cmdline=cmdline,
        login_user=login_user,
        cloud_init=cloud_init,
        os_family=os_family,
        tcg_tb_cache_mib=tcg_tb_cache_mib,
    )
