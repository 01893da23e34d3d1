"""The rescue domain: a golden file, libvirt's schema, and the disks in their places."""

from __future__ import annotations

from lxml import etree

from kvmvps import xmlrender
from kvmvps.limits import PlanLimits
from kvmvps.services.facts import (
    RescueFacts,
    VpsFacts,
    domain_spec,
    rescue_domain_spec,
    rescue_volume_of,
)
from tests.xmlcompare import assert_matches_golden

DOMAIN = "kvmvps-6f1c1b2e6a55"
FACTS = VpsFacts(
    vps_id=1,
    uuid="6f1c1b2e-6a55-4a8e-9a59-0c3b1b7a2d10",
    hostname="web1",
    domain=DOMAIN,
    host_uri="qemu:///system",
    pool="kvmvps",
    overlay_volume=f"{DOMAIN}.qcow2",
    seed_volume=f"{DOMAIN}-seed.iso",
    console_log=f"/var/lib/kvmvps/console/{DOMAIN}.log",
    network_kind="nat",
    network_libvirt="kvmvps",
    bridge="kvmvps0",
    mac="52:54:00:aa:bb:cc",
    ip="10.213.0.2",
    vcpus=2,
    memory_mib=512,
    disk_gib=10,
    pinned_cpus=(0, 1),
    image_name="bookworm",
    base_path="/var/lib/kvmvps/images/bookworm/disk.qcow2",
    kernel_path=None,
    initrd_path=None,
    cmdline=None,
    cloud_init=True,
    credentials=True,
    login_user="debian",
    limits=PlanLimits(disk_iops=200),
)
RESCUE = RescueFacts(
    image_name="tiny",
    base_path="/var/lib/kvmvps/images/tiny/disk.qcow2",
    kernel_path="/var/lib/kvmvps/images/tiny/vmlinuz",
    initrd_path="/var/lib/kvmvps/images/tiny/initrd.img",
    cmdline="console=ttyS0 root=/dev/vda rw",
    credentials=True,
    volume=rescue_volume_of(DOMAIN),
)
GATEWAY = "52:54:00:12:34:56"


def test_rescue_domain_matches_golden_and_validates() -> None:
    xml = xmlrender.domain_xml(rescue_domain_spec(FACTS, RESCUE, "qemu", GATEWAY))
    assert_matches_golden(xml, "domain_rescue.xml")


def test_rescue_domain_keeps_the_vps_but_boots_the_rescue_system() -> None:
    own = etree.fromstring(xmlrender.domain_xml(domain_spec(FACTS, "qemu", True, GATEWAY)).encode())
    rescue = etree.fromstring(
        xmlrender.domain_xml(rescue_domain_spec(FACTS, RESCUE, "qemu", GATEWAY)).encode()
    )
    disks = [
        (d.find("target").get("dev"), d.find("source").get("volume"), d.find("iotune") is not None)
        for d in rescue.iterfind("devices/disk")
    ]
    # the rescue system first, the VPS's own disk second (with its limits), no seed
    assert disks == [("vda", f"{DOMAIN}-rescue.qcow2", False), ("vdb", f"{DOMAIN}.qcow2", True)]
    assert rescue.findtext("os/kernel") == RESCUE.kernel_path
    assert own.find("os/kernel") is None and own.find("os/boot") is not None
    for path in ("name", "uuid", "memory", "vcpu", "cputune"):
        assert etree.tostring(rescue.find(path)) == etree.tostring(own.find(path)), path
    nic = etree.tostring(rescue.find("devices/interface"))
    assert nic == etree.tostring(own.find("devices/interface"))
    meta = rescue.find("metadata")[0]
    assert meta.get("mode") == "rescue" and own.find("metadata")[0].get("mode") is None
    assert rescue.findtext("title") == "web1 (rescue)"
