"""A second factor: TOTP (RFC 6238) codes from an authenticator app, and recovery codes.

The secret is kept sealed (Fernet, the key in the state dir, as VPS
passwords are), never in plain text. A code is accepted once: the time step
it belongs to is stored, and a code of that step or an earlier one is
refused, by a conditional update, so two requests with one code cannot both
pass. Recovery codes are shown once, stored as SHA-256 and spent once.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

import pyotp
import segno
from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import CursorResult

from kvmvps.errors import Conflict, InvalidInput
from kvmvps.models import RecoveryCode, User, utcnow
from kvmvps.services import Context, audit, credentials, users
from kvmvps.services.inventory import user_by_email
from kvmvps.services.tokens import digest

STEP = 30
DRIFT = 1  # steps either side of now (a clock a little off)
RECOVERY_CODES = 10
MAX_CODE = 32
WRONG_CODE = "the code is wrong or was used already"

audit.declare("user.2fa_on", "user.2fa_off", "user.2fa")


@dataclass(frozen=True)
class Enrollment:
    """What the customer needs to add the account to an authenticator app."""

    secret: str
    uri: str
    qr_data_uri: str  # an SVG image as a data: URI (allowed by the site's CSP)


def _enrollment(email: str, secret: str, issuer: str) -> Enrollment:
    uri = pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)
    qr = segno.make(uri, error="m").svg_data_uri(scale=4, border=2)
    return Enrollment(secret=secret, uri=uri, qr_data_uri=qr)


def enabled(ctx: Context, user_id: int) -> bool:
    with ctx.db.reading() as s:
        return bool(s.scalar(select(User.totp_enabled).where(User.id == user_id)))


def begin(ctx: Context, email: str, issuer: str = "kvmvps") -> Enrollment:
    """The secret to enroll (a new one, or the one waiting for its first code)."""
    with ctx.db.session() as s:
        user = user_by_email(s, email)
        if user.totp_enabled:
            raise Conflict("the second factor is on already")
        if user.totp_secret:
            secret = credentials.unseal(ctx, user.totp_secret)
        else:
            secret = pyotp.random_base32()
            user.totp_secret = credentials.seal(ctx, secret)
        return _enrollment(user.email, secret, issuer)


def _normal(code: str) -> str:
    if not isinstance(code, str) or len(code) > MAX_CODE:
        return ""
    return "".join(code.split()).replace("-", "").lower()


def _matching_step(secret: str, code: str, now: float) -> int | None:
    if len(code) != 6 or not code.isdigit():
        return None
    totp, current = pyotp.TOTP(secret), int(now // STEP)
    for step in range(current - DRIFT, current + DRIFT + 1):
        if hmac.compare_digest(totp.at(step * STEP), code):
            return step
    return None


def _use_code(ctx: Context, user_id: int, code: str, now: float | None = None) -> bool:
    """Spend a TOTP code (once per time step) or a recovery code of the user."""
    given = _normal(code)
    with ctx.db.reading() as s:
        sealed = s.scalar(select(User.totp_secret).where(User.id == user_id))
    if not sealed or not given:
        return False
    step = _matching_step(credentials.unseal(ctx, sealed), given, now or time.time())
    with ctx.db.session() as s:
        if step is not None:
            spent = s.execute(
                update(User)
                .where(
                    User.id == user_id,
                    or_(User.totp_last_step.is_(None), User.totp_last_step < step),
                )
                .values(totp_last_step=step)
            )
            return cast(CursorResult[Any], spent).rowcount == 1
        spent = s.execute(
            update(RecoveryCode)
            .where(
                RecoveryCode.user_id == user_id,
                RecoveryCode.code_hash == digest(given),
                RecoveryCode.used_at.is_(None),
            )
            .values(used_at=utcnow())
        )
        return cast(CursorResult[Any], spent).rowcount == 1


def _new_recovery_codes(ctx: Context, user_id: int) -> list[str]:
    codes = [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]
    with ctx.db.session() as s:
        s.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        s.add_all(RecoveryCode(user_id=user_id, code_hash=digest(_normal(c))) for c in codes)
    return codes


def confirm(ctx: Context, email: str, code: str, *, actor: str | None = None) -> list[str]:
    """Turn the second factor on with a first code; the recovery codes, shown this once."""
    with audit.audited(ctx, actor, "user.2fa_on", email):
        with ctx.db.reading() as s:
            user = user_by_email(s, email)
        if user.totp_enabled:
            raise Conflict("the second factor is on already")
        if not user.totp_secret:
            raise Conflict("start again: no secret is waiting for its first code")
        if not _use_code(ctx, user.id, code):
            raise InvalidInput(WRONG_CODE)
        with ctx.db.session() as s:
            s.execute(update(User).where(User.id == user.id).values(totp_enabled=True))
        return _new_recovery_codes(ctx, user.id)


def disable(
    ctx: Context, email: str, password: str, code: str, *, actor: str | None = None
) -> None:
    """Turn the second factor off: the password and a code (or a recovery code) are needed."""
    with audit.audited(ctx, actor, "user.2fa_off", email):
        with ctx.db.reading() as s:
            user = user_by_email(s, email)
        if not user.totp_enabled:
            raise Conflict("the second factor is off already")
        if not users.password_matches(user, password):
            raise InvalidInput("the password is wrong")
        if not _use_code(ctx, user.id, code):
            raise InvalidInput(WRONG_CODE)
        with ctx.db.session() as s:
            s.execute(
                update(User)
                .where(User.id == user.id)
                .values(totp_enabled=False, totp_secret=None, totp_last_step=None)
            )
            s.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))


def verify(ctx: Context, user_id: int, code: str, *, actor: str | None = None) -> bool:
    """The login's second step: a fresh code of the user. A refusal is audited."""
    ok = enabled(ctx, user_id) and _use_code(ctx, user_id, code)
    if not ok and actor is not None:
        audit.record(ctx, actor, "user.2fa", str(user_id), audit.FAILED, WRONG_CODE)
    return ok


def recovery_left(ctx: Context, user_id: int) -> int:
    with ctx.db.reading() as s:
        rows = s.scalars(
            select(RecoveryCode.id).where(
                RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
            )
        )
        return len(list(rows))
