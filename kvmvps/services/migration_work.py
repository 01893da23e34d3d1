"""Moving a VPS to another host: a table of ordered, undoable steps run by a worker.

Live (the VPS keeps running): an empty volume is made on the target, the
DHCP entry added there, and libvirt copies memory and disk while the guest
runs (:meth:`~kvmvps.hypervisor.Hypervisor.migrate_live`). Cold: the VPS is
powered off (if it ran), its volumes are copied through libvirt storage
streams, and it is defined (and started, if it ran) on the target. Either
way the target is verified before the database moves the VPS (host, pinned
CPUs, public ports) in one transaction; only then is the source's domain,
volumes and DHCP entry removed. A failure at any step undoes every step done
in reverse: the VPS is left on the source as it was (running again, if it
ran) and nothing of it on the target.
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NoReturn

from lxml import etree
from sqlalchemy import select

from kvmvps import cpupin, logs, xmlrender
from kvmvps.errors import HypervisorError, KvmvpsError, NotFound, StepFailed
from kvmvps.hypervisor import DhcpEntry, Hypervisor
from kvmvps.interrupt import Interrupted
from kvmvps.models import CpuPin, Host, Vps
from kvmvps.services import Context, audit, forwards, isolation, mail, setup
from kvmvps.services.facts import VpsFacts, domain_spec, facts_of, overlay_spec
from kvmvps.services.rescue import power_off
from kvmvps.xmlspec import RawVolumeSpec

log = logging.getLogger(__name__)

ACTOR = "system:migrate"
audit.declare("vps.migrate_notice")


@dataclass(frozen=True)
class Side:
    """One end of a move: a host's id, name, URI and the address migration traffic goes to."""

    id: int
    name: str
    uri: str
    address: str


@dataclass
class Move:
    """The state of one move while its steps run."""

    ctx: Context
    facts: VpsFacts  # the VPS as it is on the source
    source: Side
    target: Side
    live: bool
    was_running: bool = False
    pins: tuple[int, ...] = ()
    xml: str = ""  # the target's persistent definition
    source_xml: str = ""  # the running domain as the source has it (to move it back)
    told: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def src(self) -> Hypervisor:
        return self.ctx.hypervisor(self.source.uri)

    @property
    def dst(self) -> Hypervisor:
        return self.ctx.hypervisor(self.target.uri)

    @property
    def moved(self) -> VpsFacts:
        """The VPS's facts as they are on the target."""
        return replace(self.facts, host_uri=self.target.uri, pinned_cpus=self.pins)

    @property
    def volumes(self) -> tuple[str, ...]:
        return (self.facts.overlay_volume,) + ((self.facts.seed_volume,) if self.seed else ())

    @property
    def seed(self) -> bool:
        return self.facts.cloud_init


@dataclass(frozen=True)
class MoveStep:
    name: str
    do: Callable[[Move], None]
    undo: Callable[[Move], None]


def migration_address(host: Host) -> str:
    """Where QEMU's migration traffic reaches ``host``: its public address, else its URI's host."""
    if host.public_address:
        return host.public_address
    from_uri = host.uri.partition("://")[2].partition("/")[0].rpartition("@")[2]
    return from_uri.partition(":")[0] if from_uri.count(":") == 1 else from_uri


# -- the steps ------------------------------------------------------------------------
def _nothing(_m: Move) -> None:
    """Nothing to undo."""


def _choose_pins(m: Move) -> None:
    """The target has the pool, networks and filters; the VPS's CPUs are chosen there."""
    with m.ctx.db.reading() as s:
        prep = setup.host_prep(s, m.target.uri)
        host = s.get(Host, m.target.id)
        if host is None:
            raise NotFound(f"host {m.target.name} no longer exists")
        counts = cpupin.pin_counts(s, host)
        m.pins = tuple(
            cpupin.choose_cpus(counts, host.cpus, m.facts.vcpus, m.ctx.settings.cpu_overcommit)
        )
    setup.prepare_host(m.ctx, prep)


