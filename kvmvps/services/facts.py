"""A frozen snapshot of one VPS and what it is built from.

Provisioning steps work from this snapshot rather than from live ORM rows,
so each step is a plain function of the facts and the hypervisor, and
re-running a step (after a crash, say) computes the same documents.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Select, select
from sqlalchemy.orm import Session

from kvmvps import ipam
from kvmvps.config import Settings
from kvmvps.errors import NotFound
from kvmvps.limits import LIMIT_FIELDS, PlanLimits, throttled
from kvmvps.models import CpuPin, Host, Image, Network, Plan, Vps
from kvmvps.xmlspec import (
    ISOLATING_FILTER,
    ISOLATING_FILTER_V6,
    OPEN_FILTER_V6,
    STOCK_FILTER,
    DhcpHost,
    DomainSpec,
    InterfaceSpec,
    KernelBoot,
    OverlayVolumeSpec,
    TrafficFilter,
    VolumeDiskSpec,
    cpu_for,
    tcg_tb_cache_for,
    vcpupins_for,
)

DOMAIN_PREFIX = "kvmvps-"
# libvirt's stock anti-spoofing filter: only the guest's own MAC, IP and ARP go out
TRAFFIC_FILTER = STOCK_FILTER


def plan_limits(plan: Plan) -> PlanLimits:
    """The resource limits of ``plan`` (its NULL columns: unlimited)."""
    return PlanLimits(**{f.name: getattr(plan, f.name) for f in LIMIT_FIELDS})


def domain_name_for(uuid: str) -> str:
    """The generated libvirt name of a VPS: never user text."""
    return DOMAIN_PREFIX + uuid.replace("-", "")[:12]


@dataclass(frozen=True)
class VpsFacts:
    vps_id: int
    uuid: str
    hostname: str
    domain: str
    host_uri: str
    pool: str
    overlay_volume: str
    seed_volume: str
    console_log: str
    network_kind: str
    network_libvirt: str
    bridge: str
    mac: str | None
    ip: str | None
    vcpus: int
    memory_mib: int
    disk_gib: int
    pinned_cpus: tuple[int, ...]
    image_name: str
    base_path: str
    kernel_path: str | None
    initrd_path: str | None
    cmdline: str | None
    cloud_init: bool
    credentials: bool
    login_user: str
    allow_guest_traffic: bool = False
    limits: PlanLimits = PlanLimits()  # the plan's, held down while over the transfer
    throttle_kibps: int | None = None
    # the guest's fixed IPv6 address and the network's IPv6 gateway (None: IPv4 only)
    ipv6: str | None = None
    ipv6_gateway: str | None = None
    # the image's own TCG code-cache size in MiB; None: the setting's
    image_tb_cache_mib: int | None = None

    @property
    def ipv6_config(self) -> str:
        """The guest's static IPv6 setup as ``ADDRESS/64 GATEWAY``; empty without IPv6."""
        if not self.ipv6 or not self.ipv6_gateway:
            return ""
        return f"{self.ipv6}/64 {self.ipv6_gateway}"

    @property
    def dhcp_host(self) -> DhcpHost | None:
        if self.network_kind != "nat" or not self.mac or not self.ip:
            return None
        return DhcpHost(mac=self.mac, ip=self.ip, name=self.domain)


def load_facts(session: Session, vps_id: int, settings: Settings) -> VpsFacts:
    vps = session.scalar(select(Vps).where(Vps.id == vps_id))
    if vps is None:
        raise NotFound(f"VPS #{vps_id} no longer exists")
    return facts_of(vps, settings)


def facts_of(vps: Vps, settings: Settings) -> VpsFacts:
    """The facts of an ORM object: :func:`facts_from_row` of the same fields a
    :func:`facts_query` row holds, read from the object and its relations."""
    parts = {Vps: vps, Host: vps.host, Plan: vps.plan, Image: vps.image, Network: vps.network}
    row = FactsRow(getattr(parts[attr.class_], attr.key) for attr, _ in _FACTS_FIELDS)
    return facts_from_row(row, tuple(vps.pinned_cpus), settings)


