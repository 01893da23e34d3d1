"""Reconciliation: the database against what libvirt really has, on every host.

Each pass corrects power-state drift (a guest shut down from inside, or with
virsh), pauses again a suspended VPS that someone started, marks VPSes whose
domain vanished, and reports domains, volumes and DHCP entries that carry
kvmvps's prefix but belong to no VPS; with ``fix`` it removes those. VPSes
with an unfinished job are left alone: a build or a delete is moving them.
One pass at a time, across all processes (a lock row). Every pass puts a
guest NIC's missing anti-spoofing filter and port isolation back. On the
local host every pass also puts running guests' taps back on their bridges
(after a network restart) and rewrites the port-forwarding rules and the
proxy configuration from the database where they differ.

A pass reads what it needs of every VPS once, as plain columns, and looks at
several hosts at once (``HOST_THREADS``); a state it corrects is written only
if the VPS is still as the pass read it. In a worker's periodic pass, a
domain the last pass of the process found clean, whose row is unchanged and
of which libvirt told no change since, is not read again until its turn
comes (:class:`isolation.Memo`); ``kvmvps-admin reconcile`` reads every one.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from kvmvps import xmlrender
from kvmvps.errors import Conflict, HypervisorError, HypervisorNotFound, HypervisorUnavailable
from kvmvps.hypervisor import Hypervisor
from kvmvps.models import Host, IpLease, Job, JobState, Lock, Network, Vps, VpsState
from kvmvps.services import Context, audit, forwards, guard, isolation, provisioning
from kvmvps.services.facts import (
    DOMAIN_PREFIX,
    RESCUE_SUFFIX,
    facts_from_row,
    facts_query,
    pins_of,
)
from kvmvps.services.jobs import now
from kvmvps.services.vps import _FROM_LIBVIRT as FROM_LIBVIRT
from kvmvps.xmlspec import KVMVPS_XMLNS, SENTINEL_MAC, DhcpHost

log = logging.getLogger(__name__)

LOCK_NAME = "reconcile"
LOCK_TTL = timedelta(minutes=10)
SETTLED = (VpsState.RUNNING, VpsState.STOPPED, VpsState.SUSPENDED)
# hosts a pass looks at at once: their libvirt calls wait on the network (remote
# hosts) or run in libvirt's and lxml's C code, which let go of the GIL
HOST_THREADS = 8
# the domains each host's last pass found clean (a worker passes every few minutes)
MEMO = isolation.Memo()


@dataclass
class Report:
    fixed: bool
    hosts: list[str] = field(default_factory=list)
    drift: list[dict[str, str]] = field(default_factory=list)
    held: list[dict[str, str]] = field(default_factory=list)
    vanished: list[dict[str, str]] = field(default_factory=list)
    orphan_domains: list[dict[str, str]] = field(default_factory=list)
    orphan_volumes: list[dict[str, str]] = field(default_factory=list)
    orphan_dhcp: list[dict[str, str]] = field(default_factory=list)
    forwarding: list[dict[str, str]] = field(default_factory=list)
    rolled_back: list[dict[str, str]] = field(default_factory=list)
    isolation: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def absorb(self, part: Report) -> None:
        """Add a host's share of the pass to this report."""
        for f in fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, list):
                mine += getattr(part, f.name)

    @property
    def clean(self) -> bool:
        return not (
            self.orphan_domains
            or self.orphan_volumes
            or self.orphan_dhcp
            or self.vanished
            or self.errors
        )


# -- the lock ----------------------------------------------------------------
def acquire(ctx: Context, holder: str) -> bool:
    try:
        with ctx.db.session() as s:
            lock = s.get(Lock, LOCK_NAME, with_for_update=True)
            if lock is None:
                s.add(Lock(name=LOCK_NAME, holder=holder, expires_at=now() + LOCK_TTL))
                return True
            expires = lock.expires_at
            if expires is not None and expires.tzinfo is None:
                expires = expires.replace(tzinfo=now().tzinfo)
            if lock.holder and expires and expires > now() and lock.holder != holder:
                return False
            lock.holder, lock.expires_at = holder, now() + LOCK_TTL
            return True
    except IntegrityError:
        return False  # another process inserted the lock row first


def release(ctx: Context, holder: str) -> None:
    with ctx.db.session() as s:
        lock = s.get(Lock, LOCK_NAME, with_for_update=True)
        if lock is not None and lock.holder == holder:
            lock.holder, lock.expires_at = None, None


