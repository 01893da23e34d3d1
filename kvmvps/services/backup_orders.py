"""Restoring a backup as a new VPS: an order whose disk is the backup's content.

The new VPS has the backup's owner and image, the plan of the VPS it was
taken from (or one the caller names), and is ordered like any other: the
owner's quota is checked, a host chosen, an address allocated. Its build
makes the overlay volume as usual, swaps the backup's content in before the
first boot, and then goes on as any build: a new one-time password, the SSH
keys (the backed-up VPS's unless others are given), and the host key read
and pinned as for any new VPS. A kept backup of a deleted VPS can be
restored this way too.
"""

from __future__ import annotations

from sqlalchemy import select

from kvmvps.errors import Conflict, InvalidInput
from kvmvps.models import BackupState, Plan, User, Vps
from kvmvps.services import Context, audit, backups, guard, inventory, provisioning
from kvmvps.services.provisioning import Order, OrderRequest
from kvmvps.storage import GIB

audit.declare("vps.backup.restore-new")


def restore_as_new(
    ctx: Context,
    ref: str,
    backup_ref: str,
    hostname: str,
    *,
    plan: str | None = None,
    ssh_keys: list[str] | None = None,
    actor: str | None = None,
    owner_id: int | None = None,
) -> Order:
    """Order a new VPS named ``hostname`` from a ready backup of the VPS ``ref``.

    ``ref`` may name a deleted VPS (by id or hostname) whose backups were
    kept. ``owner_id`` scopes it to one customer's backups. Recorded in the
    audit log as ``vps.backup.restore-new``; the order's password is shown once.
    """
    target = (hostname or "").strip().lower()[:63]
    with audit.audited(ctx, actor, "vps.backup.restore-new", target):
        req = _request(ctx, ref, backup_ref, hostname, plan, ssh_keys, owner_id)
        return provisioning.place_order(ctx, req, actor or "")


def _request(
    ctx: Context,
    ref: str,
    backup_ref: str,
    hostname: str,
    plan: str | None,
    ssh_keys: list[str] | None,
    owner_id: int | None,
) -> OrderRequest:
    """The order for the new VPS, after checking the backup fits it."""
    with ctx.db.reading() as s:
        backup = backups.find_backup(s, ref, backup_ref, owner_id)
        if backup.state != BackupState.READY:
            raise Conflict(f"backup {backup.uuid[:8]} is {backup.state}, not ready")
        source = s.scalar(select(Vps).where(Vps.uuid == backup.vps_uuid))
        if source is not None:  # a suspended VPS is not copied out of its suspension
            guard.check_action(source, "backup_restore", operator=owner_id is None)
        plan_name = plan or (source.plan.name if source is not None else None)
        if not plan_name:
            raise InvalidInput(f"{backup.hostname} is deleted: choose a plan for the new VPS")
        chosen = inventory.get_by_name(s, Plan, plan_name, "plan")
        needed = backup.virtual_bytes or 0
        if needed > chosen.disk_gib * GIB:
            raise Conflict(
                f"backup {backup.uuid[:8]} holds a {needed / GIB:.1f} GiB disk; "
                f"plan {chosen.name} has {chosen.disk_gib} GiB"
            )
        owner = s.get(User, backup.owner_id)
        if owner is None:
            raise Conflict(f"the owner of backup {backup.uuid[:8]} no longer exists")
        if ssh_keys is None:
            ssh_keys = source.ssh_keys.splitlines() if source is not None else []
        return OrderRequest(
            plan=chosen.name,
            image=backup.image_name,
            hostname=hostname,
            owner_email=owner.email,
            ssh_keys=tuple(ssh_keys),
            backup=backup.uuid,
        )
