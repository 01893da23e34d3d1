"""Golden files for every rendered document, compared semantically; all validate."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from kvmvps import xmlrender
from kvmvps.config import load_settings
from kvmvps.errors import InvalidInput, XmlValidationError
from kvmvps.limits import PlanLimits
from kvmvps.xmlspec import (
    BackupSpec,
    Bandwidth,
    BandwidthLimit,
    BridgeNetworkSpec,
    DhcpHost,
    DomainSpec,
    InterfaceSpec,
    KernelBoot,
    NwFilterSpec,
    OverlayVolumeSpec,
    SnapshotSpec,
    TrafficFilter,
    VolumeDiskSpec,
    filters_after_start,
    nat_network_spec,
    own_nwfilters,
    tcg_tb_cache_for,
    vcpupins_for,
)
from tests import tools, xmlcompare
from tests.xmlcompare import assert_matches_golden, canonical

UUID = "6f1c1b2e-6a55-4a8e-9a59-0c3b1b7a2d10"
OVERLAY = VolumeDiskSpec(pool="kvmvps", volume="kvmvps-6f1c1b2e6a55.qcow2", target="vda")
SEED = VolumeDiskSpec(
    pool="kvmvps", volume="kvmvps-6f1c1b2e6a55-seed.iso", target="vdb", fmt="raw", readonly=True
)
GATEWAY = "52:54:00:12:34:56"
NAT_NIC = InterfaceSpec(
    kind="network",
    source="kvmvps",
    mac="52:54:00:aa:bb:cc",
    traffic_filter=TrafficFilter(
        "kvmvps-clean-traffic", "52:54:00:aa:bb:cc", ("10.213.0.2",), gateway_mac=GATEWAY
    ),
)
BRIDGE_NIC = InterfaceSpec(
    kind="bridge",
    source="br0",
    mac="52:54:00:aa:bb:cd",
    traffic_filter=TrafficFilter("clean-traffic", "52:54:00:aa:bb:cd", ("203.0.113.10",)),
    isolated=True,
)
LIMITS = PlanLimits(
    cpu_shares=512,
    cpu_quota_pct=50,
    disk_read_bytes_sec=2 << 20,
    disk_write_bytes_sec=1 << 20,
    disk_iops=200,
    net_in_kibps=1024,
    net_in_peak_kibps=2048,
    net_in_burst_kib=512,
    net_out_kibps=256,
)
LIMITED_NIC = InterfaceSpec(
    kind="network",
    source="kvmvps",
    mac="52:54:00:aa:bb:cc",
    traffic_filter=TrafficFilter("clean-traffic", "52:54:00:aa:bb:cc", ("10.213.0.2",)),
    isolated=False,
    bandwidth=LIMITS.bandwidth(),
)
LIMITED_DISK = VolumeDiskSpec(
    pool="kvmvps", volume="kvmvps-6f1c1b2e6a55.qcow2", target="vda", iotune=LIMITS.iotune()
)
KERNEL = KernelBoot(
    "/var/lib/kvmvps/images/tiny/vmlinuz",
    "/var/lib/kvmvps/images/tiny/initrd.img",
    "console=ttyS0 root=/dev/vda rw",
)


def domain(**changes) -> DomainSpec:
    base = dict(
        name="kvmvps-6f1c1b2e6a55",
        uuid=UUID,
        domain_type="qemu",
        memory_kib=262144,
        vcpus=2,
        vcpupins=vcpupins_for([1, 0]),
        disks=(OVERLAY,),
        interfaces=(NAT_NIC,),
        console_log="/var/lib/kvmvps/console/kvmvps-6f1c1b2e6a55.log",
        title="web1",
        vps_uuid=UUID,
        installation="kvmvps",
        kernel_boot=KERNEL,
        tcg_tb_cache_mib=32,
        cpu_model="qemu64",
        cpu_disabled=("svm",),
    )
    base.update(changes)
    return DomainSpec(**base)


DOMAIN_VARIANTS = {
    "domain_nat_kernel_qemu.xml": domain(),
    "domain_nat_disk_boot.xml": domain(kernel_boot=None),
    "domain_kvm_passthrough.xml": domain(
        domain_type="kvm",
        cpu_mode="host-passthrough",
        cpu_model=None,
        cpu_disabled=(),
        tcg_tb_cache_mib=None,
    ),
    "domain_bridge_seed.xml": domain(interfaces=(BRIDGE_NIC,), disks=(OVERLAY, SEED)),
    "domain_kernel_no_initrd.xml": domain(
        kernel_boot=KernelBoot("/k/vmlinuz", None, None), vcpus=1, vcpupins=vcpupins_for([3])
    ),
    "domain_limits_guest_traffic.xml": domain(
        interfaces=(LIMITED_NIC,), disks=(LIMITED_DISK,), cputune=LIMITS.cputune()
    ),
    "domain_serial_only.xml": domain(graphics=None),
    # the first boot: the filtered NIC unplugged and unfiltered until it is put in place live
    "domain_first_boot_unfiltered.xml": filters_after_start(
        domain(interfaces=(NAT_NIC, InterfaceSpec("bridge", "br1", "52:54:00:aa:bb:ce")))
    ),
}


@pytest.mark.parametrize("name", sorted(DOMAIN_VARIANTS))
def test_domain_variants_match_golden_and_validate(name: str) -> None:
    xml = xmlrender.domain_xml(DOMAIN_VARIANTS[name])
    xmlrender.validate(xml, "domain")
    assert_matches_golden(xml, name)


def test_domain_places_every_value() -> None:
    root = etree.fromstring(xmlrender.domain_xml(domain()).encode())
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "kvmvps-6f1c1b2e6a55"
    assert root.findtext("uuid") == UUID
    assert root.findtext("memory") == root.findtext("currentMemory") == "262144"
    assert root.findtext("vcpu") == "2"
    pins = [(p.get("vcpu"), p.get("cpuset")) for p in root.iterfind("cputune/vcpupin")]
    assert pins == [("0", "1"), ("1", "0")]
    assert root.find("devices/disk/source").get("volume") == "kvmvps-6f1c1b2e6a55.qcow2"
    assert root.find("devices/interface/mac").get("address") == "52:54:00:aa:bb:cc"
    assert root.find("devices/serial/log").get("file").endswith("kvmvps-6f1c1b2e6a55.log")
    assert root.findtext("os/cmdline") == "console=ttyS0 root=/dev/vda rw"
    nic = root.find("devices/interface")
    assert nic.find("filterref").get("filter") == "kvmvps-clean-traffic"
    params = [(p.get("name"), p.get("value")) for p in nic.iterfind("filterref/parameter")]
    assert params == [("MAC", "52:54:00:aa:bb:cc"), ("IP", "10.213.0.2"), ("GATEWAY_MAC", GATEWAY)]
    assert nic.find("port") is None  # kept apart by the filter, not by port isolation
    assert root.find("cputune/shares") is None and nic.find("bandwidth") is None
    bridged = etree.fromstring(
        xmlrender.domain_xml(DOMAIN_VARIANTS["domain_bridge_seed.xml"]).encode()
    ).find("devices/interface")
    assert bridged.find("filterref").get("filter") == "clean-traffic"
    assert bridged.find("port").get("isolated") == "yes"


@pytest.mark.parametrize("spec", own_nwfilters(), ids=lambda f: f.name)
def test_own_nwfilters_match_golden(spec: NwFilterSpec) -> None:
    xml = xmlrender.nwfilter_xml(spec)
    assert_matches_golden(xml, f"nwfilter_{spec.name}.xml")
    assert own_nwfilters() == own_nwfilters()  # fixed UUIDs: redefining updates in place


def test_limits_are_placed() -> None:
    xml = xmlrender.domain_xml(DOMAIN_VARIANTS["domain_limits_guest_traffic.xml"])
    root = etree.fromstring(xml.encode())
    assert root.findtext("cputune/shares") == "512"
    assert (root.findtext("cputune/period"), root.findtext("cputune/quota")) == ("100000", "50000")
    tune = root.find("devices/disk/iotune")
    assert {el.tag: el.text for el in tune} == {
        "read_bytes_sec": str(2 << 20),
        "write_bytes_sec": str(1 << 20),
        "total_iops_sec": "200",
    }
    inbound = root.find("devices/interface/bandwidth/inbound")
    assert dict(inbound.attrib) == {"average": "1024", "peak": "2048", "burst": "512"}
    outbound = root.find("devices/interface/bandwidth/outbound")
    assert dict(outbound.attrib) == {"average": "256"}
    assert root.find("devices/interface/port") is None  # guest traffic allowed: no isolation


def test_first_boot_unplugs_only_filtered_nics_and_keeps_the_rest() -> None:
    spec = domain(interfaces=(BRIDGE_NIC, LIMITED_NIC), cputune=LIMITS.cputune())
    boot = filters_after_start(spec)
    assert boot is not None
    for before, after in zip(spec.interfaces, boot.interfaces, strict=True):
        assert after.traffic_filter is None and after.link_down
        assert (after.mac, after.isolated, after.bandwidth) == (
            before.mac,
            before.isolated,
            before.bandwidth,
        )
    assert boot.disks == spec.disks and boot.cputune == spec.cputune and boot.uuid == spec.uuid
    root = etree.fromstring(xmlrender.domain_xml(boot).encode())
    assert root.find("devices/interface/filterref") is None
    assert [n.get("state") for n in root.iterfind("devices/interface/link")] == ["down", "down"]
    # the NIC that replaces it live is the defined one: filter, link up
    fragment = etree.fromstring(xmlrender.interface_xml(spec, BRIDGE_NIC.mac).encode())
    assert fragment.find("filterref") is not None and fragment.find("link") is None
    # nothing filtered, nothing to do after the start
    unfiltered = InterfaceSpec("network", "n", "52:54:00:aa:bb:cc")
    assert filters_after_start(domain(interfaces=(unfiltered,))) is None


def test_interface_fragment_is_cut_from_a_validated_domain() -> None:
    fragment = xmlrender.interface_xml(domain(), "52:54:00:aa:bb:cc")
    nic = etree.fromstring(fragment.encode())
    assert nic.tag == "interface" and nic.find("filterref").get("filter") == "kvmvps-clean-traffic"
    with pytest.raises(XmlValidationError, match="no interface"):
        xmlrender.interface_xml(domain(), "52:54:00:00:00:01")
    bad = InterfaceSpec("network", "n", "52:54:00:aa:bb:cc", bandwidth=Bandwidth(BandwidthLimit(0)))
    with pytest.raises(XmlValidationError, match="fails libvirt's schema"):
        xmlrender.interface_xml(domain(interfaces=(bad,)), "52:54:00:aa:bb:cc")


NETWORK_VARIANTS = {
    "network_nat_empty.xml": lambda: xmlrender.nat_network_xml(
        nat_network_spec("kvmvps", "kvmvps0", "10.213.0.0/24", "10.213.0.1")
    ),
    "network_nat_hosts.xml": lambda: xmlrender.nat_network_xml(
        nat_network_spec(
            "kvmvps",
            "kvmvps0",
            "10.213.0.0/24",
            "10.213.0.1",
            (
                DhcpHost("52:54:00:00:00:0b", "10.213.0.11", "kvmvps-bbbbbbbbbbbb"),
                DhcpHost("52:54:00:00:00:02", "10.213.0.2", "kvmvps-aaaaaaaaaaaa"),
            ),
        )
    ),
    "network_bridge.xml": lambda: xmlrender.bridge_network_xml(BridgeNetworkSpec("public", "br0")),
    "volume_overlay.xml": lambda: xmlrender.overlay_volume_xml(
        OverlayVolumeSpec(
            "kvmvps-6f1c1b2e6a55.qcow2", 10 << 30, "/var/lib/kvmvps/images/tiny/disk.qcow2"
        )
    ),
    "pool_dir.xml": lambda: xmlrender.pool_xml("kvmvps", "/var/lib/kvmvps/pool"),
    "backup_push.xml": lambda: xmlrender.backup_xml(
        BackupSpec(
            "vda",
            "/var/lib/kvmvps/backups/6f1c1b2e-6a55-4a8e-9a59-0c3b1b7a2d10.qcow2.part",
            ("vdb",),
        )
    ),
    "snapshot_running.xml": lambda: xmlrender.snapshot_xml(
        SnapshotSpec("snap-6f1c1b2e-6a55-4a8e-9a59-0c3b1b7a2d10", "vda", True, ("vdb",))
    ),
    "snapshot_stopped.xml": lambda: xmlrender.snapshot_xml(
        SnapshotSpec("snap-6f1c1b2e-6a55-4a8e-9a59-0c3b1b7a2d10", "vda", False)
    ),
}


@pytest.mark.parametrize("name", sorted(NETWORK_VARIANTS))
def test_other_documents_match_golden(name: str) -> None:
    assert_matches_golden(NETWORK_VARIANTS[name](), name)


def test_nat_dhcp_hosts_are_sorted_by_address() -> None:
    xml = NETWORK_VARIANTS["network_nat_hosts.xml"]()
    ips = [h.get("ip") for h in etree.fromstring(xml.encode()).iterfind("ip/dhcp/host")]
    assert ips == ["10.213.0.2", "10.213.0.11", "10.213.0.254"]  # .254: the sentinel


def test_hostile_text_stays_text() -> None:
    """A title full of markup is escaped, not parsed: no element is injected."""
    evil = 'x"/><devices><disk type="file"/></devices><title>'
    root = etree.fromstring(xmlrender.domain_xml(domain(title=evil)).encode())
    assert root.findtext("title") == evil
    assert len(root.findall("devices")) == 1


def test_invalid_document_is_refused_before_libvirt() -> None:
    with pytest.raises(XmlValidationError, match="fails libvirt's schema"):
        xmlrender.domain_xml(domain(memory_kib=-5))
    with pytest.raises(XmlValidationError, match="fails libvirt's schema"):
        xmlrender.domain_xml(domain(interfaces=(InterfaceSpec("network", "n", "not-a-mac"),)))


def test_canonical_comparison_ignores_layout_only() -> None:
    assert canonical('<a  x="1" y="2"><b/></a>') == canonical('<a y="2" x="1">\n  <b/>\n</a>')
    assert canonical("<a><b>1</b></a>") != canonical("<a><b>2</b></a>")


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_missing_golden_file_fails_and_is_not_written(
    ci: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.delenv(xmlcompare.REGENERATE, raising=False)
    name = "no-such-golden-file.xml"
    with pytest.raises(AssertionError, match=f"{xmlcompare.REGENERATE}=1"):
        assert_matches_golden("<a/>", name)
    assert not (xmlcompare.GOLDEN / name).exists()


def test_regenerating_writes_the_golden_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(xmlcompare, "GOLDEN", tmp_path)
    monkeypatch.setenv(xmlcompare.REGENERATE, "1")
    assert_matches_golden("<a><b/></a>", "new.xml")
    assert (tmp_path / "new.xml").read_text() == "<a><b/></a>"
    monkeypatch.delenv(xmlcompare.REGENERATE)
    with pytest.raises(AssertionError, match="differs"):
        assert_matches_golden("<a><c/></a>", "new.xml")


@pytest.mark.parametrize("required", ["", "1"])
def test_a_missing_tool_skips_unless_tools_are_required(
    required: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tools.REQUIRE_TOOLS, required)
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match="needs frobnicate"):
        tools.missing_tool("needs frobnicate")


def test_tcg_cache_is_capped_only_under_tcg() -> None:
    assert tcg_tb_cache_for("qemu", 32) == 32
    assert tcg_tb_cache_for("kvm", 32) is None  # KVM has no translated-code cache
    assert tcg_tb_cache_for("qemu", 0) is None  # 0: QEMU's own default
    root = etree.fromstring(xmlrender.domain_xml(domain()).encode())
    assert root.find("features/tcg/tb-cache").text == "32"
    assert root.find("features/tcg/tb-cache").get("unit") == "MiB"
    assert root.find("devices/memballoon").get("freePageReporting") == "on"
    kvm = DOMAIN_VARIANTS["domain_kvm_passthrough.xml"]
    assert etree.fromstring(xmlrender.domain_xml(kvm).encode()).find("features/tcg") is None


def test_tcg_cache_setting_is_checked() -> None:
    assert load_settings({}).tcg_tb_cache_mib == 128
    assert load_settings({"KVMVPS_TCG_TB_CACHE_MIB": "0"}).tcg_tb_cache_mib == 0
    for bad in ("-1", "99999999", "lots", "3;rm"):
        with pytest.raises(InvalidInput, match="KVMVPS_TCG_TB_CACHE_MIB"):
            load_settings({"KVMVPS_TCG_TB_CACHE_MIB": bad})