# -- the pass ----------------------------------------------------------------
def run(
    ctx: Context,
    fix: bool = False,
    holder: str = "cli",
    wait: bool = True,
    *,
    actor: str | None = None,
    incremental: bool = False,
) -> Report:
    """One reconciliation pass over every enabled host.

    A pass with ``fix`` changes things and is recorded as ``reconcile`` of
    ``actor``; a pass that only looks and corrects power states is not. An
    ``incremental`` pass (a worker's periodic one) reads only the domains
    that changed since this process's last pass, and each in its turn
    (:class:`isolation.Memo`); any other reads every domain.
    """
    with audit.audited(ctx, actor if fix else None, "reconcile", ""):
        return _run(ctx, fix, holder, wait, incremental)


audit.declare("reconcile")


def _run(ctx: Context, fix: bool, holder: str, wait: bool, incremental: bool) -> Report:
    deadline = time.monotonic() + (60 if wait else 0)
    while not acquire(ctx, holder):
        if time.monotonic() >= deadline:
            raise Conflict("another reconcile is running; try again shortly")
        time.sleep(0.5)
    try:
        with ctx.db.reading() as s:
            query = select(Host).where(Host.enabled).order_by(Host.id)
            if ctx.settings.agent_host:  # a host agent looks after its own host only
                query = query.where(Host.name == ctx.settings.agent_host)
            hosts = list(s.scalars(query))
        seen = _seen(ctx, [host.id for host in hosts])  # once per pass, not per host
        report = Report(fixed=fix)
        parts = _each_host(ctx, hosts, seen, fix, incremental)
        for host, (part, failure) in zip(hosts, parts, strict=True):
            report.hosts.append(host.name)
            report.absorb(part)
            _finish_host(ctx, host, failure, report)
        return report
    finally:
        release(ctx, holder)


def _each_host(
    ctx: Context, hosts: list[Host], seen: Seen, fix: bool, incremental: bool
) -> list[tuple[Report, HypervisorError | None]]:
    """Each host's share of the pass, several hosts at once (see HOST_THREADS)."""

    def one(host: Host) -> tuple[Report, HypervisorError | None]:
        part = Report(fixed=fix)
        try:
            _host_pass(ctx, host, seen, fix, incremental, part)
        except HypervisorError as exc:
            return part, exc
        return part, None

    if len(hosts) < 2:
        return [one(host) for host in hosts]
    with ThreadPoolExecutor(min(HOST_THREADS, len(hosts)), "reconcile") as pool:
        return list(pool.map(one, hosts))


def _finish_host(ctx: Context, host: Host, failure: HypervisorError | None, report: Report) -> None:
    """The host's forwarding rules (one host after another: iptables and the proxy are
    shared), then what the pass learnt of whether it answers."""
    if failure is None:
        try:
            report.forwarding += forwards.sync(ctx, host)
        except HypervisorError as exc:
            failure = exc
    if failure is not None:
        report.errors.append(f"{host.name}: {failure}")
        if isinstance(failure, HypervisorUnavailable):
            _mark_down(ctx, host.id, report)
    elif host.down_since is not None:
        _mark_up(ctx, host.id, report)


def _mark_down(ctx: Context, host_id: int, report: Report) -> None:
    """The host does not answer: its VPSes show ``unknown`` and it takes no new ones."""
    with ctx.db.session() as s:
        host = s.get(Host, host_id)
        if host is not None and host.down_since is None:
            host.down_since = now()
            report.errors.append(f"{host.name}: marked as not answering; no new VPSes go there")
            log.error("host %s stopped answering", host.name)


def _mark_up(ctx: Context, host_id: int, report: Report) -> None:
    with ctx.db.session() as s:
        host = s.get(Host, host_id)
        if host is not None and host.down_since is not None:
            host.down_since = None
            report.forwarding.append({"host": host.name, "action": "answers again"})
            log.warning("host %s answers again", host.name)


@dataclass(frozen=True)
class Seen:
    """What a pass reads once for all hosts: columns, no ORM object per VPS."""

    busy: set[str]  # VPSes with an unfinished job: left alone
    domains: set[str]  # every VPS's domain name, on any host
    nat_networks: list[str]  # libvirt names
    leases: set[tuple[str, str]]  # (network's libvirt name, MAC) held by a VPS
    moving: set[str]  # the domains of busy VPSes: perhaps on their way to or from a host
    vpses: dict[int, list[Any]]  # host id -> its VPSes, as facts_query rows (+ _PASS_COLUMNS)
    pins: dict[int, tuple[int, ...]]  # VPS id -> pinned host CPUs


# what the pass reads of each VPS beyond its facts
_PASS_COLUMNS = (Vps.state, Vps.suspended_reason, Vps.host_id, Vps.rollback_pending)