def _prepare(m: Move) -> None:
    """CPUs chosen on the target, which must hold no domain of this VPS."""
    _choose_pins(m)
    if m.dst.domain_exists(m.facts.domain):
        raise StepFailed(
            f"host {m.target.name} already has a domain {m.facts.domain}; remove it first"
        )
    if _shared_pool(m):
        raise StepFailed(
            f"hosts {m.source.name} and {m.target.name} share the storage pool's directory; "
            "a move copies the disk and needs each host's own"
        )
    m.was_running = m.src.state(m.facts.domain) == "running"
    if m.live and not m.was_running:
        raise StepFailed(f"{m.facts.hostname} is not running: a live move needs it running")


def _prepare_arrived(m: Move) -> None:
    """A resumed live move whose guest runs on the target already: finish it there."""
    _choose_pins(m)
    m.was_running = True


def arrived(m: Move) -> bool:
    """A live move that ended before its worker died: the guest runs on the target only.

    libvirt finished the migration (the target's domain runs, the source's is
    defined but shut off) and only the recording was left. Undoing it would move
    a guest that runs, with the customer's newest data, for nothing: the
    resumed job finishes it instead.
    """
    dst, src, domain = m.dst, m.src, m.facts.domain
    return (
        m.live
        and dst.domain_exists(domain)
        and dst.is_active(domain)
        and src.domain_exists(domain)
        and not src.is_active(domain)
    )


def _shared_pool(m: Move) -> bool:
    """Whether a volume made in the source's pool shows up in the target's (shared storage).

    The move deletes and makes the VPS's volumes in the target's pool: on
    shared storage that would be the source's own disk.
    """
    probe = f"{PROBE_PREFIX}{uuidlib.uuid4().hex[:12]}.raw"
    xml = xmlrender.raw_volume_xml(RawVolumeSpec(name=probe, capacity_bytes=512))
    m.src.create_volume(m.facts.pool, probe, xml)
    try:
        return m.dst.volume_exists(m.facts.pool, probe)
    finally:
        m.src.delete_volume(m.facts.pool, probe)


PROBE_PREFIX = "migrate-probe-"


def _stop(m: Move) -> None:
    if not m.live:
        power_off(m.src, m.facts.domain)


def _restart(m: Move) -> None:
    if not m.live and m.was_running and m.src.state(m.facts.domain) != "running":
        m.src.start(m.facts.domain)


def _volumes(m: Move) -> None:
    """Cold: copy the volumes. Live: an empty overlay (the migration fills it), the seed copied."""
    pool = m.facts.pool
    for volume in m.volumes:
        m.dst.delete_volume(pool, volume)  # a leftover of an earlier attempt
    capacity = m.src.volume_capacity(pool, m.facts.overlay_volume)
    overlay = xmlrender.overlay_volume_xml(overlay_spec(m.facts, capacity))
    if m.live:
        m.dst.create_volume(pool, m.facts.overlay_volume, overlay)
    else:
        m.src.copy_volume_to(pool, m.facts.overlay_volume, m.dst, overlay)
    if m.seed:
        size = m.src.volume_capacity(pool, m.facts.seed_volume)
        seed = xmlrender.raw_volume_xml(
            RawVolumeSpec(name=m.facts.seed_volume, capacity_bytes=size)
        )
        m.src.copy_volume_to(pool, m.facts.seed_volume, m.dst, seed)


def _remove_volumes(m: Move) -> None:
    for volume in m.volumes:
        m.dst.delete_volume(m.facts.pool, volume)


def _entry(facts: VpsFacts) -> tuple[DhcpEntry, str] | None:
    host = facts.dhcp_host
    if host is None:
        return None
    return DhcpEntry(mac=host.mac, ip=host.ip, name=host.name), xmlrender.dhcp_host_xml(host)


