"""The :class:`Hypervisor`: one libvirt host's calls, and the shared one per URI.

One :class:`Hypervisor` per host URI owns a lazily opened connection that is
reopened when it drops. Every libvirt error is translated into the project's
own exceptions (:mod:`kvmvps.hypervisor.errors`), and nothing libvirt-typed
leaves this package.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
from lxml import etree

from kvmvps.errors import (
    HypervisorError,
    HypervisorInvalid,
    HypervisorNotFound,
    HypervisorUnavailable,
)
from kvmvps.hvtypes import BackupProgress as BackupProgress
from kvmvps.hvtypes import DhcpEntry as DhcpEntry
from kvmvps.hvtypes import DomainStats as DomainStats
from kvmvps.hvtypes import HostInfo as HostInfo
from kvmvps.hvtypes import NicState as NicState
from kvmvps.hvtypes import dhcp_entries, nic_states, parse_domain_stats
from kvmvps.hypervisor.errors import translate
from kvmvps.hypervisor.streams import ConsoleStream

T = TypeVar("T")

DOMAIN_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "idle",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "in shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

_STAT_GROUPS = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)


def _paused_if_possible(paused: bool, create: Callable[[int], object]) -> bool:
    """Call ``create`` with the start-paused flag if ``paused``; without it where refused.

    Returns whether the domain started paused.
    """
    if paused:
        try:
            create(libvirt.VIR_DOMAIN_START_PAUSED)
            return True
        except HypervisorError as exc:
            if "unsupported flags" not in str(exc):
                raise
    create(0)
    return False


def _affect_flags(dom: Any) -> tuple[int, ...]:
    """Live and config, one call each (libvirt refuses both in one call for some APIs)."""
    config = (libvirt.VIR_DOMAIN_AFFECT_CONFIG,)
    return ((libvirt.VIR_DOMAIN_AFFECT_LIVE,) if dom.isActive() else ()) + config


COPY_CHUNK = 1 << 20


def _send_all(stream: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = stream.send(view.tobytes())
        view = view[sent:]


class Hypervisor:
    """One libvirt host, reached through ``uri``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.RLock()

    # -- connection -------------------------------------------------------
    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._drop()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise HypervisorUnavailable(
                    f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}"
                ) from None
            return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn`` on the connection, translating errors; drop a dead connection.

        One connection serves every thread of the process (libvirt allows
        concurrent calls on it); a worker's job threads share it.
        """
        conn = self._connection()
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            err = translate(exc, what)
            if isinstance(err, HypervisorUnavailable):
                self._forget(conn)
            raise err from None

    def _forget(self, conn: libvirt.virConnect) -> None:
        """Stop handing out ``conn``; other threads still in a call on it keep it.

        It is not closed here: the last reference going away closes it, so a
        call in another thread is not cut off by this one's failure.
        """
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def ping(self) -> None:
        """Raise :class:`HypervisorUnavailable` unless libvirtd answers."""
        self._call("ping", lambda c: c.getLibVersion())

    def host_info(self) -> HostInfo:
        def info(conn: libvirt.virConnect) -> HostInfo:
            _model, memory_mib, cpus, *_rest = conn.getInfo()
            return HostInfo(cpus=cpus, memory_mib=memory_mib, hostname=conn.getHostname())

        return self._call("host info", info)

    # -- storage ----------------------------------------------------------
    def ensure_pool(self, name: str, xml: str) -> None:
        """Define, build, start and autostart the pool unless it already runs."""

        def ensure(conn: libvirt.virConnect) -> None:
            try:
                pool = conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = conn.storagePoolDefineXML(xml, 0)
                pool.build(0)
            if not pool.isActive():
                pool.create(0)
            if not pool.autostart():
                pool.setAutostart(1)

        self._call(f"storage pool {name}", ensure)

    def create_volume(self, pool: str, name: str, xml: str) -> str:
        """Create a volume from ``xml`` unless it exists; return its path."""

        def create(conn: libvirt.virConnect) -> str:
            sp = conn.storagePoolLookupByName(pool)
            try:
                return sp.storageVolLookupByName(name).path()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
            return sp.createXML(xml, 0).path()

        return self._call(f"create volume {name}", create)

    def upload_volume(self, pool: str, name: str, xml: str, data: bytes) -> str:
        """Create a volume and fill it with ``data`` through a libvirt stream."""

        def upload(conn: libvirt.virConnect) -> str:
            sp = conn.storagePoolLookupByName(pool)
            vol = sp.createXML(xml, 0)
            stream = conn.newStream(0)
            vol.upload(stream, 0, len(data), 0)
            stream.send(data)
            stream.finish()
            return vol.path()

        return self._call(f"upload volume {name}", upload)

    def volume_exists(self, pool: str, name: str) -> bool:
        return name in self.list_volumes(pool)

    def delete_volume(self, pool: str, name: str) -> bool:
        """Delete a volume; False when it was already gone."""

        def delete(conn: libvirt.virConnect) -> bool:
            try:
                vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return False
                raise
            vol.delete(0)
            return True

        return self._call(f"delete volume {name}", delete)

    def volume_capacity(self, pool: str, name: str) -> int:
        """The volume's virtual size in bytes."""

        def capacity(conn: libvirt.virConnect) -> int:
            return conn.storagePoolLookupByName(pool).storageVolLookupByName(name).info()[1]

        return self._call(f"volume {name}", capacity)

    def resize_volume(self, pool: str, name: str, capacity_bytes: int) -> None:
        """Grow a volume to ``capacity_bytes``; never shrinks, a no-op at that size."""

        def resize(conn: libvirt.virConnect) -> None:
            vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            current = vol.info()[1]
            if capacity_bytes < current:
                raise HypervisorInvalid(
                    f"resize volume {name}: {capacity_bytes} bytes is smaller than its "
                    f"{current}; volumes only grow"
                )
            if capacity_bytes > current:
                vol.resize(capacity_bytes, 0)

        self._call(f"resize volume {name}", resize)

    def grow_disk_live(self, name: str, disk: str, capacity_bytes: int) -> None:
        """Grow the disk ``disk`` (``vda``) of a running domain: QEMU grows its image
        and the guest sees the new size at once."""
        flag = libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
        self._domain(
            name, f"grow disk {disk} of", lambda d: d.blockResize(disk, capacity_bytes, flag)
        )

    def volume_path(self, pool: str, name: str) -> str:
        """The file of a volume (the pool is refreshed first: files may change under it)."""

        def path(conn: libvirt.virConnect) -> str:
            sp = conn.storagePoolLookupByName(pool)
            sp.refresh(0)
            return sp.storageVolLookupByName(name).path()

        return self._call(f"volume {name}", path)

    def pool_path(self, pool: str) -> str:
        """The directory of a ``dir`` pool."""
        xml = self._call(
            f"storage pool {pool}", lambda c: c.storagePoolLookupByName(pool).XMLDesc(0)
        )
        path = etree.fromstring(xml.encode()).findtext("target/path")
        if not path:
            raise HypervisorInvalid(f"storage pool {pool} has no target directory")
        return path

    def list_volumes(self, pool: str) -> list[str]:
        def names(conn: libvirt.virConnect) -> list[str]:
            sp = conn.storagePoolLookupByName(pool)
            sp.refresh(0)
            return sorted(sp.listVolumes())

        return self._call(f"list volumes in {pool}", names)

    # -- networks ---------------------------------------------------------
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

    # -- domains ----------------------------------------------------------
    def define_domain(self, xml: str) -> str:
        return self._call("define domain", lambda c: c.defineXML(xml).name())

    def _domain(self, name: str, what: str, fn: Callable[[Any], T]) -> T:
        return self._call(f"{what} {name}", lambda c: fn(c.lookupByName(name)))

    def domain_exists(self, name: str) -> bool:
        try:
            self._domain(name, "look up", lambda d: d.ID())
        except HypervisorNotFound:
            return False
        return True

    def start(self, name: str, paused: bool = False) -> bool:
        """Start the domain; ``paused``: with its vCPUs stopped until :meth:`resume`.

        Returns whether it was started paused: a driver that cannot (libvirt's
        test driver) starts it running instead.
        """
        return _paused_if_possible(
            paused, lambda flags: self._domain(name, "start", lambda d: d.createWithFlags(flags))
        )

    def start_as(self, name: str, xml: str, paused: bool = False) -> bool:
        """Start the defined domain ``name`` running ``xml`` this once; its definition stays.

        ``xml`` must be the same domain (name and UUID). Returns whether it
        started paused, as :meth:`start` does.
        """
        if etree.fromstring(xml.encode()).findtext("name") != name:
            raise HypervisorError(f"start {name}: the XML given is another domain's")
        return _paused_if_possible(
            paused, lambda flags: self._call(f"start {name}", lambda c: c.createXML(xml, flags))
        )

    def update_device_live(self, name: str, xml: str) -> None:
        """Change a device of the running domain only (its definition already has it)."""
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._domain(name, "update device of", lambda d: d.updateDeviceFlags(xml, flags))

    def open_console(self, name: str) -> ConsoleStream:
        """The domain's serial console (see :class:`ConsoleStream`)."""
        return ConsoleStream(self.uri, name)

    def shutdown(self, name: str) -> None:
        """Ask the guest to power off (ACPI power button: our domains have no agent)."""
        self._domain(name, "shut down", lambda d: d.shutdown())

    def destroy(self, name: str) -> None:
        """Power the guest off at once (virsh's ``destroy``)."""
        self._domain(name, "destroy", lambda d: d.destroy())

    def reboot(self, name: str) -> None:
        """Ask the guest to reboot (ACPI, as for shutdown)."""
        self._domain(name, "reboot", lambda d: d.reboot(0))

    def suspend(self, name: str) -> None:
        self._domain(name, "suspend", lambda d: d.suspend())

    def resume(self, name: str) -> None:
        self._domain(name, "resume", lambda d: d.resume())

    def undefine(self, name: str) -> bool:
        """Power off if needed and undefine; False when the domain did not exist."""

        def undefine(dom: Any) -> None:
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA  # their data goes with the volume
            )

        try:
            self._domain(name, "undefine", undefine)
        except HypervisorNotFound:
            return False
        return True

    def state(self, name: str) -> str:
        """The domain's state in virsh's words (``running``, ``shut off``...)."""
        return self._domain(name, "state of", lambda d: DOMAIN_STATES[d.state()[0]])

    def domain_metadata(self, name: str, xmlns: str) -> dict[str, str] | None:
        """The attributes of the domain's metadata element in ``xmlns``, if it has one."""
        root = etree.fromstring(self.domain_xml(name).encode())
        for element in root.iterfind("metadata/*"):
            if etree.QName(element).namespace == xmlns:
                return {str(k): str(v) for k, v in element.attrib.items()}
        return None

    def domain_xml(self, name: str, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return self._domain(name, "XML of", lambda d: d.XMLDesc(flags))

    def is_active(self, name: str) -> bool:
        return bool(self._domain(name, "look up", lambda d: d.isActive()))

    # -- isolation and limits ---------------------------------------------
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

    def interfaces(self, name: str, inactive: bool = False) -> list[NicState]:
        """The domain's interfaces (running or defined) with filter and isolation."""
        return nic_states(self.domain_xml(name, inactive))

    def update_device(self, name: str, xml: str) -> None:
        """Change a device (an ``<interface>``) in the definition and, if running, live."""

        def update(dom: Any) -> None:
            for flags in _affect_flags(dom):
                dom.updateDeviceFlags(xml, flags)

        self._domain(name, "update device of", update)

    def set_cpu_tune(self, name: str, shares: int, period_us: int, quota_us: int) -> None:
        """CPU shares and per-vCPU quota (-1: none), live where running and in the config."""
        params = {"cpu_shares": shares, "vcpu_period": period_us, "vcpu_quota": quota_us}

        def tune(dom: Any) -> None:
            for flags in _affect_flags(dom):
                dom.setSchedulerParametersFlags(params, flags)

        self._domain(name, "set CPU limits of", tune)

    def set_block_iotune(self, name: str, disk: str, values: dict[str, int]) -> None:
        """``<iotune>`` of one disk (0: unlimited), live where running and in the config."""

        def tune(dom: Any) -> None:
            for flags in _affect_flags(dom):
                dom.setBlockIoTune(disk, values, flags)

        self._domain(name, f"set I/O limits of {disk} of", tune)

    def set_interface_bandwidth(self, name: str, mac: str, values: dict[str, int]) -> None:
        """``<bandwidth>`` of one NIC (average 0: unlimited), live and in the config."""

        def tune(dom: Any) -> None:
            for flags in _affect_flags(dom):
                dom.setInterfaceParameters(mac, values, flags)

        self._domain(name, "set bandwidth of", tune)

    # -- backups ----------------------------------------------------------
    def freeze_filesystems(self, name: str) -> bool:
        """Freeze the guest's filesystems through its agent; False when it has no agent."""

        def freeze(dom: Any) -> bool:
            try:
                dom.fsFreeze(None, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (
                    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                    libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                    libvirt.VIR_ERR_NO_SUPPORT,
                    libvirt.VIR_ERR_OPERATION_INVALID,
                    libvirt.VIR_ERR_OPERATION_TIMEOUT,
                ):
                    return False
                raise
            return True

        return self._domain(name, "freeze filesystems of", freeze)

    def thaw_filesystems(self, name: str) -> None:
        self._domain(name, "thaw filesystems of", lambda d: d.fsThaw(None, 0))

    def backup_begin(self, name: str, xml: str) -> None:
        """Start a push-mode backup (``<domainbackup>``) of a running domain."""
        self._domain(name, "back up", lambda d: d.backupBegin(xml, None, 0))

    def backup_progress(self, name: str) -> BackupProgress:
        """The domain's backup job: still running, or ended (with its error if it failed)."""

        def progress(dom: Any) -> BackupProgress:
            stats = dom.jobStats(0)
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
                return BackupProgress(
                    running=True,
                    processed_bytes=int(stats.get("disk_processed", 0)),
                    total_bytes=int(stats.get("disk_total", 0)),
                )
            done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            if done.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED:
                total = int(done.get("disk_total", 0))
                return BackupProgress(running=False, processed_bytes=total, total_bytes=total)
            reason = str(done.get("errmsg") or "the backup job ended without completing")
            return BackupProgress(running=False, error=reason)

        return self._domain(name, "backup job of", progress)

    def abort_backup(self, name: str) -> None:
        """Cancel the domain's running job (a backup); nothing when none runs."""

        def abort(dom: Any) -> None:
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise

        self._domain(name, "abort the backup of", abort)

    # -- internal snapshots ------------------------------------------------------
    # -- migration --------------------------------------------------------
    def migratable_xml(self, name: str) -> str:
        """The running domain's XML as a migration's destination may be given it."""
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE
        return self._domain(name, "XML of", lambda d: d.XMLDesc(flags))

    def migrate_live(
        self,
        name: str,
        target: Hypervisor,
        address: str,
        dest_xml: str,
        disks: tuple[str, ...],
        *,
        full_copy: bool = False,
    ) -> None:
        """Move the running domain to ``target`` while it runs, copying ``disks`` with it.

        A managed direct migration: this process holds a connection to each
        daemon, and the source QEMU sends the memory to ``tcp://address`` (the
        target's address) and the disks over NBD to the same address; no
        daemon talks to the other. Each disk's volume must already exist on the
        target, empty unless ``full_copy``: only a disk's own top image is
        copied then, its backing image must be on the target at the same path.
        ``dest_xml`` is the domain as the target runs it. The source keeps its
        definition (inactive): the caller removes it once the target is verified.
        """
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
        flags |= (
            libvirt.VIR_MIGRATE_NON_SHARED_DISK if full_copy else libvirt.VIR_MIGRATE_NON_SHARED_INC
        )
        host = f"[{address}]" if ":" in address else address
        params = {
            libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{host}",
            libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: list(disks),
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml,
        }

        def migrate(dom: Any) -> None:
            dom.migrate3(target._connection(), params, flags)

        self._domain(name, f"migrate to {address}", migrate)

    def copy_volume_to(self, pool: str, name: str, target: Hypervisor, xml: str) -> int:
        """Copy the volume's file into a new volume (``xml``) of the same pool on ``target``.

        Both ends are libvirt storage streams through this process, so the
        hosts need no shared file system and no other channel. Returns the
        number of bytes copied.
        """

        def copy(conn: libvirt.virConnect) -> int:
            source = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            far = target._connection()
            made = far.storagePoolLookupByName(pool).createXML(xml, 0)
            down, up = conn.newStream(0), far.newStream(0)
            source.download(down, 0, 0, 0)
            made.upload(up, 0, 0, 0)
            total = 0
            try:
                while chunk := down.recv(COPY_CHUNK):
                    if not isinstance(chunk, bytes):
                        raise HypervisorError(f"copy volume {name}: the stream stalled")
                    _send_all(up, chunk)
                    total += len(chunk)
                down.finish()
                up.finish()
            except BaseException:
                for stream in (down, up):
                    with contextlib.suppress(libvirt.libvirtError):
                        stream.abort()
                raise
            return total

        return self._call(f"copy volume {name}", copy)

    def snapshot_create(self, name: str, xml: str) -> None:
        """Take an internal snapshot (``<domainsnapshot>``); a running guest pauses meanwhile."""
        self._domain(name, "snapshot", lambda d: d.snapshotCreateXML(xml, 0))

    def snapshot_revert(self, name: str, snapshot: str, running: bool) -> None:
        """Go back to the snapshot; ``running`` starts the domain afterwards in any case."""
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING if running else 0
        self._domain(
            name,
            "revert to a snapshot of",
            lambda d: d.revertToSnapshot(d.snapshotLookupByName(snapshot, 0), flags),
        )

    def snapshot_delete(self, name: str, snapshot: str) -> bool:
        """Delete the snapshot (its data in the volume too); False when there was none."""

        def delete(dom: Any) -> bool:
            try:
                found = dom.snapshotLookupByName(snapshot, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                    return False
                raise
            found.delete(0)
            return True

        return self._domain(name, "delete a snapshot of", delete)

    def snapshot_names(self, name: str) -> list[str]:
        """The names of the domain's snapshots."""
        return self._domain(
            name, "list the snapshots of", lambda d: [s.getName() for s in d.listAllSnapshots(0)]
        )

    def list_domains(self, prefix: str = "") -> dict[str, str]:
        """Every domain whose name starts with ``prefix``, with its state, in one call.

        One ``virConnectGetAllDomainStats`` for the states, not one
        ``virDomainGetState`` round trip per domain (a remote host's pass).
        """

        def listing(conn: libvirt.virConnect) -> dict[str, str]:
            return {
                dom.name(): DOMAIN_STATES[stats["state.state"]]
                for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
                if dom.name().startswith(prefix)
            }

        return self._call("list domains", listing)

    def domain_stats(self, prefix: str = "") -> list[DomainStats]:
        """Counters of every running or paused domain named ``prefix...``, in one call."""

        def collect(conn: libvirt.virConnect) -> list[DomainStats]:
            flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
            return [
                parse_domain_stats(dom.name(), int(dom.ID()), stats)
                for dom, stats in conn.getAllDomainStats(_STAT_GROUPS, flags)
                if dom.name().startswith(prefix)
            ]

        return self._call("domain statistics", collect)


_hypervisors: dict[str, Hypervisor] = {}
_registry_lock = threading.Lock()


def get_hypervisor(uri: str) -> Hypervisor:
    """The shared :class:`Hypervisor` for ``uri``."""
    with _registry_lock:
        if uri not in _hypervisors:
            _hypervisors[uri] = Hypervisor(uri)
        return _hypervisors[uri]


def close_all() -> None:
    with _registry_lock:
        for hv in _hypervisors.values():
            hv.close()
        _hypervisors.clear()
