"""Network calls: libvirt networks, their static DHCP entries and leases, nwfilters.

Mixed into :class:`kvmvps.hypervisor.Hypervisor`.
"""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from kvmvps.errors import HypervisorNotFound
from kvmvps.hvtypes import DhcpEntry, dhcp_entries
from kvmvps.hypervisor.connection import Connection
from kvmvps.hypervisor.errors import libvirt


class NetworkCalls(Connection):
    """A libvirt host's networks and the nwfilters that isolate its guests."""

    def ensure_network(self, name: str, xml: str | Callable[[], str]) -> None:
        """Define, start and autostart the network unless it already runs.

        ``xml`` may be a function giving the XML, called only when the
        network has to be defined.
        """

        def ensure(conn: libvirt.virConnect) -> None:
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                net = conn.networkDefineXML(xml if isinstance(xml, str) else xml())
            if not net.isActive():
                net.create()
            if not net.autostart():
                net.setAutostart(1)

        self._call(f"network {name}", ensure)

    def remove_network(self, name: str) -> bool:
        """Stop and undefine a network; False when it did not exist."""

        def remove(conn: libvirt.virConnect) -> bool:
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return False
                raise
            if net.isActive():
                net.destroy()
            net.undefine()
            return True

        return self._call(f"remove network {name}", remove)

    def network_exists(self, name: str) -> bool:
        try:
            self._call(f"network {name}", lambda c: c.networkLookupByName(name))
        except HypervisorNotFound:
            return False
        return True

    def dhcp_hosts(self, network: str, live: bool = True) -> list[DhcpEntry]:
        """The static DHCP entries of the running (or the defined) network."""
        flags = 0 if live else libvirt.VIR_NETWORK_XML_INACTIVE

        def entries(conn: libvirt.virConnect) -> list[DhcpEntry]:
            net = conn.networkLookupByName(network)
            try:
                xml = net.XMLDesc(flags)
            except libvirt.libvirtError as exc:
                # drivers without separate live/config XML reject the flag
                if exc.get_error_code() not in (
                    libvirt.VIR_ERR_INVALID_ARG,
                    libvirt.VIR_ERR_NO_SUPPORT,
                ):
                    raise
                xml = net.XMLDesc(0)
            return dhcp_entries(xml)

        return self._call(f"network {network}", entries)

    def dhcp_leases(self, network: str) -> dict[str, str]:
        """The addresses the network's DHCP server currently leases, with their MACs."""

        def leases(conn: libvirt.virConnect) -> dict[str, str]:
            net = conn.networkLookupByName(network)
            if not net.isActive():
                return {}
            try:
                leases = net.DHCPLeases()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                return {}  # a driver without a DHCP server leases nothing
            return {lease["ipaddr"]: lease["mac"] for lease in leases}

        return self._call(f"DHCP leases of {network}", leases)

    def add_dhcp_host(self, network: str, entry: DhcpEntry, xml: str) -> None:
        """Add a static DHCP entry live and to the config, where it is missing."""
        self._update_dhcp(network, entry, xml, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, False)

    def remove_dhcp_host(self, network: str, entry: DhcpEntry, xml: str) -> None:
        """Remove a static DHCP entry live and from the config, where present."""
        self._update_dhcp(network, entry, xml, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, True)

    def _update_dhcp(
        self, network: str, entry: DhcpEntry, xml: str, command: int, present: bool
    ) -> None:
        def update(conn: libvirt.virConnect) -> None:
            net = conn.networkLookupByName(network)
            flags = 0
            if net.isActive() and (entry in self.dhcp_hosts(network, live=True)) == present:
                flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
            if (entry in self.dhcp_hosts(network, live=False)) == present:
                flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
            if flags:
                net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, xml, flags)

        self._call(f"DHCP entry {entry.mac} on {network}", update)

    # -- isolation --------------------------------------------------------
    def nwfilter_exists(self, name: str) -> bool | None:
        """Whether libvirt has the nwfilter; None for a driver without nwfilters (test:///)."""

        def lookup(conn: libvirt.virConnect) -> bool | None:
            try:
                conn.nwfilterLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    return None
                raise
            return True

        try:
            return self._call(f"nwfilter {name}", lookup)
        except HypervisorNotFound:
            return False

    def define_nwfilter(self, xml: str) -> bool:
        """Define (or redefine, same UUID) an nwfilter; False for a driver without nwfilters."""

        def define(conn: libvirt.virConnect) -> bool:
            try:
                conn.nwfilterDefineXML(xml)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    return False
                raise
            return True

        return self._call("define nwfilter", define)

    def network_mac(self, name: str) -> str | None:
        """The MAC of a libvirt network's bridge (the guests' gateway), if it has one."""
        xml = self._call(f"network {name}", lambda c: c.networkLookupByName(name).XMLDesc(0))
        mac = etree.fromstring(xml.encode()).find("mac")
        return None if mac is None else mac.get("address")