def _add_dhcp(m: Move) -> None:
    entry = _entry(m.facts)
    if entry is not None and entry[0] not in m.dst.dhcp_hosts(m.facts.network_libvirt):
        m.dst.add_dhcp_host(m.facts.network_libvirt, *entry)


def _remove_dhcp(m: Move) -> None:
    entry = _entry(m.facts)
    if entry is not None and entry[0] in m.dst.dhcp_hosts(m.facts.network_libvirt):
        m.dst.remove_dhcp_host(m.facts.network_libvirt, *entry)


def _render(m: Move) -> None:
    """The target's definition: its bridge's MAC in the filter, its CPUs in the pins."""
    gateway = isolation.gateway_mac(m.dst, m.moved)
    spec = domain_spec(
        m.moved,
        m.ctx.domain_type,
        m.seed,
        gateway,
        tb_cache_mib=m.ctx.settings.tcg_tb_cache_mib,
    )
    m.xml = xmlrender.domain_xml(spec)


def _migrate(m: Move) -> None:
    if not m.live:
        return
    m.source_xml = m.src.migratable_xml(m.facts.domain)
    paths = {v: m.dst.volume_path(m.facts.pool, v) for v in m.volumes}
    gateway = isolation.gateway_mac(m.dst, m.moved)
    running = retarget(m.source_xml, m.facts, paths, gateway, m.pins)
    m.src.migrate_live(m.facts.domain, m.dst, m.target.address, running, ("vda",))


def _migrate_back(m: Move) -> None:
    """Undo a live move: the VPS runs on the target, so it goes back the same way."""
    if not m.live or not m.dst.domain_exists(m.facts.domain):
        return
    if m.dst.is_active(m.facts.domain) and not m.src.is_active(m.facts.domain):
        m.dst.migrate_live(
            m.facts.domain, m.src, m.source.address, m.source_xml, ("vda",), full_copy=True
        )
    m.dst.undefine(m.facts.domain)


def _define(m: Move) -> None:
    m.dst.define_domain(m.xml)


def _undefine_cold(m: Move) -> None:
    if not m.live:  # a live move's domain goes back in _migrate_back
        m.dst.undefine(m.facts.domain)


def _start(m: Move) -> None:
    if not m.live and m.was_running and m.dst.state(m.facts.domain) != "running":
        m.dst.start(m.facts.domain)


def _stop_target(m: Move) -> None:
    if not m.live and m.dst.domain_exists(m.facts.domain) and m.dst.is_active(m.facts.domain):
        m.dst.destroy(m.facts.domain)


def _verify(m: Move) -> None:
    """The target has the domain, in the state the VPS had, and its disk."""
    want = "running" if m.was_running else "shut off"
    state = m.dst.state(m.facts.domain)
    if state != want:
        raise StepFailed(f"the domain is {state} on {m.target.name}, not {want}")
    if not m.dst.volume_exists(m.facts.pool, m.facts.overlay_volume):
        raise StepFailed(f"the disk of {m.facts.hostname} is missing on {m.target.name}")


def _commit(m: Move) -> None:
    """One transaction: the VPS's host, pinned CPUs and public ports become the target's."""
    with m.ctx.db.session() as s:
        vps = s.get(Vps, m.facts.vps_id)
        target = s.get(Host, m.target.id)
        if vps is None or target is None:
            raise NotFound(f"{m.facts.hostname} or host {m.target.name} no longer exists")
        m.told = forwards.move(m.ctx, s, vps, target)
        vps.pins.clear()
        s.flush()
        for vcpu, cpu in enumerate(m.pins):
            vps.pins.append(CpuPin(host_id=target.id, vcpu=vcpu, host_cpu=cpu))
        vps.host_id = target.id


