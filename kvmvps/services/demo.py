"""The demo that ``scripts/demo.sh`` sets up: a plan, an operator, one VPS.

Every function here finds what a previous run made and reuses it, so the
demo can run any number of times and ends in the same state: the same VPS
(built again only if its build failed), the same operator (whose password
is printed only when it is made).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from kvmvps import guest
from kvmvps.errors import NotFound
from kvmvps.models import Image, Job, JobState, Plan, User, Vps, VpsState
from kvmvps.services import Context, actions, images, inventory, provisioning, setup, users
from kvmvps.services.runner import Progress, run_or_follow

PLAN = "demo"
IMAGE = "tiny"
HOSTNAME = "demo"
OPERATOR = "admin@example.com"


@dataclass(frozen=True)
class DemoVps:
    """The demo VPS and the job to wait for (None: nothing to wait for)."""

    uuid: str
    job: str | None
    password: str | None
    reused: bool


def ensure_catalogue(ctx: Context) -> None:
    """The tiny image and the demo plan, made once."""
    with ctx.db.session() as s:
        have_image = s.scalar(select(Image.id).where(Image.name == IMAGE)) is not None
        have_plan = s.scalar(select(Plan.id).where(Plan.name == PLAN)) is not None
    if not have_image:
        images.build_tiny(ctx, IMAGE)
    if not have_plan:
        inventory.add_plan(ctx, PLAN, 1, 256, 1, price_cents=300)


def ensure_operator(ctx: Context, email: str = OPERATOR) -> str | None:
    """An operator who can log in to the website; their password when new (stored hashed)."""
    with ctx.db.session() as s:
        if s.scalar(select(User.id).where(User.email == email)) is not None:
            return None
    password = guest.new_password()
    users.add_user(ctx, email, password, admin=True)
    return password


def _find(ctx: Context) -> tuple[str, str] | None:
    """The demo VPS of the local operator: (uuid, state)."""
    with ctx.db.session() as s:
        owner = setup.owner_for(ctx, s, None)
        row = s.execute(
            select(Vps.uuid, Vps.state).where(Vps.owner_id == owner.id, Vps.hostname == HOSTNAME)
        ).first()
        return (row[0], row[1]) if row else None


def _unfinished_job(ctx: Context, uuid: str) -> str | None:
    with ctx.db.session() as s:
        return s.scalar(
            select(Job.uuid)
            .where(Job.vps_uuid == uuid, Job.state.in_(JobState.UNFINISHED))
            .order_by(Job.id.desc())
            .limit(1)
        )


def ensure_vps(ctx: Context, actor: str) -> DemoVps:
    """Reuse the demo VPS (started if stopped), or order it; a failed one is ordered again."""
    found = _find(ctx)
    if found is not None:
        uuid, state = found
        pending = _unfinished_job(ctx, uuid)
        if pending is not None:
            return DemoVps(uuid, pending, None, reused=True)
        if state in (VpsState.STOPPED, VpsState.SUSPENDED):
            action = "start" if state == VpsState.STOPPED else "resume"
            return DemoVps(uuid, actions.request(ctx, uuid, action, actor=actor).job, None, True)
        if state != VpsState.ERROR:
            return DemoVps(uuid, None, None, reused=True)
        run_or_follow(ctx, actions.request(ctx, uuid, "delete", actor=actor).job)
    order = provisioning.record_order(
        ctx, provisioning.OrderRequest(PLAN, IMAGE, HOSTNAME), actor=actor
    )
    return DemoVps(order.uuid, order.job, order.password, reused=False)


def wait(ctx: Context, demo: DemoVps, progress: Progress | None = None) -> None:
    if demo.job is not None:
        run_or_follow(ctx, demo.job, progress)


def host_key(ctx: Context, uuid: str) -> str:
    """The VPS's SSH host key (``type base64``), for a known_hosts line."""
    with ctx.db.session() as s:
        key = s.scalar(select(Vps.host_key).where(Vps.uuid == uuid))
    if not key:
        raise NotFound("the demo VPS has no host key yet")
    return " ".join(key.split()[:2])
