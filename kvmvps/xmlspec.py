"""Specs: every value a libvirt document needs, computed in Python.

Templates only place these values; nothing in a template decides anything.
Each spec is a frozen dataclass, so a rendered document is a pure function
of its spec.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field, replace

KVMVPS_XMLNS = "https://kvmvps.org/xmlns/domain/1"


@dataclass(frozen=True)
class IoTune:
    """A disk's ``<iotune>``: bytes and operations per second; None is unlimited."""

    total_bytes_sec: int | None = None
    read_bytes_sec: int | None = None
    write_bytes_sec: int | None = None
    total_iops_sec: int | None = None
    read_iops_sec: int | None = None
    write_iops_sec: int | None = None

    @property
    def limited(self) -> bool:
        return any(v is not None for v in self.values().values())

    def values(self) -> dict[str, int | None]:
        """Element (and libvirt parameter) name -> value, in the schema's order."""
        return {
            "total_bytes_sec": self.total_bytes_sec,
            "read_bytes_sec": self.read_bytes_sec,
            "write_bytes_sec": self.write_bytes_sec,
            "total_iops_sec": self.total_iops_sec,
            "read_iops_sec": self.read_iops_sec,
            "write_iops_sec": self.write_iops_sec,
        }


@dataclass(frozen=True)
class VolumeDiskSpec:
    """A disk backed by a storage pool volume."""

    pool: str
    volume: str
    target: str
    bus: str = "virtio"
    device: str = "disk"
    fmt: str = "qcow2"
    readonly: bool = False
    iotune: IoTune | None = None


@dataclass(frozen=True)
class TrafficFilter:
    """An nwfilter reference: the filter and the only MAC and addresses it lets out.

    ``gateway_mac``, for kvmvps's own filter: the only unicast destination.
    """

    name: str
    mac: str
    ips: tuple[str, ...]
    gateway_mac: str | None = None
    ipv6: str | None = None


@dataclass(frozen=True)
class FilterRule:
    action: str
    direction: str
    priority: int
    dst_mac: str | None = None
    dst_mac_mask: str | None = None
    # an ICMPv6 type the rule matches (an ``<ipv6 protocol="icmpv6">`` rule)
    icmpv6_type: int | None = None


@dataclass(frozen=True)
class NwFilterSpec:
    """An nwfilter: references to other filters, then rules, in one chain."""

    name: str
    uuid: str
    chain: str
    priority: int | None = None
    filterrefs: tuple[str, ...] = ()
    rules: tuple[FilterRule, ...] = ()


STOCK_FILTER = "clean-traffic"
GATEWAY_FILTER = "kvmvps-gateway-only"
ISOLATING_FILTER = "kvmvps-clean-traffic"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
# IPv6: libvirt's stock source check (own $IPV6 only; link-local for DHCPv6 only)
STOCK_IPV6_FILTER = "no-ipv6-spoofing"
IPV6_RULES_FILTER = "kvmvps-ipv6"
GATEWAY_FILTER_V6 = "kvmvps-gateway-only-ipv6"
ISOLATING_FILTER_V6 = "kvmvps-clean-traffic-ipv6"
OPEN_FILTER_V6 = "kvmvps-clean-traffic-open-ipv6"
IPV6_MULTICAST_MAC = ("33:33:00:00:00:00", "ff:ff:00:00:00:00")
ICMPV6_ROUTER_ADVERT = 134
ICMPV6_REDIRECT = 137


def _uuid_of(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, KVMVPS_XMLNS + "#" + name))


def own_nwfilters() -> tuple[NwFilterSpec, ...]:
    """kvmvps's filters: clean-traffic, plus unicast only to the gateway's MAC.

    A guest on an isolated NAT network can then send unicast frames only to
    the host's bridge, never straight to a neighbour; traffic to a
    neighbour's public forwards goes through the host as before.
    """
    gateway_only = NwFilterSpec(
        name=GATEWAY_FILTER,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, KVMVPS_XMLNS + "#" + GATEWAY_FILTER)),
        chain="mac-gw",
        priority=-750,
        rules=(
            FilterRule("return", "out", 100, "$GATEWAY_MAC"),
            FilterRule("return", "out", 110, BROADCAST_MAC),
            FilterRule("drop", "out", 1000),
        ),
    )
    isolating = NwFilterSpec(
        name=ISOLATING_FILTER,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, KVMVPS_XMLNS + "#" + ISOLATING_FILTER)),
        chain="root",
        filterrefs=(STOCK_FILTER, GATEWAY_FILTER),
    )
    return (gateway_only, isolating, *ipv6_nwfilters())


