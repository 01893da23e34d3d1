"""The worker's side of backups: copying a disk out, and a backup back in.

A running (or paused) VPS is backed up with libvirt's backup API in push
mode: QEMU writes a point-in-time copy of the disk while the guest runs on.
Its filesystems are frozen through qemu-guest-agent for the moment the job
starts when the guest has an agent; otherwise the copy is crash-consistent
(as after pulling the plug: journals replay at the next boot). A stopped
VPS's volume is copied with ``qemu-img convert``. Either way the copy is a
standalone qcow2 (the image it was made from is folded in), written under a
partial name and renamed when complete.

A restore stops the VPS (ACPI, then power off after a while), writes the
backup next to the volume's file, swaps it in, grows it to the plan's disk
if the plan grew since, and starts the VPS again if it ran. The address,
MAC, DHCP entry and credentials stay; the pinned host key becomes the one
the backed-up disk carries (the same unless the VPS was reinstalled since).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from kvmvps import backupstore, interrupt, xmlrender
from kvmvps.errors import Conflict, NotFound
from kvmvps.hypervisor import Hypervisor
from kvmvps.interrupt import Interrupted
from kvmvps.models import Backup, BackupState, Vps
from kvmvps.services import Context, audit, backups, jobs
from kvmvps.services import vps as vps_service
from kvmvps.services.facts import VpsFacts, facts_of
from kvmvps.services.steps import Progress
from kvmvps.storage import GIB
from kvmvps.xmlspec import BackupSpec

POLL_SECONDS = 0.2
RESTORE_SHUTDOWN_SECONDS = 30.0
LIVE_STATES = ("running", "idle", "paused", "in shutdown", "pmsuspended")


@dataclass(frozen=True)
class _Work:
    """What a backup or restore job works from, read once from the database."""

    facts: VpsFacts
    backup_uuid: str
    backup_state: str
    size_bytes: int | None
    host_key: str | None
    host_key_fingerprint: str | None
    created_at: str


def _load(ctx: Context, vps_uuid: str, backup_uuid: str) -> _Work:
    with ctx.db.reading() as s:
        backup = s.scalar(
            select(Backup).where(Backup.uuid == backup_uuid, Backup.vps_uuid == vps_uuid)
        )
        if backup is None:
            raise NotFound(f"backup {backup_uuid[:8]} no longer exists")
        vps = s.scalar(select(Vps).where(Vps.uuid == vps_uuid))
        if vps is None:
            raise NotFound(f"VPS {vps_uuid} no longer exists")
        return _Work(
            facts=facts_of(vps, ctx.settings),
            backup_uuid=backup.uuid,
            backup_state=backup.state,
            size_bytes=backup.size_bytes,
            host_key=vps.host_key if backup.state == BackupState.QUEUED else backup.host_key,
            host_key_fingerprint=(
                vps.host_key_fingerprint
                if backup.state == BackupState.QUEUED
                else backup.host_key_fingerprint
            ),
            created_at=jobs.aware(backup.created_at).isoformat(),
        )


# -- backing up ------------------------------------------------------------------
def run_backup(
    ctx: Context, vps_uuid: str, backup_uuid: str, progress: Progress | None = None
) -> None:
    """Copy the VPS's disk into the backup directory; the backup row says how it ended."""
    work = _load(ctx, vps_uuid, backup_uuid)
    if work.backup_state == BackupState.READY:
        return  # a resumed job whose first run finished the copy
    root = ctx.settings.backup_path
    backupstore.ensure_dir(root)
    part = backupstore.partial_path(root, backup_uuid)
    part.unlink(missing_ok=True)
    facts, hv = work.facts, ctx.hypervisor(work.facts.host_uri)
    try:
        if hv.state(facts.domain) in LIVE_STATES:
            consistency = _push(hv, facts, part, progress)
        else:
            source = Path(hv.volume_path(facts.pool, facts.overlay_volume))
            backupstore.convert(source, part)
            consistency = "stopped"
        virtual = hv.volume_capacity(facts.pool, facts.overlay_volume)
        size = backupstore.finish(root, backup_uuid, _metadata(work, consistency, virtual))
    except Interrupted:
        part.unlink(missing_ok=True)
        raise  # the worker is stopping: the next one starts the copy again
    except Exception as exc:
        part.unlink(missing_ok=True)
        _mark(ctx, backup_uuid, BackupState.FAILED, error=audit.error_message(exc))
        raise
    _mark(
        ctx,
        backup_uuid,
        BackupState.READY,
        consistency=consistency,
        size=size,
        virtual=virtual,
        host_key=work.host_key,
        fingerprint=work.host_key_fingerprint,
    )
    backups.prune(ctx, vps_uuid)  # scheduled backups beyond the plan's keep


def _push(hv: Hypervisor, facts: VpsFacts, part: Path, progress: Progress | None) -> str:
    """A push-mode backup of the running guest's disk into ``part``; its consistency."""
    skipped = ("vdb",) if facts.cloud_init else ()
    xml = xmlrender.backup_xml(BackupSpec(disk="vda", target_path=str(part), skipped_disks=skipped))
    frozen = hv.state(facts.domain) != "paused" and hv.freeze_filesystems(facts.domain)
    try:
        hv.backup_begin(facts.domain, xml)
    finally:
        if frozen:
            hv.thaw_filesystems(facts.domain)
    shown = -1
    try:
        while (state := hv.backup_progress(facts.domain)).running:
            done = state.processed_bytes * 100 // max(state.total_bytes, 1)
            if progress is not None and done != shown:
                progress("copy", done, 100)
                shown = done
            interrupt.sleep(POLL_SECONDS)
    except Interrupted:
        hv.abort_backup(facts.domain)
        raise
    if state.error is not None:
        raise Conflict(f"the backup of {facts.hostname} failed: {state.error}")
    return "frozen" if frozen else "crash"