# What a VPS's facts are made of, as (attribute, name in a row): facts_query selects
# them as the columns of one joined query (many VPSes at once, no ORM object each),
# facts_of reads them from an ORM object; facts_from_row makes the facts of either.
_FACTS_FIELDS: tuple[tuple[Any, str], ...] = (
    (Vps.id, "id"),
    (Vps.uuid, "uuid"),
    (Vps.hostname, "hostname"),
    (Vps.domain_name, "domain_name"),
    (Vps.mac, "mac"),
    (Vps.ip, "ip"),
    (Vps.ipv6, "ipv6"),
    (Vps.throttle_kibps, "throttle_kibps"),
    (Host.uri, "host_uri"),
    (Network.kind, "network_kind"),
    (Network.libvirt_name, "network_libvirt"),
    (Network.bridge_name, "bridge_name"),
    (Network.allow_guest_traffic, "allow_guest_traffic"),
    (Network.ipv6_prefix, "ipv6_prefix"),
    (Network.subnet, "subnet"),
    (Network.gateway, "gateway"),
    (Plan.vcpus, "vcpus"),
    (Plan.memory_mib, "memory_mib"),
    (Plan.disk_gib, "disk_gib"),
    *((getattr(Plan, f.name), f"limit_{f.name}") for f in LIMIT_FIELDS),
    (Image.name, "image_name"),
    (Image.base_path, "base_path"),
    (Image.kernel_path, "kernel_path"),
    (Image.initrd_path, "initrd_path"),
    (Image.cmdline, "cmdline"),
    (Image.cloud_init, "cloud_init"),
    (Image.credentials, "credentials"),
    (Image.login_user, "login_user"),
    (Image.tcg_tb_cache_mib, "image_tb_cache_mib"),
)
_INDEX = {name: i for i, (_, name) in enumerate(_FACTS_FIELDS)}


class FactsRow(tuple[Any, ...]):
    """The fields of a :func:`facts_query` row, read from an ORM object: by name, like a row."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[_INDEX[name]]
        except KeyError:
            raise AttributeError(name) from None


# where the plan's limits are in a row
_FIRST_LIMIT = _INDEX[f"limit_{LIMIT_FIELDS[0].name}"]
_LIMITS = slice(_FIRST_LIMIT, _FIRST_LIMIT + len(LIMIT_FIELDS))


def facts_query(*extra: Any) -> Select[Any]:
    """A select of :func:`facts_from_row`'s columns (and ``extra``), one row a VPS."""
    return (
        select(*(attr.label(name) for attr, name in _FACTS_FIELDS), *extra)
        .join(Host, Host.id == Vps.host_id)
        .join(Plan, Plan.id == Vps.plan_id)
        .join(Image, Image.id == Vps.image_id)
        .join(Network, Network.id == Vps.network_id)
    )


def pins_of(s: Session | Connection, ids: Select[Any]) -> dict[int, tuple[int, ...]]:
    """The pinned host CPUs of the VPSes ``ids`` selects, by VPS id, in vCPU order.

    Listings pass their session's connection: plain rows, without the ORM's layer.
    """
    pins: dict[int, list[int]] = {}
    query = select(CpuPin.vps_id, CpuPin.host_cpu).where(CpuPin.vps_id.in_(ids))
    for vps_id, cpu in s.execute(query.order_by(CpuPin.vps_id, CpuPin.vcpu)).all():
        pins.setdefault(vps_id, []).append(cpu)
    return {vps_id: tuple(cpus) for vps_id, cpus in pins.items()}


