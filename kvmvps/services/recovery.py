"""Mailed links: a forgotten password, and the confirmation of a new e-mail address.

A link's secret is random (32 bytes), stored only as its SHA-256, works once
(spent by a conditional update, so two clicks cannot both succeed) and
expires (a reset after ``RESET_MINUTES``). Asking for a reset answers the
same whether or not the address has an account, and the mail leaves in the
background so the answer takes as long either way.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kvmvps import validation
from kvmvps.errors import Conflict, InvalidInput
from kvmvps.models import AccountToken, User
from kvmvps.services import Context, audit, jobs, mail, users
from kvmvps.services.inventory import user_by_email
from kvmvps.services.tokens import digest

RESET, EMAIL = "reset", "email"
RESET_MINUTES = 30
EMAIL_HOURS = 24
MAX_TOKEN = 100
LINK_REFUSED = "this link is unknown, used or expired; ask for a new one"

audit.declare("user.reset_request", "user.reset", "user.email", "user.email_confirm")


def _issue(
    session: Session, user_id: int, purpose: str, lifetime: timedelta, new_email: str | None = None
) -> str:
    """A new link secret of ``purpose``; earlier unspent ones of the user stop working."""
    now = jobs.now()
    session.execute(
        update(AccountToken)
        .where(
            AccountToken.user_id == user_id,
            AccountToken.purpose == purpose,
            AccountToken.used_at.is_(None),
        )
        .values(used_at=now)
    )
    secret = secrets.token_urlsafe(32)
    session.add(
        AccountToken(
            user_id=user_id,
            purpose=purpose,
            token_hash=digest(secret),
            new_email=new_email,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    return secret


def _well_formed(secret: str) -> bool:
    return (
        isinstance(secret, str)
        and 0 < len(secret) <= MAX_TOKEN
        and secret.isascii()
        and secret.isprintable()
    )


def _spend(session: Session, secret: str, purpose: str) -> AccountToken:
    """Mark the link used; InvalidInput if it is unknown, used, expired or another kind."""
    if not _well_formed(secret):
        raise InvalidInput(LINK_REFUSED)
    now = jobs.now()
    result = cast(
        CursorResult[Any],
        session.execute(
            update(AccountToken)
            .where(
                AccountToken.token_hash == digest(secret),
                AccountToken.purpose == purpose,
                AccountToken.used_at.is_(None),
                AccountToken.expires_at > now,
            )
            .values(used_at=now)
        ),
    )
    if result.rowcount != 1:
        raise InvalidInput(LINK_REFUSED)
    row = session.scalar(select(AccountToken).where(AccountToken.token_hash == digest(secret)))
    assert row is not None  # noqa: S101 - just updated in this transaction
    return row


def link_works(ctx: Context, secret: str, purpose: str = RESET) -> bool:
    """Whether a link would still work (to show its form or say it is spent)."""
    if not _well_formed(secret):
        return False
    with ctx.db.reading() as s:
        row = s.scalar(
            select(AccountToken.id).where(
                AccountToken.token_hash == digest(secret),
                AccountToken.purpose == purpose,
                AccountToken.used_at.is_(None),
                AccountToken.expires_at > jobs.now(),
            )
        )
    return row is not None


def request_reset(ctx: Context, email: str, link_base: str, *, actor: str | None = None) -> None:
    """Mail a reset link to the account's address, if there is an active account.

    Returns nothing either way. InvalidInput only for a malformed address or
    when no mail can be sent at all (which says nothing about the address).
    """
    target = (email if isinstance(email, str) else "").strip().lower()[:254]
    with audit.audited(ctx, actor, "user.reset_request", target):
        if not mail.configured(ctx):
            raise InvalidInput("this site cannot send mail; ask the operators to reset it")
        addr = validation.email(email)
        with ctx.db.session() as s:
            user = s.scalar(select(User).where(User.email == addr))
            if user is None or not user.is_active:
                return
            secret = _issue(s, user.id, RESET, timedelta(minutes=RESET_MINUTES))
        body = (
            "Someone (we hope you) asked to reset the password of your account.\n\n"
            f"Choose a new password here within {RESET_MINUTES} minutes:\n\n"
            f"{link_base}{secret}\n\n"
            "The link works once. If you did not ask, ignore this mail; "
            "your password stays as it is.\n"
        )
        mail.send_later(ctx, addr, "Reset your password", body)


def reset_password(ctx: Context, secret: str, password: str, *, actor: str | None = None) -> User:
    """Spend a reset link and set the new password; every session of the user ends."""
    with audit.audited(ctx, actor, "user.reset", "") as entry:
        hashed = users.password_hash(password)
        with ctx.db.session() as s:
            row = _spend(s, secret, RESET)
            user = s.get(User, row.user_id)
            if user is None or not user.is_active:
                raise InvalidInput(LINK_REFUSED)
            entry.target = user.email
            user.password_hash = hashed
            user.session_epoch = User.session_epoch + 1
            s.flush()
            s.refresh(user)
            return user


def _check_current(user: User, current: str) -> None:
    if not users.password_matches(user, current):
        raise InvalidInput("the current password is wrong")


def change_email(
    ctx: Context,
    email: str,
    current: str,
    new_email: str,
    link_base: str,
    *,
    actor: str | None = None,
) -> str | None:
    """A new address for the account; the current password must be right.

    With mail, a confirmation link goes to the new address and the change
    waits for it (returns None); without, it takes effect at once (returns
    the new address).
    """
    with audit.audited(ctx, actor, "user.email", email):
        addr = validation.email(new_email)
        with ctx.db.reading() as s:
            user = user_by_email(s, email)
        _check_current(user, current)
        if addr == user.email:
            raise InvalidInput("that is your address already")
        users.ensure_available(ctx, addr)
        if not mail.configured(ctx):
            _set_email(ctx, user.id, addr)
            return addr
        with ctx.db.session() as s:
            secret = _issue(s, user.id, EMAIL, timedelta(hours=EMAIL_HOURS), addr)
        body = (
            f"Confirm {addr} as the new address of your account:\n\n"
            f"{link_base}{secret}\n\n"
            f"The link works once, for {EMAIL_HOURS} hours. "
            "If you did not ask for this, ignore this mail.\n"
        )
        mail.send_later(ctx, addr, "Confirm your new e-mail address", body)
        return None


def confirm_email(ctx: Context, secret: str, *, actor: str | None = None) -> User:
    """Spend a confirmation link: the account takes the address it was sent to."""
    with audit.audited(ctx, actor, "user.email_confirm", "") as entry:
        with ctx.db.session() as s:
            row = _spend(s, secret, EMAIL)
            user_id, addr = row.user_id, row.new_email or ""
        entry.target = addr
        return _set_email(ctx, user_id, addr)


def _set_email(ctx: Context, user_id: int, addr: str) -> User:
    try:
        with ctx.db.session() as s:
            user = s.get(User, user_id)
            if user is None:
                raise InvalidInput(LINK_REFUSED)
            user.email = addr
            s.flush()
            s.refresh(user)
            return user
    except IntegrityError:
        raise Conflict(f"a user with e-mail {addr!r} already exists") from None
