"""Rate limits for log-ins and sign-ups, counted in the database.

Every attempt is counted *before* the password is checked, in one atomic
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` per key, so parallel
attempts cannot all slip in under the limit, and every web worker (process
or thread) shares the same counts. A key is counted in fixed windows; the
previous window's count, weighted by how much of it still overlaps the last
``period`` seconds, is added (a sliding-window estimate), so a burst at a
window's edge does not get twice the limit.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from kvmvps.errors import InvalidInput
from kvmvps.models import LoginCounter
from kvmvps.services import Context, audit

_RATE = re.compile(r"\s*(\d{1,6})\s*(?:/|per)\s*(second|minute|hour|day)s?\s*", re.IGNORECASE)
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
KEEP_SECONDS = 2 * 86400  # counters older than this (twice the longest period) are deleted


@dataclass(frozen=True)
class Rate:
    """At most ``count`` attempts per ``seconds``."""

    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``5/minute``, ``20 per hour``...; InvalidInput otherwise."""
        match = _RATE.fullmatch(text or "")
        if not match or int(match[1]) < 1:
            raise InvalidInput(f"rate limit {text!r} is not like 5/minute or 20/hour")
        return cls(int(match[1]), _UNITS[match[2].lower()])


@dataclass(frozen=True)
class Limit:
    """One thing to count (``what``, e.g. ``login:203.0.113.9``) and its rate."""

    what: str
    rate: Rate

    @property
    def key(self) -> str:
        return hashlib.sha256(self.what.encode("utf-8", "backslashreplace")).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """Whether the attempt may go on; the counter rows it added to (for a refund)."""

    allowed: bool
    counted: tuple[tuple[str, int], ...]
    retry_after: int = 0
    first_refusal: bool = False


def attempt(
    ctx: Context,
    limits: Sequence[Limit],
    *,
    actor: str,
    action: str,
    target: str,
    now: float | None = None,
) -> Verdict:
    """Count one attempt against every limit; allowed only if all are within their rate.

    The first refusal in a window is written to the audit log (``action``
    failed, by ``actor`` on ``target``); later ones are not, so a flood does
    not flood the log.
    """
    moment = time.time() if now is None else now
    counted: list[tuple[str, int]] = []
    allowed, first, retry = True, False, 0
    with ctx.db.session() as s:
        for limit in sorted(limits, key=lambda lim: lim.key):  # one lock order for all
            period = limit.rate.seconds
            window = int(moment // period) * period
            current = _increment(s, limit.key, window)
            counted.append((limit.key, window))
            previous = s.scalar(
                select(LoginCounter.count).where(
                    LoginCounter.key == limit.key, LoginCounter.window == window - period
                )
            )
            overlap = 1.0 - (moment - window) / period
            estimate = current + math.ceil((previous or 0) * overlap)
            if estimate > limit.rate.count:
                allowed = False
                first = first or estimate == limit.rate.count + 1
                retry = max(retry, int(window + period - moment) + 1)
            if current == 1:  # a new window: a good moment to drop long-gone ones
                s.execute(delete(LoginCounter).where(LoginCounter.window < moment - KEEP_SECONDS))
    if first:
        audit.record(ctx, actor, action, target, audit.FAILED, "too many attempts; refused")
    return Verdict(allowed, tuple(counted), retry, first)


def refund(ctx: Context, verdict: Verdict) -> None:
    """Take back an attempt that succeeded, so that honest use never adds up to a lock-out."""
    with ctx.db.session() as s:
        for key, window in verdict.counted:
            s.execute(
                update(LoginCounter)
                .where(
                    LoginCounter.key == key,
                    LoginCounter.window == window,
                    LoginCounter.count > 0,
                )
                .values(count=LoginCounter.count - 1)
            )


def _increment(session: Session, key: str, window: int) -> int:
    """Add one to the (key, window) counter atomically; its new value."""
    table: Table = LoginCounter.__table__  # type: ignore[assignment]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(table)
        .values(key=key, window=window, count=1)
        .on_conflict_do_update(
            index_elements=[table.c.key, table.c.window], set_={"count": table.c.count + 1}
        )
        .returning(table.c.count)
    )
    return int(session.execute(stmt).scalar_one())
