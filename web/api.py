"""The REST API at /api/v1: bearer tokens, JSON in and out, ``{"error": message}``.

No session or cookie is read or set here, and no CSRF token is needed: a
caller proves who it is with ``Authorization: Bearer <token>`` each time.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, abort, g, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from kvmvps import validation
from kvmvps.errors import Conflict, InvalidInput, KvmvpsError
from kvmvps.services import (
    actions,
    backup_orders,
    backups,
    jobs,
    provisioning,
    saved_keys,
    snapshots,
    tokens,
    usage,
    views,
    vps_extra,
)
from kvmvps.services import vps as vps_service
from web import console
from web.common import WebUser, services, write_turn
from web.openapi import spec

bp = Blueprint("api", __name__)

PUBLIC = frozenset({"api.openapi"})
CUSTOMER_ACTIONS = (
    "start",
    "shutdown",
    "reboot",
    "destroy",
    "reinstall",
    "password_reset",
    "rescue",
    "unrescue",
)
OPERATOR_ACTIONS = ("suspend", "resume")
ORDER_FIELDS = ("plan", "image", "hostname", "ssh_keys", "saved_keys")
ACTION_FIELDS = ("action", "image", "timeout", "force")
MAX_KEYS = 20


class FieldErrors(Exception):
    """Bad fields in a request body: 400 (or 409 when every one is a clash)."""

    def __init__(self, fields: dict[str, str], status: int = 400) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields, self.status = fields, status


@bp.errorhandler(FieldErrors)
def _field_errors(exc: FieldErrors) -> ResponseReturnValue:
    return jsonify({"error": str(exc), "fields": exc.fields}), exc.status


@bp.before_request
def _authenticate() -> None:
    """Every call but the OpenAPI document needs a live token of an active user."""
    g.api_user = None
    if request.endpoint in PUBLIC:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        abort(401, "authentication required: send 'Authorization: Bearer <token>'")
    user = tokens.verify_token(services(), token.strip())
    if user is None:
        abort(401, "the token is invalid or revoked, or its user is disabled")
    g.api_user = WebUser.of(user)


def _user() -> WebUser:
    return g.api_user


def _scope() -> int | None:
    """Whose VPSes the caller may touch: their own; an operator's, any."""
    return None if _user().is_admin else _user().id


def _body(allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request body as a JSON object with only ``allowed`` keys."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        abort(400, "the request body must be a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        abort(400, "the request body is not valid JSON")
    if not isinstance(data, dict):
        abort(400, f"the request body must be a JSON object, not a JSON {_json_type(data)}")
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        raise FieldErrors({k[:64]: "unknown field" for k in unknown[:10]})
    return data


def _json_type(value: object) -> str:
    return {
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), "value")


def _string(data: dict[str, Any], key: str, errors: dict[str, str]) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors[key] = "must be a string"
        return ""
    if validation.has_control(value):
        errors[key] = "must not contain control characters"
        return ""
    return value


def _keys(data: dict[str, Any], errors: dict[str, str]) -> list[str]:
    value = data.get("ssh_keys")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        errors["ssh_keys"] = "must be a list of strings, one public key each"
        return []
    if len(value) > MAX_KEYS:
        errors["ssh_keys"] = f"at most {MAX_KEYS} SSH keys may be given"
        return []
    if any(validation.has_control(k) for k in value):
        errors["ssh_keys"] = "a key must be one line, without control characters"
        return []
    return value


def _saved_keys(data: dict[str, Any], errors: dict[str, str]) -> list[str]:
    """The public keys of the caller's saved keys named by id; another's id is not found."""
    value = data.get("saved_keys")
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        errors["saved_keys"] = "must be a list of saved key ids (integers)"
        return []
    try:
        return saved_keys.public_keys(services(), _user().id, value)
    except KvmvpsError as exc:
        errors["saved_keys"] = str(exc)
        return []


# -- servers -------------------------------------------------------------------
@bp.get("/servers")
def list_servers() -> ResponseReturnValue:
    everyone = request.args.get("all", "").lower() in ("1", "true", "yes")
    if everyone and not _user().is_admin:
        abort(403, "listing every server (?all=1) is for operators")
    owner = None if everyone else _user().id
    args = request.args
    page = vps_service.list_page(
        services(), owner_id=owner, limit=args.get("limit"), after=args.get("after")
    )
    return jsonify(page)


