"""People who may log in: operators and customers.

Passwords are stored only as scrypt hashes (werkzeug). A user may have no
password at all and reach the API with tokens alone.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import TypedDict

from sqlalchemy import select, update
from werkzeug.security import check_password_hash, generate_password_hash

from kvmvps import validation
from kvmvps.db import rowcount
from kvmvps.errors import Conflict, InvalidInput
from kvmvps.models import ApiToken, User
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


def ensure_available(ctx: Context, email: str) -> str:
    """The normalised address, if no user has it yet; Conflict otherwise."""
    addr = validation.email(email)
    with ctx.db.session() as s:
        if s.scalar(select(User.id).where(User.email == addr)) is not None:
            raise Conflict(f"a user with e-mail {addr!r} already exists")
    return addr


def add_user(ctx: Context, email: str, password: str | None, admin: bool = False) -> User:
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


def get_user(ctx: Context, email: str) -> User:
    with ctx.db.session() as s:
        return user_by_email(s, email)


def disable_user(ctx: Context, email: str) -> int:
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


def enable_user(ctx: Context, email: str) -> User:
    """Let a disabled user log in again (revoked tokens stay revoked)."""
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        user.is_active = True
        return user


def end_sessions(ctx: Context, email: str) -> int:
    """Log the user out everywhere: every session made before now stops working.

    Returns the new session epoch (sessions carry the epoch they began in).
    """
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        user.session_epoch = User.session_epoch + 1
        s.flush()
        s.refresh(user, ["session_epoch"])
        return user.session_epoch


def set_password(ctx: Context, email: str, password: str | None) -> User:
    """Replace the user's password (None removes it) and end all their sessions."""
    password_hash = _hash(password) if password is not None else None
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        user.password_hash = password_hash
        user.session_epoch = User.session_epoch + 1
        s.flush()
        s.refresh(user)
        return user


def change_password(ctx: Context, email: str, current: str, new: str, actor: str) -> User:
    """The user's own change: ``current`` must be right. Ends every session of the user."""
    with audit.audited(ctx, actor, "user.password", email):
        check_password(new)
        with ctx.db.reading() as s:
            user = user_by_email(s, email)
        stored = user.password_hash or _dummy_hash()
        given = current if isinstance(current, str) else ""
        if not check_password_hash(stored, given) or not user.password_hash:
            raise InvalidInput("the current password is wrong")
        return set_password(ctx, email, new)


def authenticate(ctx: Context, email: str, password: str) -> User | None:
    """The active user with this e-mail and password, or None.

    A hash is checked whatever happens, so the time taken does not tell
    whether the address exists, has a password or is disabled.
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
        return None
    return user
