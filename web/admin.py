"""Operators' pages: the home, every VPS, users, plans and images, hosts, jobs, the audit log.

Views read through :mod:`kvmvps.services.admin_views` and act through the
service functions (which record the audit entries); they hold no logic of
their own. A refused action is shown again with its message and a 4xx.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import (
    Blueprint,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from kvmvps.errors import InvalidInput, KvmvpsError, NotFound
from kvmvps.models import JobState, VpsState
from kvmvps.services import (
    actions,
    admin_views,
    imagetest,
    inventory,
    jobs,
    migration,
    operators,
    quotas,
    suspension,
    usage,
    views,
    vps_extra,
)
from kvmvps.services import hosts as host_service
from kvmvps.services import users as user_service
from kvmvps.services.vps import VpsView
from web.charts import charts
from web.common import services, status_for, write_turn
from web.extensions import login_manager
from web.forms import ONE_LINE, ActionForm, ConfirmForm, QuotaForm, SuspendForm, add_error

bp = Blueprint("admin", __name__, url_prefix="/admin")


class EmailConfirmForm(FlaskForm):
    """Confirms deleting a user by typing their e-mail."""

    email = StringField(
        "Type the e-mail to confirm", validators=[DataRequired(), Length(max=254), ONE_LINE]
    )


JOB_STATES = JobState.ALL
ACTION_LABELS = {
    "start": "Start",
    "shutdown": "Shut down",
    "reboot": "Reboot",
    "destroy": "Power off",
    "reinstall": "Reinstall",
    "password_reset": "Reset password",
    "delete": "Delete",
    "force_delete": "Force delete",
}
PLAIN = ("start", "shutdown", "reboot", "destroy")
CONFIRM = ("reinstall", "password_reset", "delete", "force_delete")
SHUTDOWN_GRACE = 60.0


@bp.before_request
def _require_operator() -> ResponseReturnValue | None:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_admin:
        abort(403, "this page is for operators")
    return None


def _refused(exc: KvmvpsError, page: Callable[[], ResponseReturnValue]) -> ResponseReturnValue:
    """The page again with the service's message, and the error's status (404 stays a 404)."""
    if isinstance(exc, NotFound):
        raise exc
    flash(str(exc), "error")
    return make_response(page(), status_for(exc))


def _page() -> int:
    return admin_views.page_number(request.args.get("page"))


def _arg(name: str, what: str) -> str | None:
    return admin_views.text_filter(request.args.get(name), what)


# -- home --------------------------------------------------------------------------
@bp.get("")
@bp.get("/")
def home() -> ResponseReturnValue:
    return render_template("admin/home.html", home=admin_views.home(services()))


# -- servers -----------------------------------------------------------------------
@bp.get("/servers")
def servers() -> ResponseReturnValue:
    ctx = services()
    state = request.args.get("state") or None
    page = admin_views.vps_page(
        ctx, _page(), search=_arg("q", "search"), state=state, host=_arg("host", "host")
    )
    busy = jobs.active_jobs(ctx, [r["id"] for r in page.items])
    return render_template(
        "admin/servers.html",
        page=page,
        servers=page.items,
        jobs=busy,
        states=VpsState.ALL,
        form=ActionForm(),
        hosts=host_service.list_hosts(ctx),
    )


@bp.get("/servers/<id>")
def server(id: str) -> ResponseReturnValue:
    detail = admin_views.vps_detail(services(), id)
    return render_template(
        "admin/server.html",
        detail=detail,
        vps=detail["vps"],
        form=ActionForm(),
        labels=ACTION_LABELS,
        plain=PLAIN,
        confirm=CONFIRM,
        plans=[p["name"] for p in views.plan_views(services(), admin=True)],
        other_hosts=[
            h.name
            for h in inventory.list_hosts(services())
            if h.enabled and not h.maintenance and h.name != detail["vps"]["host"]
        ],
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
        return redirect(url_for("admin.server", id=id))
    flash(f"{vps['hostname']} ({vps['owner']}) is {action}ed.", "ok")
    return redirect(url_for("admin.server", id=vps["id"]))


@bp.post("/servers/<id>/actions/<any(start, shutdown, reboot, destroy):action>")
def power(id: str, action: str) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    vps = admin_views.vps_detail(services(), id)["vps"]
    return _request(vps, action, None)


@bp.post("/servers/<id>/resize")
def resize(id: str) -> ResponseReturnValue:
    """Move the VPS to another plan (limits and the disk live; vCPUs and memory at next start)."""
    ActionForm()  # the CSRF token was checked before the view
    ctx = services()
    vps = admin_views.vps_detail(ctx, id)["vps"]
    plan = (request.form.get("plan") or "").strip()
    try:
        with write_turn():
            shown = vps_extra.resize(ctx, vps["id"], plan, actor=current_user.actor)
    except KvmvpsError as exc:
        return _refused(exc, lambda: server(id))
    flash(f"{shown['hostname']} now has plan {shown['plan']}.", "ok")
    return redirect(url_for("admin.server", id=vps["id"]))


MOVE_MODES = {"auto": None, "live": True, "cold": False}


@bp.post("/servers/<id>/migrate")
def migrate(id: str) -> ResponseReturnValue:
    """Move the VPS to another host: live while it runs, cold when stopped (or as chosen)."""
    ActionForm()  # the CSRF token was checked before the view
    ctx = services()
    vps = admin_views.vps_detail(ctx, id)["vps"]  # an unknown server: 404
    mode = request.form.get("mode") or "auto"
    try:
        if mode not in MOVE_MODES:
            raise InvalidInput("the move is live, cold or auto")
        with write_turn():
            queued = migration.request(
                ctx,
                vps["id"],
                request.form.get("to") or "",
                live=MOVE_MODES[mode],
                actor=current_user.actor,
            )
    except KvmvpsError as exc:  # an unknown host too: the page again with the message
        flash(str(exc), "error")
        return make_response(server(id), status_for(exc))
    how = "live" if queued.live else "cold"
    flash(f"{vps['hostname']} is queued to move to {queued.target} ({how}).", "ok")
    return redirect(url_for("admin.server", id=vps["id"]))


@bp.route(
    "/servers/<id>/actions/<any(reinstall, password_reset, delete, force_delete):action>",
    methods=["GET", "POST"],
)
def confirm(id: str, action: str) -> ResponseReturnValue:
    """A destructive action: what it does, then the hostname typed to go ahead."""
    ctx = services()
    vps = admin_views.vps_detail(ctx, id)["vps"]
    form = ConfirmForm()
    images = inventory.list_images(ctx) if action == "reinstall" else []
    if request.method == "GET":
        form.image.data = vps["image"]
    elif form.validate_on_submit():
        if (form.hostname.data or "").strip().lower() == vps["hostname"]:
            return _request(vps, action, form.image.data if action == "reinstall" else None)
        add_error(form.hostname, f"type {vps['hostname']} to confirm")
    status = 400 if request.method == "POST" else 200
    page = render_template(
        "admin/confirm.html",
        vps=vps,
        action=action,
        form=form,
        images=images,
        label=ACTION_LABELS[action],
    )
    return page, status


@bp.get("/hosts/<name>/usage")
def host_usage(name: str) -> ResponseReturnValue:
    period = request.args.get("period", "hour")
    host, series = usage.host_series(services(), name, period)
    return render_template(
        "admin/host_usage.html", host=host, period=series.period, charts=charts(series)
    )


def _request(vps: VpsView, action: str, image: str | None) -> ResponseReturnValue:
    ctx = services()
    try:
        with write_turn():
            if action == "force_delete":
                job = operators.force_delete(ctx, vps["id"], actor=current_user.actor)
            else:
                job = actions.request(
                    ctx,
                    vps["id"],
                    action,
                    actor=current_user.actor,
                    image=image or None,
                    timeout=SHUTDOWN_GRACE,
                    force=True,
                ).job
    except KvmvpsError as exc:
        return _refused(exc, lambda: server(vps["id"]))
    flash(f"{ACTION_LABELS[action]} of {vps['hostname']} requested (job {job[:8]}).", "ok")
    return redirect(url_for("admin.server", id=vps["id"]))


# -- users ---------------------------------------------------------------------------
@bp.get("/users")
def users() -> ResponseReturnValue:
    page = admin_views.user_page(
        services(), _page(), search=_arg("q", "search"), role=request.args.get("role") or None
    )
    return render_template(
        "admin/users.html", page=page, users=page.items, form=ActionForm(), quota=QuotaForm()
    )


def _user_or_404(user_id: int) -> str:
    user = user_service.user_by_id(services(), user_id)
    if user is None:
        abort(404)
    return user.email


@bp.post("/users/<int:user_id>/quota")
def user_quota(user_id: int) -> ResponseReturnValue:
    """Give a customer limits of their own; an empty field means the default."""
    form = QuotaForm()  # the CSRF token was checked before the view
    email = _user_or_404(user_id)
    try:
        changes: dict[str, int | str | None] = {
            key: getattr(form, key).data or "" for key in quotas.RESOURCES
        }
        with write_turn():
            quotas.set_quota(services(), email, changes, current_user.actor)
    except KvmvpsError as exc:
        flash(str(exc), "error")
    else:
        flash(f"The limits of {email} are saved.", "ok")
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>/<any(disable, enable):change>")
def user_active(user_id: int, change: str) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    email = _user_or_404(user_id)
    try:
        with write_turn():
            user_service.set_active(
                services(), user_id, change == "enable", current_user.id, actor=current_user.actor
            )
    except KvmvpsError as exc:
        flash(str(exc), "error")
    else:
        flash(f"{email} is {change}d.", "ok")
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>/<any(promote, demote):change>")
def user_admin(user_id: int, change: str) -> ResponseReturnValue:
    """Make a user an operator, or take the right away (never one's own)."""
    ActionForm()  # the CSRF token was checked before the view
    try:
        with write_turn():
            user = operators.set_admin(
                services(), user_id, change == "promote", current_user.id, actor=current_user.actor
            )
    except KvmvpsError as exc:
        return _refused(exc, users)
    role = "an operator" if change == "promote" else "a customer"
    flash(f"{user.email} is now {role}.", "ok")
    return redirect(url_for("admin.users"))


@bp.route("/users/<int:user_id>/delete", methods=["GET", "POST"])
def user_delete(user_id: int) -> ResponseReturnValue:
    """Delete a user with their VPSes, once their e-mail is typed."""
    email = _user_or_404(user_id)
    form = EmailConfirmForm()
    if request.method == "POST" and form.validate_on_submit():
        if (form.email.data or "").strip().lower() == email:
            return _delete_user(user_id)
        add_error(form.email, f"type {email} to confirm")
    count = operators.vps_count(services(), user_id)
    page = render_template("admin/user_delete.html", email=email, form=form, count=count)
    return page, 400 if request.method == "POST" else 200


def _delete_user(user_id: int) -> ResponseReturnValue:
    try:
        with write_turn():
            done = operators.delete_user(
                services(), user_id, current_user.id, actor=current_user.actor
            )
    except KvmvpsError as exc:
        return _refused(exc, users)
    if done.removed:
        flash(f"{done.email} is deleted.", "ok")
    else:
        flash(
            f"{done.email} is disabled and {len(done.vps_jobs)} server(s) are being deleted; "
            "delete the user again once they are gone.",
            "ok",
        )
    return redirect(url_for("admin.users"))


# -- plans and images ------------------------------------------------------------------
@bp.get("/plans")
def plans() -> ResponseReturnValue:
    ctx = services()
    return render_template(
        "admin/plans.html",
        plans=views.plan_views(ctx, admin=True),
        images=[views.image_view(i) for i in inventory.list_images(ctx)],
        tests=imagetest.latest(ctx),
        failing=set(imagetest.failing_images(ctx)),
        form=ActionForm(),
    )


@bp.post("/plans")
def plan_add() -> ResponseReturnValue:
    """A new plan: name, size and price (limits and networks: ``kvmvps-admin plan add``)."""
    ActionForm()  # the CSRF token was checked before the view
    f = request.form
    try:
        vcpus, memory_mib, disk_gib = (
            _whole(f.get(k), k.replace("_", " ")) for k in ("vcpus", "memory_mib", "disk_gib")
        )
        cents = operators.price_cents(f.get("price") or "0")
        with write_turn():
            plan = inventory.add_plan(
                services(),
                (f.get("name") or "")[:100],
                vcpus,
                memory_mib,
                disk_gib,
                price_cents=cents,
                actor=current_user.actor,
            )
    except KvmvpsError as exc:
        return _refused(exc, plans)
    flash(f"Plan {plan.name} is added.", "ok")
    return redirect(url_for("admin.plans"))


def _whole(text: str | None, what: str) -> int:
    value = (text or "").strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise InvalidInput(f"{what} must be a whole number, not {value[:20]!r}")
    return int(value)


@bp.post("/plans/<name>/<any(hide, show):change>")
def plan_shelf(name: str, change: str) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    with write_turn():
        operators.set_plan_hidden(services(), name, change == "hide", actor=current_user.actor)
    flash(f"Plan {name} is {'hidden from' if change == 'hide' else 'back in'} the shop.", "ok")
    return redirect(url_for("admin.plans"))


@bp.post("/plans/<name>/price")
def plan_price(name: str) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    try:
        cents = operators.price_cents(request.form.get("price") or "")
        with write_turn():
            operators.set_plan_price(services(), name, cents, actor=current_user.actor)
    except KvmvpsError as exc:
        return _refused(exc, plans)
    flash(f"The price of plan {name} is saved.", "ok")
    return redirect(url_for("admin.plans"))


@bp.post("/images/<name>/<any(hide, show):change>")
def image_shelf(name: str, change: str) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    with write_turn():
        operators.set_image_hidden(services(), name, change == "hide", actor=current_user.actor)
    flash(f"Image {name} is {'hidden from' if change == 'hide' else 'back in'} the shop.", "ok")
    return redirect(url_for("admin.plans"))


@bp.post("/images/<name>/test")
def image_test(name: str) -> ResponseReturnValue:
    """Queue a self-test of the image (a worker runs it; the result shows on this page)."""
    ActionForm()  # the CSRF token was checked before the view
    try:
        with write_turn():
            imagetest.request(services(), name[:64], actor=current_user.actor)
    except KvmvpsError as exc:
        return _refused(exc, plans)
    flash(f"A test of image {name} is queued; a worker runs it.", "ok")
    return redirect(url_for("admin.plans"))


# -- hosts, jobs, audit ----------------------------------------------------------------
@bp.get("/hosts")
def hosts() -> ResponseReturnValue:
    return render_template(
        "admin/hosts.html", hosts=host_service.host_capacities(services()), form=ActionForm()
    )


@bp.post("/hosts/<name>/maintenance/<any(on, off):state>")
def host_maintenance(name: str, state: str) -> ResponseReturnValue:
    ActionForm()  # the CSRF token was checked before the view
    with write_turn():
        host_service.set_maintenance(services(), name, state == "on", actor=current_user.actor)
    flash(f"Host {name}: maintenance {state}.", "ok")
    return redirect(url_for("admin.hosts"))


@bp.post("/hosts/<name>/evacuate")
def host_evacuate(name: str) -> ResponseReturnValue:
    """Move every VPS off the host (all or none are queued); the host goes into maintenance."""
    ActionForm()  # the CSRF token was checked before the view
    try:
        with write_turn():
            queued = migration.evacuate(services(), name, actor=current_user.actor)
    except KvmvpsError as exc:
        flash(str(exc), "error")
        return make_response(hosts(), status_for(exc))
    flash(
        f"Host {name}: {len(queued)} server(s) queued to move off it; it is in maintenance.", "ok"
    )
    return redirect(url_for("admin.hosts"))


@bp.get("/jobs")
def jobs_page() -> ResponseReturnValue:
    ctx = services()
    state, kind = request.args.get("state") or None, request.args.get("kind") or None
    user, host = _arg("user", "user"), _arg("host", "host")
    page = admin_views.job_page(ctx, _page(), state=state, kind=kind, user=user, host=host)
    return render_template(
        "admin/jobs.html",
        page=page,
        jobs=page.items,
        state=state,
        states=JOB_STATES,
        kinds=jobs.KINDS,
        filters={"state": state, "kind": kind, "user": user, "host": host},
        hosts=host_service.list_hosts(ctx),
    )


@bp.get("/audit")
def audit_log() -> ResponseReturnValue:
    page = admin_views.audit_page(services(), _page())
    return render_template("admin/audit.html", page=page, entries=page.items)
