"""The audit log: who did what to which object, and how it ended.

Entries hold no secrets: callers pass an action, a target name and, on
failure, the error's one-line message.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import pwd
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ParamSpec, TypedDict, TypeVar

from sqlalchemy import select

from kvmvps import validation
from kvmvps.errors import InvalidInput, KvmvpsError
from kvmvps.models import AuditEntry
from kvmvps.services import Context

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

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


# -- the one audit path: state-changing service calls record themselves ----------
ACTIONS: set[str] = set()
"""Every action a service records (the CLI's command paths: ``plan.add``, ``vps.delete``...)."""


def declare(*actions: str) -> None:
    """Name actions a service records with :func:`audited` (see :func:`record_refusal`)."""
    ACTIONS.update(actions)


def user_actor(email: str) -> str:
    """The actor of a customer or operator on the website or the API: ``user:<email>``."""
    return f"user:{email}"


@dataclass
class Entry:
    """The entry being recorded; a service may name its target once it knows it."""

    target: str


@contextmanager
def audited(ctx: Context, actor: str | None, action: str, target: str) -> Iterator[Entry]:
    """Record the block's outcome: ``ok``, or ``failed`` with the error's message.

    ``actor`` None is an internal call (a job step, a test fixture, another
    service): nothing is recorded. Front ends always pass their actor.
    """
    entry = Entry(target)
    if actor is None:
        yield entry
        return
    try:
        yield entry
    except Exception as exc:
        _record_quietly(ctx, actor, action, entry.target, FAILED, error_message(exc))
        raise
    _record_quietly(ctx, actor, action, entry.target, OK)


@contextmanager
def refusals(ctx: Context, actor: str | None, action: str, target: str) -> Iterator[None]:
    """Record a refusal in the block as ``failed``; success records nothing (a pre-check)."""
    try:
        yield
    except Exception as exc:
        if actor is not None:
            _record_quietly(ctx, actor, action, target, FAILED, error_message(exc))
        raise


def audits(action: str, target: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a service function record ``action`` with its ``actor`` argument.

    The function takes ``ctx`` and ``actor`` (None: not recorded); the entry's
    target is the value of its parameter named ``target``.
    """
    declare(action)

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs).arguments
            value = bound.get(target)
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            with audited(bound["ctx"], bound.get("actor"), action, str(shown or "")):
                return fn(*args, **kwargs)

        return call

    return wrap


def record_refusal(ctx: Context, actor: str, action: str, target: str, detail: str) -> bool:
    """Record a front end's refusal of a service action before the call (bad usage, "no").

    Only actions a service records count (see :data:`ACTIONS`); True when recorded.
    """
    if action not in ACTIONS:
        return False
    _record_quietly(ctx, actor, action, target, FAILED, detail)
    return True