def _seen(ctx: Context, host_ids: list[int]) -> Seen:
    with ctx.db.reading() as s:
        conn = s.connection()  # Core rows, in one fetch each: the ORM's layer cost more
        unfinished = select(Job.vps_uuid).where(Job.state.in_(JobState.UNFINISHED))
        busy = {uuid for uuid in conn.scalars(unfinished).all() if uuid}
        domains = set(conn.scalars(select(Vps.domain_name)).all())
        nats = select(Network.libvirt_name).where(Network.kind == "nat")
        nets = list(conn.scalars(nats).all())
        held = conn.execute(
            select(Network.libvirt_name, IpLease.mac)
            .join(IpLease, IpLease.network_id == Network.id)
            .where(IpLease.vps_id.is_not(None))
        ).all()
        leases = {(name, mac) for name, mac in held if mac}
        on_busy = select(Vps.domain_name).where(Vps.uuid.in_(busy))
        moving = set(conn.scalars(on_busy).all()) if busy else set()
        on_hosts = Vps.host_id.in_(host_ids)
        vpses: dict[int, list[Any]] = {host_id: [] for host_id in host_ids}
        query = facts_query(*_PASS_COLUMNS).where(on_hosts).order_by(Vps.id)
        for row in conn.execute(query).all():
            vpses[row.host_id].append(row)
        pins = pins_of(conn, select(Vps.id).where(on_hosts))
    return Seen(busy, domains, nets, leases, moving, vpses, pins)


def _host_pass(
    ctx: Context, host: Host, seen: Seen, fix: bool, incremental: bool, report: Report
) -> None:
    hv = ctx.hypervisor(host)
    rows = seen.vpses.get(host.id, [])
    rolled_back = _finish_rollbacks(ctx, host, rows, seen.busy, report)
    domains = hv.list_domains(prefix=DOMAIN_PREFIX)
    changes: list[StateChange] = []
    settled = []
    for row in rows:
        if row.uuid in seen.busy or row.uuid in rolled_back or row.state not in SETTLED:
            continue
        actual = _hold(hv, row, domains.get(row.domain_name), report)
        changes += _check_power(row, actual, report)
        if row.domain_name in domains:
            settled.append(row)
    _write_states(ctx, changes)
    known = isolation.Known(domains)
    memo = MEMO.begin(hv, ctx.settings, incremental)
    for row in settled:
        key = _check_isolation(ctx, hv, row, seen.pins.get(row.id, ()), known, memo, report)
        if key is not None:
            memo.clean[row.domain_name] = key
    MEMO.end(hv, ctx.settings, memo)
    own = {row.domain_name for row in rows}
    _orphan_domains(
        hv, host, set(domains) - own - seen.moving, fix, report, ctx.settings.storage_pool
    )
    # any VPS's volume (those moving, those of other hosts on a shared pool) is no orphan
    _orphan_volumes(ctx, hv, host, seen.domains, fix, report)
    _orphan_dhcp(hv, host, seen, fix, report)


def _finish_rollbacks(
    ctx: Context, host: Host, rows: list[Any], busy: set[str], report: Report
) -> set[str]:
    """Roll back the failed builds that waited for this host to answer again.

    Done on every pass, like the forwarding rules: until then the VPS holds
    its address and CPUs. Returns the VPSes rolled back.
    """
    done = set()
    for row in rows:
        if not row.rollback_pending or row.uuid in busy:
            continue
        if provisioning.finish_rollback(ctx, row.uuid):
            done.add(row.uuid)
            report.rolled_back.append(
                {"vps": row.uuid, "hostname": row.hostname, "host": host.name}
            )
            log.warning("rolled back the failed build of %s on %s", row.hostname, host.name)
        else:
            report.errors.append(f"{row.hostname}: its rollback waits for host {host.name}")
    return done


def _hold(hv: Hypervisor, row: Any, actual: str | None, report: Report) -> str | None:
    """Pause a suspended VPS that runs anyway (``virsh start``, autostart after a reboot)."""
    if not guard.runs_while_suspended(row.suspended_reason, actual):
        return actual
    try:
        hv.suspend(row.domain_name)
        actual = hv.state(row.domain_name)
    except HypervisorError as exc:
        report.errors.append(f"{row.hostname}: could not pause it (suspended): {exc}")
        return actual
    report.held.append({"vps": row.uuid, "hostname": row.hostname, "reason": row.suspended_reason})
    return actual


