"""API tokens: bearer secrets shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from typing import TypedDict

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from kvmvps import validation
from kvmvps.errors import Conflict, NotFound
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


class TokenView(TypedDict):
    """The stable JSON shape of an API token (never the token or its hash)."""

    id: int
    user: str
    name: str
    revoked: bool
    created_at: str | None
    last_used_at: str | None


def token_view(token: ApiToken) -> TokenView:
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
    return validation.one_line(name, "token name", MAX_NAME)


@audit.audits("token.create", target="email")
def create_token(
    ctx: Context, email: str, name: str = "", *, actor: str | None = None
) -> tuple[str, TokenView]:
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
) -> TokenView:
    """Revoke a token by id (revoking it again changes nothing).

    With ``user_id``, only a token of that user; anyone else's is not found.
    """
    if user_id is not None and not 1 <= token_id <= validation.MAX_DB_ID:
        raise NotFound(f"no API token with id {token_id}")  # no such row can exist
    validation.db_id(token_id, "token id")
    with ctx.db.session() as s:
        token = s.get(ApiToken, token_id)
        if token is None or (user_id is not None and token.user_id != user_id):
            raise NotFound(f"no API token with id {token_id}")
        token.revoked = True
        return token_view(token)


def list_tokens(ctx: Context, email: str | None = None) -> list[TokenView]:
    """Every token, or one user's, oldest first."""
    query = select(ApiToken).options(selectinload(ApiToken.user)).order_by(ApiToken.id)
    with ctx.db.session() as s:
        if email:
            query = query.where(ApiToken.user_id == user_by_email(s, email).id)
        return [token_view(t) for t in s.scalars(query)]