STEPS: tuple[MoveStep, ...] = (
    MoveStep("prepare", _prepare, _nothing),
    MoveStep("stop", _stop, _restart),
    MoveStep("volumes", _volumes, _remove_volumes),
    MoveStep("dhcp", _add_dhcp, _remove_dhcp),
    MoveStep("render", _render, _nothing),
    MoveStep("migrate", _migrate, _migrate_back),
    MoveStep("define", _define, _undefine_cold),
    MoveStep("start", _start, _stop_target),
    MoveStep("verify", _verify, _nothing),
    MoveStep("commit", _commit, _nothing),
)
# a resumed live move that arrived (see :func:`arrived`): what is left after 'migrate'
ARRIVED_STEPS: tuple[MoveStep, ...] = (
    MoveStep("prepare", _prepare_arrived, _nothing),
    MoveStep("dhcp", _add_dhcp, _nothing),
    MoveStep("render", _render, _nothing),
    MoveStep("define", _define, _nothing),
    MoveStep("verify", _verify, _nothing),
    MoveStep("commit", _commit, _nothing),
)


def retarget(
    xml: str,
    facts: VpsFacts,
    paths: dict[str, str],
    gateway_mac: str | None,
    pins: tuple[int, ...],
) -> str:
    """The running domain's XML as the target runs it.

    Its disks name the target's files (libvirt pre-creates a pool volume
    named in a migration itself, and refuses to for a shallow copy; the
    volumes exist already, as files); the filter names the target bridge's
    MAC; the vCPUs are pinned to the target's CPUs. Everything else (devices,
    their addresses) stays as it is: the destination must match the source.
    """
    root = etree.fromstring(xml.encode())
    by_target = {"vda": paths[facts.overlay_volume]}
    if facts.seed_volume in paths:
        by_target["vdb"] = paths[facts.seed_volume]
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        dev = "" if target is None else target.get("dev", "")
        if source is None or dev not in by_target:
            continue
        disk.set("type", "file")
        source.attrib.clear()
        source.set("file", by_target[dev])
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
    for ref in root.iterfind("devices/interface/filterref"):
        for param in ref.iterfind("parameter"):
            if param.get("name") == "GATEWAY_MAC" and gateway_mac:
                param.set("value", gateway_mac)
    for pin in root.iterfind("cputune/vcpupin"):
        vcpu = int(pin.get("vcpu", "0"))
        if vcpu < len(pins):
            pin.set("cpuset", str(pins[vcpu]))
    return etree.tostring(root, encoding="unicode")


# -- running the steps ------------------------------------------------------------------
def load(ctx: Context, uuid: str, to: str, live: bool) -> Move:
    """The move of VPS ``uuid`` to host ``to``, read from the database."""
    with ctx.db.reading() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        if vps is None:
            raise NotFound(f"VPS {uuid} no longer exists")
        target = s.scalar(select(Host).where(Host.name == to))
        if target is None:
            raise NotFound(f"host {to} no longer exists")
        facts = facts_of(vps, ctx.settings)
        source = vps.host
        return Move(
            ctx,
            facts,
            Side(source.id, source.name, source.uri, migration_address(source)),
            Side(target.id, target.name, target.uri, migration_address(target)),
            live,
        )


