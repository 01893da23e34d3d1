"""What the hypervisor adapter hands out: plain data, and the parsing that makes it.

:mod:`kvmvps.hypervisor` (the only package that imports libvirt) returns these;
nothing here knows libvirt, so they are read and tested without a connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lxml import etree


@dataclass(frozen=True)
class HostInfo:
    cpus: int
    memory_mib: int
    hostname: str


@dataclass(frozen=True)
class DhcpEntry:
    mac: str
    ip: str
    name: str


@dataclass(frozen=True)
class NicState:
    """What libvirt's XML says about one guest interface's isolation."""

    mac: str
    filter: str | None
    parameters: tuple[tuple[str, str], ...]
    isolated: bool
    link_down: bool = False


@dataclass(frozen=True)
class DomainStats:
    """One running domain's counters from libvirt's bulk statistics call.

    ``instance`` is libvirt's domain id, new at every start: counters of a
    different instance began again from zero. Network and disk counters are
    summed over the domain's interfaces and disks.
    """

    name: str
    instance: int
    cpu_ns: int
    memory_kib: int
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    read_bytes: int
    write_bytes: int
    read_reqs: int
    write_reqs: int


_NET_KEYS = {"rx.bytes": "rx_bytes", "tx.bytes": "tx_bytes", "rx.pkts": "rx_packets"}
_NET_KEYS["tx.pkts"] = "tx_packets"
_BLOCK_KEYS = {"rd.bytes": "read_bytes", "wr.bytes": "write_bytes", "rd.reqs": "read_reqs"}
_BLOCK_KEYS["wr.reqs"] = "write_reqs"


def _sum_indexed(stats: dict[str, Any], group: str, keys: dict[str, str]) -> dict[str, int]:
    """``net.0.rx.bytes`` + ``net.1.rx.bytes``... as ``{"rx_bytes": total}``."""
    totals = dict.fromkeys(keys.values(), 0)
    for index in range(int(stats.get(f"{group}.count", 0))):
        for key, field_name in keys.items():
            totals[field_name] += int(stats.get(f"{group}.{index}.{key}", 0))
    return totals


def parse_domain_stats(name: str, instance: int, stats: dict[str, Any]) -> DomainStats:
    """A domain's counters from libvirt's bulk statistics of it (``stats``)."""
    memory = stats.get("balloon.rss", stats.get("balloon.current", 0))
    return DomainStats(
        name=name,
        instance=instance,
        cpu_ns=int(stats.get("cpu.time", 0)),
        memory_kib=int(memory),
        **_sum_indexed(stats, "net", _NET_KEYS),
        **_sum_indexed(stats, "block", _BLOCK_KEYS),
    )


@dataclass(frozen=True)
class BackupProgress:
    """Where a domain's push-mode backup job stands."""

    running: bool
    error: str | None = None
    processed_bytes: int = 0
    total_bytes: int = 0


# One <interface> element of a domain's <devices> (libvirt's own output: interfaces
# do not nest, and text cannot hold a "<"); parsing only these, not the whole
# document, is three times faster, and a reconcile pass does it twice per VPS.
_INTERFACE = re.compile(r"<interface\b[^>]*?(?:/>|>.*?</interface>)", re.S)


def nic_states(domain_xml: str) -> list[NicState]:
    """A domain's interfaces, from its XML, with their filter and isolation."""
    start, end = domain_xml.find("<devices>"), domain_xml.rfind("</devices>")
    if not 0 <= start < end:  # not libvirt's layout: the whole document
        root = etree.fromstring(domain_xml.encode())
        return [_nic_state(nic) for nic in root.iterfind("devices/interface")]
    blocks = _INTERFACE.findall(domain_xml, start, end)
    return [_nic_state(etree.fromstring(block)) for block in blocks]


def _nic_state(nic: Any) -> NicState:
    mac, flt, isolated, down = "", None, False, False
    params: list[tuple[str, str]] = []
    for child in nic:
        if child.tag == "mac":
            mac = child.get("address", "")
        elif child.tag == "filterref":
            flt = child.get("filter")
            params = [
                (p.get("name", ""), p.get("value", "")) for p in child if p.tag == "parameter"
            ]
        elif child.tag == "port":
            isolated = isolated or child.get("isolated") == "yes"
        elif child.tag == "link":
            down = down or child.get("state") == "down"
    return NicState(
        mac=mac, filter=flt, parameters=tuple(sorted(params)), isolated=isolated, link_down=down
    )


def dhcp_entries(network_xml: str) -> list[DhcpEntry]:
    """A network's static DHCP entries, from its XML."""
    root = etree.fromstring(network_xml.encode())
    return [
        DhcpEntry(mac=h.get("mac", ""), ip=h.get("ip", ""), name=h.get("name", ""))
        for h in root.iterfind("./ip/dhcp/host")
    ]
