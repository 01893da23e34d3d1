"""Who may create an account: ``KVMVPS_SIGNUP`` is open, closed or invite.

With ``invite``, a new account needs a code made by an operator
(``kvmvps-admin user invite``). A code is shown once, stored only as its
SHA-256, works once, expires after ``KVMVPS_INVITE_DAYS`` days, and may be
bound to one e-mail address. It is spent in the same transaction that
creates the account, with a conditional update, so two sign-ups with one
code cannot both succeed.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kvmvps import validation
from kvmvps.errors import Conflict, Forbidden, InvalidInput
from kvmvps.models import Invitation, User
from kvmvps.services import Context, audit, jobs, users
from kvmvps.services.tokens import digest

CODE_PREFIX = "inv_"
MAX_CODE = 100
OPEN, CLOSED, INVITE = "open", "closed", "invite"


audit.declare("user.invite", "user.signup")  # recorded with audit.audited below


def mode(ctx: Context) -> str:
    return ctx.settings.signup


def invite(
    ctx: Context, actor: str, email: str | None = None, days: int | None = None
) -> tuple[str, dict[str, Any]]:
    """A new invitation: (code, view). The code is shown this once and not kept."""
    with audit.audited(ctx, actor, "user.invite", (email or "")[:300]):
        addr = validation.email(email) if email else None
        lifetime = ctx.settings.invite_days if days is None else days
        validation.positive_int(lifetime, "the invitation's lifetime in days", 366)
        code = CODE_PREFIX + secrets.token_urlsafe(18)
        with ctx.db.session() as s:
            if addr and s.scalar(select(User.id).where(User.email == addr)) is not None:
                raise Conflict(f"a user with e-mail {addr!r} already exists")
            row = Invitation(
                code_hash=digest(code),
                email=addr,
                created_by=audit.one_line(actor, 300),
                expires_at=jobs.now() + timedelta(days=lifetime),
            )
            s.add(row)
            s.flush()
            return code, invitation_view(row)


def invitation_view(row: Invitation) -> dict[str, Any]:
    """An invitation without its code."""
    return {
        "id": row.id,
        "email": row.email,
        "created_by": row.created_by,
        "created_at": audit.iso(row.created_at),
        "expires_at": audit.iso(row.expires_at),
        "used": row.used_at is not None,
    }


def sign_up(
    ctx: Context, email: str, password: str, code: str | None = None, actor: str = ""
) -> User:
    """Create a customer's account, if sign-up is open (or the invitation is good)."""
    with audit.audited(
        ctx,
        actor or f"user:{(email or '').strip().lower()[:254]}",
        "user.signup",
        (email or "").strip().lower()[:254],
    ):
        if mode(ctx) == CLOSED:
            raise Forbidden("sign-up is closed; ask the operators for an account")
        addr = users.ensure_available(ctx, email)
        hashed = users.password_hash(password)
        with ctx.db.session() as s:
            user = User(email=addr, password_hash=hashed, is_admin=False, is_active=True)
            s.add(user)
            try:
                s.flush()
            except IntegrityError:
                raise Conflict(f"a user with e-mail {addr!r} already exists") from None
            if mode(ctx) == INVITE:
                _spend(s, code, addr, user.id)
            return user


def _spend(session: Session, code: str | None, addr: str, user_id: int) -> None:
    """Mark the invitation used by ``user_id``; Forbidden if it is not good for ``addr``."""
    text = (code or "").strip()
    if not text:
        raise Forbidden("sign-up is by invitation; give the code an operator sent you")
    if len(text) > MAX_CODE or not text.isascii() or not text.isprintable():
        raise InvalidInput("that is not an invitation code")
    now = jobs.now()
    spent = cast(
        CursorResult[Any],
        session.execute(
            update(Invitation)
            .where(
                Invitation.code_hash == digest(text),
                Invitation.used_at.is_(None),
                Invitation.expires_at > now,
                or_(Invitation.email.is_(None), Invitation.email == addr),
            )
            .values(used_at=now, used_by_id=user_id)
        ),
    )
    if spent.rowcount != 1:
        raise Forbidden("the invitation code is unknown, used, expired or for another e-mail")
