"""The customer's account: password, and API tokens (each shown once, when it is made)."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from kvmvps.errors import KvmvpsError
from kvmvps.services import logins, tokens, users
from web.auth import count_attempt, start_session
from web.common import WebUser, services, write_turn
from web.extensions import login_manager
from web.forms import ActionForm, PasswordForm, TokenForm

bp = Blueprint("account", __name__)


@bp.before_request
def _require_login() -> ResponseReturnValue | None:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    return None


@bp.route("/account", methods=["GET", "POST"])
def account() -> ResponseReturnValue:
    form = TokenForm()
    created, status = None, 200
    if form.validate_on_submit():
        name = (form.name.data or "").strip()
        try:
            with write_turn():
                created, _view = tokens.create_token(
                    services(), current_user.email, name, actor=current_user.actor
                )
        except KvmvpsError as exc:
            form.name.errors = [*form.name.errors, str(exc)]
            status = 400
        else:
            form.name.data = ""
    elif request.method == "POST":
        status = 400
    return _page(form, PasswordForm(formdata=None), created), status


def _page(form: TokenForm, password_form: PasswordForm, created: str | None = None) -> str:
    listed = [t for t in tokens.list_tokens(services(), current_user.email) if not t["revoked"]]
    return render_template(
        "dash/account.html",
        form=form,
        password_form=password_form,
        tokens=listed,
        created=created,
        revoke=ActionForm(),
    )


@bp.post("/account/password")
def change_password() -> ResponseReturnValue:
    """A new password: every session of the user ends, this one starts afresh."""
    form = PasswordForm()
    if not form.validate_on_submit():
        return _page(TokenForm(formdata=None), form), 400
    verdict = count_attempt(
        "user.password", current_user.email, (f"password:{current_user.id}", "LOGIN_LIMIT")
    )
    try:
        user = users.change_password(
            services(),
            current_user.email,
            form.current.data or "",
            form.password.data or "",
            current_user.actor,
        )
    except KvmvpsError as exc:
        target = form.current if "current" in str(exc) else form.password
        target.errors = [*target.errors, str(exc)]
        return _page(TokenForm(formdata=None), form), 400
    if verdict is not None:
        logins.refund(services(), verdict)
    start_session(WebUser.of(user))
    flash("Your password is changed; every other session of yours has ended.", "ok")
    return redirect(url_for("account.account"))


@bp.post("/account/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    with write_turn():
        tokens.revoke_token(services(), token_id, current_user.id, actor=current_user.actor)
    flash("The token is revoked; programs using it can no longer sign in.", "ok")
    return redirect(url_for("account.account"))
