"""Throwaway VPSes: those ordered with a time to live are deleted when it runs out."""

from __future__ import annotations

import logging

from sqlalchemy import select

from kvmvps.errors import Conflict
from kvmvps.models import Job, JobState, Vps, VpsState
from kvmvps.services import Context, actions
from kvmvps.services.jobs import now

log = logging.getLogger(__name__)

ACTOR = "system:ttl"


def expired(ctx: Context) -> list[str]:
    """Uuids of VPSes past their expiry that no delete is under way for."""
    with ctx.db.session() as s:
        pending = select(Job.vps_uuid).where(
            Job.kind == "delete", Job.state.in_(JobState.UNFINISHED)
        )
        rows = s.scalars(
            select(Vps.uuid).where(
                Vps.expires_at.is_not(None),
                Vps.expires_at < now(),
                Vps.state != VpsState.DELETING,
                Vps.uuid.not_in(pending),
            )
        )
        return list(rows)


def delete_expired(ctx: Context, actor: str = ACTOR) -> list[str]:
    """Queue a delete for every expired VPS; return the delete jobs."""
    queued = []
    for uuid in expired(ctx):
        try:
            queued.append(actions.request(ctx, uuid, "delete", actor=actor).job)
        except Conflict as exc:  # it changed state meanwhile; the next pass sees it
            log.info("not deleting expired %s now: %s", uuid[:8], exc)
    return queued
