"""What the admin area reads: one page of each list, filtered in the query.

Every list is one page at a time: the filters and ``LIMIT``/``OFFSET`` go
into the SQL, the page's related rows come with a fixed number of further
queries (never one per row), so a page costs the same with 10,000 VPSes as
with ten (see bench/admin_lists.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, aliased

from kvmvps import validation
from kvmvps.errors import InvalidInput
from kvmvps.models import AuditEntry, Host, Job, JobState, Plan, User, Vps, VpsState
from kvmvps.services import Context, audit, hosts, imagetest, jobs, quotas, usage, users
from kvmvps.services import vps as vps_service
from kvmvps.services.jobs import JobView
from kvmvps.services.vps import VpsView

T = TypeVar("T")
PER_PAGE = 50
MAX_PAGE = 100_000
MAX_FILTER = 254
RECENT = 20


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, and whether there is another after it."""

    items: list[T]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def page_number(value: str | int | None) -> int:
    """A page number from a query string: 1 when missing; InvalidInput when not 1..MAX_PAGE."""
    return validation.whole_number_text(value, "page", MAX_PAGE, 1)


def text_filter(value: str | None, what: str) -> str | None:
    """A search term: None when empty; one printable line of at most MAX_FILTER characters."""
    text = (value or "").strip()
    if not text:
        return None
    return validation.one_line(text, what, MAX_FILTER).lower()


def _count(session: Session, query: Select[Any]) -> int:
    return session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0


def _offset(page: int, per_page: int) -> int:
    return (page - 1) * per_page


# -- VPSes -------------------------------------------------------------------------
def vps_page(
    ctx: Context,
    page: int = 1,
    *,
    search: str | None = None,
    state: str | None = None,
    host: str | None = None,
    per_page: int = PER_PAGE,
) -> Page[VpsView]:
    """VPSes, newest first: a hostname, owner e-mail or id prefix in ``search``."""
    if state is not None and state not in VpsState.ALL:
        raise InvalidInput(f"unknown state {state[:20]!r}; one of {', '.join(VpsState.ALL)}")
    ids = select(Vps.id)
    if search:
        owner_ids = select(User.id).where(User.email.contains(search, autoescape=True))
        ids = ids.where(
            or_(
                Vps.hostname.contains(search, autoescape=True),
                Vps.uuid.startswith(search, autoescape=True),
                Vps.owner_id.in_(owner_ids),
            )
        )
    if state:
        ids = ids.where(Vps.state == state)
    if host:
        ids = ids.where(Vps.host_id.in_(select(Host.id).where(Host.name == host)))
    with ctx.db.reading() as s:
        total = _count(s, ids)
        wanted = ids.order_by(Vps.id.desc()).limit(per_page).offset(_offset(page, per_page))
        query = vps_service.list_query().where(Vps.id.in_(wanted)).order_by(Vps.id.desc())
        rows = [vps_service.view(v) for v in s.scalars(query).unique()]
    return Page(rows, page, per_page, total)


class AdminJobView(JobView):
    """A job as operators see it: with its VPS's hostname, its host and how long it took."""

    hostname: str | None
    host: str | None
    seconds: float | None


def _duration(job: Job) -> float | None:
    start = jobs.aware(job.started_at)
    if start is None:
        return None
    end = jobs.aware(job.finished_at) or (jobs.now() if job.state == JobState.RUNNING else None)
    return None if end is None else round((end - start).total_seconds(), 1)


def _job_rows(session: Session, query: Select[Job, str, str]) -> list[AdminJobView]:
    return [
        {**jobs.job_view(j), "hostname": name, "host": host, "seconds": _duration(j)}
        for j, name, host in session.execute(query)
    ]


def _jobs_query() -> Select[Job, str, str]:
    target = aliased(Vps)
    return (
        select(Job, target.hostname, Host.name)
        .outerjoin(target, target.uuid == Job.vps_uuid)
        .outerjoin(Host, Host.id == Job.host_id)
    )


def job_page(
    ctx: Context,
    page: int = 1,
    *,
    state: str | None = None,
    kind: str | None = None,
    user: str | None = None,
    host: str | None = None,
    per_page: int = PER_PAGE,
) -> Page[AdminJobView]:
    """Jobs, newest first; ``user`` matches the e-mail of who asked or of the VPS's owner."""
    if state is not None and state not in JobState.ALL:
        raise InvalidInput(f"unknown job state {state[:20]!r}; one of {', '.join(JobState.ALL)}")
    if kind is not None and kind not in jobs.KINDS:
        raise InvalidInput(f"unknown job kind {kind[:20]!r}; one of {', '.join(jobs.KINDS)}")
    query = select(Job.id)
    if state:
        query = query.where(Job.state == state)
    if kind:
        query = query.where(Job.kind == kind)
    if host:
        query = query.where(Job.host_id.in_(select(Host.id).where(Host.name == host)))
    if user:
        owned = select(Vps.uuid).join(User, User.id == Vps.owner_id).where(User.email == user)
        query = query.where(or_(Job.actor == audit.user_actor(user), Job.vps_uuid.in_(owned)))
    with ctx.db.reading() as s:
        total = _count(s, query)
        wanted = query.order_by(Job.id.desc()).limit(per_page).offset(_offset(page, per_page))
        rows = _job_rows(s, _jobs_query().where(Job.id.in_(wanted)).order_by(Job.id.desc()))
    return Page(rows, page, per_page, total)


# -- users ---------------------------------------------------------------------------
class AdminUserView(users.UserView):
    vps_count: int
    quota: dict[str, dict[str, Any]]


