"""Every route × {anonymous, customer A, customer B, operator}: the status each gets.

The table must list every (endpoint, method) of ``app.url_map``: a new route
that is not in it fails ``test_table_lists_every_route``. CSRF checks are on;
forms are sent with a valid token, so what is measured is authorization.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from kvmvps import backupstore
from kvmvps.models import (
    Backup,
    BackupState,
    Job,
    JobState,
    Plan,
    Snapshot,
    SnapshotState,
    Vps,
)
from kvmvps.services import backups, hosts, inventory, snapshots, tokens, users
from kvmvps.services.runner import run_inline
from tests.web.conftest import OP, PASSWORD, A, B, World, csrf_token, finish_job

ROLES = ("anon", "a", "b", "op")
EMAILS = {"anon": None, "a": A, "b": B, "op": OP}
LOGIN = "login"  # a redirect to the login page
COOKIE = "kvmvps_session"
_victims = itertools.count(1)


@dataclass
class Shared:
    """What the read-only cases look at: A's VPS and its order job."""

    vps: str
    job: str


Args = Callable[[World, Shared], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    expect: dict[str, int | str]
    args: Args = field(default=lambda w, s: {})
    form: Callable[[World], dict[str, str]] | None = None
    json: Callable[[World], dict[str, Any]] | None = None
    own_session: bool = False  # the call ends its user's sessions: log in afresh after it


def every(status: int) -> dict[str, int | str]:
    return dict.fromkeys(ROLES, status)


def site(a: int, b: int, op: int, anon: int | str = LOGIN) -> dict[str, int | str]:
    return {"anon": anon, "a": a, "b": b, "op": op}


def api(a: int, b: int, op: int) -> dict[str, int | str]:
    return {"anon": 401, "a": a, "b": b, "op": op}


def a_vps(w: World, s: Shared) -> dict[str, Any]:
    return {"id": s.vps}


def fresh_a_vps(**more: Any) -> Args:
    return lambda w, s: {"id": w.order(A).uuid, **more}


def built_a_vps(w: World, s: Shared) -> dict[str, Any]:
    """A VPS of A's built by the runner on the test driver (its domain exists)."""
    placed = w.order(A, running=False)
    assert run_inline(w.ctx, placed.job)
    return {"id": placed.uuid}


def fresh_a_backup(w: World, s: Shared) -> dict[str, Any]:
    """A fresh VPS of A's with one ready backup and no job pending."""
    vps = w.order(A).uuid
    made = backups.create(w.ctx, vps)
    finish_job(w.ctx, made.job)
    root = w.ctx.settings.backup_path
    backupstore.ensure_dir(root)
    backupstore.partial_path(root, made.backup).write_bytes(b"qcow2 stand-in")
    size = backupstore.finish(root, made.backup, {})
    with w.ctx.db.session() as session:
        session.execute(
            update(Backup)
            .where(Backup.uuid == made.backup)
            .values(state=BackupState.READY, size_bytes=size)
        )
    return {"id": vps, "backup": made.backup}


_SHARED: dict[tuple[int, str], dict[str, Any]] = {}


def _quiet(w: World, vps: str) -> None:
    """Let every job of the VPS be finished (as if a worker had run them)."""
    with w.ctx.db.session() as session:
        session.execute(
            update(Job)
            .where(Job.vps_uuid == vps, Job.state.in_(JobState.UNFINISHED))
            .values(state=JobState.SUCCEEDED, progress=100)
        )


def a_snapshot_vps(w: World, s: Shared) -> dict[str, Any]:
    """One VPS of A's (per world) whose plan allows snapshots, with no job pending."""
    key = (id(w), "snapshots")
    if key not in _SHARED:
        snapshots.set_plan_snapshots(w.ctx, "nano", snapshots.MAX_LIMIT)
        _SHARED[key] = {"id": w.order(A).uuid}
    _quiet(w, _SHARED[key]["id"])
    return dict(_SHARED[key])


def a_snapshot(w: World, s: Shared) -> dict[str, Any]:
    """A new ready snapshot of that VPS, no job pending."""
    vps = a_snapshot_vps(w, s)["id"]
    made = snapshots.create(w.ctx, vps)
    _quiet(w, vps)
    with w.ctx.db.session() as session:
        session.execute(
            update(Snapshot)
            .where(Snapshot.uuid == made.snapshot)
            .values(state=SnapshotState.READY, with_memory=True)
        )
    return {"id": vps, "snapshot": made.snapshot}


def a_backup(w: World, s: Shared) -> dict[str, Any]:
    """One ready backup of A's (per world), for restoring as a new VPS."""
    key = (id(w), "backup")
    if key not in _SHARED:
        _SHARED[key] = fresh_a_backup(w, s)
    return dict(_SHARED[key])


def new_copy(w: World) -> dict[str, str]:
    return {"hostname": f"copy{next(w.names)}"}


def resizable_a_vps(w: World, s: Shared) -> dict[str, Any]:
    """A's VPS, on plan "nano" with no job pending, and plan "nano2" of the shop (more
    memory, the same disk). One VPS serves every call: the test host's room is small."""
    if "nano2" not in [p.name for p in inventory.list_plans(w.ctx)]:
        inventory.add_plan(w.ctx, "nano2", 1, 32, 1)
    with w.ctx.db.session() as session:
        nano = session.scalars(select(Plan.id).where(Plan.name == "nano")).one()
        session.execute(update(Vps).where(Vps.uuid == s.vps).values(plan_id=nano))
        session.execute(
            update(Job)
            .where(Job.vps_uuid == s.vps, Job.state.in_(JobState.UNFINISHED))
            .values(state=JobState.SUCCEEDED)
        )
    return {"id": s.vps}


def a_job(w: World, s: Shared) -> dict[str, Any]:
    return {"job": s.job}


def fresh_a_token(w: World, s: Shared) -> dict[str, Any]:
    return {"token_id": tokens.create_token(w.ctx, A, "victim")[1]["id"]}


def fresh_victim(w: World, s: Shared) -> dict[str, Any]:
    user = users.add_user(w.ctx, f"victim{next(_victims)}@example.com", PASSWORD)
    return {"user_id": user.id, "change": "disable"}


def new_order(w: World) -> dict[str, str]:
    return {"plan": "nano", "image": "base", "hostname": f"order{next(w.names)}"}


OPERATOR_PAGE = site(a=403, b=403, op=200)
TABLE: dict[tuple[str, str], Case] = {
    ("static", "GET"): Case(every(200), lambda w, s: {"filename": "style.css"}),
    ("public.index", "GET"): Case(every(200)),
    ("public.health", "GET"): Case(every(200)),
    ("auth.signup", "GET"): Case(site(302, 302, 302, anon=200)),
    ("auth.signup", "POST"): Case(site(302, 302, 302, anon=400), form=lambda w: {}),
    ("auth.login", "GET"): Case(site(302, 302, 302, anon=200)),
    ("auth.login", "POST"): Case(site(302, 302, 302, anon=400), form=lambda w: {}),
    ("auth.logout", "POST"): Case(site(302, 302, 302), form=lambda w: {}, own_session=True),
    ("dashboard.servers", "GET"): Case(site(200, 200, 200)),
    ("dashboard.servers_state", "GET"): Case(site(200, 200, 200)),
    ("dashboard.order", "GET"): Case(site(200, 200, 200)),
    ("dashboard.order", "POST"): Case(site(302, 302, 302), form=new_order),
    ("dashboard.server", "GET"): Case(site(200, 404, 404), a_vps),
    ("dashboard.credentials", "GET"): Case(site(200, 404, 404), a_vps),
    ("dashboard.action", "GET"): Case(
        site(200, 404, 404), lambda w, s: {"id": s.vps, "action": "delete"}
    ),
    ("dashboard.action", "POST"): Case(
        site(302, 404, 404), fresh_a_vps(action="reboot"), form=lambda w: {}
    ),
    ("dashboard.resize", "POST"): Case(
        site(302, 404, 404), resizable_a_vps, form=lambda w: {"plan": "nano2"}
    ),
    ("dashboard.job", "GET"): Case(site(200, 404, 404), a_job),
    ("dashboard.job_json", "GET"): Case(site(200, 404, 404), a_job),
    ("account.account", "GET"): Case(site(200, 200, 200)),
    ("account.create_token", "POST"): Case(site(302, 302, 302), form=lambda w: {"name": "ci"}),
    ("account.change_email", "POST"): Case(site(400, 400, 400), form=lambda w: {}),
    # a mailed link that is not one: 400 for everyone (test_account_self.py has real ones)
    ("account.confirm_email", "GET"): Case(every(400), lambda w, s: {"secret": "nope"}),
    ("account.confirm_email", "POST"): Case(
        every(400), lambda w, s: {"secret": "nope"}, form=lambda w: {}
    ),
    ("account.add_key", "POST"): Case(site(400, 400, 400), form=lambda w: {}),
    ("account.delete_key", "POST"): Case(
        site(404, 404, 404), lambda w, s: {"key_id": 999_999}, form=lambda w: {}
    ),
    ("security.forgot", "GET"): Case(every(200)),
    ("security.forgot", "POST"): Case(every(400), form=lambda w: {}),
    ("security.login_code", "GET"): Case(every(302)),
    ("security.login_code", "POST"): Case(every(302), form=lambda w: {}),
    ("security.reset", "GET"): Case(every(400), lambda w, s: {"secret": "nope"}),
    ("security.reset", "POST"): Case(
        every(400), lambda w, s: {"secret": "nope"}, form=lambda w: {}
    ),
    ("security.two_factor", "GET"): Case(site(200, 200, 200)),
    ("security.two_factor", "POST"): Case(site(400, 400, 400), form=lambda w: {}),
    ("security.two_factor_off", "POST"): Case(site(400, 400, 400), form=lambda w: {}),
    ("account.change_password", "POST"): Case(site(400, 400, 400), form=lambda w: {}),
    ("account.revoke_token", "POST"): Case(site(302, 404, 404), fresh_a_token, form=lambda w: {}),
    ("admin.servers", "GET"): Case(OPERATOR_PAGE),
    ("admin.server_action", "POST"): Case(
        site(403, 403, 302), fresh_a_vps(action="suspend"), form=lambda w: {}
    ),
    ("admin.hosts", "GET"): Case(OPERATOR_PAGE),
    ("admin.host_usage", "GET"): Case(
        OPERATOR_PAGE, lambda w, s: {"name": inventory.list_hosts(w.ctx)[0].name}
    ),
    ("admin.jobs_page", "GET"): Case(OPERATOR_PAGE),
    ("admin.users", "GET"): Case(OPERATOR_PAGE),
    ("admin.user_active", "POST"): Case(site(403, 403, 302), fresh_victim, form=lambda w: {}),
    ("admin.user_quota", "POST"): Case(
        site(403, 403, 302),
        lambda w, s: {"user_id": fresh_victim(w, s)["user_id"]},
        form=lambda w: {"vps": "3"},
    ),
    ("admin.audit_log", "GET"): Case(OPERATOR_PAGE),
    ("admin.home", "GET"): Case(OPERATOR_PAGE),
    ("admin.server", "GET"): Case(site(403, 403, 200), a_vps),
    # its own plan again: the operator is told so (400); test_admin_resize.py moves one
    ("admin.resize", "POST"): Case(
        site(403, 403, 400), built_a_vps, form=lambda w: {"plan": "nano"}
    ),
    ("admin.power", "POST"): Case(
        site(403, 403, 302), fresh_a_vps(action="reboot"), form=lambda w: {}
    ),
    ("admin.confirm", "GET"): Case(
        site(403, 403, 200), lambda w, s: {"id": s.vps, "action": "force_delete"}
    ),
    ("admin.confirm", "POST"): Case(  # no hostname typed: the operator is asked again
        site(403, 403, 400), fresh_a_vps(action="force_delete"), form=lambda w: {}
    ),
    ("admin.user_admin", "POST"): Case(
        site(403, 403, 302),
        lambda w, s: {"user_id": fresh_victim(w, s)["user_id"], "change": "promote"},
        form=lambda w: {},
    ),
    ("admin.user_delete", "GET"): Case(
        site(403, 403, 200), lambda w, s: {"user_id": fresh_victim(w, s)["user_id"]}
    ),
    ("admin.user_delete", "POST"): Case(
        site(403, 403, 400),
        lambda w, s: {"user_id": fresh_victim(w, s)["user_id"]},
        form=lambda w: {},
    ),
    ("admin.plans", "GET"): Case(OPERATOR_PAGE),
    ("admin.plan_add", "POST"): Case(site(403, 403, 400), form=lambda w: {}),
    ("admin.plan_shelf", "POST"): Case(
        site(403, 403, 302), lambda w, s: {"name": "nano", "change": "show"}, form=lambda w: {}
    ),
    ("admin.plan_price", "POST"): Case(
        site(403, 403, 302), lambda w, s: {"name": "nano"}, form=lambda w: {"price": "2.99"}
    ),
    ("admin.image_shelf", "POST"): Case(
        site(403, 403, 302), lambda w, s: {"name": "base", "change": "show"}, form=lambda w: {}
    ),
    ("admin.image_test", "POST"): Case(
        site(403, 403, 302), lambda w, s: {"name": "base"}, form=lambda w: {}
    ),
    ("admin.host_maintenance", "POST"): Case(
        site(403, 403, 302),
        lambda w, s: {"name": hosts.list_hosts(w.ctx)[0]["name"], "state": "off"},
        form=lambda w: {},
    ),
    # no second host here: the operator is told no host takes it (test_admin_migrate.py moves)
    ("admin.migrate", "POST"): Case(site(403, 403, 404), a_vps, form=lambda w: {"to": "nosuch"}),
    ("admin.host_evacuate", "POST"): Case(
        site(403, 403, 404), lambda w, s: {"name": "nosuch"}, form=lambda w: {}
    ),
    ("api.openapi", "GET"): Case(every(200)),
    ("api.plans", "GET"): Case(api(200, 200, 200)),
    ("api.images", "GET"): Case(api(200, 200, 200)),
    ("api.list_servers", "GET"): Case(api(200, 200, 200)),
    ("api.create_server", "POST"): Case(api(202, 202, 202), json=new_order),
    ("api.get_server", "GET"): Case(api(200, 404, 200), a_vps),
    ("api.delete_server", "DELETE"): Case(api(202, 404, 202), fresh_a_vps()),
    ("api.server_action", "POST"): Case(
        api(202, 404, 202), fresh_a_vps(), json=lambda w: {"action": "reboot"}
    ),
    ("api.resize_server", "POST"): Case(
        api(202, 404, 202), resizable_a_vps, json=lambda w: {"plan": "nano2"}
    ),
    ("api.get_job", "GET"): Case(api(200, 404, 200), a_job),
    ("api.server_metrics", "GET"): Case(api(200, 404, 200), a_vps),
    # no KVMVPS_METRICS_TOKEN here: the page does not exist for anyone (test_metrics.py)
    ("metrics.metrics", "GET"): Case(every(404)),
    ("api.list_backups", "GET"): Case(api(200, 404, 200), a_vps),
    ("api.create_backup", "POST"): Case(api(202, 404, 202), fresh_a_vps()),
    ("api.restore_backup", "POST"): Case(api(202, 404, 202), fresh_a_backup),
    ("api.delete_backup", "DELETE"): Case(api(200, 404, 200), fresh_a_backup),
    ("dashboard.backup_create", "POST"): Case(
        site(302, 404, 404), fresh_a_vps(), form=lambda w: {}
    ),
    ("dashboard.backup_restore", "POST"): Case(
        site(302, 404, 404), fresh_a_backup, form=lambda w: {}
    ),
    ("dashboard.backup_delete", "POST"): Case(
        site(302, 404, 404), fresh_a_backup, form=lambda w: {}
    ),
    ("api.restore_backup_as_new", "POST"): Case(api(202, 404, 202), a_backup, json=new_copy),
    ("dashboard.backup_new_server", "POST"): Case(site(302, 404, 404), a_backup, form=new_copy),
    ("api.list_snapshots", "GET"): Case(api(200, 404, 200), a_vps),
    ("api.create_snapshot", "POST"): Case(api(202, 404, 202), a_snapshot_vps),
    ("api.revert_snapshot", "POST"): Case(api(202, 404, 202), a_snapshot),
    ("api.delete_snapshot", "DELETE"): Case(api(202, 404, 202), a_snapshot),
    ("dashboard.snapshot_create", "POST"): Case(
        site(302, 404, 404), a_snapshot_vps, form=lambda w: {"label": "pre"}
    ),
    ("dashboard.snapshot_revert", "POST"): Case(site(302, 404, 404), a_snapshot, form=lambda w: {}),
    ("dashboard.snapshot_delete", "POST"): Case(site(302, 404, 404), a_snapshot, form=lambda w: {}),
    ("api.server_console", "POST"): Case(api(200, 404, 200), a_vps),
    ("console.page", "GET"): Case(site(200, 404, 200), a_vps),
    ("console.ticket", "POST"): Case(site(200, 404, 200, anon=401), a_vps, form=lambda w: {}),
    # no ticket: refused for everyone (the tickets' own tests are in test_console_tickets.py)
    ("console.vnc_page", "GET"): Case(site(200, 404, 200), a_vps),
    ("console.websocket", "GET"): Case(every(403)),
    ("console.vnc_websocket", "GET"): Case(every(403)),
}


def routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (rule.endpoint, method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_table_lists_every_route(csrf_app: Flask) -> None:
    found = routes(csrf_app)
    assert found - set(TABLE) == set(), "routes missing from the authorization table"
    assert set(TABLE) - found == set(), "the table lists routes that do not exist"


@dataclass
class Session:
    cookie: str | None
    csrf: str
    bearer: dict[str, str]


def _session(w: World, role: str) -> Session:
    """Log in once per role; each request then starts from a copy of that session."""
    email = EMAILS[role]
    client = w.client(email)
    page = client.get("/" if email else "/login").get_data(as_text=True)
    token = csrf_token(page)
    cookie = client.get_cookie(COOKIE)
    return Session(cookie.value if cookie else None, token, w.bearer(email) if email else {})


def _client(app: Flask, session: Session) -> FlaskClient:
    client = app.test_client()
    if session.cookie:
        client.set_cookie(COOKIE, session.cookie)
    return client


def _call(
    w: World, shared: Shared, session: Session, endpoint: str, method: str, case: Case
) -> Any:
    url = w.app.url_map.bind("localhost").build(endpoint, case.args(w, shared), method=method)
    client = _client(w.app, session)
    if endpoint.startswith("api."):
        body = case.json(w) if case.json else None
        return client.open(url, method=method, json=body, headers=session.bearer)
    data = None
    if case.form is not None:
        data = {**case.form(w), "csrf_token": session.csrf}
    return client.open(url, method=method, data=data)


def test_every_route_for_every_role(csrf_world: World) -> None:
    w = csrf_world
    placed = w.order(A)
    shared = Shared(vps=placed.uuid, job=placed.job)
    sessions = {role: _session(w, role) for role in ROLES}
    failures = []
    for (endpoint, method), case in sorted(TABLE.items()):
        for role in ROLES:
            response = _call(w, shared, sessions[role], endpoint, method, case)
            if case.own_session:
                sessions[role] = _session(w, role)
            want = case.expect[role]
            got: int | str = response.status_code
            if want == LOGIN and got == 302 and response.headers["Location"].startswith("/login"):
                got = LOGIN
            if got != want:
                failures.append(f"{method} {endpoint} as {role}: {got}, expected {want}")
    assert failures == []


def test_customers_cannot_list_every_server_or_suspend(world: World) -> None:
    placed = world.order(A)
    client = world.app.test_client()
    assert client.get("/api/v1/servers?all=1", headers=world.bearer(A)).status_code == 403
    listed = client.get("/api/v1/servers?all=1", headers=world.bearer(OP)).get_json()
    assert placed.uuid in [s["id"] for s in listed["servers"]]
    own = client.get("/api/v1/servers", headers=world.bearer(OP)).get_json()
    assert own["servers"] == []
    for email, status in ((A, 403), (B, 404), (OP, 202)):
        r = client.post(
            f"/api/v1/servers/{placed.uuid}/actions",
            headers=world.bearer(email),
            json={"action": "suspend"},
        )
        assert r.status_code == status, (email, r.get_json())


def test_a_session_cookie_does_not_open_the_api(world: World) -> None:
    client = world.client(A)
    assert client.get("/servers").status_code == 200
    r = client.get("/api/v1/servers")
    assert r.status_code == 401 and r.get_json()["error"].startswith("authentication required")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Bearer kvp_nonsense", "Basic abc", "Bearer " + "x" * 5000]
)
def test_bad_bearer_tokens_get_401(world: World, header: str) -> None:
    headers = {"Authorization": header} if header else {}
    r = world.app.test_client().get("/api/v1/plans", headers=headers)
    assert r.status_code == 401 and "error" in r.get_json()


def test_disabled_users_cannot_log_in_nor_use_tokens_nor_keep_a_session(world: World) -> None:
    token = world.token(B)
    session = world.client(B)
    assert session.get("/servers").status_code == 200
    users.disable_user(world.ctx, B)
    assert session.get("/servers").status_code == 302  # the live session ends at once
    fresh = world.app.test_client()
    r = fresh.post("/login", data={"email": B, "password": PASSWORD})
    assert r.status_code == 401 and "wrong e-mail or password" in r.get_data(as_text=True)
    r = fresh.get("/api/v1/servers", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_operator_disables_a_user_from_the_admin_page(world: World) -> None:
    op = world.client(OP)
    bob = users.get_user(world.ctx, B)
    r = op.post(f"/admin/users/{bob.id}/disable")
    assert r.status_code == 302
    assert users.get_user(world.ctx, B).is_active is False
    assert "is disabled" in op.get("/admin/users").get_data(as_text=True)
    me = users.get_user(world.ctx, OP)
    op.post(f"/admin/users/{me.id}/disable")
    assert users.get_user(world.ctx, OP).is_active is True  # never oneself