def facts_from_row(row: Any, pins: tuple[int, ...], settings: Settings) -> VpsFacts:
    """The facts of a :func:`facts_query` row (or of :func:`facts_of`'s ``FactsRow``)."""
    domain, nat = row.domain_name, row.network_kind == "nat"
    return VpsFacts(
        vps_id=row.id,
        uuid=row.uuid,
        hostname=row.hostname,
        domain=domain,
        host_uri=row.host_uri,
        pool=settings.storage_pool,
        overlay_volume=f"{domain}.qcow2",
        seed_volume=f"{domain}-seed.iso",
        console_log=os.path.join(_directory(settings.console_dir), f"{domain}.log"),
        network_kind=row.network_kind,
        network_libvirt=row.network_libvirt,
        bridge=row.bridge_name,
        mac=row.mac,
        ip=row.ip,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_gib=row.disk_gib,
        pinned_cpus=pins,
        image_name=row.image_name,
        base_path=row.base_path,
        kernel_path=row.kernel_path,
        initrd_path=row.initrd_path,
        cmdline=row.cmdline,
        cloud_init=row.cloud_init,
        credentials=row.credentials,
        login_user=row.login_user,
        image_tb_cache_mib=row.image_tb_cache_mib,
        allow_guest_traffic=row.allow_guest_traffic,
        limits=_limits(row[_LIMITS], row.throttle_kibps),
        throttle_kibps=row.throttle_kibps,
        ipv6=row.ipv6 if nat else None,
        ipv6_gateway=ipam.ipv6_in(row.ipv6_prefix, row.subnet, row.gateway),
    )


# the few distinct plans (and holds) give the same limits to thousands of VPSes
@functools.lru_cache(maxsize=1024)
def _limits(values: tuple[int | None, ...], throttle_kibps: int | None) -> PlanLimits:
    plan = PlanLimits(**{f.name: value for f, value in zip(LIMIT_FIELDS, values, strict=True)})
    return throttled(plan, throttle_kibps)


@functools.lru_cache(maxsize=16)
def _directory(path: str) -> str:
    """``path`` as :class:`Path` writes it (the console log's directory)."""
    return str(Path(path))


@dataclass(frozen=True)
class RescueFacts:
    """The rescue image a VPS boots in rescue mode, and the overlay volume made of it."""

    image_name: str
    base_path: str
    kernel_path: str | None
    initrd_path: str | None
    cmdline: str | None
    credentials: bool
    volume: str
    tb_cache_mib: int | None = None  # the rescue image's own code-cache size


def rescue_facts(image: Image, facts: VpsFacts) -> RescueFacts:
    return RescueFacts(
        image_name=image.name,
        base_path=image.base_path,
        kernel_path=image.kernel_path,
        initrd_path=image.initrd_path,
        cmdline=image.cmdline,
        credentials=image.credentials,
        volume=rescue_volume_of(facts.domain),
        tb_cache_mib=image.tcg_tb_cache_mib,
    )


def rescue_volume_of(domain: str) -> str:
    """The name of a VPS's rescue overlay volume."""
    return f"{domain}{RESCUE_SUFFIX}.qcow2"


RESCUE_SUFFIX = "-rescue"


def rescue_overlay_spec(rescue: RescueFacts, capacity_bytes: int) -> OverlayVolumeSpec:
    return OverlayVolumeSpec(
        name=rescue.volume, capacity_bytes=capacity_bytes, backing_path=rescue.base_path
    )


def rescue_domain_spec(
    facts: VpsFacts,
    rescue: RescueFacts,
    domain_type: str,
    gateway_mac: str | None = None,
    tb_cache_mib: int = 0,
) -> DomainSpec:
    """The VPS's domain in rescue mode: the rescue system on vda, the VPS's own disk on vdb.

    Memory, vCPUs, pins, limits and the NIC (so address, filter and forwards)
    stay the VPS's; the code cache is the rescue image's (see :func:`domain_spec`).
    """
    own = domain_spec(
        replace(facts, image_tb_cache_mib=rescue.tb_cache_mib),
        domain_type,
        False,
        gateway_mac,
        tb_cache_mib,
    )
    disks = (
        VolumeDiskSpec(pool=facts.pool, volume=rescue.volume, target="vda"),
        VolumeDiskSpec(
            pool=facts.pool,
            volume=facts.overlay_volume,
            target="vdb",
            iotune=facts.limits.iotune(),
        ),
    )
    kernel_boot = None
    if rescue.kernel_path:
        kernel_boot = KernelBoot(rescue.kernel_path, rescue.initrd_path, rescue.cmdline)
    return replace(
        own,
        disks=disks,
        kernel_boot=kernel_boot,
        title=f"{facts.hostname} (rescue)",
        rescue=True,
    )


