"""People who may log in: operators and customers.

Passwords are stored only as scrypt hashes (werkzeug). A user may have no
password at all and reach the API with tokens alone.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Any, TypedDict

from sqlalchemy import func, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from kvmvps import validation
from kvmvps.db import rowcount
from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.models import ApiToken, User, Vps
from kvmvps.services import Context, audit
from kvmvps.services.audit import iso
from kvmvps.services.inventory import user_by_email

HASH_METHOD = "scrypt"
MIN_PASSWORD = 10
MAX_PASSWORD = 1024

VIEW_KEYS = ("id", "email", "is_admin", "is_active", "has_password", "created_at")


class UserView(TypedDict):
    """The stable JSON shape of a user (never the password hash)."""

    id: int
    email: str
    is_admin: bool
    is_active: bool
    has_password: bool
    created_at: str | None


def user_view(user: User) -> UserView:
    """The stable JSON shape of a user; never the password hash."""
    return {
        "id": user.id,
        "email": user.email,
        "is_admin": bool(user.is_admin),
        "is_active": bool(user.is_active),
        "has_password": user.password_hash is not None,
        "created_at": iso(user.created_at),
    }


def check_password(password: str) -> str:
    """A password long enough to use; :class:`InvalidInput` otherwise (never echoes it)."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password must be at least {MIN_PASSWORD} characters long")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"the password must be at most {MAX_PASSWORD} characters long")
    return password


def _hash(password: str) -> str:
    return generate_password_hash(check_password(password), method=HASH_METHOD)


