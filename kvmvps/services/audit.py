"""The audit log: who did what to which object, and how it ended.

Entries hold no secrets: callers pass an action, a target name and, on
failure, the error's one-line message.
"""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypedDict

from sqlalchemy import select

from kvmvps import validation
from kvmvps.errors import InvalidInput, KvmvpsError
from kvmvps.models import AuditEntry
from kvmvps.services import Context

log = logging.getLogger(__name__)

OK = "ok"
FAILED = "failed"
RESULTS = (OK, FAILED)
MAX_LIMIT = 10_000
MAX_DETAIL = 1000

VIEW_KEYS = ("id", "at", "actor", "action", "target", "result", "detail")


def iso(moment: datetime | None) -> str | None:
    """A timestamp as ISO 8601 with its UTC offset (SQLite hands back naive UTC)."""
    if moment is None:
        return None
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).isoformat()


def one_line(text: str | None, limit: int = MAX_DETAIL) -> str:
    """The first non-blank line of ``text``, at most ``limit`` characters."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def error_message(exc: BaseException) -> str:
    """The one-line message of an error, as front ends print it."""
    if isinstance(exc, KvmvpsError):
        return one_line(str(exc))
    return one_line(f"{type(exc).__name__}: {exc}")


def os_actor() -> str:
    """The local account running this process, e.g. ``os:root``."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f"os:{name}"


def record(
    ctx: Context, actor: str, action: str, target: str, result: str, detail: str | None = None
) -> None:
    """Write one entry (in its own transaction)."""
    if result not in RESULTS:
        raise InvalidInput(f"audit result must be one of {', '.join(RESULTS)}, not {result!r}")
    entry = AuditEntry(  # what a client typed is kept legible, never as raw control bytes
        actor=one_line(validation.printable(actor), 300),
        action=one_line(validation.printable(action), 64),
        target=one_line(validation.printable(target), 300),
        result=result,
        detail=one_line(validation.printable(detail)) if detail else None,
    )
    with ctx.db.session() as s:
        s.add(entry)


class EntryView(TypedDict):
    """The stable JSON shape of an audit entry."""

    id: int
    at: str | None
    actor: str
    action: str
    target: str
    result: str
    detail: str | None


def entry_view(entry: AuditEntry) -> EntryView:
    return {
        "id": entry.id,
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "result": entry.result,
        "detail": entry.detail,
    }


def list_entries(
    ctx: Context,
    limit: int = 100,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> list[EntryView]:
    """The newest ``limit`` entries matching every filter given, newest first."""
    validation.positive_int(limit, "limit", MAX_LIMIT)
    query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit)
    for column, value in (
        (AuditEntry.actor, actor),
        (AuditEntry.action, action),
        (AuditEntry.target, target),
    ):
        if value is not None:
            query = query.where(column == value)
    with ctx.db.session() as s:
        return [entry_view(e) for e in s.scalars(query)]


def _record_quietly(
    ctx: Context, actor: str, action: str, target: str, result: str, detail: str | None = None
) -> None:
    try:
        record(ctx, actor, action, target, result, detail)
    except Exception as exc:  # noqa: BLE001 - never hide the outcome being recorded
        log.error("could not write the audit entry for %s: %s", action, error_message(exc))


@contextmanager
def audited(ctx: Context, actor: str, action: str, target: str) -> Iterator[None]:
    """Record the block's outcome: ``ok``, or ``failed`` with the error's message."""
    try:
        yield
    except Exception as exc:
        _record_quietly(ctx, actor, action, target, FAILED, error_message(exc))
        raise
    _record_quietly(ctx, actor, action, target, OK)
