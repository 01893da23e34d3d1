"""Sign up, log in, log out (Flask-Login sessions; attempts rate-limited in the database)."""

from __future__ import annotations

import time
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.exceptions import TooManyRequests

from kvmvps.errors import Conflict, Forbidden, InvalidInput
from kvmvps.services import logins, users
from kvmvps.services import signup as signups
from web.common import WebUser, actor_of, client_address, safe_next, services, write_turn
from web.forms import ActionForm, LoginForm, SignupForm, add_error

bp = Blueprint("auth", __name__)


def _tried_email() -> str:
    """The e-mail a form names, as counted and audited (the audit log escapes controls)."""
    return (request.form.get("email") or "").strip().lower()[:254]


def count_attempt(action: str, target: str, *limits: tuple[str, str]) -> logins.Verdict | None:
    """Count this attempt against ``limits`` ((what, config key) pairs) before anything else.

    Too many: 429 with Retry-After. None when rate limiting is off.
    """
    if not current_app.config.get("RATELIMIT_ENABLED", True):
        return None
    verdict = logins.attempt(
        services(),
        [logins.Limit(what, logins.Rate.parse(current_app.config[key])) for what, key in limits],
        actor="web:" + client_address(),
        action=action,
        target=target,
    )
    if not verdict.allowed:
        raise TooManyRequests(
            f"too many attempts from your address; try again in {verdict.retry_after} seconds",
            retry_after=verdict.retry_after,
        )
    return verdict


SECOND_STEP = "second-step"
SECOND_STEP_SECONDS = 300


def begin_second_step(user_id: int, epoch: int, next_page: str | None) -> ResponseReturnValue:
    """After the right password: remember who passed it, then ask for a code."""
    session.clear()
    session[SECOND_STEP] = {"id": user_id, "epoch": epoch, "at": time.time(), "next": next_page}
    return redirect(url_for("security.login_code"))


def start_session(user: WebUser) -> None:
    session.clear()  # nothing from before the login survives it
    login_user(user)


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> ResponseReturnValue:
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.servers"))
    if request.method == "POST":
        addr = client_address()
        count_attempt("user.signup", _tried_email(), (f"signup:{addr}", "SIGNUP_LIMIT"))
    form = SignupForm()
    mode = signups.mode(services())
    status = 400 if request.method == "POST" else 200
    if mode == signups.CLOSED:
        if request.method == "POST":  # refused (and audited) by the service: a 403 page
            signups.sign_up(services(), form.email.data or "", "", actor=_anonymous())
        return render_template("auth/signup.html", form=form, mode=mode), 200
    if form.validate_on_submit():
        email = form.email.data or ""
        try:
            with write_turn():
                user = signups.sign_up(
                    services(),
                    email,
                    form.password.data or "",
                    form.invite.data,
                    actor=actor_of(email.strip().lower()[:254]),
                )
        except Conflict:
            add_error(form.email, "an account with this e-mail already exists; log in instead")
        except Forbidden as exc:
            add_error(form.invite, str(exc))
            status = 403
        except InvalidInput as exc:
            add_error(_field_of(form, str(exc)), str(exc))
        else:
            start_session(WebUser.of(user))
            flash("Welcome! Your account is ready.", "ok")
            return redirect(url_for("dashboard.order"))
    return render_template("auth/signup.html", form=form, mode=mode), status


def _anonymous() -> str:
    return "web:" + client_address()


def _field_of(form: SignupForm, message: str) -> Any:
    if "e-mail" in message:
        return form.email
    return form.invite if "invitation" in message else form.password


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.servers"))
    verdict = None
    if request.method == "POST":  # counted before the form or the password is looked at
        addr, email = client_address(), _tried_email()
        verdict = count_attempt(
            "user.login",
            email,
            (f"login:{addr}|{email}", "LOGIN_LIMIT"),
            (f"login:{addr}", "LOGIN_ADDRESS_LIMIT"),
            (f"login-email:{email}", "LOGIN_EMAIL_LIMIT"),  # many addresses, one account
        )
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        user = users.authenticate(
            services(),
            form.email.data or "",
            form.password.data or "",
            actor="web:" + client_address(),  # a refusal is recorded by the service
        )
        if user is not None:
            if verdict is not None:
                logins.refund(services(), verdict)  # only failures add up
            next_page = safe_next(request.args.get("next"))
            if user.totp_enabled:  # the session starts once a code is given too
                return begin_second_step(user.id, user.session_epoch, next_page)
            start_session(WebUser.of(user))
            return redirect(next_page or url_for("dashboard.servers"))
        add_error(form.password, "wrong e-mail or password")
        status = 401
    elif request.method == "POST":
        status = 400
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout() -> ResponseReturnValue:
    ActionForm()  # CSRFProtect has checked the token already
    with write_turn():  # copies of the cookie stop working too
        users.end_sessions(services(), current_user.email, actor=current_user.actor)
    logout_user()
    session.clear()
    flash("You are logged out.", "ok")
    return redirect(url_for("public.index"))
