"""The :class:`Hypervisor`: a host's domain calls, its storage and network calls mixed in.

Domains: lifecycle, devices and limits, backups, migration, internal
snapshots, listing and statistics. Also the one shared :class:`Hypervisor`
per URI (:func:`get_hypervisor`, :func:`close_all`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from lxml import etree

from kvmvps.errors import HypervisorError, HypervisorNotFound
from kvmvps.hvtypes import BackupProgress, DomainStats, NicState, nic_states, parse_domain_stats
from kvmvps.hypervisor.connection import Connection
from kvmvps.hypervisor.errors import libvirt
from kvmvps.hypervisor.network import NetworkCalls
from kvmvps.hypervisor.storage import StorageCalls
from kvmvps.hypervisor.streams import ConsoleStream

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


class Hypervisor(StorageCalls, NetworkCalls, Connection):
    """One libvirt host, reached through ``uri``: its domains, storage and networks.

    The connection is :class:`Connection`'s; the storage and network calls
    are mixed in from :class:`StorageCalls` and :class:`NetworkCalls`.
    """

    # -- domains ----------------------------------------------------------
    def define_domain(self, xml: str) -> str:
        return self._call("define domain", lambda c: c.defineXML(xml).name())

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

    def domain_documents(self, name: str, live: bool) -> list[tuple[bool, str]]:
        """(inactive, XML): the running guest's (when ``live``) and the definition, one lookup."""
        views = (False, True) if live else (True,)

        def read(dom: libvirt.virDomain) -> list[tuple[bool, str]]:
            return [(i, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if i else 0)) for i in views]

        return self._domain(name, "XML of", read)

    def is_active(self, name: str) -> bool:
        return bool(self._domain(name, "look up", lambda d: d.isActive()))

    # -- interfaces and limits --------------------------------------------
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

    # -- internal snapshots -----------------------------------------------
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
