"""Tenant isolation on the wire: every guest NIC carries the anti-spoofing filter.

The filter (libvirt's ``clean-traffic``) and the bridge port's isolation are
part of the domain XML that provisioning renders. This module checks a
defined or running domain against that rendering and puts a missing or
altered filter back with a device update, live and in the definition.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

from kvmvps import xmlrender
from kvmvps.config import Settings
from kvmvps.errors import HypervisorError, KvmvpsError
from kvmvps.hvtypes import nic_states
from kvmvps.hypervisor import Hypervisor, NicState
from kvmvps.services import Context
from kvmvps.services.facts import TRAFFIC_FILTER, VpsFacts, domain_spec, interface_spec
from kvmvps.xmlspec import own_nwfilters

log = logging.getLogger(__name__)


def ensure_filters(hv: Hypervisor) -> None:
    """Refuse hosts without the stock anti-spoofing filter; define kvmvps's own where missing."""
    if hv.nwfilter_exists(TRAFFIC_FILTER) is False:
        raise HypervisorError(
            f"libvirt at {hv.uri} has no nwfilter {TRAFFIC_FILTER!r}; guests would run "
            "unfiltered (install libvirt-daemon-config-nwfilter)"
        )
    for spec in own_nwfilters():
        # defining re-instantiates the filter on every running guest: only when missing
        if hv.nwfilter_exists(spec.name) is False:
            hv.define_nwfilter(xmlrender.nwfilter_xml(spec))


def filters_supported(hv: Hypervisor) -> bool:
    """Whether the host's libvirt has traffic filters (libvirt's test driver has none)."""
    return hv.nwfilter_exists(TRAFFIC_FILTER) is not None


def gateway_mac(hv: Hypervisor, facts: VpsFacts) -> str | None:
    """The NAT network's bridge MAC, which kvmvps's own filter lets guests reach."""
    if facts.network_kind != "nat" or facts.allow_guest_traffic:
        return None
    return hv.network_mac(facts.network_libvirt)


@dataclass
class Known:
    """What a reconcile pass already knows of a host: each domain's state, from its listing,
    and each network's gateway MAC, read once instead of once per VPS."""

    states: dict[str, str]
    gateways: dict[str, str | None] = field(default_factory=dict)

    def active(self, hv: Hypervisor, domain: str) -> bool:
        state = self.states.get(domain)
        if state in (None, "crashed"):  # not listed, or kept after a crash: ask
            return hv.is_active(domain)
        return state != "shut off"

    def gateway(self, hv: Hypervisor, facts: VpsFacts) -> str | None:
        """:func:`gateway_mac`, once per network (kind and guest traffic are the network's)."""
        if facts.network_libvirt not in self.gateways:
            self.gateways[facts.network_libvirt] = gateway_mac(hv, facts)
        return self.gateways[facts.network_libvirt]


# (inactive, the domain's XML): the running guest's and the definition, or the definition
Documents = list[tuple[bool, str]]


@dataclass
class Round:
    """One host's pass, as the memo sees it (:meth:`Memo.begin`)."""

    changed: set[str] | None  # the domains libvirt told of a change of; None: any
    last: dict[str, tuple[Any, ...]]  # what the last pass found clean, and from what
    turn: int  # the pass's number on this host: whose turn it is to be read again
    recheck: int  # every domain is read again at least every this many passes
    clean: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def still_clean(self, domain: str, key: tuple[Any, ...]) -> bool:
        """Whether ``domain`` is clean without reading it (see :class:`Memo`)."""
        if self.changed is None or domain in self.changed:
            return False
        if due(self.turn, domain, self.recheck):
            return False
        return self.last.get(domain) == key


def due(turn: int, domain: str, recheck: int) -> bool:
    """Whether it is ``domain``'s turn to be read again in a host's pass number ``turn``:
    once in any ``recheck`` passes in a row, spread over the domains by their names."""
    return (turn + zlib.crc32(domain.encode())) % recheck == 0