@bp.post("/servers")
def create_server() -> ResponseReturnValue:
    data = _body(ORDER_FIELDS)
    errors: dict[str, str] = {}
    plan, image = _string(data, "plan", errors), _string(data, "image", errors)
    hostname, keys = _string(data, "hostname", errors), _keys(data, errors)
    keys = keys + _saved_keys(data, errors)
    found = provisioning.check_order(services(), _user().id, plan, image, hostname, keys)
    errors.update({k: str(v) for k, v in found.items() if k not in errors})
    if errors:
        clash = (
            found
            and all(isinstance(e, Conflict) for e in found.values())
            and set(errors) == set(found)
        )
        raise FieldErrors(errors, 409 if clash else 400)
    req = provisioning.OrderRequest(
        plan=plan, image=image, hostname=hostname, owner_email=_user().email, ssh_keys=tuple(keys)
    )
    with write_turn():
        order = provisioning.record_order(services(), req, actor=_user().actor)
    shown = vps_service.show(services(), order.uuid)
    body = {**shown, "job": order.job, "password": order.password}
    return _accepted(body, url_for("api.get_server", id=order.uuid))


def _accepted(body: dict[str, Any], location: str) -> Response:
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = location
    return response


@bp.get("/servers/<id>")
def get_server(id: str) -> ResponseReturnValue:
    return jsonify(vps_service.show(services(), id, _scope()))


@bp.delete("/servers/<id>")
def delete_server(id: str) -> ResponseReturnValue:
    keep = request.args.get("backups", "keep")
    if keep not in ("keep", "drop"):
        raise FieldErrors({"backups": "must be keep or drop"})
    asked = _ask(id, "delete", {}, drop_backups=keep == "drop")
    return _accepted(
        {"id": asked.vps, "job": asked.job, "action": "delete"},
        url_for("api.get_job", job=asked.job),
    )


@bp.post("/servers/<id>/actions")
def server_action(id: str) -> ResponseReturnValue:
    data = _body(ACTION_FIELDS)
    action = data.get("action")
    if not isinstance(action, str) or action not in CUSTOMER_ACTIONS + OPERATOR_ACTIONS:
        raise FieldErrors({"action": f"must be one of {', '.join(CUSTOMER_ACTIONS)}"})
    asked = _ask(id, action, data)  # operators' actions are refused to customers there
    body = {"id": asked.vps, "job": asked.job, "action": action, "password": asked.password}
    return _accepted(body, url_for("api.get_job", job=asked.job))


def _ask(
    ref: str, action: str, data: dict[str, Any], drop_backups: bool = False
) -> actions.Requested:
    errors: dict[str, str] = {}
    image = _string(data, "image", errors) or None
    timeout, force = data.get("timeout", 60), data.get("force", False)
    try:
        cap = actions.OPERATOR_TIMEOUT_MAX
        if not _user().is_admin:
            cap = services().settings.customer_shutdown_timeout_max
        timeout = validation.seconds(timeout, "timeout", cap)
    except InvalidInput as exc:  # a huge number too: never a float overflow
        errors["timeout"] = str(exc)
    if not isinstance(force, bool):
        errors["force"] = "must be true or false"
    if errors:
        raise FieldErrors(errors)
    with write_turn():
        return actions.request(
            services(),
            ref,
            action,
            actor=_user().actor,
            owner_id=_scope(),
            image=image,
            timeout=timeout,
            force=force,
            drop_backups=drop_backups,
        )


@bp.post("/servers/<id>/resize")
def resize_server(id: str) -> ResponseReturnValue:
    data = _body(("plan",))
    errors: dict[str, str] = {}
    plan = _string(data, "plan", errors)
    if not errors and not plan:
        errors["plan"] = "required: a plan of the shop (GET /plans)"
    if errors:
        raise FieldErrors(errors)
    with write_turn():
        asked = vps_extra.request_resize(
            services(), id, plan, actor=_user().actor, owner_id=_scope()
        )
    body = {"id": asked.vps, "job": asked.job, "action": "resize", "plan": asked.plan}
    return _accepted({**body, "note": asked.note}, url_for("api.get_job", job=asked.job))


@bp.get("/servers/<id>/metrics")
def server_metrics(id: str) -> ResponseReturnValue:
    args = request.args
    series, transfer = usage.vps_series(
        services(), id, _scope(), args.get("period"), args.get("step")
    )
    return jsonify({**usage.series_dict(series), "transfer": usage.transfer_dict(transfer)})


# -- backups -------------------------------------------------------------------
@bp.get("/servers/<id>/backups")
def list_backups(id: str) -> ResponseReturnValue:
    return jsonify({"backups": backups.list_backups(services(), id, _scope())})


