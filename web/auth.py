"""Sign up, log in, log out (Flask-Login sessions; login attempts rate-limited)."""

from __future__ import annotations

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

from kvmvps.errors import Conflict, InvalidInput
from kvmvps.services import users
from web.common import WebUser, safe_next, services, write_turn
from web.extensions import limiter
from web.forms import ActionForm, LoginForm, SignupForm

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
    if form.validate_on_submit():
        try:
            with write_turn():
                user = users.sign_up(services(), form.email.data, form.password.data)
        except Conflict:
            form.email.errors.append("an account with this e-mail already exists; log in instead")
        except InvalidInput as exc:
            target = form.email if "e-mail" in str(exc) else form.password
            target.errors.append(str(exc))
        else:
            _start_session(WebUser.of(user))
            flash("Welcome! Your account is ready.", "ok")
            return redirect(url_for("dashboard.order"))
    status = 400 if request.method == "POST" else 200
    return render_template("auth/signup.html", form=form), status


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
        user = users.authenticate(
            services(), form.email.data, form.password.data, actor="web:" + get_remote_address()
        )
        if user is not None:
            _start_session(WebUser.of(user))
            return redirect(safe_next(request.args.get("next")) or url_for("dashboard.servers"))
        form.password.errors.append("wrong e-mail or password")
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
