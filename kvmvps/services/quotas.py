"""Per-customer limits: how many VPSes, vCPUs, MiB of memory and GiB of disk.

Every account follows the ``KVMVPS_QUOTA_*`` defaults unless an operator gave
it limits of its own (``kvmvps-admin user quota``, or the admin area). Every
VPS a customer holds counts, whatever its state, until it is deleted.

The check runs inside the order's transaction with the owner's row locked
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write transactions are
serial anyway), so two orders at once cannot both slip under a limit.
Operators' own accounts have no limits; an order an operator places *for* a
customer counts against that customer's limits like any other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kvmvps.config import MAX_QUOTA, Settings
from kvmvps.errors import InvalidInput, QuotaExceeded
from kvmvps.models import Job, JobState, Plan, User, Vps
from kvmvps.services import Context, audit
from kvmvps.services.inventory import user_by_email

# resource -> (user column, settings field, how people read it)
RESOURCES: dict[str, tuple[str, str, str]] = {
    "vps": ("quota_vps", "quota_vps", "VPS(es)"),
    "vcpus": ("quota_vcpus", "quota_vcpus", "vCPU(s)"),
    "memory_mib": ("quota_memory_mib", "quota_memory_mib", "MiB of memory"),
    "disk_gib": ("quota_disk_gib", "quota_disk_gib", "GiB of disk"),
}


@dataclass(frozen=True)
class Amounts:
    """A number for every resource: a limit, a usage or a plan's needs."""

    vps: int
    vcpus: int
    memory_mib: int
    disk_gib: int


audit.declare("user.quota")  # recorded with audit.audited below


def limits(settings: Settings, user: User) -> Amounts:
    """The user's own limits where set, else the defaults."""
    values: dict[str, int] = {}
    for key, (column, field, _label) in RESOURCES.items():
        own = _own(user, column)
        values[key] = own if own is not None else int(getattr(settings, field))
    return Amounts(**values)


def _own(user: User, column: str) -> int | None:
    """The user's own limit in ``column``; None when they follow the default."""
    value = getattr(user, column)
    return None if value is None else int(value)


def usage(session: Session, user_id: int) -> Amounts:
    """What the user's VPSes take, every state counted, and the growth of resizes pending.

    A VPS with a resize queued or running counts at the larger of its plan and
    the plan it is moving to: an order placed meanwhile must not take what the
    resize was allowed to grow into.
    """
    row = session.execute(
        select(
            func.count(Vps.id),
            func.coalesce(func.sum(Plan.vcpus), 0),
            func.coalesce(func.sum(Plan.memory_mib), 0),
            func.coalesce(func.sum(Plan.disk_gib), 0),
        )
        .select_from(Vps)
        .join(Plan, Plan.id == Vps.plan_id)
        .where(Vps.owner_id == user_id)
    ).one()
    used = [int(v) for v in row]
    for vcpus, memory_mib, disk_gib in _pending_growth(session, user_id):
        used[1] += vcpus
        used[2] += memory_mib
        used[3] += disk_gib
    return Amounts(*used)


def _pending_growth(session: Session, user_id: int) -> list[tuple[int, int, int]]:
    """(vCPUs, MiB, GiB) each unfinished resize of the user's VPSes will add."""
    pending = session.execute(
        select(Job.params, Plan.vcpus, Plan.memory_mib, Plan.disk_gib)
        .join(Vps, Vps.uuid == Job.vps_uuid)
        .join(Plan, Plan.id == Vps.plan_id)
        .where(
            Vps.owner_id == user_id,
            Job.kind == "resize",
            Job.state.in_(JobState.UNFINISHED),
        )
    ).all()
    growth = []
    for params, vcpus, memory_mib, disk_gib in pending:
        name = json.loads(params or "{}").get("plan")
        new = session.scalar(select(Plan).where(Plan.name == name)) if name else None
        if new is not None:
            growth.append(
                (
                    max(0, new.vcpus - vcpus),
                    max(0, new.memory_mib - memory_mib),
                    max(0, new.disk_gib - disk_gib),
                )
            )
    return growth


