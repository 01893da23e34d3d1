"""SSH public keys kept on a customer's account and offered when they order.

A key is checked like a key given with an order (``validation.ssh_public_key``)
and kept once per account (by fingerprint). Another customer's key is
answered exactly like a key that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from kvmvps import guest, validation
from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.models import SavedKey
from kvmvps.services import Context, audit
from kvmvps.services.audit import iso

MAX_KEYS = 20
MAX_NAME = 64
MAX_KEY_TEXT = 16 * 1024


class SavedKeyView(TypedDict):
    id: int
    name: str
    public_key: str
    fingerprint: str
    created_at: str | None


def key_view(row: SavedKey) -> SavedKeyView:
    return {
        "id": row.id,
        "name": row.name,
        "public_key": row.public_key,
        "fingerprint": row.fingerprint,
        "created_at": iso(row.created_at),
    }


@audit.audits("key.add", target="user_id")
def add_key(
    ctx: Context, user_id: int, public_key: str, name: str = "", *, actor: str | None = None
) -> SavedKeyView:
    """Keep one public key on the account; a comment names it when no name is given."""
    validation.not_longer(public_key, "SSH public key", MAX_KEY_TEXT)
    line = validation.ssh_public_key(public_key or "")
    label = validation.one_line(name or " ".join(line.split()[2:])[:MAX_NAME], "key name", MAX_NAME)
    fingerprint = guest.fingerprint(line)
    try:
        with ctx.db.session() as s:
            held = s.scalar(select(func.count()).where(SavedKey.user_id == user_id)) or 0
            if held >= MAX_KEYS:
                raise Conflict(f"at most {MAX_KEYS} keys may be kept; delete one first")
            taken = select(SavedKey.id).where(
                SavedKey.user_id == user_id, SavedKey.fingerprint == fingerprint
            )
            if s.scalar(taken) is not None:
                raise Conflict(f"this key ({fingerprint}) is saved already")
            row = SavedKey(user_id=user_id, name=label, public_key=line, fingerprint=fingerprint)
            s.add(row)
            s.flush()
            return key_view(row)
    except IntegrityError:
        raise Conflict(f"this key ({fingerprint}) is saved already") from None


@audit.audits("key.delete", target="key_id")
def delete_key(ctx: Context, user_id: int, key_id: int, *, actor: str | None = None) -> None:
    """Forget one of the user's keys (VPSes built with it keep it)."""
    if not 1 <= key_id <= validation.MAX_DB_ID:
        raise NotFound(f"no saved key with id {key_id}")
    with ctx.db.session() as s:
        gone = s.execute(delete(SavedKey).where(SavedKey.id == key_id, SavedKey.user_id == user_id))
        if getattr(gone, "rowcount", 0) != 1:
            raise NotFound(f"no saved key with id {key_id}")


def list_keys(ctx: Context, user_id: int) -> list[SavedKeyView]:
    with ctx.db.reading() as s:
        rows = s.scalars(select(SavedKey).where(SavedKey.user_id == user_id).order_by(SavedKey.id))
        return [key_view(r) for r in rows]


def public_keys(ctx: Context, user_id: int, ids: Iterable[object]) -> list[str]:
    """The public keys of the user's saved keys ``ids``; NotFound for any other id."""
    wanted: list[int] = []
    for raw in ids:
        text = str(raw).strip()
        if not text.isdecimal() or len(text) > 12 or not 1 <= int(text) <= validation.MAX_DB_ID:
            raise InvalidInput(f"{text[:20]!r} is not a saved key's id")
        wanted.append(int(text))
    if len(wanted) > MAX_KEYS:
        raise InvalidInput(f"at most {MAX_KEYS} saved keys may be chosen")
    if not wanted:
        return []
    with ctx.db.reading() as s:
        rows = {
            r.id: r.public_key
            for r in s.scalars(
                select(SavedKey).where(SavedKey.user_id == user_id, SavedKey.id.in_(wanted))
            )
        }
    missing = [i for i in wanted if i not in rows]
    if missing:
        raise NotFound(f"no saved key with id {missing[0]}")
    return list(dict.fromkeys(rows[i] for i in wanted))