def _metadata(work: _Work, consistency: str, virtual: int) -> dict[str, object]:
    f = work.facts
    return {
        "backup": work.backup_uuid,
        "vps": f.uuid,
        "hostname": f.hostname,
        "image": f.image_name,
        "login_user": f.login_user,
        "created_at": work.created_at,
        "consistency": consistency,
        "virtual_size_bytes": virtual,
        "host_key_fingerprint": work.host_key_fingerprint,
        "restore_by_hand": (
            "stop the VPS, then: qemu-img convert -f qcow2 -O qcow2 "
            f"{work.backup_uuid}.qcow2 <the VPS's volume file, e.g. {f.overlay_volume}>"
        ),
    }


def _mark(
    ctx: Context,
    backup_uuid: str,
    state: str,
    *,
    error: str | None = None,
    consistency: str | None = None,
    size: int | None = None,
    virtual: int | None = None,
    host_key: str | None = None,
    fingerprint: str | None = None,
) -> None:
    with ctx.db.session() as s:
        backup = s.scalar(select(Backup).where(Backup.uuid == backup_uuid))
        if backup is None:
            return  # deleted meanwhile
        backup.state, backup.error, backup.finished_at = state, error, jobs.now()
        backup.consistency, backup.size_bytes, backup.virtual_bytes = consistency, size, virtual
        backup.host_key, backup.host_key_fingerprint = host_key, fingerprint


# -- restoring --------------------------------------------------------------------
def run_restore(ctx: Context, vps_uuid: str, backup_uuid: str) -> None:
    """Replace the VPS's disk with the backup; start it again if it ran."""
    work = _load(ctx, vps_uuid, backup_uuid)
    if work.backup_state != BackupState.READY:
        raise Conflict(f"backup {backup_uuid[:8]} is {work.backup_state}, not ready")
    facts, hv = work.facts, ctx.hypervisor(work.facts.host_uri)
    capacity = max(hv.volume_capacity(facts.pool, facts.overlay_volume), facts.disk_gib * GIB)
    root = ctx.settings.backup_path
    source = backupstore.check(root, backup_uuid, work.size_bytes, capacity)
    was_running = hv.state(facts.domain) in LIVE_STATES
    if was_running:
        vps_service.shutdown(ctx, vps_uuid, timeout=RESTORE_SHUTDOWN_SECONDS, force=True)
    try:
        _swap_in(hv, facts, source, capacity)
    except Exception:
        if was_running:  # the old disk is untouched: the VPS runs on as it was
            vps_service.start(ctx, vps_uuid)
        raise
    _pin_host_key(ctx, facts.vps_id, work.host_key, work.host_key_fingerprint)
    if was_running:
        vps_service.start(ctx, vps_uuid)
    else:
        vps_service.sync_state(ctx, vps_uuid)


def _swap_in(hv: Hypervisor, facts: VpsFacts, source: Path, capacity: int) -> None:
    """Write the backup next to the VPS's volume file, swap it in, grow it to ``capacity``."""
    volume = Path(hv.volume_path(facts.pool, facts.overlay_volume))
    incoming = volume.with_name(volume.name + ".restoring")
    try:
        backupstore.convert(source, incoming)
        os.replace(incoming, volume)
    finally:
        incoming.unlink(missing_ok=True)
    hv.volume_path(facts.pool, facts.overlay_volume)  # libvirt reads the new file
    hv.resize_volume(facts.pool, facts.overlay_volume, capacity)


def fill_from_backup(ctx: Context, facts: VpsFacts, backup_uuid: str) -> None:
    """A new VPS's disk (created, never booted) becomes the backup's content.

    Any ready backup of the same owner may be used, its VPS deleted or not;
    the file is checked as for a restore before anything is written.
    """
    with ctx.db.reading() as s:
        backup = s.scalar(select(Backup).where(Backup.uuid == backup_uuid))
        if backup is None:
            raise NotFound(f"backup {backup_uuid[:8]} no longer exists")
        if backup.state != BackupState.READY:
            raise Conflict(f"backup {backup_uuid[:8]} is {backup.state}, not ready")
        size = backup.size_bytes
    hv = ctx.hypervisor(facts.host_uri)
    capacity = max(hv.volume_capacity(facts.pool, facts.overlay_volume), facts.disk_gib * GIB)
    source = backupstore.check(ctx.settings.backup_path, backup_uuid, size, capacity)
    _swap_in(hv, facts, source, capacity)


def _pin_host_key(ctx: Context, vps_id: int, key: str | None, fingerprint: str | None) -> None:
    """Pin the host key the restored disk carries (kept with the backup)."""
    if key is None:
        return
    with ctx.db.session() as s:
        vps = s.get(Vps, vps_id)
        if vps is not None:
            vps.host_key, vps.host_key_fingerprint = key, fingerprint