def user_page(
    ctx: Context,
    page: int = 1,
    *,
    search: str | None = None,
    role: str | None = None,
    per_page: int = PER_PAGE,
) -> Page[AdminUserView]:
    """Users by e-mail; ``role`` is ``admin``, ``customer`` or ``disabled``."""
    query = select(User)
    if search:
        query = query.where(User.email.contains(search, autoescape=True))
    if role == "admin":
        query = query.where(User.is_admin.is_(True))
    elif role == "customer":
        query = query.where(User.is_admin.is_(False))
    elif role == "disabled":
        query = query.where(User.is_active.is_(False))
    elif role is not None:
        raise InvalidInput("role must be one of admin, customer, disabled")
    with ctx.db.reading() as s:
        total = _count(s, query)
        listed = query.order_by(User.email).limit(per_page).offset(_offset(page, per_page))
        people = list(s.scalars(listed))
        used = _usage(s, [u.id for u in people])
        rows: list[AdminUserView] = [
            {
                **users.user_view(u),
                "vps_count": used.get(u.id, _NONE).vps,
                "quota": _quota(ctx, u, used.get(u.id, _NONE)),
            }
            for u in people
        ]
    return Page(rows, page, per_page, total)


_NONE = quotas.Amounts(0, 0, 0, 0)


def _usage(session: Session, user_ids: list[int]) -> dict[int, quotas.Amounts]:
    """What each of these users' VPSes take, in one grouped query."""
    rows = session.execute(
        select(
            Vps.owner_id,
            func.count(Vps.id),
            func.coalesce(func.sum(Plan.vcpus), 0),
            func.coalesce(func.sum(Plan.memory_mib), 0),
            func.coalesce(func.sum(Plan.disk_gib), 0),
        )
        .join(Plan, Plan.id == Vps.plan_id)
        .where(Vps.owner_id.in_(user_ids))
        .group_by(Vps.owner_id)
    )
    return {owner: quotas.Amounts(*(int(v) for v in rest)) for owner, *rest in rows}


def _quota(ctx: Context, user: User, used: quotas.Amounts) -> dict[str, dict[str, Any]]:
    """``{resource: {limit, used, own}}`` as :func:`quotas.quota_view` shows it."""
    cap = quotas.limits(ctx.settings, user)
    return {
        key: {
            "limit": getattr(cap, key),
            "used": getattr(used, key),
            "own": getattr(user, column) is not None,
        }
        for key, (column, _field, _label) in quotas.RESOURCES.items()
    }


# -- one VPS, the home page ----------------------------------------------------------
class VpsDetail(TypedDict):
    vps: VpsView
    jobs: list[AdminJobView]
    audit: list[audit.EntryView]
    owner_id: int
    transfer: usage.Transfer


def vps_detail(ctx: Context, ref: str) -> VpsDetail:
    """Everything about one VPS: its view (the reason of a failure in full), jobs, audit."""
    validation.not_longer(ref, "VPS id", 64)
    with ctx.db.reading() as s:
        vps = vps_service.resolve(s, ref)
        shown, owner_id = vps_service.view(vps), vps.owner_id
        job_rows = _job_rows(
            s, _jobs_query().where(Job.vps_uuid == vps.uuid).order_by(Job.id.desc()).limit(RECENT)
        )
        entries = s.scalars(
            select(AuditEntry)
            .where(AuditEntry.target.in_((vps.hostname, vps.uuid)))
            .order_by(AuditEntry.id.desc())
            .limit(RECENT)
        )
        trail = [audit.entry_view(e) for e in entries]
        transfer = usage.transfer_of(s, vps)
    return {
        "vps": shown,
        "jobs": job_rows,
        "audit": trail,
        "owner_id": owner_id,
        "transfer": transfer,
    }


class Home(TypedDict):
    vps_states: dict[str, int]
    job_states: dict[str, int]
    users: int
    operators: int
    failed_jobs: list[AdminJobView]
    hosts: list[hosts.HostDetail]
    plans: int
    failing_images: list[str]  # hidden from the shop: their last self-test failed


def home(ctx: Context) -> Home:
    """The admin home: counts, the newest failed jobs, the hosts' capacity."""
    with ctx.db.reading() as s:
        vps_states = dict(s.execute(select(Vps.state, func.count()).group_by(Vps.state)).all())
        job_states = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        people, operators = s.execute(
            select(func.count(), func.count().filter(User.is_admin.is_(True))).select_from(User)
        ).one()
        failed = _job_rows(
            s,
            _jobs_query()
            .where(Job.state == JobState.FAILED)
            .order_by(Job.id.desc())
            .limit(RECENT // 2),
        )
        plans = s.scalar(select(func.count()).select_from(Plan)) or 0
    return {
        "vps_states": {k: int(v) for k, v in vps_states.items()},
        "job_states": {k: int(v) for k, v in job_states.items()},
        "users": int(people),
        "operators": int(operators),
        "failed_jobs": failed,
        "hosts": hosts.host_capacities(ctx),
        "plans": plans,
        "failing_images": imagetest.failing_images(ctx),
    }


def audit_page(ctx: Context, page: int = 1, per_page: int = PER_PAGE) -> Page[audit.EntryView]:
    """The audit log, newest first."""
    query = select(AuditEntry)
    with ctx.db.reading() as s:
        total = _count(s, query)
        listed = query.order_by(AuditEntry.id.desc()).limit(per_page)
        rows = [audit.entry_view(e) for e in s.scalars(listed.offset(_offset(page, per_page)))]
    return Page(rows, page, per_page, total)