@bp.post("/servers/<id>/backups")
def create_backup(id: str) -> ResponseReturnValue:
    with write_turn():
        asked = backups.create(services(), id, actor=_user().actor, owner_id=_scope())
    body = {"id": asked.backup, "server": asked.vps, "job": asked.job}
    return _accepted(body, url_for("api.get_job", job=asked.job))


@bp.post("/servers/<id>/backups/<backup>/restore")
def restore_backup(id: str, backup: str) -> ResponseReturnValue:
    with write_turn():
        asked = backups.restore(services(), id, backup, actor=_user().actor, owner_id=_scope())
    body = {"id": asked.backup, "server": asked.vps, "job": asked.job}
    return _accepted(body, url_for("api.get_job", job=asked.job))


@bp.post("/servers/<id>/backups/<backup>/new-server")
def restore_backup_as_new(id: str, backup: str) -> ResponseReturnValue:
    """A new server from a backup (``id`` may be a deleted server's whose backups were kept)."""
    data = _body(("hostname", "plan", "ssh_keys"))
    errors: dict[str, str] = {}
    hostname, plan = _string(data, "hostname", errors), _string(data, "plan", errors)
    keys = _keys(data, errors) if "ssh_keys" in data else None
    if not hostname and "hostname" not in errors:
        errors["hostname"] = "the new server's hostname is required"
    if errors:
        raise FieldErrors(errors)
    with write_turn():
        order = backup_orders.restore_as_new(
            services(),
            id,
            backup,
            hostname,
            plan=plan or None,
            ssh_keys=keys,
            actor=_user().actor,
            owner_id=_scope(),
        )
    body = {**vps_service.show(services(), order.uuid), "job": order.job}
    return _accepted({**body, "password": order.password}, url_for("api.get_server", id=order.uuid))


@bp.delete("/servers/<id>/backups/<backup>")
def delete_backup(id: str, backup: str) -> ResponseReturnValue:
    with write_turn():
        gone = backups.delete(services(), id, backup, actor=_user().actor, owner_id=_scope())
    return jsonify(gone)


# -- snapshots -----------------------------------------------------------------
@bp.get("/servers/<id>/snapshots")
def list_snapshots(id: str) -> ResponseReturnValue:
    ctx = services()
    return jsonify(
        {
            "snapshots": snapshots.list_snapshots(ctx, id, _scope()),
            "limit": snapshots.plan_limit(ctx, id, _scope()),
        }
    )


@bp.post("/servers/<id>/snapshots")
def create_snapshot(id: str) -> ResponseReturnValue:
    data = _body(("label",)) if request.get_data(cache=True).strip() else {}
    errors: dict[str, str] = {}
    label = _string(data, "label", errors)
    if errors:
        raise FieldErrors(errors)
    with write_turn():
        asked = snapshots.create(services(), id, label, actor=_user().actor, owner_id=_scope())
    return _snapshot_accepted(asked)


@bp.post("/servers/<id>/snapshots/<snapshot>/revert")
def revert_snapshot(id: str, snapshot: str) -> ResponseReturnValue:
    with write_turn():
        asked = snapshots.revert(services(), id, snapshot, actor=_user().actor, owner_id=_scope())
    return _snapshot_accepted(asked)


@bp.delete("/servers/<id>/snapshots/<snapshot>")
def delete_snapshot(id: str, snapshot: str) -> ResponseReturnValue:
    with write_turn():
        asked = snapshots.delete(services(), id, snapshot, actor=_user().actor, owner_id=_scope())
    if not asked.job:  # a failed one: gone at once
        return jsonify({"id": asked.snapshot, "server": asked.vps, "job": None})
    return _snapshot_accepted(asked)


def _snapshot_accepted(asked: snapshots.Requested) -> Response:
    body = {"id": asked.snapshot, "server": asked.vps, "job": asked.job}
    return _accepted(body, url_for("api.get_job", job=asked.job))


@bp.post("/servers/<id>/console")
def server_console(id: str) -> ResponseReturnValue:
    """A one-use ticket and the WebSocket URL of the server's serial or graphical console."""
    return jsonify(console.ticket_for(_user(), id, console.requested_kind()))


# -- catalogue and jobs ------------------------------------------------------------
@bp.get("/plans")
def plans() -> ResponseReturnValue:
    return jsonify({"plans": views.plan_views(services())})


@bp.get("/images")
def images() -> ResponseReturnValue:
    return jsonify({"images": views.catalogue_images(services())})


@bp.get("/jobs/<job>")
def get_job(job: str) -> ResponseReturnValue:
    return jsonify(jobs.get_job(services(), job, _scope(), _user().actor))


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(spec())
