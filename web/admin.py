"""Operators' pages: every VPS, host capacity, jobs, users, the audit log."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from kvmvps.errors import KvmvpsError, NotFound
from kvmvps.models import JobState
from kvmvps.services import audit, jobs, quotas, suspension, web_support
from web.common import audited, services
from web.extensions import login_manager
from web.forms import ActionForm, QuotaForm, SuspendForm

bp = Blueprint("admin", __name__, url_prefix="/admin")

JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED)
PAGE = 200


@bp.before_request
def _require_operator() -> ResponseReturnValue | None:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_admin:
        abort(403, "this page is for operators")
    return None


@bp.get("/servers")
def servers() -> ResponseReturnValue:
    ctx = services()
    rows = web_support.list_vps_of(ctx, None)
    busy = web_support.active_jobs(ctx, [r["id"] for r in rows])
    return render_template(
        "admin/servers.html", servers=rows, jobs=busy, form=ActionForm(), suspend=SuspendForm()
    )


@bp.post("/servers/<id>/<any(suspend, unsuspend):action>")
def server_action(id: str, action: str) -> ResponseReturnValue:
    """An operator's suspension (with the reason the customer reads), or lifting it."""
    form = SuspendForm()  # the CSRF token was checked before the view
    ctx = services()
    try:
        with web_support.write_turn(ctx):
            if action == "suspend":
                vps = suspension.suspend(ctx, id, form.reason.data or "", current_user.actor)
            else:
                vps = suspension.unsuspend(ctx, id, current_user.actor)
    except NotFound:
        raise
    except KvmvpsError as exc:
        flash(str(exc), "error")
    else:
        flash(f"{vps['hostname']} ({vps['owner']}) is {action}ed.", "ok")
    return redirect(url_for("admin.servers"))


@bp.get("/hosts")
def hosts() -> ResponseReturnValue:
    return render_template("admin/hosts.html", hosts=web_support.host_capacities(services()))


@bp.get("/jobs")
def jobs_page() -> ResponseReturnValue:
    state = request.args.get("state") or None
    if state not in (None, *JOB_STATES):
        abort(400, f"unknown job state {state[:20]!r}")
    rows = jobs.list_jobs(services(), state=state, limit=PAGE)
    return render_template("admin/jobs.html", jobs=rows, state=state, states=JOB_STATES)


@bp.get("/users")
def users() -> ResponseReturnValue:
    ctx = services()
    rows = web_support.user_rows(ctx)
    limits = {u["id"]: quotas.quota_view(ctx, u["email"]) for u in rows}
    return render_template(
        "admin/users.html", users=rows, form=ActionForm(), quota=QuotaForm(), limits=limits
    )


@bp.post("/users/<int:user_id>/quota")
def user_quota(user_id: int) -> ResponseReturnValue:
    """Give a customer limits of their own; an empty field means the default."""
    form = QuotaForm()  # the CSRF token was checked before the view
    ctx = services()
    user = web_support.user_by_id(ctx, user_id)
    if user is None:
        abort(404)
    try:
        changes: dict[str, int | str | None] = {
            key: getattr(form, key).data or "" for key in quotas.RESOURCES
        }
        with web_support.write_turn(ctx):
            quotas.set_quota(ctx, user.email, changes, current_user.actor)
    except KvmvpsError as exc:
        flash(str(exc), "error")
    else:
        flash(f"The limits of {user.email} are saved.", "ok")
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>/<any(disable, enable):change>")
def user_active(user_id: int, change: str) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    user = web_support.user_by_id(services(), user_id)
    if user is None:
        abort(404)
    try:
        with audited(current_user.actor, f"user.{change}", user.email):
            web_support.set_user_active(services(), user_id, change == "enable", current_user.id)
    except KvmvpsError as exc:
        flash(str(exc), "error")
    else:
        flash(f"{user.email} is {change}d.", "ok")
    return redirect(url_for("admin.users"))


@bp.get("/audit")
def audit_log() -> ResponseReturnValue:
    entries = audit.list_entries(services(), limit=PAGE)
    return render_template("admin/audit.html", entries=entries)
