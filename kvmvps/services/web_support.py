"""Service functions the website and REST API need beyond the CLI's.

Everything here reads or writes the database only; nothing calls libvirt.
Customer-facing lookups take an ``owner_id``: None means "any owner" (an
operator), and a VPS or job of someone else is simply not found.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from kvmvps import validation
from kvmvps.errors import Conflict, InvalidInput, KvmvpsError, NotFound
from kvmvps.models import ApiToken, Host, Image, Job, JobState, Plan, User, Vps
from kvmvps.services import Context, failures, placement, provisioning, users
from kvmvps.services.audit import iso
from kvmvps.services.inventory import get_by_name
from kvmvps.services.jobs import JobView, job_view
from kvmvps.services.views import PublicImageView
from kvmvps.services.vps import VpsView, resolve, view

MAX_NAME = 63
MAX_SSH_KEYS_TEXT = 20_000


# -- reading -----------------------------------------------------------------
@contextmanager
def reading(ctx: Context) -> Iterator[Session]:
    """A read-only session for pages and polling (no write lock on SQLite)."""
    with ctx.db.reading() as s:
        yield s


WRITE_LOCK = "web-write.lock"


@contextmanager
def write_turn(ctx: Context) -> Iterator[None]:
    """Take turns for writing, on SQLite: waiters wake the moment the writer is done.

    SQLite lets one writer in at a time and makes the others poll with
    growing sleeps (up to 100 ms each); under a burst of orders that sleeping,
    not the work, is most of the wait. An exclusive ``flock`` on a file in
    the state dir queues the website's writers (threads and processes alike)
    in the kernel instead. Elsewhere it does nothing.
    """
    if not ctx.db.url.startswith("sqlite"):
        yield
        return
    with open(ctx.settings.state_dir / WRITE_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- VPSes -------------------------------------------------------------------
def _query() -> Select[Vps]:
    """VPSes with what ``view`` shows: one joined query, and one more for the pins."""
    return select(Vps).options(
        joinedload(Vps.plan),
        joinedload(Vps.image),
        joinedload(Vps.host),
        joinedload(Vps.network),
        joinedload(Vps.owner),
        selectinload(Vps.pins),
    )


def _count(session: Any, column: Any, value: int) -> int:
    return session.scalar(select(func.count()).select_from(Vps).where(column == value)) or 0


def list_vps_of(ctx: Context, owner_id: int | None) -> list[VpsView]:
    """The VPSes of one owner (every VPS for None), oldest first, as ``vps.view``."""
    query = _query().order_by(Vps.created_at, Vps.id)
    if owner_id is not None:
        query = query.where(Vps.owner_id == owner_id)
    with reading(ctx) as s:
        return [_for(view(v), owner_id) for v in s.scalars(query)]


def show_vps(ctx: Context, ref: str, owner_id: int | None) -> VpsView:
    """One VPS of ``owner_id`` (any owner for None); NotFound for anyone else's."""
    _refuse_long(ref, "VPS id", 64)
    with reading(ctx) as s:
        return _for(view(resolve(s, ref, owner_id)), owner_id)


_Shown = TypeVar("_Shown", VpsView, JobView)


def _for(shown: _Shown, owner_id: int | None, kind: str | None = None) -> _Shown:
    """A view as its owner sees it: failures in plain words (operators see the reason)."""
    error = shown["error"]
    if owner_id is not None and error:
        shown["error"] = failures.plain(error, kind)
    return shown


def active_jobs(ctx: Context, vps_uuids: Iterable[str]) -> dict[str, JobView]:
    """The newest unfinished job of each of these VPSes, by VPS id."""
    uuids = list(vps_uuids)
    if not uuids:
        return {}
    query = (
        select(Job)
        .where(Job.vps_uuid.in_(uuids), Job.state.in_(JobState.UNFINISHED))
        .order_by(Job.id)
    )
    with reading(ctx) as s:
        return {job.vps_uuid: job_view(job) for job in s.scalars(query) if job.vps_uuid}


def latest_job(ctx: Context, vps_uuid: str, owner_id: int | None = None) -> JobView | None:
    """The newest job of a VPS, finished or not (its error in plain words for an owner)."""
    query = select(Job).where(Job.vps_uuid == vps_uuid).order_by(Job.id.desc()).limit(1)
    with reading(ctx) as s:
        job = s.scalar(query)
        return _for(job_view(job), owner_id, job.kind) if job is not None else None


def get_job_for(ctx: Context, ref: str, owner_id: int | None, actor: str = "") -> JobView:
    """A job by id or unique id prefix, if it concerns the owner's VPS or they asked for it.

    Customers (``owner_id`` given) are not told which worker ran it.
    """
    ref = (ref or "").strip().lower()
    _refuse_long(ref, "job id", 64)
    if not ref:
        raise NotFound("no job id given")
    query = select(Job).where(Job.uuid.startswith(ref, autoescape=True)).limit(2)
    if owner_id is not None:
        owned = select(Vps.uuid).where(Vps.owner_id == owner_id)
        query = query.where(or_(Job.vps_uuid.in_(owned), Job.actor == actor))
    with reading(ctx) as s:
        rows = list(s.scalars(query))
        if len(rows) != 1:
            raise NotFound(f"no job matches {ref!r}" if not rows else f"{ref!r} is ambiguous")
        shown = job_view(rows[0])
    if owner_id is not None:
        shown["worker"] = None  # which machine ran it is the operators' business
    return _for(shown, owner_id, shown["kind"])