def ipv6_nwfilters() -> tuple[NwFilterSpec, ...]:
    """The filters of guests with an IPv6 address (parameter ``IPV6``).

    They add to the IPv4 ones: IPv6 goes out only from the guest's own
    address (libvirt's ``no-ipv6-spoofing``), never as a router advertisement
    or redirect, and comes in; the gateway-only variant also lets frames
    out to IPv6 multicast MACs, which neighbour discovery needs.
    """
    rules = NwFilterSpec(
        name=IPV6_RULES_FILTER,
        uuid=_uuid_of(IPV6_RULES_FILTER),
        chain="ipv6",
        priority=-600,
        rules=(
            FilterRule("drop", "out", 100, icmpv6_type=ICMPV6_ROUTER_ADVERT),
            FilterRule("drop", "out", 110, icmpv6_type=ICMPV6_REDIRECT),
            FilterRule("accept", "inout", 500),
        ),
    )
    gateway_only = NwFilterSpec(
        name=GATEWAY_FILTER_V6,
        uuid=_uuid_of(GATEWAY_FILTER_V6),
        chain="mac-gw6",
        priority=-750,
        rules=(
            FilterRule("return", "out", 100, "$GATEWAY_MAC"),
            FilterRule("return", "out", 110, BROADCAST_MAC),
            FilterRule("return", "out", 120, *IPV6_MULTICAST_MAC),
            FilterRule("drop", "out", 1000),
        ),
    )
    isolating = NwFilterSpec(
        name=ISOLATING_FILTER_V6,
        uuid=_uuid_of(ISOLATING_FILTER_V6),
        chain="root",
        filterrefs=(STOCK_FILTER, GATEWAY_FILTER_V6, STOCK_IPV6_FILTER, IPV6_RULES_FILTER),
    )
    open_ = NwFilterSpec(
        name=OPEN_FILTER_V6,
        uuid=_uuid_of(OPEN_FILTER_V6),
        chain="root",
        filterrefs=(STOCK_FILTER, STOCK_IPV6_FILTER, IPV6_RULES_FILTER),
    )
    return (rules, gateway_only, isolating, open_)


@dataclass(frozen=True)
class BandwidthLimit:
    """One direction of ``<bandwidth>``: KiB/s, and the burst in KiB."""

    average_kibps: int
    peak_kibps: int | None = None
    burst_kib: int | None = None


@dataclass(frozen=True)
class Bandwidth:
    """``inbound`` is traffic to the guest, ``outbound`` traffic from it."""

    inbound: BandwidthLimit | None = None
    outbound: BandwidthLimit | None = None


@dataclass(frozen=True)
class InterfaceSpec:
    """A NIC on a libvirt network (``network``) or a host bridge (``bridge``).

    ``isolated`` sets the bridge port's isolation: isolated ports cannot
    exchange frames with each other, only with the host and the uplink.
    ``link_down``: the NIC starts unplugged (QEMU drops every frame, both ways).
    """

    kind: str
    source: str
    mac: str
    model: str = "virtio"
    traffic_filter: TrafficFilter | None = None
    isolated: bool = False
    bandwidth: Bandwidth | None = None
    link_down: bool = False


@dataclass(frozen=True)
class CpuTune:
    """``<cputune>`` scheduling: relative shares, and a quota per vCPU per period (µs)."""

    shares: int | None = None
    period_us: int | None = None
    quota_us: int | None = None


@dataclass(frozen=True)
class VcpuPin:
    vcpu: int
    cpuset: str


@dataclass(frozen=True)
class KernelBoot:
    kernel: str
    initrd: str | None
    cmdline: str | None


LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class GraphicsSpec:
    """A VNC display (port chosen by libvirt) on the host's loopback only, and its video card.

    Nothing outside the host reaches it: the web server relays it to a
    ticket's holder (locally over TCP, to other hosts through SSH). The VGA
    card shows the guest kernel's text console (vgacon) with no driver.
    """

    listen: str = "127.0.0.1"
    video_model: str = "vga"

    def __post_init__(self) -> None:
        if self.listen not in LOOPBACK_ADDRESSES:
            raise ValueError(f"a VNC display listens on loopback only, not {self.listen!r}")


@dataclass(frozen=True)
class DomainSpec:
    """A whole ``<domain>``."""

    name: str
    uuid: str
    domain_type: str
    memory_kib: int
    vcpus: int
    vcpupins: tuple[VcpuPin, ...]
    disks: tuple[VolumeDiskSpec, ...]
    interfaces: tuple[InterfaceSpec, ...]
    console_log: str
    title: str
    vps_uuid: str
    installation: str
    kernel_boot: KernelBoot | None = None
    cpu_mode: str | None = None
    # a named CPU model (``mode="custom"``) with these features taken away
    cpu_model: str | None = None
    cpu_disabled: tuple[str, ...] = ()
    machine: str = "pc"
    cputune: CpuTune = field(default_factory=CpuTune)
    xmlns: str = KVMVPS_XMLNS
    # ``<features><tcg><tb-cache>``: only under TCG (domain type qemu); None: QEMU's default
    tcg_tb_cache_mib: int | None = None
    # the balloon hands pages the guest frees back to the host
    free_page_reporting: bool = True
    # rescue mode: a rescue system boots, the VPS's own disk is its second disk
    rescue: bool = False
    # the graphical console; None: serial console only
    graphics: GraphicsSpec | None = field(default_factory=GraphicsSpec)