class Memo:
    """What the last reconcile pass found clean on each host, and from what.

    A check is a function of the VPS's facts row, its pins, the network's
    gateway and the domain's documents. The documents change only through
    libvirt, which tells of most changes as events (the host's
    :meth:`~kvmvps.hypervisor.Hypervisor.domain_changes`: started, stopped,
    defined, a device added or removed...). A domain the last pass found clean,
    whose row, pins, gateway and state are as they were and of which libvirt
    told no change, is clean again: its documents are not even read.

    Not every change is told of (a device updated in place is not), so each
    domain still takes its turn to be read and checked in full every
    ``recheck`` passes, a share of the domains in each pass. Every domain is
    read whenever events may have gone unseen (the first pass of a process,
    a connection lost or reopened, a pass that failed half-way) and after the
    settings changed (what a domain should be depends on them too). Only the
    last pass's entries are kept, per host.
    """

    def __init__(self) -> None:
        # host URI -> the settings of its last pass, and the domains that pass found clean
        self._clean: dict[str, tuple[Settings, dict[str, tuple[Any, ...]]]] = {}
        self._turns: dict[str, int] = {}

    def begin(self, hv: Hypervisor, settings: Settings, incremental: bool = True) -> Round:
        """A host's pass starts: what changed since the last one, and what it found clean.

        A pass that is not ``incremental`` reads every domain, and leaves what
        it found for the next one.
        """
        changed = hv.domain_changes()  # taken either way: a full pass reads all of it
        if not incremental:
            changed = None
        turn = self._turns[hv.uri] = self._turns.get(hv.uri, -1) + 1
        # a pass that fails half-way leaves nothing: the events it took are not lost with it
        before, last = self._clean.pop(hv.uri, (settings, {}))
        if changed is None or before != settings:
            last = {}
        return Round(changed, last, turn, settings.reconcile_recheck_passes)

    def end(self, hv: Hypervisor, settings: Settings, done: Round) -> None:
        """The host's pass ended: what it found clean replaces what the last one found."""
        self._clean[hv.uri] = (settings, done.clean)

    @staticmethod
    def key(
        row: Any, pins: tuple[int, ...], gateway: str | None, state: str | None
    ) -> tuple[Any, ...]:
        """What a domain was found clean from, besides its documents."""
        return (tuple(row), pins, gateway, state)


def wanted(facts: VpsFacts, gateway: str | None) -> NicState:
    """The interface state provisioning renders for the VPS."""
    spec = interface_spec(facts, gateway)
    flt = spec.traffic_filter
    params: tuple[tuple[str, str], ...] = ()
    if flt is not None:
        params = (("MAC", flt.mac), *(("IP", ip) for ip in flt.ips))
        if flt.gateway_mac:
            params += (("GATEWAY_MAC", flt.gateway_mac),)
        if flt.ipv6:
            params += (("IPV6", flt.ipv6),)
    return NicState(
        mac=spec.mac,
        filter=None if flt is None else flt.name,
        parameters=tuple(sorted(params)),
        isolated=spec.isolated,
    )


def problems(actual: NicState | None, want: NicState) -> list[str]:
    """What differs between a domain's interface and the rendered one."""
    if actual is None:
        return [f"no interface with MAC {want.mac}"]
    found = []
    if actual.filter != want.filter:
        found.append(f"filter is {actual.filter or 'missing'}, not {want.filter}")
    elif actual.parameters != want.parameters:
        found.append(
            "filter parameters differ: " + ", ".join(f"{k}={v}" for k, v in actual.parameters)
        )
    if actual.isolated != want.isolated:
        found.append("port isolation " + ("on" if actual.isolated else "off"))
    if actual.link_down != want.link_down:
        found.append("link " + ("down" if actual.link_down else "up"))
    return found


def check(
    ctx: Context,
    hv: Hypervisor,
    facts: VpsFacts,
    fix: bool = True,
    *,
    known: Known | None = None,
    texts: Documents | None = None,
) -> list[dict[str, str]]:
    """Compare the domain's interface (live, and defined) with the rendered one; fix it.

    Returns one entry per difference found, saying whether it was fixed.
    ``known`` carries what a caller checking many domains already read, and
    ``texts`` the domain's documents if it read them (``domain_documents``).
    """
    gateway = known.gateway(hv, facts) if known else gateway_mac(hv, facts)
    want = wanted(facts, gateway)
    found: list[str] = []
    if texts is None:
        active = known.active(hv, facts.domain) if known else hv.is_active(facts.domain)
        texts = hv.domain_documents(facts.domain, live=active)
    for inactive, text in texts:
        nics = {n.mac: n for n in nic_states(text)}
        where = "definition" if inactive else "running guest"
        found += [f"{where}: {p}" for p in problems(nics.get(want.mac), want)]
    if not found:
        return []
    action = "reported"
    if fix:
        try:
            spec = domain_spec(facts, ctx.domain_type, facts.cloud_init, gateway)
            hv.update_device(facts.domain, xmlrender.interface_xml(spec, want.mac))
            action = "filter and isolation put back"
        except KvmvpsError as exc:
            log.error("putting the filter of %s back failed: %s", facts.domain, exc)
            action = f"fix failed: {exc}"
    return [
        {"vps": facts.uuid, "hostname": facts.hostname, "problem": p, "action": action}
        for p in found
    ]
