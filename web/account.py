"""The customer's account: password, e-mail, saved SSH keys and API tokens.

A secret made here (a token, recovery codes) is shown once on the page the
form redirects to (POST, redirect, GET): reloading that page makes nothing
new and shows the secret no more.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from kvmvps.errors import KvmvpsError
from kvmvps.services import logins, mail, recovery, saved_keys, tokens, users
from web.auth import count_attempt, start_session
from web.common import WebUser, services, show_once, status_for, take_once, write_turn
from web.extensions import login_manager
from web.forms import ActionForm, EmailForm, KeyForm, PasswordForm, TokenForm, add_error

bp = Blueprint("account", __name__)
TOKEN = "token"  # noqa: S105 - a name, not a secret


@bp.before_request
def _require_login() -> ResponseReturnValue | None:
    if request.endpoint == "account.confirm_email":
        return None  # the link from the mail works in any browser
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    return None


@bp.get("/account")
def account() -> ResponseReturnValue:
    return _page()


@bp.post("/account")
def create_token() -> ResponseReturnValue:
    form = TokenForm()
    if not form.validate_on_submit():
        return _page(token_form=form), 400
    try:
        with write_turn():
            created, _view = tokens.create_token(
                services(),
                current_user.email,
                (form.name.data or "").strip(),
                actor=current_user.actor,
            )
    except KvmvpsError as exc:
        add_error(form.name, str(exc))
        return _page(token_form=form), 400
    show_once(TOKEN, created)
    return redirect(url_for("account.account"))


def _page(
    token_form: TokenForm | None = None,
    password_form: PasswordForm | None = None,
    email_form: EmailForm | None = None,
    key_form: KeyForm | None = None,
) -> str:
    ctx = services()
    listed = [t for t in tokens.list_tokens(ctx, current_user.email) if not t["revoked"]]
    return render_template(
        "dash/account.html",
        form=token_form or TokenForm(formdata=None),
        password_form=password_form or PasswordForm(formdata=None),
        email_form=email_form or EmailForm(formdata=None),
        key_form=key_form or KeyForm(formdata=None),
        tokens=listed,
        keys=saved_keys.list_keys(ctx, current_user.id),
        created=take_once(TOKEN),
        mails=mail.configured(ctx),
        revoke=ActionForm(),
    )


@bp.post("/account/password")
def change_password() -> ResponseReturnValue:
    """A new password: every session of the user ends, this one starts afresh."""
    form = PasswordForm()
    if not form.validate_on_submit():
        return _page(password_form=form), 400
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
        add_error(target, str(exc))
        return _page(password_form=form), 400
    if verdict is not None:
        logins.refund(services(), verdict)
    start_session(WebUser.of(user))
    flash("Your password is changed; every other session of yours has ended.", "ok")
    return redirect(url_for("account.account"))


@bp.post("/account/email")
def change_email() -> ResponseReturnValue:
    """A new address: at once without mail; with mail, once the link sent there is opened."""
    form = EmailForm()
    if not form.validate_on_submit():
        return _page(email_form=form), 400
    count_attempt("user.email", current_user.email, (f"password:{current_user.id}", "LOGIN_LIMIT"))
    try:
        with write_turn():
            changed = recovery.change_email(
                services(),
                current_user.email,
                form.current.data or "",
                form.email.data or "",
                url_for("account.confirm_email", secret="", _external=True),
                actor=current_user.actor,
            )
    except KvmvpsError as exc:
        add_error(form.current if "password" in str(exc) else form.email, str(exc))
        return _page(email_form=form), status_for(exc)
    if changed:
        flash(f"Your e-mail address is now {changed}.", "ok")
    else:
        flash("We sent a link to the new address; your address changes when you open it.", "ok")
    return redirect(url_for("account.account"))


@bp.route("/account/email/confirm/", defaults={"secret": ""}, methods=["GET", "POST"])
@bp.route("/account/email/confirm/<secret>", methods=["GET", "POST"])
def confirm_email(secret: str) -> ResponseReturnValue:
    """The mailed link: a button (mail scanners fetch links; only a person presses it)."""
    form = ActionForm()
    works = recovery.link_works(services(), secret, recovery.EMAIL)
    if request.method == "POST" and form.validate_on_submit():
        try:
            with write_turn():
                user = recovery.confirm_email(services(), secret, actor="web:confirm-link")
        except KvmvpsError as exc:
            return render_template(
                "auth/confirm_email.html", form=form, works=False, error=str(exc)
            ), status_for(exc)
        flash(f"Your e-mail address is now {user.email}.", "ok")
        return redirect(
            url_for("account.account" if current_user.is_authenticated else "auth.login")
        )
    return render_template("auth/confirm_email.html", form=form, works=works), 200 if works else 400


@bp.post("/account/keys")
def add_key() -> ResponseReturnValue:
    form = KeyForm()
    if not form.validate_on_submit():
        return _page(key_form=form), 400
    try:
        with write_turn():
            saved = saved_keys.add_key(
                services(),
                current_user.id,
                form.public_key.data or "",
                form.name.data or "",
                actor=current_user.actor,
            )
    except KvmvpsError as exc:
        add_error(form.public_key, str(exc))
        return _page(key_form=form), status_for(exc)
    flash(f"Key {saved['name'] or saved['fingerprint']} is saved; pick it when you order.", "ok")
    return redirect(url_for("account.account"))


@bp.post("/account/keys/<int:key_id>/delete")
def delete_key(key_id: int) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    with write_turn():
        saved_keys.delete_key(services(), current_user.id, key_id, actor=current_user.actor)
    flash("The key is deleted; servers built with it keep it.", "ok")
    return redirect(url_for("account.account"))


@bp.post("/account/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    with write_turn():
        tokens.revoke_token(services(), token_id, current_user.id, actor=current_user.actor)
    flash("The token is revoked; programs using it can no longer sign in.", "ok")
    return redirect(url_for("account.account"))