def overlay_spec(facts: VpsFacts, capacity_bytes: int) -> OverlayVolumeSpec:
    return OverlayVolumeSpec(
        name=facts.overlay_volume, capacity_bytes=capacity_bytes, backing_path=facts.base_path
    )


def domain_spec(
    facts: VpsFacts,
    domain_type: str,
    with_seed: bool,
    gateway_mac: str | None = None,
    tb_cache_mib: int = 0,
) -> DomainSpec:
    """Everything the domain template places, computed from the facts.

    ``gateway_mac`` is the NAT network's bridge MAC (see :func:`interface_spec`);
    ``tb_cache_mib`` caps TCG's translated-code cache (KVMVPS_TCG_TB_CACHE_MIB)
    unless the image has a size of its own (``image edit --tcg-cache-mib``).
    """
    disks = [
        VolumeDiskSpec(
            pool=facts.pool,
            volume=facts.overlay_volume,
            target="vda",
            iotune=facts.limits.iotune(),
        )
    ]
    if with_seed:
        disks.append(
            VolumeDiskSpec(
                pool=facts.pool, volume=facts.seed_volume, target="vdb", fmt="raw", readonly=True
            )
        )
    nic = interface_spec(facts, gateway_mac)
    kernel_boot = None
    if facts.kernel_path:
        kernel_boot = KernelBoot(facts.kernel_path, facts.initrd_path, facts.cmdline)
    cpu = cpu_for(domain_type)
    return DomainSpec(
        name=facts.domain,
        uuid=facts.uuid,
        domain_type=domain_type,
        memory_kib=facts.memory_mib * 1024,
        vcpus=facts.vcpus,
        vcpupins=vcpupins_for(list(facts.pinned_cpus)),
        disks=tuple(disks),
        interfaces=(nic,),
        console_log=facts.console_log,
        title=facts.hostname,
        vps_uuid=facts.uuid,
        installation=facts.pool,
        kernel_boot=kernel_boot,
        cpu_mode=cpu.mode,
        cpu_model=cpu.model,
        cpu_disabled=cpu.disabled,
        cputune=facts.limits.cputune(),
        tcg_tb_cache_mib=tcg_tb_cache_for(
            domain_type,
            tb_cache_mib if facts.image_tb_cache_mib is None else facts.image_tb_cache_mib,
        ),
    )


def interface_spec(facts: VpsFacts, gateway_mac: str | None = None) -> InterfaceSpec:
    """The VPS's NIC: anti-spoofing filter, isolation and bandwidth always placed.

    Guests are kept apart (unless the network allows guest traffic) in one
    of two ways. On a NAT network with a known bridge MAC, kvmvps's own
    filter lets a guest send unicast only to that gateway MAC: a neighbour's
    public forwards still work through the host, even where the host's
    bridge hands frames to iptables (br_netfilter), which would re-bridge
    them between two isolated ports. Elsewhere the bridge port is isolated.
    """
    mac = facts.mac or ""
    kind, source = ("network", facts.network_libvirt)
    if facts.network_kind != "nat":
        kind, source = ("bridge", facts.bridge)
    ips = (facts.ip,) if facts.ip else ()
    gateway_only = not facts.allow_guest_traffic and facts.network_kind == "nat" and gateway_mac
    v6 = facts.ipv6 if facts.network_kind == "nat" else None
    if gateway_only:
        name = ISOLATING_FILTER_V6 if v6 else ISOLATING_FILTER
        flt = TrafficFilter(name=name, mac=mac, ips=ips, gateway_mac=gateway_mac, ipv6=v6)
    else:
        flt = TrafficFilter(
            name=OPEN_FILTER_V6 if v6 else TRAFFIC_FILTER, mac=mac, ips=ips, ipv6=v6
        )
    return InterfaceSpec(
        kind=kind,
        source=source,
        mac=mac,
        traffic_filter=flt,
        isolated=not facts.allow_guest_traffic and not gateway_only,
        bandwidth=facts.limits.bandwidth(),
    )
