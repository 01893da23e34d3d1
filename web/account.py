"""The customer's account: API tokens (each shown once, when it is made)."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from kvmvps.errors import KvmvpsError
from kvmvps.services import tokens
from web.common import services, write_turn
from web.extensions import login_manager
from web.forms import ActionForm, TokenForm

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
    listed = [t for t in tokens.list_tokens(services(), current_user.email) if not t["revoked"]]
    return render_template(
        "dash/account.html", form=form, tokens=listed, created=created, revoke=ActionForm()
    ), status


@bp.post("/account/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    with write_turn():
        tokens.revoke_token(services(), token_id, current_user.id, actor=current_user.actor)
    flash("The token is revoked; programs using it can no longer sign in.", "ok")
    return redirect(url_for("account.account"))
