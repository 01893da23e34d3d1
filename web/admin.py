"""Operators' pages: every VPS, host capacity, jobs, users, the audit log."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from kvmvps.errors import KvmvpsError, NotFound
from kvmvps.models import JobState
from kvmvps.services import audit, jobs, quotas, suspension, usage
from kvmvps.services import hosts as host_service
from kvmvps.services import users as user_service
from kvmvps.services import vps as vps_service
from web.charts import charts
from web.common import services, write_turn
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
    rows = vps_service.list_vps(ctx)
    busy = jobs.active_jobs(ctx, [r["id"] for r in rows])
    return render_template(
        "admin/servers.html", servers=rows, jobs=busy, form=ActionForm(), suspend=SuspendForm()
    )


@bp.post("/servers/<id>/<any(suspend, unsuspend):action>")
def server_action(id: str, action: str) -> ResponseReturnValue:
    """An operator's suspension (with the reason the customer reads), or lifting it."""
    form = SuspendForm()  # the CSRF token was checked before the view
    ctx = services()
    try:
        with write_turn():
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
    return render_template("admin/hosts.html", hosts=host_service.host_capacities(services()))


@bp.get("/hosts/<name>/usage")
def host_usage(name: str) -> ResponseReturnValue:
    period = request.args.get("period", "hour")
    host, series = usage.host_series(services(), name, period)
    return render_template(
        "admin/host_usage.html", host=host, period=series.period, charts=charts(series)
    )


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
    rows = user_service.user_rows(ctx)
    limits = {u["id"]: quotas.quota_view(ctx, u["email"]) for u in rows}
    return render_template(
        "admin/users.html", users=rows, form=ActionForm(), quota=QuotaForm(), limits=limits
    )


@bp.post("/users/<int:user_id>/quota")
def user_quota(user_id: int) -> ResponseReturnValue:
    """Give a customer limits of their own; an empty field means the default."""
    form = QuotaForm()  # the CSRF token was checked before the view
    ctx = services()
    user = user_service.user_by_id(ctx, user_id)
    if user is None:
        abort(404)
    try:
        changes: dict[str, int | str | None] = {
            key: getattr(form, key).data or "" for key in quotas.RESOURCES
        }
        with write_turn():
            quotas.set_quota(ctx, user.email, changes, current_user.actor)
    except KvmvpsError as exc:
        flash(str(exc), "error")
    else:
        flash(f"The limits of {user.email} are saved.", "ok")
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>/<any(disable, enable):change>")
def user_active(user_id: int, change: str) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    user = user_service.user_by_id(services(), user_id)
    if user is None:
        abort(404)
    try:
        with write_turn():
            user_service.set_active(
                services(), user_id, change == "enable", current_user.id, actor=current_user.actor
            )
    except KvmvpsError as exc:
        flash(str(exc), "error")
    else:
        flash(f"{user.email} is {change}d.", "ok")
    return redirect(url_for("admin.users"))


@bp.get("/audit")
def audit_log() -> ResponseReturnValue:
    entries = audit.list_entries(services(), limit=PAGE)
    return render_template("admin/audit.html", entries=entries)
