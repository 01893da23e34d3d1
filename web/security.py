"""A second factor (TOTP) and a forgotten password.

Login with a second factor takes two steps: the password (``auth.login``)
leaves only a short-lived note in the session of who passed it; the code
page starts the real session. Codes are counted per account
(``CODE_LIMIT``) and per address, before they are checked.
"""

from __future__ import annotations

import json
import time

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
from flask_login import current_user

from kvmvps.errors import KvmvpsError
from kvmvps.services import logins, recovery, totp, users
from web.auth import SECOND_STEP, SECOND_STEP_SECONDS, count_attempt, start_session
from web.common import (
    WebUser,
    client_address,
    safe_next,
    services,
    show_once,
    status_for,
    take_once,
    write_turn,
)
from web.extensions import login_manager
from web.forms import CodeForm, DisableTwoFactorForm, ForgotForm, ResetForm, add_error

bp = Blueprint("security", __name__)
CODES = "recovery-codes"
RESET_ANSWER = (
    "If an account with this address exists, a link to choose a new password is on its way. "
    f"It works once, for {recovery.RESET_MINUTES} minutes."
)


# -- the login's second step ---------------------------------------------------
def _passed() -> dict[str, object] | None:
    note = session.get(SECOND_STEP)
    if not isinstance(note, dict) or time.time() - float(note.get("at", 0)) > SECOND_STEP_SECONDS:
        return None
    return note


@bp.route("/login/code", methods=["GET", "POST"])
def login_code() -> ResponseReturnValue:
    note = _passed()
    if note is None:
        flash("Please log in again.", "info")
        return redirect(url_for("auth.login"))
    user_id = int(str(note["id"]))
    form = CodeForm()
    status = 200
    if request.method == "POST":
        verdict = count_attempt(
            "user.2fa",
            str(user_id),
            (f"code:{user_id}", "CODE_LIMIT"),
            (f"login:{client_address()}", "LOGIN_ADDRESS_LIMIT"),
        )
        status = 400
        if form.validate_on_submit():
            with write_turn():
                ok = totp.verify(
                    services(), user_id, form.code.data or "", actor="web:" + client_address()
                )
            user = users.user_by_id(services(), user_id)
            if ok and user is not None and user.is_active and user.session_epoch == note["epoch"]:
                if verdict is not None:
                    logins.refund(services(), verdict)
                start_session(WebUser.of(user))
                return redirect(
                    safe_next(str(note.get("next") or "")) or url_for("dashboard.servers")
                )
            add_error(form.code, totp.WRONG_CODE)
            status = 401
    return render_template("auth/code.html", form=form), status


# -- turning it on and off -------------------------------------------------------
@bp.route("/account/2fa", methods=["GET", "POST"])
def two_factor() -> ResponseReturnValue:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    ctx = services()
    codes = take_once(CODES)
    if current_user.totp:
        return render_template(
            "dash/twofactor.html",
            on=True,
            codes=json.loads(codes) if codes else None,
            left=totp.recovery_left(ctx, current_user.id),
            form=DisableTwoFactorForm(formdata=None),
        )
    form = CodeForm()
    with write_turn():
        enrolling = totp.begin(
            ctx, current_user.email, current_app.config.get("SITE_NAME", "kvmvps")
        )
    status = 200
    if request.method == "POST":
        status = 400
        if form.validate_on_submit():
            verdict = count_attempt(
                "user.2fa_on", current_user.email, (f"code:{current_user.id}", "CODE_LIMIT")
            )
            try:
                with write_turn():
                    made = totp.confirm(
                        ctx, current_user.email, form.code.data or "", actor=current_user.actor
                    )
            except KvmvpsError as exc:
                add_error(form.code, str(exc))
                status = status_for(exc)
            else:
                if verdict is not None:
                    logins.refund(ctx, verdict)
                show_once(CODES, json.dumps(made))
                flash("The second factor is on. Keep the recovery codes somewhere safe.", "ok")
                return redirect(url_for("security.two_factor"))
    return render_template("dash/twofactor.html", on=False, enrolling=enrolling, form=form), status


@bp.post("/account/2fa/off")
def two_factor_off() -> ResponseReturnValue:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    form = DisableTwoFactorForm()
    status = 400
    if form.validate_on_submit():
        count_attempt("user.2fa_off", current_user.email, (f"code:{current_user.id}", "CODE_LIMIT"))
        try:
            with write_turn():
                totp.disable(
                    services(),
                    current_user.email,
                    form.password.data or "",
                    form.code.data or "",
                    actor=current_user.actor,
                )
        except KvmvpsError as exc:
            add_error(form.password if "password" in str(exc) else form.code, str(exc))
            status = status_for(exc)
        else:
            flash("The second factor is off.", "ok")
            return redirect(url_for("security.two_factor"))
    left = totp.recovery_left(services(), current_user.id)
    return render_template("dash/twofactor.html", on=True, codes=None, left=left, form=form), status


@bp.before_app_request
def _operators_need_a_second_factor() -> ResponseReturnValue | None:
    """With KVMVPS_REQUIRE_2FA_ADMINS=1, the admin area opens only to operators with 2FA."""
    endpoint = request.endpoint or ""
    if not endpoint.startswith("admin.") or not services().settings.require_2fa_admins:
        return None
    if current_user.is_authenticated and current_user.is_admin and not current_user.totp:
        flash("Operators must turn on a second factor before using the admin area.", "error")
        return redirect(url_for("security.two_factor"))
    return None


# -- a forgotten password -----------------------------------------------------------
@bp.route("/password/forgot", methods=["GET", "POST"])
def forgot() -> ResponseReturnValue:
    form = ForgotForm()
    ctx = services()
    if request.method == "POST":
        email = (request.form.get("email") or "").strip().lower()[:254]
        count_attempt(
            "user.reset_request",
            email,
            (f"reset:{client_address()}", "RESET_LIMIT"),
            (f"reset-email:{email}", "RESET_LIMIT"),
        )
        if form.validate_on_submit():
            try:
                with write_turn():
                    recovery.request_reset(
                        ctx,
                        form.email.data or "",
                        url_for("security.reset", secret="", _external=True),
                        actor="web:" + client_address(),
                    )
            except KvmvpsError as exc:
                add_error(form.email, str(exc))
                return render_template("auth/forgot.html", form=form, sent=False), status_for(exc)
            return render_template("auth/forgot.html", form=form, sent=True, answer=RESET_ANSWER)
        return render_template("auth/forgot.html", form=form, sent=False), 400
    return render_template("auth/forgot.html", form=form, sent=False)


@bp.route("/password/reset/", defaults={"secret": ""}, methods=["GET", "POST"])
@bp.route("/password/reset/<secret>", methods=["GET", "POST"])
def reset(secret: str) -> ResponseReturnValue:
    form = ResetForm()
    ctx = services()
    if request.method == "POST":
        count_attempt("user.reset", "", (f"reset-use:{client_address()}", "LOGIN_ADDRESS_LIMIT"))
        if form.validate_on_submit():
            try:
                with write_turn():
                    recovery.reset_password(
                        ctx, secret, form.password.data or "", actor="web:" + client_address()
                    )
            except KvmvpsError as exc:
                add_error(form.password, str(exc))
                return render_template("auth/reset.html", form=form, works=True), status_for(exc)
            flash("Your password is changed; log in with it.", "ok")
            return redirect(url_for("auth.login"))
        return render_template("auth/reset.html", form=form, works=True), 400
    works = recovery.link_works(ctx, secret)
    return render_template("auth/reset.html", form=form, works=works), 200 if works else 400