# -- orders --------------------------------------------------------------------
def _refuse_long(value: str, what: str, limit: int) -> None:
    if len(value or "") > limit:
        raise InvalidInput(f"the {what} is too long (at most {limit} characters)")


def _named(session: Any, model: type[Plan] | type[Image], name: str, what: str) -> None:
    if not name:
        raise InvalidInput(f"choose {what}")
    _refuse_long(name, f"{what} name", MAX_NAME)
    get_by_name(session, model, name, what)


def check_order(
    ctx: Context, owner_id: int, plan: str, image: str, hostname: str, ssh_keys: str | list[str]
) -> dict[str, KvmvpsError]:
    """Every field error of an order at once, by field name (empty when it looks fine).

    Recording the order checks all of this again; this only lets a form show
    each problem next to its field.
    """
    errors: dict[str, KvmvpsError] = {}
    try:
        _refuse_long(hostname, "hostname", MAX_NAME)
        hostname = validation.hostname(hostname)
    except InvalidInput as exc:
        errors["hostname"] = exc
    try:
        text = ssh_keys if isinstance(ssh_keys, str) else "\n".join(ssh_keys)
        _refuse_long(text, "list of SSH keys", MAX_SSH_KEYS_TEXT)
        validation.ssh_public_keys(ssh_keys)
    except InvalidInput as exc:
        errors["ssh_keys"] = exc
    with reading(ctx) as s:
        for field, model, name in (("plan", Plan, plan), ("image", Image, image)):
            try:
                _named(s, model, name, f"a {field}" if not name else field)
            except KvmvpsError as exc:
                errors[field] = exc
        if "hostname" not in errors and s.scalar(
            select(Vps.id).where(Vps.owner_id == owner_id, Vps.hostname == hostname)
        ):
            errors["hostname"] = Conflict(f"you already have a VPS named {hostname!r}")
    return errors


def place_order(ctx: Context, req: provisioning.OrderRequest, actor: str) -> provisioning.Order:
    """``provisioning.record_order``, with a lost race for the hostname told as a Conflict."""
    try:
        return provisioning.record_order(ctx, req, actor=actor)
    except IntegrityError:
        raise Conflict(f"you already have a VPS named {req.hostname.strip().lower()!r}") from None


def catalogue_images(ctx: Context) -> list[PublicImageView]:
    """The OS templates as customers see them (no paths on the host)."""
    with reading(ctx) as s:
        return [public_image_view(i) for i in s.scalars(select(Image).order_by(Image.name))]


def public_image_view(image: Image) -> PublicImageView:
    return {
        "name": image.name,
        "os_family": image.os_family,
        "login_user": image.login_user,
        "virtual_size_gib": round(image.virtual_size / (1 << 30), 2),
        "credentials": bool(image.credentials),
    }


# -- operators -----------------------------------------------------------------
def host_capacities(ctx: Context) -> list[dict[str, Any]]:
    """Every host with what it carries against what it has."""
    st = ctx.settings
    with reading(ctx) as s:
        out = []
        for host in s.scalars(select(Host).order_by(Host.name)):
            cap = placement.capacity(s, host, st.cpu_overcommit, st.host_memory_reserve_mib)
            count = _count(s, Vps.host_id, host.id)
            out.append(
                {
                    "name": host.name,
                    "uri": host.uri,
                    "enabled": host.enabled,
                    "cpus": cap.cpus,
                    "vcpus_pinned": cap.vcpus_pinned,
                    "vcpu_limit": cap.vcpu_limit,
                    "memory_mib": cap.memory_mib,
                    "memory_committed_mib": cap.memory_committed_mib,
                    "memory_limit_mib": cap.memory_limit_mib,
                    "vps_count": count,
                }
            )
        return out


def user_by_id(ctx: Context, user_id: int) -> User | None:
    if not 1 <= user_id <= validation.MAX_DB_ID:
        return None  # no such row can exist (and the database would refuse the number)
    with reading(ctx) as s:
        return s.get(User, user_id)


def set_user_active(ctx: Context, user_id: int, active: bool, by_user_id: int) -> User:
    """Disable (revoking their tokens) or enable a user by id; never oneself."""
    user = user_by_id(ctx, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    if user.id == by_user_id:
        raise Conflict("you cannot disable or enable your own account")
    if active:
        return users.enable_user(ctx, user.email)
    users.disable_user(ctx, user.email)
    return users.get_user(ctx, user.email)


def token_owned_by(ctx: Context, token_id: int, user_id: int) -> bool:
    if not 1 <= token_id <= validation.MAX_DB_ID:
        return False
    with reading(ctx) as s:
        token = s.get(ApiToken, token_id)
        return token is not None and token.user_id == user_id


def user_rows(ctx: Context) -> list[dict[str, Any]]:
    """Every user with how many VPSes they hold."""
    with reading(ctx) as s:
        rows = []
        for user in s.scalars(select(User).order_by(User.email)):
            count = _count(s, Vps.owner_id, user.id)
            rows.append(
                {**users.user_view(user), "vps_count": count, "created_at": iso(user.created_at)}
            )
        return rows
