"""A new VPS password waiting, sealed, for its owner until it is shown once.

The website keeps the password of an order, a reinstall or a password reset
here (sealed with the state dir's key), not in the browser's session: the
customer who closed the page sees it when they come back, on any device,
once. Showing it deletes the row in the same transaction (two tabs cannot
both see it); a build that failed drops it unseen; deleting the VPS deletes
it with the row.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

from sqlalchemy import delete, select
from sqlalchemy.engine import CursorResult

from kvmvps.models import PasswordReveal, Vps
from kvmvps.services import Context, credentials


class Waiting(TypedDict):
    vps: str
    hostname: str


def hold(
    ctx: Context, vps_uuid: str, owner_id: int, password: str | None, job: str | None = None
) -> None:
    """Keep ``password`` for the owner of ``vps_uuid`` (replacing one still waiting)."""
    if not password:
        return
    sealed = credentials.seal(ctx, password)
    with ctx.db.session() as s:
        vps_id = s.scalar(select(Vps.id).where(Vps.uuid == vps_uuid, Vps.owner_id == owner_id))
        if vps_id is None:
            return
        s.execute(delete(PasswordReveal).where(PasswordReveal.vps_id == vps_id))
        s.add(PasswordReveal(vps_id=vps_id, user_id=owner_id, job_uuid=job, sealed=sealed))


def _row_query(vps_uuid: str, owner_id: int) -> Any:
    return (
        select(PasswordReveal)
        .join(Vps, Vps.id == PasswordReveal.vps_id)
        .where(Vps.uuid == vps_uuid, PasswordReveal.user_id == owner_id)
    )


def waiting(ctx: Context, vps_uuid: str, owner_id: int) -> bool:
    with ctx.db.reading() as s:
        return s.scalar(_row_query(vps_uuid, owner_id)) is not None


def waiting_for(ctx: Context, owner_id: int) -> list[Waiting]:
    """The owner's VPSes with a password waiting to be seen."""
    query = (
        select(Vps.uuid, Vps.hostname)
        .join(PasswordReveal, PasswordReveal.vps_id == Vps.id)
        .where(PasswordReveal.user_id == owner_id)
        .order_by(Vps.hostname)
    )
    with ctx.db.reading() as s:
        return [{"vps": u, "hostname": h} for u, h in s.execute(query)]


def take(ctx: Context, vps_uuid: str, owner_id: int) -> str | None:
    """The waiting password, deleted as it is read: it is shown this once."""
    with ctx.db.session() as s:
        row = s.scalar(_row_query(vps_uuid, owner_id))
        if row is None:
            return None
        sealed = row.sealed
        gone = s.execute(delete(PasswordReveal).where(PasswordReveal.id == row.id))
        if cast(CursorResult[Any], gone).rowcount != 1:
            return None  # another request showed it a moment ago
    return credentials.unseal(ctx, sealed)


def drop(ctx: Context, vps_uuid: str, owner_id: int) -> None:
    """Forget a password that was never set (its build failed)."""
    with ctx.db.session() as s:
        row = s.scalar(_row_query(vps_uuid, owner_id))
        if row is not None:
            s.delete(row)
