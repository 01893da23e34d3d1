"""Claiming and finishing jobs: the hot path of every worker and host agent.

A claim and a finish run many times a second on a busy installation. Their
statements are built once per shape, take every value as a bound parameter,
and run on a plain connection: no ORM unit of work and no object to
synchronise, and no ``IN`` list to expand at each call. On PostgreSQL the
usual claim is one ``UPDATE ... RETURNING`` in autocommit (no ``BEGIN`` and
``COMMIT`` round trips), and so is a finish.

On PostgreSQL candidate rows are locked with ``FOR UPDATE SKIP LOCKED``; on
SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (see
:mod:`kvmvps.db`), so claims are serialised.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.orm import aliased

from kvmvps.errors import NotFound
from kvmvps.models import Host, Job, JobState
from kvmvps.services import Context
from kvmvps.services.jobs import BUILD_KINDS, Claimed, claimed_from_row, now

CLAIM_BATCH = 20
_JOBS = cast(Table, Job.__table__)
# the same two aliases for every claim: building them anew costs more than the query
_OTHER, _BUILDING = aliased(Job), aliased(Job)


def _is_build(kind: Any) -> ColumnElement[bool]:
    """``kind`` is a build kind: plain bound values, not an ``IN`` list expanded per call."""
    return or_(*(kind == k for k in BUILD_KINDS))


# what the claim hands back, read by the same UPDATE that takes the job
_CLAIMED_COLUMNS = (
    _JOBS.c.id,
    _JOBS.c.uuid,
    _JOBS.c.kind,
    _JOBS.c.vps_uuid,
    _JOBS.c.params,
    _JOBS.c.attempts,
    _JOBS.c.started_at,
    _JOBS.c.host_id,
)


def _clock(server: bool, name: str) -> ColumnElement[datetime]:
    """The time a claim or a finish records.

    Where a claim runs in autocommit (PostgreSQL), without reading first, a time
    taken in Python before the statement could precede the finish of the job
    it waited for (jobs of one VPS run one after another): the server's
    ``clock_timestamp()`` is read while the statement runs, after that finish.
    On SQLite the time is taken in Python after ``BEGIN IMMEDIATE``, that is,
    after every earlier write.
    """
    if server:
        return func.clock_timestamp()
    return bindparam(name, type_=DateTime(timezone=True))


def _take_values(server: bool) -> dict[str, Any]:
    return {
        "state": JobState.RUNNING,
        "worker": bindparam("worker"),
        "attempts": _JOBS.c.attempts + 1,
        "started_at": func.coalesce(_JOBS.c.started_at, _clock(server, "moment")),
        "lease_expires_at": bindparam("expires"),
    }


# the slow path takes the time after its candidates' query, in its transaction
_TAKE = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"))
    .values(**_take_values(False))
    .returning(*_CLAIMED_COLUMNS)
)
_LOCK_HOST = select(Host.id).where(Host.id == bindparam("host_id")).with_for_update()
_RUNNING_BUILDS = (
    select(func.count())
    .select_from(_JOBS)
    .where(
        _JOBS.c.host_id == bindparam("host_id"),
        _JOBS.c.state == JobState.RUNNING,
        _is_build(_JOBS.c.kind),
    )
)


@functools.lru_cache(maxsize=4)
def _finished(ok: bool, server: bool) -> Update:
    return (
        update(_JOBS)
        .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.worker == bindparam("holder"))
        .values(
            state=JobState.SUCCEEDED if ok else JobState.FAILED,
            error=bindparam("error"),
            finished_at=_clock(server, "at"),
            lease_expires_at=None,
            progress=100 if ok else _JOBS.c.progress,
        )
    )


def claim(ctx: Context, worker: str, only_id: int | None = None) -> Claimed | None:
    """Atomically take the oldest runnable job (or job ``only_id``).

    A host agent (KVMVPS_AGENT_HOST) takes only its host's jobs; every other
    process leaves the jobs of hosts that have an agent. The oldest candidate
    is taken by one statement unless it is a build for a host (whose build
    slots are counted under the host's lock); then, or when there is none,
    the claim looks further in a transaction of its own.
    """
    st = ctx.settings
    scope: dict[str, Any] = {} if only_id is None else {"only_id": only_id}
    if st.agent_host:
        scope["agent_host"] = st.agent_host
    lease = timedelta(seconds=st.job_lease_seconds)
    server = ctx.db.autocommits
    statement = _quick_take(st.build_limit, bool(st.agent_host), only_id is not None, server)
    with ctx.db.statement() as conn:
        moment = now()
        values = {**scope, "worker": worker, "moment": moment, "expires": moment + lease}
        taken = conn.execute(statement, values).first()
    if taken is not None:
        return claimed_from_row(taken, moment)
    with ctx.db.transaction() as conn:
        if st.agent_host:
            _require_agent_host(conn, st.agent_host)  # a clear error for an unknown host
        return _claimable(conn, st.build_limit, lease, worker, scope)


def finish(ctx: Context, job_id: int, worker: str, error: str | None = None) -> None:
    """Mark a job we hold as succeeded (or failed with ``error``)."""
    statement = _finished(error is None, ctx.db.autocommits)
    with ctx.db.statement() as conn:
        values = {"job_id": job_id, "holder": worker, "error": error, "at": now()}
        conn.execute(statement, values)


def _claimable(
    conn: Connection,
    build_limit: int,
    lease: timedelta,
    worker: str,
    scope: dict[str, Any],
) -> Claimed | None:
    """The oldest runnable job, locked and marked ours; None if there is none.

    Builds for a host whose build slots are all taken are left out by the
    query itself, so no number of them hides the jobs queued behind them.
    The slot is checked again under the host's row lock (a concurrent claim
    may have taken the last one); candidates are read in batches until one
    fits or none are left. Only the columns the choice needs are read, and
    the job is taken and read back by one ``UPDATE ... RETURNING``.
    ``scope`` holds the bound values of :func:`_candidates`'s filters.
    """
    query = _batch(build_limit, "agent_host" in scope, "only_id" in scope)
    after = 0
    while True:
        batch = conn.execute(query, {**scope, "after": after}).all()
        for job_id, kind, host_id in batch:
            if kind in BUILD_KINDS and not _build_slot_free(conn, host_id, build_limit):
                continue
            moment = now()
            values = {"job_id": job_id, "worker": worker, "moment": moment}
            taken = conn.execute(_TAKE, {**values, "expires": moment + lease}).one()
            return claimed_from_row(taken, moment)
        if len(batch) < CLAIM_BATCH:
            return None
        after = batch[-1][0]


def _candidates(build_limit: int, agent: bool, only: bool) -> Select[int, str, int | None]:
    """Queued jobs, oldest first, whose VPS is free and whose host can take a build.

    An agent's claim (``agent``) takes only host ``:agent_host``'s jobs; any
    other claim leaves the jobs of hosts that have an agent. ``only`` narrows
    it to job ``:only_id``. Every row read is locked (``SKIP LOCKED``).
    """
    other, building = _OTHER, _BUILDING
    busy_vps = exists().where(
        other.vps_uuid == Job.vps_uuid,
        other.id != Job.id,
        or_(
            other.state == JobState.RUNNING, and_(other.state == JobState.QUEUED, other.id < Job.id)
        ),
    )
    running_builds = (
        select(func.count())
        .select_from(building)
        .where(
            building.host_id == Job.host_id,
            building.state == JobState.RUNNING,
            _is_build(building.kind),
        )
        .scalar_subquery()
    )
    host_full = and_(_is_build(Job.kind), Job.host_id.is_not(None), running_builds >= build_limit)
    agent_host = select(Host.id).where(Host.name == bindparam("agent_host")).scalar_subquery()
    scope = (
        Job.host_id == agent_host
        if agent
        else or_(Job.host_id.is_(None), Job.host_id.not_in(select(Host.id).where(Host.agent)))
    )
    query = (
        select(Job.id, Job.kind, Job.host_id)
        .where(Job.state == JobState.QUEUED, ~busy_vps, ~host_full, scope)
        .order_by(Job.id)
        .with_for_update(skip_locked=True, of=Job)
    )
    return query.where(Job.id == bindparam("only_id")) if only else query


@functools.lru_cache(maxsize=8)
def _batch(build_limit: int, agent: bool, only: bool) -> Select[int, str, int | None]:
    """The next ``CLAIM_BATCH`` candidates after id ``:after``."""
    query = _candidates(build_limit, agent, only).where(Job.id > bindparam("after"))
    return query.limit(literal_column(str(CLAIM_BATCH)))


@functools.lru_cache(maxsize=8)
def _quick_take(build_limit: int, agent: bool, only: bool, server: bool) -> Update:
    """Take the first candidate in one statement, unless it is a build for a host.

    The ``LIMIT`` is written into the statement, not bound, so that
    PostgreSQL keeps one generic plan for the prepared statement instead of
    planning it again at every claim.
    """
    first = _candidates(build_limit, agent, only).with_only_columns(Job.id)
    first = first.limit(literal_column("1"))
    return (
        update(_JOBS)
        .where(
            _JOBS.c.id == first.scalar_subquery(),
            or_(not_(_is_build(_JOBS.c.kind)), _JOBS.c.host_id.is_(None)),
        )
        .values(**_take_values(server))
        .returning(*_CLAIMED_COLUMNS)
    )


def _build_slot_free(conn: Connection, host_id: int | None, build_limit: int) -> bool:
    """At most ``build_limit`` builds at once per host (the host row is locked)."""
    if host_id is None:
        return True
    conn.execute(_LOCK_HOST, {"host_id": host_id})
    running = conn.execute(_RUNNING_BUILDS, {"host_id": host_id}).scalar()
    return (running or 0) < build_limit


def _require_agent_host(conn: Connection, agent_host: str) -> None:
    """The host this agent serves (KVMVPS_AGENT_HOST) must exist."""
    host_id = conn.execute(select(Host.id).where(Host.name == agent_host)).scalar()
    if host_id is None:
        raise NotFound(f"no host named {agent_host!r} (KVMVPS_AGENT_HOST)")