def _check_isolation(
    ctx: Context,
    hv: Hypervisor,
    row: Any,
    pins: tuple[int, ...],
    known: isolation.Known,
    memo: isolation.Round,
    report: Report,
) -> tuple[Any, ...] | None:
    """Every guest NIC's anti-spoofing filter and port isolation: put back where missing.

    Like the forwarding rules, this is fixed on every pass, not only with ``fix``:
    a guest running unfiltered can take over its neighbours' addresses. Returns
    the memo key of a domain found clean (see :class:`isolation.Memo`).
    """
    try:
        state = known.states.get(row.domain_name)
        key = isolation.Memo.key(row, pins, known.gateway(hv, row), state)
        if memo.still_clean(row.domain_name, key):
            return key
        active = known.active(hv, row.domain_name)
        texts = hv.domain_documents(row.domain_name, live=active)
        facts = facts_from_row(row, pins, ctx.settings)
        found = isolation.check(ctx, hv, facts, known=known, texts=texts)
    except HypervisorError as exc:
        report.errors.append(f"isolation of {row.hostname}: {exc}")
        return None
    report.isolation += found
    report.errors += [f"{f['hostname']}: {f['action']}" for f in found if "failed" in f["action"]]
    return None if found else key


# (VPS id, the state the pass read, the state to write, the error to write)
StateChange = tuple[int, str, str, str | None]


def _check_power(row: Any, actual: str | None, report: Report) -> list[StateChange]:
    if actual is None:
        report.vanished.append(
            {"vps": row.uuid, "hostname": row.hostname, "domain": row.domain_name}
        )
        return [(row.id, row.state, VpsState.ERROR, "the domain has vanished from libvirt")]
    state = FROM_LIBVIRT[actual]
    if state == row.state:
        return []
    report.drift.append({"vps": row.uuid, "hostname": row.hostname, "from": row.state, "to": state})
    return [(row.id, row.state, state, None)]


def _write_states(ctx: Context, changes: list[StateChange]) -> None:
    """Each change, unless the VPS's state changed since the pass read it (a job's stands)."""
    if not changes:
        return
    with ctx.db.session() as s:
        for vps_id, read, state, error in changes:
            values: dict[str, str] = (
                {"state": state} if error is None else {"state": state, "error": error}
            )
            s.execute(update(Vps).where(Vps.id == vps_id, Vps.state == read).values(**values))


def _orphan_domains(
    hv: Hypervisor, host: Host, names: set[str], fix: bool, report: Report, installation: str
) -> None:
    """Unknown kvmvps-* domains, except those another installation made (its own pool)."""
    for name in sorted(names):
        try:
            meta = hv.domain_metadata(name, KVMVPS_XMLNS)
        except HypervisorNotFound:
            continue  # removed since it was listed (by whoever made it): no orphan
        if meta is not None and meta.get("installation", installation) != installation:
            continue
        report.orphan_domains.append({"host": host.name, "domain": name})
        if fix:
            hv.undefine(name)


def _orphan_volumes(
    ctx: Context, hv: Hypervisor, host: Host, known: set[str], fix: bool, report: Report
) -> None:
    """Volumes of no VPS on any host: hosts may share the pool's directory (NFS, one machine)."""
    pool = ctx.settings.storage_pool
    for volume in hv.list_volumes(pool):
        if not volume.startswith(DOMAIN_PREFIX):
            continue
        owner = volume.removesuffix(".qcow2").removesuffix("-seed.iso").removesuffix(RESCUE_SUFFIX)
        if owner not in known:
            report.orphan_volumes.append({"host": host.name, "pool": pool, "volume": volume})
            if fix:
                hv.delete_volume(pool, volume)


def _orphan_dhcp(hv: Hypervisor, host: Host, seen: Seen, fix: bool, report: Report) -> None:
    held = seen.leases
    for net in seen.nat_networks:
        if not hv.network_exists(net):
            continue
        for entry in hv.dhcp_hosts(net, live=False):
            if entry.mac == SENTINEL_MAC or (net, entry.mac) in held:
                continue
            report.orphan_dhcp.append(
                {"host": host.name, "network": net, "mac": entry.mac, "ip": entry.ip}
            )
            if fix:
                xml = xmlrender.dhcp_host_xml(DhcpHost(entry.mac, entry.ip, entry.name))
                hv.remove_dhcp_host(net, entry, xml)


DRIFT_KINDS = (
    "drift",
    "held",
    "vanished",
    "orphan_domains",
    "orphan_volumes",
    "orphan_dhcp",
    "forwarding",
    "rolled_back",
    "isolation",
    "errors",
)


def drift_counts(report: Report) -> dict[str, float]:
    """How much of each kind a pass found, as ``reconcile_<kind>`` gauges for /metrics."""
    return {f"reconcile_{kind}": float(len(getattr(report, kind))) for kind in DRIFT_KINDS}


def report_dict(report: Report) -> dict[str, Any]:
    return {**asdict(report), "clean": report.clean}