def filters_after_start(spec: DomainSpec) -> DomainSpec | None:
    """The domain to boot first when its traffic filters are put in place live.

    Each filtered NIC starts without its filter and unplugged (QEMU drops
    every frame of an unplugged NIC, both ways), so libvirt does not build
    the filter while it starts the domain; the NIC as defined, filter and
    link up, then replaces it live. None when no NIC has a filter.
    """
    if not any(nic.traffic_filter for nic in spec.interfaces):
        return None
    nics = tuple(
        replace(nic, traffic_filter=None, link_down=True) if nic.traffic_filter else nic
        for nic in spec.interfaces
    )
    return replace(spec, interfaces=nics)


@dataclass(frozen=True)
class CpuChoice:
    """The domain's ``<cpu>``: a mode, or a named model with features taken away."""

    mode: str | None = None
    model: str | None = None
    disabled: tuple[str, ...] = ()


# Under KVM the host's CPU is passed through. Under TCG, QEMU's default model
# (qemu64) offers AMD's SVM, so a Debian guest's kernel loads kvm and kvm_amd at
# every boot (1.3 s of an emulated vCPU, measured) for a nested virtualisation
# that cannot run there: the same model, without it.
CPU_BY_DOMAIN_TYPE = {
    "kvm": CpuChoice(mode="host-passthrough"),
    "qemu": CpuChoice(model="qemu64", disabled=("svm",)),
}


def cpu_for(domain_type: str) -> CpuChoice:
    """The CPU a domain of this type gets (libvirt's default for any other type)."""
    return CPU_BY_DOMAIN_TYPE.get(domain_type, CpuChoice())


def tcg_tb_cache_for(domain_type: str, cache_mib: int) -> int | None:
    """The translated-code cache to place: a positive cap under TCG, else none.

    QEMU's default under TCG is a 1 GiB cache that fills as the guest runs new
    code and is never given back (86 MiB for an idle tiny guest, 704 MiB for
    Debian). KVM runs guest code natively and has no such cache.
    """
    return cache_mib if domain_type == "qemu" and cache_mib > 0 else None


@dataclass(frozen=True)
class DhcpHost:
    mac: str
    ip: str
    name: str


@dataclass(frozen=True)
class NatNetworkSpec:
    """A routed-by-NAT libvirt network with static DHCP entries only."""

    name: str
    bridge: str
    address: str
    netmask: str
    dhcp_hosts: tuple[DhcpHost, ...] = field(default_factory=tuple)
    # the host's address in the network's IPv6 /64 (routed by libvirt); None: IPv4 only
    ipv6_address: str | None = None
    ipv6_prefix: int = 64


@dataclass(frozen=True)
class BridgeNetworkSpec:
    """A libvirt network that hands guests to an existing host bridge."""

    name: str
    bridge: str


@dataclass(frozen=True)
class OverlayVolumeSpec:
    """A qcow2 overlay whose backing store is a base image."""

    name: str
    capacity_bytes: int
    backing_path: str
    backing_format: str = "qcow2"


# Every NAT network carries one DHCP entry that no guest can match, on the
# subnet's last host address (never allocated). With it, dnsmasq always runs
# with a DHCP hosts file, so adding or removing a guest's entry is a reload
# (0.3 s) instead of a full dnsmasq restart (2 s, blocking the network).
SENTINEL_MAC = "52:54:00:00:00:00"
SENTINEL_NAME = "kvmvps-reserved"


def sentinel_address(subnet: str) -> str:
    return str(ipaddress.IPv4Network(subnet).broadcast_address - 1)


def nat_network_spec(
    name: str,
    bridge: str,
    subnet: str,
    gateway: str,
    hosts: tuple[DhcpHost, ...] = (),
    ipv6_gateway: str | None = None,
) -> NatNetworkSpec:
    """The spec of a NAT network from its subnet and gateway (and IPv6 gateway, if any)."""
    net = ipaddress.IPv4Network(subnet)
    sentinel = DhcpHost(mac=SENTINEL_MAC, ip=sentinel_address(subnet), name=SENTINEL_NAME)
    return NatNetworkSpec(
        name=name,
        bridge=bridge,
        address=gateway,
        netmask=str(net.netmask),
        dhcp_hosts=tuple(sorted((*hosts, sentinel), key=lambda h: ipaddress.IPv4Address(h.ip))),
        ipv6_address=ipv6_gateway,
    )


def vcpupins_for(host_cpus: list[int]) -> tuple[VcpuPin, ...]:
    """One pin per vCPU, vCPU *i* on host CPU ``host_cpus[i]``."""
    return tuple(VcpuPin(vcpu=i, cpuset=str(cpu)) for i, cpu in enumerate(host_cpus))


@dataclass(frozen=True)
class RawVolumeSpec:
    """A raw volume of a fixed size, filled by upload."""

    name: str
    capacity_bytes: int


@dataclass(frozen=True)
class SnapshotSpec:
    """An internal snapshot of one qcow2 disk, with the memory when the domain runs.

    ``name`` is made by kvmvps from the snapshot's uuid, never from user text.
    """

    name: str
    disk: str
    with_memory: bool
    skipped_disks: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackupSpec:
    """A push-mode backup of one disk to a qcow2 file; the other disks are left out."""

    disk: str
    target_path: str
    skipped_disks: tuple[str, ...] = ()
