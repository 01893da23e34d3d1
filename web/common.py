"""Helpers shared by the blueprints: the services context, users, errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import current_app, request, session
from flask_login import UserMixin

from kvmvps.errors import (
    CapacityError,
    Conflict,
    Forbidden,
    HypervisorError,
    HypervisorUnavailable,
    InvalidInput,
    KvmvpsError,
    NotFound,
)
from kvmvps.models import User
from kvmvps.services import Context, audit, credentials

CONTEXT_KEY = "kvmvps"


def services() -> Context:
    """The services context of the running app."""
    return current_app.extensions[CONTEXT_KEY]


@dataclass
class WebUser(UserMixin):
    """The logged-in user as Flask-Login sees it (loaded from the database per request)."""

    id: int
    email: str
    is_admin: bool
    active: bool
    epoch: int = 0  # the user's session epoch when this session began
    totp: bool = False  # a second factor is on

    @classmethod
    def of(cls, user: User) -> WebUser:
        return cls(
            id=user.id,
            email=user.email,
            is_admin=bool(user.is_admin),
            active=bool(user.is_active),
            epoch=user.session_epoch or 0,
            totp=bool(user.totp_enabled),
        )

    def get_id(self) -> str:
        """What the session keeps: the id and the epoch ("7:3"); see ``app._load_user``."""
        return f"{self.id}:{self.epoch}"

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def actor(self) -> str:
        return actor_of(self.email)


def client_address() -> str:
    """The client's address: the peer, or the one KVMVPS_WEB_PROXIES trusted proxies name."""
    return request.remote_addr or "unknown"


def actor_of(email: str) -> str:
    """The audit and job actor of a customer or operator: ``user:<email>``."""
    return audit.user_actor(email)


def status_for(exc: KvmvpsError) -> int:
    """The HTTP status of a service error."""
    if isinstance(exc, InvalidInput):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, (CapacityError, HypervisorUnavailable)):
        return 503
    if isinstance(exc, HypervisorError):
        return 502  # the host refused what was asked: not this server's fault
    return 500


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site (no scheme, no host), else None."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


WRITE_LOCK = "web-write.lock"


@contextmanager
def write_turn() -> Iterator[None]:
    """The website's writers take turns on SQLite (see ``Database.write_turn``)."""
    ctx = services()
    with ctx.db.write_turn(ctx.settings.state_dir / WRITE_LOCK):
        yield


# -- secrets shown once, after a redirect ---------------------------------------
ONCE_KEY = "once"


def show_once(kind: str, secret: str) -> None:
    """Keep ``secret`` sealed in the session for the next page (POST, redirect, GET)."""
    session[ONCE_KEY] = {"kind": kind, "sealed": credentials.seal(services(), secret)}


def take_once(kind: str) -> str | None:
    """The secret :func:`show_once` kept, removed from the session: shown this once."""
    held = session.get(ONCE_KEY)
    if not isinstance(held, dict) or held.get("kind") != kind:
        return None
    session.pop(ONCE_KEY, None)
    return credentials.unseal(services(), str(held["sealed"]))
