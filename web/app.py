"""The application factory: configuration, extensions, blueprints, security headers."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter
from werkzeug.routing.map import Map

from kvmvps import validation
from kvmvps.services import Context, logins, users
from web import errors, filters
from web.common import CONTEXT_KEY, WebUser, services
from web.extensions import csrf, login_manager

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECRET_KEY_FILE = "web-secret-key"  # noqa: S105 - a name, not a secret
MAX_BODY = 64 * 1024
RATE_KEYS = (
    "LOGIN_LIMIT",
    "LOGIN_ADDRESS_LIMIT",
    "LOGIN_EMAIL_LIMIT",
    "SIGNUP_LIMIT",
    "CODE_LIMIT",
    "RESET_LIMIT",
)


HTTPS_DEFAULT = "1"  # secure by default; KVMVPS_WEB_HTTPS=0 to try the site over plain HTTP


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _env_config() -> dict[str, Any]:
    """Settings from KVMVPS_WEB_* variables (see the README)."""
    https = _truthy(os.environ.get("KVMVPS_WEB_HTTPS", HTTPS_DEFAULT))
    return {
        "HTTPS": https,
        "SECRET_KEY": os.environ.get("KVMVPS_WEB_SECRET_KEY") or None,
        "PROXIES": int(os.environ.get("KVMVPS_WEB_PROXIES", "0") or 0),
        "SITE_NAME": os.environ.get("KVMVPS_WEB_SITE_NAME", "kvmvps"),
        "CURRENCY": os.environ.get("KVMVPS_WEB_CURRENCY", "$"),
        "LOGIN_LIMIT": os.environ.get("KVMVPS_WEB_LOGIN_LIMIT") or None,
        "LOGIN_ADDRESS_LIMIT": os.environ.get("KVMVPS_WEB_LOGIN_ADDRESS_LIMIT") or None,
        "LOGIN_EMAIL_LIMIT": os.environ.get("KVMVPS_WEB_LOGIN_EMAIL_LIMIT") or None,
        "SIGNUP_LIMIT": os.environ.get("KVMVPS_WEB_SIGNUP_LIMIT") or None,
        "CODE_LIMIT": os.environ.get("KVMVPS_WEB_CODE_LIMIT") or None,
        "RESET_LIMIT": os.environ.get("KVMVPS_WEB_RESET_LIMIT") or None,
    }


def _defaults() -> dict[str, Any]:
    return {
        "SESSION_COOKIE_NAME": "kvmvps_session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "MAX_CONTENT_LENGTH": MAX_BODY,
        "WTF_CSRF_ENABLED": True,
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "RATELIMIT_ENABLED": True,
        "LOGIN_LIMIT": "5/minute",  # per client address and e-mail
        "LOGIN_ADDRESS_LIMIT": "30/minute",  # per client address, whatever the e-mail
        "LOGIN_EMAIL_LIMIT": "100/hour",  # per e-mail, from any number of addresses
        "SIGNUP_LIMIT": "20/hour",  # per client address
        "CODE_LIMIT": "10/hour",  # second-factor codes per account (1e6 codes to guess)
        "RESET_LIMIT": "5/hour",  # reset mails per client address and per e-mail
    }


class RowId(IntegerConverter):
    """``<int:...>`` in a URL: 1 up to the largest id a row can have; beyond, simply 404."""

    def __init__(self, url_map: Map, fixed_digits: int = 0, signed: bool = False) -> None:
        super().__init__(url_map, fixed_digits, min=1, max=validation.MAX_DB_ID, signed=signed)


def load_secret_key(state_dir: Path) -> str:
    """The signing key kept in the state dir (made once, mode 0600), shared by every worker."""
    path = state_dir / SECRET_KEY_FILE
    if not path.exists():
        # written whole, then linked into place: gunicorn's workers start together,
        # and one must never read a file another has created but not yet written
        tmp = state_dir / f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # the first one wins; the others read its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty; remove it and start again")
    return key


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the website and API.

    ``test_config`` overrides any setting; ``KVMVPS_CONTEXT`` there hands in a
    services :class:`Context` (otherwise one is built from the environment).
    """
    app = Flask(__name__)
    app.url_map.converters["int"] = RowId  # before any route is added
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config.from_mapping(_defaults())
    app.config.from_mapping({k: v for k, v in _env_config().items() if v is not None})
    if test_config:
        app.config.update(test_config)
    for key in RATE_KEYS:
        logins.Rate.parse(app.config[key])  # a bad setting stops the start, with its name
    ctx: Context = app.config.get("KVMVPS_CONTEXT") or Context.from_env()
    app.extensions[CONTEXT_KEY] = ctx
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(ctx.settings.state_dir)
    https = bool(app.config.get("HTTPS"))
    for key in ("SESSION_COOKIE_SECURE", "REMEMBER_COOKIE_SECURE"):
        if key not in (test_config or {}):
            app.config[key] = https
    app.config["PREFERRED_URL_SCHEME"] = "https" if https else "http"
    if app.config.get("PROXIES"):
        hops = int(app.config["PROXIES"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    _init_extensions(app)
    _register_blueprints(app)
    errors.register(app)
    filters.register(app)
    app.after_request(_security_headers)
    return app


def _init_extensions(app: Flask) -> None:
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "basic"
    login_manager.user_loader(_load_user)


def _load_user(session_id: str) -> WebUser | None:
    """The session's user, read afresh each request.

    The session holds "id:epoch". A user logged out elsewhere, with a new
    password, or disabled has a newer epoch (or is inactive): every older
    session, including a copied cookie, ends at its next request.
    """
    user_id, _, epoch = session_id.partition(":")
    if not user_id.isdecimal() or not epoch.isdecimal() or len(user_id) > 10:
        return None
    user = users.user_by_id(services(), int(user_id))
    if user is None or not user.is_active or str(user.session_epoch) != epoch:
        return None
    return WebUser.of(user)


def _register_blueprints(app: Flask) -> None:
    from web import account, admin, api, auth, console, dashboard, metrics, public, security

    for module in (public, auth, dashboard, account, security, admin, metrics):
        app.register_blueprint(module.bp)
    console.init_app(app)
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    csrf.exempt(api.bp)


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.endpoint != "static":
        headers.setdefault("Cache-Control", "no-store")
    return response
