"""The customer's servers: ordering, build progress, credentials, actions.

Everything here reads the database or records a job; the worker does the
work. A VPS of someone else is answered with 404, exactly like one that
does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user

from kvmvps.errors import Conflict, KvmvpsError
from kvmvps.models import JobState, VpsState
from kvmvps.services import (
    actions,
    backup_orders,
    backups,
    jobs,
    provisioning,
    quotas,
    reveals,
    saved_keys,
    snapshots,
    usage,
    views,
    vps_extra,
)
from kvmvps.services import vps as vps_service
from kvmvps.services.jobs import BUILD_KINDS, JobView
from kvmvps.services.views import PlanView, PublicImageView
from kvmvps.services.vps import VpsView
from web.charts import charts
from web.common import services, status_for, write_turn
from web.extensions import login_manager
from web.forms import ActionForm, ConfirmForm, NewFromBackupForm, OrderForm, add_error, attach

bp = Blueprint("dashboard", __name__)

CUSTOMER_ACTIONS = (
    "start",
    "shutdown",
    "reboot",
    "reinstall",
    "password_reset",
    "rescue",
    "unrescue",
    "delete",
)
CONFIRM = ("reinstall", "password_reset", "rescue", "delete")
ACTION_LABELS = {
    "rescue": "Rescue mode",
    "unrescue": "Leave rescue mode",
    "start": "Start",
    "shutdown": "Shut down",
    "reboot": "Reboot",
    "reinstall": "Reinstall",
    "password_reset": "Reset password",
    "delete": "Delete",
    "resize": "Change plan",
}
STEP_LABELS = {
    "clone": "Creating the disk",
    "seed": "Preparing first-boot settings",
    "render": "Writing the machine definition",
    "dhcp": "Reserving the IP address",
    "forwards": "Opening the SSH port",
    "define": "Registering the machine",
    "start": "Powering on",
    "dhcp-ready": "Connecting the network",
    "filter": "Securing the network",
    "host-key": "Reading the SSH host key",
    "credentials": "Setting up your login",
}
STEPS = [
    (step.name, STEP_LABELS.get(step.name, step.name.replace("-", " ").capitalize()))
    for step in provisioning.STEPS
]
SHUTDOWN_GRACE = 60.0


@bp.before_request
def _require_login() -> ResponseReturnValue | None:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    return None


def _own(ref: str) -> VpsView:
    return vps_service.show(services(), ref, current_user.id)


def _order_choices(form: OrderForm) -> tuple[list[PlanView], list[PublicImageView]]:
    ctx = services()
    plans, images = views.plan_views(ctx), views.catalogue_images(ctx)
    form.plan.choices = [(p["name"], p["name"]) for p in plans]
    form.image.choices = [(i["name"], i["name"]) for i in images]
    form.saved_keys.choices = [
        (str(k["id"]), k["name"] or k["fingerprint"])
        for k in saved_keys.list_keys(ctx, current_user.id)
    ]
    return plans, images


def _order_keys(form: OrderForm) -> list[str]:
    """The keys pasted and the saved keys ticked (only the customer's own; 404 otherwise)."""
    pasted = (form.ssh_keys.data or "").splitlines()
    return pasted + saved_keys.public_keys(services(), current_user.id, form.saved_keys.data or [])


# -- listing -------------------------------------------------------------------
@bp.get("/servers")
def servers() -> ResponseReturnValue:
    ctx = services()
    rows = vps_service.list_vps(ctx, owner_id=current_user.id)
    busy = jobs.active_jobs(ctx, [r["id"] for r in rows])
    quota = quotas.quota_view_by_id(ctx, current_user.id)
    return render_template(
        "dash/servers.html",
        servers=rows,
        jobs=busy,
        form=ActionForm(),
        quota=quota,
        waiting=reveals.waiting_for(ctx, current_user.id),
    )


@bp.get("/servers/state.json")
def servers_state() -> ResponseReturnValue:
    """What the dashboard polls: each VPS's state and its running job, from the database."""
    ctx = services()
    rows = vps_service.list_vps(ctx, owner_id=current_user.id)
    busy = jobs.active_jobs(ctx, [r["id"] for r in rows])
    return jsonify(
        {
            "servers": [
                {
                    "id": r["id"],
                    "hostname": r["hostname"],
                    "state": r["state"],
                    "ip": r["ip"],
                    "ipv6": r["ipv6"],
                    "error": r["error"],
                    "suspended_reason": r["suspended_reason"],
                    "job": _job_brief(busy.get(r["id"])),
                }
                for r in rows
            ]
        }
    )


def _job_brief(job: JobView | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {key: job[key] for key in ("id", "kind", "state", "step", "progress")}


# -- ordering ------------------------------------------------------------------
@bp.route("/order", methods=["GET", "POST"])
def order() -> ResponseReturnValue:
    form = OrderForm()
    plans, images = _order_choices(form)
    quota = quotas.quota_view_by_id(services(), current_user.id)
    if request.method == "GET":
        form.plan.data = form.plan.data or request.args.get("plan") or None
        return render_template(
            "dash/order.html", form=form, plans=plans, images=images, quota=quota
        )
    status, problem = 400, None
    if form.validate_on_submit():
        try:
            keys = _order_keys(form)
        except KvmvpsError as exc:
            add_error(form.saved_keys, str(exc))
            keys = []
        errors = provisioning.check_order(
            services(),
            current_user.id,
            form.plan.data or "",
            form.image.data or "",
            form.hostname.data or "",
            keys,
        )
        attach(form, errors)
        if not errors and not form.saved_keys.errors:
            try:
                return _record(form, keys)
            except KvmvpsError as exc:
                status, problem = status_for(exc), str(exc)
    return render_template(
        "dash/order.html", form=form, plans=plans, images=images, problem=problem, quota=quota
    ), status


def _record(form: OrderForm, keys: list[str]) -> ResponseReturnValue:
    req = provisioning.OrderRequest(
        plan=form.plan.data,
        image=form.image.data,
        hostname=form.hostname.data or "",
        owner_email=current_user.email,
        ssh_keys=tuple(keys),
    )
    with write_turn():
        placed = provisioning.record_order(services(), req, actor=current_user.actor)
        reveals.hold(services(), placed.uuid, current_user.id, placed.password, placed.job)
    return redirect(url_for("dashboard.job", job=placed.job))


# -- one server ------------------------------------------------------------------
@bp.get("/servers/<id>")
def server(id: str) -> ResponseReturnValue:
    vps = _own(id)
    job = jobs.active_jobs(services(), [vps["id"]]).get(vps["id"])
    latest = jobs.latest_job(services(), vps["id"], current_user.id)
    rekeyed = bool(
        latest and latest["kind"] == "reinstall" and latest["state"] == JobState.SUCCEEDED
    )
    period = request.args.get("period", "hour")
    series, transfer = usage.vps_series(services(), vps["id"], current_user.id, period)
    return render_template(
        "dash/server.html",
        vps=vps,
        period=series.period,
        charts=charts(series),
        transfer=transfer,
        job=job,
        rekeyed=rekeyed,
        waiting=reveals.waiting(services(), vps["id"], current_user.id),
        form=ActionForm(),
        labels=ACTION_LABELS,
        actions=CUSTOMER_ACTIONS,
        confirm=CONFIRM,
        backups=backups.list_backups(services(), vps["id"], current_user.id),
        backup_slots=backups.plan_slots(services(), vps["id"], current_user.id),
        snapshots=snapshots.list_snapshots(services(), vps["id"], current_user.id),
        snapshot_limit=snapshots.plan_limit(services(), vps["id"], current_user.id),
        upgrades=_upgrades,
    )


def _upgrades(vps: VpsView) -> list[PlanView]:
    """The shop's other plans this server may move to (its disk cannot shrink)."""
    return [
        p
        for p in views.plan_views(services())
        if p["name"] != vps["plan"] and p["disk_gib"] >= vps["disk_gib"]
    ]


@bp.post("/servers/<id>/resize")
def resize(id: str) -> ResponseReturnValue:
    """Queue a move to another plan of the shop (quotas checked; the worker does it)."""
    vps = _own(id)
    ActionForm()  # the CSRF token was checked before the view
    plan = request.form.get("plan") or ""
    try:
        with write_turn():
            asked = vps_extra.request_resize(
                services(), vps["id"], plan, actor=current_user.actor, owner_id=current_user.id
            )
    except KvmvpsError as exc:
        flash(str(exc), "error")
        return make_response(server(vps["id"]), status_for(exc))
    flash(f"{vps['hostname']} moves to plan {asked.plan}: {asked.note}.", "ok")
    return redirect(url_for("dashboard.job", job=asked.job))


# -- backups -----------------------------------------------------------------------
@bp.post("/servers/<id>/backups")
def backup_create(id: str) -> ResponseReturnValue:
    return _backup_call(id, "backup", lambda ref, **who: backups.create(services(), ref, **who))


@bp.post("/servers/<id>/backups/<backup>/restore")
def backup_restore(id: str, backup: str) -> ResponseReturnValue:
    return _backup_call(
        id, "restore", lambda ref, **who: backups.restore(services(), ref, backup, **who)
    )


@bp.post("/servers/<id>/backups/<backup>/delete")
def backup_delete(id: str, backup: str) -> ResponseReturnValue:
    return _backup_call(
        id, "delete", lambda ref, **who: backups.delete(services(), ref, backup, **who)
    )


@bp.post("/servers/<id>/backups/<backup>/new-server")
def backup_new_server(id: str, backup: str) -> ResponseReturnValue:
    """A new server from one of this server's backups; its password is revealed once."""
    vps = _own(id)
    form = NewFromBackupForm()
    if not form.validate_on_submit():
        flash("; ".join(e for errs in form.errors.values() for e in errs), "error")
        return redirect(url_for("dashboard.server", id=vps["id"]) + "#backups")
    try:
        with write_turn():
            placed = backup_orders.restore_as_new(
                services(),
                vps["id"],
                backup,
                form.hostname.data or "",
                actor=current_user.actor,
                owner_id=current_user.id,
            )
    except KvmvpsError as exc:
        flash(str(exc), "error")
        return make_response(server(vps["id"]), status_for(exc))
    with write_turn():
        reveals.hold(services(), placed.uuid, current_user.id, placed.password, placed.job)
    return redirect(url_for("dashboard.job", job=placed.job))


def _backup_call(id: str, what: str, call: Callable[..., object]) -> ResponseReturnValue:
    """Run a backup request of the signed-in customer; back to the server page with its outcome."""
    vps = _own(id)
    if not ActionForm().validate_on_submit():
        abort(400, "the form is stale; reload the page")
    try:
        with write_turn():
            done = call(vps["id"], actor=current_user.actor, owner_id=current_user.id)
    except Conflict as exc:
        flash(str(exc), "error")
        return make_response(server(vps["id"]), 409)
    except KvmvpsError as exc:
        flash(str(exc), "error")
        return redirect(url_for("dashboard.server", id=vps["id"]))
    if isinstance(done, backups.Requested) and what == "restore":
        return redirect(url_for("dashboard.job", job=done.job))
    words = {"backup": "A backup was requested", "delete": "The backup was deleted"}
    flash(f"{words.get(what, what)} ({vps['hostname']}).", "ok")
    return redirect(url_for("dashboard.server", id=vps["id"]) + "#backups")


# -- snapshots -----------------------------------------------------------------------
@bp.post("/servers/<id>/snapshots")
def snapshot_create(id: str) -> ResponseReturnValue:
    label = request.form.get("label", "")
    return _snapshot_call(
        id, "take", lambda ref, **who: snapshots.create(services(), ref, label, **who)
    )


@bp.post("/servers/<id>/snapshots/<snapshot>/revert")
def snapshot_revert(id: str, snapshot: str) -> ResponseReturnValue:
    return _snapshot_call(
        id, "revert", lambda ref, **who: snapshots.revert(services(), ref, snapshot, **who)
    )


@bp.post("/servers/<id>/snapshots/<snapshot>/delete")
def snapshot_delete(id: str, snapshot: str) -> ResponseReturnValue:
    return _snapshot_call(
        id, "delete", lambda ref, **who: snapshots.delete(services(), ref, snapshot, **who)
    )


SNAPSHOT_WORDS = {
    "take": "A snapshot was requested",
    "delete": "The snapshot is being deleted",
}


def _snapshot_call(
    id: str, what: str, call: Callable[..., snapshots.Requested]
) -> ResponseReturnValue:
    """Run a snapshot request of the signed-in customer; a revert shows its job's progress."""
    vps = _own(id)
    if not ActionForm().validate_on_submit():
        abort(400, "the form is stale; reload the page")
    try:
        with write_turn():
            done = call(vps["id"], actor=current_user.actor, owner_id=current_user.id)
    except KvmvpsError as exc:
        flash(str(exc), "error")
        return make_response(server(vps["id"]), status_for(exc))
    if what == "revert":
        return redirect(url_for("dashboard.job", job=done.job))
    flash(f"{SNAPSHOT_WORDS[what]} ({vps['hostname']}).", "ok")
    return redirect(url_for("dashboard.server", id=vps["id"]) + "#snapshots")


@bp.get("/servers/<id>/credentials")
def credentials(id: str) -> ResponseReturnValue:
    """Address, SSH details and host key; a new password exactly once."""
    ctx = services()
    vps = _own(id)
    job = jobs.active_jobs(ctx, [vps["id"]]).get(vps["id"])
    if job is not None and reveals.waiting(ctx, vps["id"], current_user.id):
        return redirect(url_for("dashboard.job", job=job["id"]))
    latest = jobs.latest_job(ctx, vps["id"], current_user.id)
    failed = latest if latest and latest["state"] == JobState.FAILED else None
    password = None
    if vps["state"] == VpsState.RUNNING and failed is None:
        with write_turn():
            password = reveals.take(ctx, vps["id"], current_user.id)
    elif vps["state"] == VpsState.ERROR or failed is not None:
        with write_turn():  # never show a password that was not set
            reveals.drop(ctx, vps["id"], current_user.id)
    images = views.catalogue_images(ctx)
    image: Mapping[str, object] = next((i for i in images if i["name"] == vps["image"]), {})
    return render_template(
        "dash/credentials.html",
        vps=vps,
        password=password,
        job=job,
        failed=failed,
        takes_password=image.get("credentials", True),
    )


@bp.route("/servers/<id>/actions/<action>", methods=["GET", "POST"])
def action(id: str, action: str) -> ResponseReturnValue:
    if action not in CUSTOMER_ACTIONS:
        abort(404)
    vps = _own(id)
    if action in CONFIRM:
        return _confirm(vps, action)
    if request.method == "GET":
        abort(404)
    return _request(vps, action, None)


def _confirm(vps: VpsView, action: str) -> ResponseReturnValue:
    """A destructive action: show what it does; go ahead once the hostname is typed."""
    form = ConfirmForm()
    images = views.catalogue_images(services()) if action == "reinstall" else []
    form.image.choices = [(i["name"], i["name"]) for i in images]
    if request.method == "GET":
        form.image.data = vps["image"]
    elif form.validate_on_submit():
        if (form.hostname.data or "").strip().lower() == vps["hostname"]:
            image = form.image.data if action == "reinstall" else None
            return _request(vps, action, image, action == "delete" and bool(form.drop_backups.data))
        add_error(form.hostname, f"type {vps['hostname']} to confirm")
    status = 400 if request.method == "POST" else 200
    return render_template(
        "dash/confirm.html",
        vps=vps,
        action=action,
        form=form,
        images=images,
        label=ACTION_LABELS[action],
    ), status


def _request(
    vps: VpsView, action: str, image: str | None, drop_backups: bool = False
) -> ResponseReturnValue:
    try:
        with write_turn():
            asked = actions.request(
                services(),
                vps["id"],
                action,
                actor=current_user.actor,
                owner_id=current_user.id,
                image=image or None,
                timeout=SHUTDOWN_GRACE,
                force=True,
                drop_backups=drop_backups,
            )
    except Conflict as exc:  # e.g. an action already pending: the page again, with why
        flash(str(exc), "error")
        return make_response(server(vps["id"]), 409)
    except KvmvpsError as exc:
        flash(str(exc), "error")
        return redirect(url_for("dashboard.server", id=vps["id"]))
    with write_turn():
        reveals.hold(services(), asked.vps, current_user.id, asked.password, asked.job)
    if action == "delete":
        flash(f"{vps['hostname']} is being deleted.", "ok")
        return redirect(url_for("dashboard.servers"))
    if action in CONFIRM:
        return redirect(url_for("dashboard.job", job=asked.job))
    flash(f"{ACTION_LABELS[action]} of {vps['hostname']} requested.", "ok")
    return redirect(url_for("dashboard.server", id=vps["id"]))


# -- jobs --------------------------------------------------------------------------
def _own_job(ref: str) -> JobView:
    return jobs.get_job(services(), ref, current_user.id, current_user.actor)


@bp.get("/jobs/<job>")
def job(job: str) -> ResponseReturnValue:
    """The progress page; it polls ``job_json`` until the job ends."""
    view = _own_job(job)
    try:
        vps = _own(view["vps"]) if view["vps"] else None
    except KvmvpsError:
        vps = None  # deleted since
    steps = STEPS if view["kind"] in BUILD_KINDS else []
    reveals = view["kind"] in (*BUILD_KINDS, "password_reset", "rescue")
    return render_template(
        "dash/progress.html",
        job=view,
        vps=vps,
        steps=steps,
        reveals=reveals,
        label=ACTION_LABELS.get(view["kind"], "Build"),
    )


@bp.get("/jobs/<job>/status.json")
def job_json(job: str) -> ResponseReturnValue:
    """The job view: state, step, progress, error."""
    return jsonify(_own_job(job))