def run(
    ctx: Context,
    uuid: str,
    to: str,
    live: bool,
    *,
    checkpoint: Callable[[], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    steps: tuple[MoveStep, ...] = STEPS,
) -> Move | None:
    """Move the VPS to host ``to``; on failure undo every step done and raise StepFailed.

    Returns None when the VPS is on ``to`` already (a resumed job whose first
    run finished).
    """
    m = load(ctx, uuid, to, live)
    if m.source.id == m.target.id:
        return None
    if steps is STEPS and arrived(m):
        log.warning("%s runs on %s already: finishing its move", m.facts.domain, m.target.name)
        steps = ARRIVED_STEPS
    done: list[MoveStep] = []
    for index, step in enumerate(steps):
        if progress:
            progress(step.name, index, len(steps))
        started = time.perf_counter()
        try:
            if checkpoint:
                checkpoint()
            step.do(m)
        except Interrupted:  # not resumed: a half-done move is undone at once
            _fail(m, done + [step], step.name, StepFailed("the worker is stopping"))
        except Exception as exc:  # noqa: BLE001 - every failure rolls back
            _fail(m, done + [step], step.name, exc)
        m.timings[step.name] = seconds = time.perf_counter() - started
        logs.event(log, "step", f"step {step.name} done in {seconds:.2f} s", step=step.name)
        done.append(step)
    leftovers = _clear_source(m)
    _tell(ctx, m, leftovers)
    return m


def _fail(m: Move, steps: list[MoveStep], name: str, exc: Exception) -> NoReturn:
    leftovers = []
    for step in reversed(steps):
        try:
            step.undo(m)
        except Exception as undo_exc:  # noqa: BLE001 - keep undoing the rest
            log.error("undoing move step %s of %s failed: %s", step.name, m.facts.domain, undo_exc)
            leftovers.append(f"{step.name}: {undo_exc}")
    reason = str(exc) if isinstance(exc, KvmvpsError) else f"{type(exc).__name__}: {exc}"
    message = (
        f"moving {m.facts.hostname} to {m.target.name} failed at step '{name}': {reason}; "
        f"it stays on {m.source.name}"
    )
    if leftovers:
        message += f" (cleanup left: {'; '.join(leftovers)})"
        with m.ctx.db.session() as s:
            vps = s.get(Vps, m.facts.vps_id)
            if vps is not None:
                vps.error = message
    raise StepFailed(message) from exc


def _clear_source(m: Move) -> list[str]:
    """After the commit: the source's domain, volumes and DHCP entry go; rules are rewritten.

    Nothing here can undo the move; what fails is logged and returned.
    """
    left = []
    work: list[tuple[str, Callable[[], object]]] = [
        ("domain", lambda: m.src.undefine(m.facts.domain)),
        *((f"volume {v}", _deleter(m.src, m.facts.pool, v)) for v in m.volumes),
    ]
    entry = _entry(m.facts)
    if entry is not None:
        work.append(("DHCP entry", lambda: m.src.remove_dhcp_host(m.facts.network_libvirt, *entry)))
    for what, action in work:
        try:
            action()
        except HypervisorError as exc:
            log.error("removing the %s of %s from %s: %s", what, m.facts.domain, m.source.name, exc)
            left.append(f"{what}: {exc}")
    for host_id in (m.source.id, m.target.id):
        forwards.apply_quietly(m.ctx, host_id)
    return left


def _deleter(hv: Hypervisor, pool: str, volume: str) -> Callable[[], object]:
    return lambda: hv.delete_volume(pool, volume)


def _tell(ctx: Context, m: Move, leftovers: list[str]) -> None:
    """Tell the customer where their VPS is now (mail, if configured) and audit it."""
    with ctx.db.reading() as s:
        vps = s.get(Vps, m.facts.vps_id)
        email = vps.owner.email if vps is not None else ""
    lines = [f"Your server {m.facts.hostname} has moved to another host."]
    lines += ["Its public ports changed:", *m.told] if m.told else ["Its address is unchanged."]
    lines.append("Its login, password and SSH host key are unchanged.")
    sent = "no e-mail (SMTP not configured)"
    if email and mail.configured(ctx):
        try:
            mail.send(ctx, email, f"{m.facts.hostname} has moved", "\n".join(lines) + "\n")
            sent = "e-mailed"
        except OSError as exc:
            sent = f"e-mail failed ({type(exc).__name__})"
    detail = f"{m.source.name} -> {m.target.name} ({'live' if m.live else 'cold'}); {sent}"
    if m.told:
        detail += "; " + "; ".join(m.told)
    if leftovers:
        detail += f"; left on {m.source.name}: " + "; ".join(leftovers)
    audit.record(ctx, ACTOR, "vps.migrate_notice", m.facts.uuid, audit.OK, detail)
