"""Sign up, log in, log out (Flask-Login sessions; login attempts rate-limited)."""

from __future__ import annotations

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
from flask_limiter.util import get_remote_address
from flask_login import current_user, login_required, login_user, logout_user

from kvmvps.errors import Conflict, Forbidden, InvalidInput
from kvmvps.services import audit, users
from kvmvps.services import signup as signups
from web.common import WebUser, actor_of, safe_next, services
from web.extensions import limiter
from web.forms import ActionForm, LoginForm, SignupForm, add_error

bp = Blueprint("auth", __name__)


def _login_key() -> str:
    """Rate-limit key: the client's address and the e-mail tried."""
    email = (request.form.get("email") or "").strip().lower()[:254]
    return f"{get_remote_address()}|{email}"


def _start_session(user: WebUser) -> None:
    session.clear()  # nothing from before the login survives it
    login_user(user)


@bp.route("/signup", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["SIGNUP_LIMIT"], methods=["POST"])
def signup() -> ResponseReturnValue:
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.servers"))
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
            _start_session(WebUser.of(user))
            flash("Welcome! Your account is ready.", "ok")
            return redirect(url_for("dashboard.order"))
    return render_template("auth/signup.html", form=form, mode=mode), status


def _anonymous() -> str:
    return "web:" + get_remote_address()


def _field_of(form: SignupForm, message: str) -> Any:
    if "e-mail" in message:
        return form.email
    return form.invite if "invitation" in message else form.password


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(
    lambda: current_app.config["LOGIN_LIMIT"],
    key_func=_login_key,
    methods=["POST"],
    deduct_when=lambda response: response.status_code != 302,
)
def login() -> ResponseReturnValue:
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.servers"))
    form = LoginForm()
    status = 200
    if form.validate_on_submit():
        user = users.authenticate(services(), form.email.data or "", form.password.data or "")
        if user is not None:
            _start_session(WebUser.of(user))
            return redirect(safe_next(request.args.get("next")) or url_for("dashboard.servers"))
        audit.record(
            services(),
            "web:" + get_remote_address(),
            "user.login",
            (form.email.data or "").strip().lower()[:254],
            audit.FAILED,
            "wrong e-mail or password, or the account is disabled",
        )
        add_error(form.password, "wrong e-mail or password")
        status = 401
    elif request.method == "POST":
        status = 400
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout() -> ResponseReturnValue:
    ActionForm()  # CSRFProtect has checked the token already
    logout_user()
    session.clear()
    flash("You are logged out.", "ok")
    return redirect(url_for("public.index"))