def check_order(
    session: Session, settings: Settings, owner: User, plan: Plan, *, lock: bool = True
) -> None:
    """Refuse an order that would take ``owner`` past a limit (their row stays locked).

    Call it inside the order's transaction, before anything is allocated;
    ``lock`` False is a pre-check in a read-only session (nothing is locked).
    """
    if owner.is_admin:
        return
    if lock:
        session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    have, cap = usage(session, owner.id), limits(settings, owner)
    need = Amounts(vps=1, vcpus=plan.vcpus, memory_mib=plan.memory_mib, disk_gib=plan.disk_gib)
    for key, (_column, _field, label) in RESOURCES.items():
        used, limit, more = getattr(have, key), getattr(cap, key), getattr(need, key)
        if used + more > limit:
            raise QuotaExceeded(
                f"this order needs {more} {label} and {owner.email} uses {used} of "
                f"{limit}; delete a VPS or ask the operators for a higher limit"
            )


def check_resize(session: Session, settings: Settings, owner: User, old: Plan, new: Plan) -> None:
    """Refuse moving one of ``owner``'s VPSes from ``old`` to ``new`` past a limit.

    Only what grows counts; like :func:`check_order` it locks the owner's row.
    """
    if owner.is_admin:
        return
    session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    have, cap = usage(session, owner.id), limits(settings, owner)
    more = Amounts(
        vps=0,
        vcpus=new.vcpus - old.vcpus,
        memory_mib=new.memory_mib - old.memory_mib,
        disk_gib=new.disk_gib - old.disk_gib,
    )
    for key, (_column, _field, label) in RESOURCES.items():
        used, limit, extra = getattr(have, key), getattr(cap, key), getattr(more, key)
        if extra > 0 and used + extra > limit:
            raise QuotaExceeded(
                f"plan {new.name!r} needs {extra} more {label} and {owner.email} uses {used} "
                f"of {limit}; ask the operators for a higher limit"
            )


def quota_view(ctx: Context, email: str) -> dict[str, Any]:
    """Limits and usage of one user: ``{resource: {limit, used, own}}``."""
    with ctx.db.reading() as s:
        return _view(ctx.settings, s, user_by_email(s, email))


def quota_view_by_id(ctx: Context, user_id: int) -> dict[str, Any]:
    """:func:`quota_view` for the logged-in user (the dashboard)."""
    with ctx.db.reading() as s:
        user = s.get(User, user_id)
        if user is None:
            return {}
        return _view(ctx.settings, s, user)


def _view(settings: Settings, session: Session, user: User) -> dict[str, Any]:
    cap, have = asdict(limits(settings, user)), asdict(usage(session, user.id))
    shown: dict[str, Any] = {
        key: {"limit": cap[key], "used": have[key], "own": _own(user, column) is not None}
        for key, (column, _field, _label) in RESOURCES.items()
    }
    return {"email": user.email, "unlimited": bool(user.is_admin), **shown}


def amount(value: Any, what: str) -> int | None:
    """A limit: a whole number from 0 to MAX_QUOTA (0 allows none); None for the default.

    Text (a form field, a command-line option) is read too: digits, or
    ``default`` (or nothing) for the default.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "default"):
            return None
        if len(text) > 12 or not (text.isascii() and text.isdigit()):
            raise InvalidInput(
                f"{what} must be a whole number from 0 to {MAX_QUOTA} or 'default', "
                f"not {value[:20]!r}"
            )
        value = int(text)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
        raise InvalidInput(f"{what} must be a whole number from 0 to {MAX_QUOTA}, not {value!r}")
    return value


def set_quota(
    ctx: Context, email: str, changes: dict[str, int | str | None], actor: str
) -> dict[str, Any]:
    """Give the user limits of their own; None (or "default") goes back to the default."""
    with audit.audited(ctx, actor, "user.quota", email[:300]):
        unknown = sorted(set(changes) - set(RESOURCES))
        if unknown:
            raise InvalidInput(f"unknown quota {unknown[0]!r}; one of {', '.join(RESOURCES)}")
        checked = {k: amount(v, k.replace("_", " ")) for k, v in changes.items()}
        with ctx.db.session() as s:
            user = user_by_email(s, email)
            for key, value in checked.items():
                setattr(user, RESOURCES[key][0], value)
            s.flush()
            return _view(ctx.settings, s, user)
