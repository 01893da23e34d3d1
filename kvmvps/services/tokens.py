"""API tokens: bearer secrets shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.models import ApiToken, User, utcnow
from kvmvps.services import Context, audit
from kvmvps.services.audit import iso
from kvmvps.services.inventory import user_by_email

TOKEN_PREFIX = "kvp_"  # noqa: S105 - a name, not a secret
MAX_NAME = 64
MAX_TOKEN = 256

VIEW_KEYS = ("id", "user", "name", "revoked", "created_at", "last_used_at")


def digest(token: str) -> str:
    """The stored form of a token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_view(token: ApiToken) -> dict[str, Any]:
    """The stable JSON shape of a token; never the token or its hash."""
    return {
        "id": token.id,
        "user": token.user.email,
        "name": token.name,
        "revoked": bool(token.revoked),
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
    }


def _token_name(name: str | None) -> str:
    name = (name or "").strip()
    if len(name) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput(f"a token name must be one line of at most {MAX_NAME} characters")
    return name


@audit.audits("token.create", target="email")
def create_token(
    ctx: Context, email: str, name: str = "", *, actor: str | None = None
) -> tuple[str, dict[str, Any]]:
    """A new token for the user: (plaintext, view). The plaintext is not kept."""
    name = _token_name(name)
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        if not user.is_active:
            raise Conflict(f"user {user.email} is disabled; enable it first")
        token = ApiToken(user=user, name=name, token_hash=digest(plaintext), revoked=False)
        s.add(token)
        s.flush()
        return plaintext, token_view(token)


def verify_token(ctx: Context, token: str) -> User | None:
    """The active user a live token belongs to, or None; notes when it was used."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN:
        return None
    query = (
        select(ApiToken)
        .join(User, User.id == ApiToken.user_id)
        .where(
            ApiToken.token_hash == digest(token),
            ApiToken.revoked.is_(False),
            User.is_active.is_(True),
        )
    )
    with ctx.db.session() as s:
        row = s.scalar(query)
        if row is None:
            return None
        row.last_used_at = utcnow()
        return row.user


@audit.audits("token.revoke", target="token_id")
def revoke_token(
    ctx: Context, token_id: int, user_id: int | None = None, *, actor: str | None = None
) -> dict[str, Any]:
    """Revoke a token by id (revoking it again changes nothing).

    With ``user_id``, only a token of that user; anyone else's is not found.
    """
    with ctx.db.session() as s:
        token = s.get(ApiToken, token_id)
        if token is None or (user_id is not None and token.user_id != user_id):
            raise NotFound(f"no API token with id {token_id}")
        token.revoked = True
        return token_view(token)


def list_tokens(ctx: Context, email: str | None = None) -> list[dict[str, Any]]:
    """Every token, or one user's, oldest first."""
    query = select(ApiToken).options(selectinload(ApiToken.user)).order_by(ApiToken.id)
    with ctx.db.session() as s:
        if email:
            query = query.where(ApiToken.user_id == user_by_email(s, email).id)
        return [token_view(t) for t in s.scalars(query)]