def password_hash(password: str) -> str:
    """The stored form of a new password (checked for length first)."""
    return _hash(password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash no password matches, checked for unknown users to keep timing even."""
    return generate_password_hash(secrets.token_urlsafe(24), method=HASH_METHOD)


def ensure_available(ctx: Context, email: str, *, actor: str | None = None) -> str:
    """The normalised address, if no user has it yet; Conflict otherwise.

    A refusal is recorded as a failed ``user.add`` of ``actor`` (the check
    before asking for a password).
    """
    with audit.refusals(ctx, actor, "user.add", email):
        addr = validation.email(email)
        with ctx.db.reading() as s:
            if s.scalar(select(User.id).where(User.email == addr)) is not None:
                raise Conflict(f"a user with e-mail {addr!r} already exists")
    return addr


@audit.audits("user.add", target="email")
def add_user(
    ctx: Context,
    email: str,
    password: str | None,
    admin: bool = False,
    *,
    actor: str | None = None,
) -> User:
    """Create a user; ``password`` None makes a token-only user."""
    addr = ensure_available(ctx, email)
    password_hash = _hash(password) if password is not None else None
    with ctx.db.session() as s:
        if s.scalar(select(User.id).where(User.email == addr)) is not None:
            raise Conflict(f"a user with e-mail {addr!r} already exists")
        user = User(email=addr, password_hash=password_hash, is_admin=admin, is_active=True)
        s.add(user)
        s.flush()
        return user


def list_users(ctx: Context) -> list[User]:
    with ctx.db.session() as s:
        return list(s.scalars(select(User).order_by(User.email)))


def user_rows(ctx: Context) -> list[dict[str, Any]]:
    """Every user as :func:`user_view`, with how many VPSes they hold."""
    counts = select(Vps.owner_id, func.count().label("n")).group_by(Vps.owner_id).subquery()
    query = (
        select(User, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.owner_id == User.id)
        .order_by(User.email)
    )
    with ctx.db.reading() as s:
        return [{**user_view(u), "vps_count": n} for u, n in s.execute(query)]


def get_user(ctx: Context, email: str) -> User:
    with ctx.db.session() as s:
        return user_by_email(s, email)


def check_password_change(ctx: Context, email: str, *, actor: str | None = None) -> None:
    """Refuse (recorded as a failed ``user.password``) a password change for no user."""
    with audit.refusals(ctx, actor, "user.password", email):
        get_user(ctx, email)


def user_by_id(ctx: Context, user_id: int) -> User | None:
    if not 1 <= user_id <= validation.MAX_DB_ID:
        return None  # no such row can exist (and the database would refuse the number)
    with ctx.db.reading() as s:
        return s.get(User, user_id)


def set_active(
    ctx: Context, user_id: int, active: bool, by_user_id: int, *, actor: str | None = None
) -> User:
    """Disable (revoking their tokens) or enable a user by id; never oneself."""
    action = "user.enable" if active else "user.disable"
    with audit.audited(ctx, actor, action, str(user_id)) as entry:
        user = user_by_id(ctx, user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id}")
        entry.target = user.email
        if user.id == by_user_id:
            raise Conflict("you cannot disable or enable your own account")
        if active:
            return enable_user(ctx, user.email)
        disable_user(ctx, user.email)
        return get_user(ctx, user.email)


@audit.audits("user.disable", target="email")
def disable_user(ctx: Context, email: str, *, actor: str | None = None) -> int:
    """Stop the user logging in, end their sessions and revoke their API tokens.

    Returns how many tokens were revoked.
    """
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        user.is_active = False
        user.session_epoch = User.session_epoch + 1
        result = s.execute(
            update(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))
            .values(revoked=True)
        )
        return rowcount(result)


@audit.audits("user.enable", target="email")
def enable_user(ctx: Context, email: str, *, actor: str | None = None) -> User:
    """Let a disabled user log in again (revoked tokens stay revoked)."""
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        user.is_active = True
        return user


@audit.audits("user.logout", target="email")
def end_sessions(ctx: Context, email: str, *, actor: str | None = None) -> int:
    """Log the user out everywhere: every session made before now stops working.

    Returns the new session epoch (sessions carry the epoch they began in).
    """
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        user.session_epoch = User.session_epoch + 1
        s.flush()
        s.refresh(user, ["session_epoch"])
        return user.session_epoch


@audit.audits("user.password", target="email")
def set_password(
    ctx: Context, email: str, password: str | None, *, actor: str | None = None
) -> User:
    """Replace the user's password (None removes it) and end all their sessions."""
    password_hash = _hash(password) if password is not None else None
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        user.password_hash = password_hash
        user.session_epoch = User.session_epoch + 1
        s.flush()
        s.refresh(user)
        return user


def password_matches(user: User, given: str) -> bool:
    """Whether ``given`` is the user's password (a hash is checked even when they have none)."""
    stored = user.password_hash or _dummy_hash()
    matches = check_password_hash(stored, given if isinstance(given, str) else "")
    return matches and user.password_hash is not None


def change_password(
    ctx: Context, email: str, current: str, new: str, actor: str | None = None
) -> User:
    """The user's own change: ``current`` must be right. Ends every session of the user.

    Recorded (once) as ``user.password`` of ``actor``, refusals too.
    """
    with audit.audited(ctx, actor, "user.password", email):
        check_password(new)
        with ctx.db.reading() as s:
            user = user_by_email(s, email)
        stored = user.password_hash or _dummy_hash()
        given = current if isinstance(current, str) else ""
        if not check_password_hash(stored, given) or not user.password_hash:
            raise InvalidInput("the current password is wrong")
        return set_password(ctx, email, new)


LOGIN_REFUSED = "wrong e-mail or password, or the account is disabled"


def authenticate(
    ctx: Context, email: str, password: str, *, actor: str | None = None
) -> User | None:
    """The active user with this e-mail and password, or None.

    A hash is checked whatever happens, so the time taken does not tell
    whether the address exists, has a password or is disabled. A refusal is
    recorded as a failed ``user.login`` of ``actor`` (e.g. ``web:<address>``).
    """
    try:
        addr: str | None = validation.email(email)
    except InvalidInput:
        addr = None
    user = None
    if addr is not None:
        with ctx.db.session() as s:
            user = s.scalar(select(User).where(User.email == addr))
    stored = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    matches = check_password_hash(stored, password if isinstance(password, str) else "")
    if user is None or not user.password_hash or not user.is_active or not matches:
        if actor is not None:
            target = (email if isinstance(email, str) else "").strip().lower()[:254]
            audit.record(ctx, actor, "user.login", target, audit.FAILED, LOGIN_REFUSED)
        return None
    return user
