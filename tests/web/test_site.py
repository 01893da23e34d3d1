"""The customer website: catalogue, accounts, orders, one-time passwords, actions."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from kvmvps.models import Vps, VpsState
from kvmvps.services import Context, audit, inventory, jobs, tokens
from kvmvps.services import vps as vps_service
from tests.web.conftest import OP, PASSWORD, A, B, World, finish_build, finish_job, make_app
from tests.web.helpers import (
    assert_not_stored,
    field_errors,
    forbid_libvirt,
    forbid_libvirt_work,
    shown_password,
    text,
)
from web import create_app
from web.app import HTTPS_DEFAULT


def vps_count(ctx: Context) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(Vps))


def test_catalogue_shows_a_plans_limits(web_ctx: Context, client, monkeypatch) -> None:
    inventory.add_plan(
        web_ctx, "capped", 1, 16, 1, resource_limits={"cpu_quota_pct": 50, "net_out_kibps": 512}
    )
    forbid_libvirt(monkeypatch)
    page = text(client.get("/"))
    assert "CPU: at most 50 % of a core per vCPU" in page
    assert "network out: 512 KiB/s" in page


def test_catalogue_needs_no_login_and_no_libvirt(client, monkeypatch) -> None:
    forbid_libvirt(monkeypatch)
    page = text(client.get("/"))
    for fragment in (
        "nano",
        "small",
        "$2.99",
        "16 MiB",
        "256 MiB",
        "<strong>1 GiB</strong> disk",
        "linux",
        "base",
        "Log in",
        "Sign up",
    ):
        assert fragment in page


def test_sign_up_log_out_log_in(client) -> None:
    r = client.post(
        "/signup", data={"email": "Carol@Example.com", "password": PASSWORD, "confirm": PASSWORD}
    )
    assert r.status_code == 302 and r.headers["Location"] == "/order"
    assert "carol@example.com" in text(client.get("/account"))
    assert client.post("/logout").status_code == 302
    assert client.get("/servers").status_code == 302
    r = client.post(
        "/login?next=/account", data={"email": "carol@example.com", "password": PASSWORD}
    )
    assert r.status_code == 302 and r.headers["Location"] == "/account"


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"email": "not-an-email"}, "email", "is not a valid e-mail address"),
        ({"email": A}, "email", "already exists"),
        ({"email": "x" * 250 + "@example.com"}, "email", "longer than 254"),
        ({"password": "short", "confirm": "short"}, "password", "at least 10"),
        ({"password": "p" * 1025, "confirm": "p" * 1025}, "password", "1024"),
        ({"confirm": "something else entirely"}, "confirm", "the passwords do not match"),
    ],
)
def test_sign_up_bad_input(client, web_ctx: Context, form: dict, field: str, message: str) -> None:
    data = {"email": "new@example.com", "password": PASSWORD, "confirm": PASSWORD, **form}
    r = client.post("/signup", data=data)
    assert r.status_code == 400
    assert any(message in e for e in field_errors(r, field)), field_errors(r, field)
    assert client.get("/servers").status_code == 302  # not logged in


def test_login_refuses_wrong_password_and_unsafe_next(client) -> None:
    r = client.post("/login", data={"email": A, "password": "wrong password!"})
    assert r.status_code == 401 and "wrong e-mail or password" in text(r)
    r = client.post("/login?next=//evil.example/x", data={"email": A, "password": PASSWORD})
    assert r.headers["Location"] == "/servers"


ORDER = {"plan": "nano", "image": "base", "hostname": "web1", "ssh_keys": ""}
GOOD_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"
)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"hostname": "web_1;reboot"}, "hostname", "not a valid DNS label"),
        ({"hostname": "-web"}, "hostname", "not a valid DNS label"),
        ({"hostname": "a" * 64}, "hostname", "longer than 63 characters"),
        ({"hostname": ""}, "hostname", "This field is required"),
        ({"plan": "nope"}, "plan", "no plan named 'nope'"),
        ({"plan": ""}, "plan", "choose a plan"),
        ({"plan": "p" * 500}, "plan", "too long"),
        ({"image": "nope"}, "image", "no image named 'nope'"),
        ({"ssh_keys": "hello world"}, "ssh_keys", "not an SSH public key"),
        ({"ssh_keys": "ssh-ed25519 AAAAnotbase64!!"}, "ssh_keys", "malformed SSH public key"),
        ({"ssh_keys": "\n".join([GOOD_KEY] * 21)}, "ssh_keys", "at most 20 SSH keys"),
        ({"ssh_keys": "x" * 20_001}, "ssh_keys", "longer than 20000"),
        ({"hostname": "taken"}, "hostname", "you already have a VPS named 'taken'"),
    ],
)
def test_order_bad_input_is_shown_next_to_the_field(
    world: World, change: dict, field: str, message: str
) -> None:
    client = world.client(A)
    assert client.post("/order", data={**ORDER, "hostname": "taken"}).status_code == 302
    before = vps_count(world.ctx)
    r = client.post("/order", data={**ORDER, **change})
    assert r.status_code == 400
    errors = field_errors(r, field)
    assert any(message in e for e in errors), errors
    assert "Please correct the fields marked below." in text(r)
    assert vps_count(world.ctx) == before


def test_same_hostname_for_another_customer_is_fine(world: World) -> None:
    assert world.client(A).post("/order", data=ORDER).status_code == 302
    assert world.client(B).post("/order", data=ORDER).status_code == 302


def test_order_records_a_job_and_answers_at_once(world: World, monkeypatch) -> None:
    tried = forbid_libvirt_work(monkeypatch)
    client = world.client(A)
    r = client.post("/order", data={**ORDER, "ssh_keys": GOOD_KEY + "\n\n# a comment\n"})
    assert r.status_code == 302 and r.headers["Location"].startswith("/jobs/")
    job_id = r.headers["Location"].removeprefix("/jobs/")
    job = jobs.get_job(world.ctx, job_id)
    assert job["state"] == "queued" and job["kind"] == "create" and job["actor"] == f"user:{A}"
    shown = vps_service.show(world.ctx, job["vps"])
    assert shown["state"] == "queued" and shown["owner"] == A and tried == []
    page = text(client.get(r.headers["Location"]))
    assert "Waiting for a worker" in page and "Creating the disk" in page
    polled = client.get(f"/jobs/{job_id}/status.json").get_json()
    assert {"state", "step", "progress"} <= set(polled) and polled["state"] == "queued"
    entries = audit.list_entries(world.ctx, action="vps.create")
    assert entries[0]["actor"] == f"user:{A}" and entries[0]["target"] == "web1"


def test_read_only_pages_read_the_database_only(world: World, monkeypatch) -> None:
    placed = world.order(A)
    customer, operator = world.client(A), world.client(OP)
    forbid_libvirt(monkeypatch)
    for path in (
        "/",
        "/servers",
        "/servers/state.json",
        f"/servers/{placed.uuid}",
        f"/servers/{placed.uuid}/credentials",
        f"/jobs/{placed.job}",
        f"/jobs/{placed.job}/status.json",
        "/account",
        "/order",
        f"/servers/{placed.uuid}/actions/delete",
    ):
        assert customer.get(path).status_code == 200, path
    for path in (
        "/admin/servers",
        "/admin/hosts",
        "/admin/jobs",
        "/admin/users",
        "/admin/audit",
        "/admin/jobs?state=failed",
    ):
        assert operator.get(path).status_code == 200, path


def test_password_is_shown_once_after_the_build(world: World, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = world.client(A)
    r = client.post("/order", data={**ORDER, "image": "linux"})
    job_id = r.headers["Location"].removeprefix("/jobs/")
    uuid = jobs.get_job(world.ctx, job_id)["vps"]
    early = client.get(f"/servers/{uuid}/credentials")
    assert early.status_code == 302 and early.headers["Location"] == f"/jobs/{job_id}"
    finish_build(world.ctx, type("Placed", (), {"uuid": uuid, "job": job_id})())
    first = client.get(f"/servers/{uuid}/credentials")
    password = shown_password(first)
    assert password and len(password) >= 16
    assert "This password will not be shown again." in text(first)
    assert "SHA256:testfingerprint" in text(first)
    again = client.get(f"/servers/{uuid}/credentials")
    assert shown_password(again) is None and password not in text(again)
    assert "The password was shown once" in text(again)
    for path in ("/servers", f"/servers/{uuid}", "/servers/state.json", f"/jobs/{job_id}"):
        assert password not in client.get(path).get_data(as_text=True)
    assert_not_stored(world.ctx, password)
    assert password not in caplog.text


def test_password_reset_asks_for_confirmation_and_shows_the_new_one(world: World) -> None:
    placed = world.order(A, image="linux")
    hostname = vps_service.show(world.ctx, placed.uuid)["hostname"]
    client = world.client(A)
    url = f"/servers/{placed.uuid}/actions/password_reset"
    assert "A new password is set" in text(client.get(url))
    wrong = client.post(url, data={"hostname": "other"})
    assert wrong.status_code == 400 and f"type {hostname} to confirm" in field_errors(
        wrong, "hostname"
    )
    assert jobs.list_jobs(world.ctx, state="queued") == []
    r = client.post(url, data={"hostname": hostname})
    assert r.status_code == 302 and r.headers["Location"].startswith("/jobs/")
    job_id = r.headers["Location"].removeprefix("/jobs/")
    assert jobs.get_job(world.ctx, job_id)["kind"] == "password_reset"
    assert "Show login details" in text(client.get(f"/jobs/{job_id}"))
    finish_job(world.ctx, job_id)
    password = shown_password(client.get(f"/servers/{placed.uuid}/credentials"))
    assert password is not None
    assert shown_password(client.get(f"/servers/{placed.uuid}/credentials")) is None
    assert_not_stored(world.ctx, password)


def test_delete_and_reinstall_need_the_hostname(world: World) -> None:
    placed = world.order(A)
    hostname = vps_service.show(world.ctx, placed.uuid)["hostname"]
    client = world.client(A)
    url = f"/servers/{placed.uuid}/actions/delete"
    assert client.post(url, data={}).status_code == 400
    assert vps_service.show(world.ctx, placed.uuid)["state"] == "running"
    r = client.post(url, data={"hostname": hostname.upper()})
    assert r.status_code == 302 and r.headers["Location"] == "/servers"
    assert vps_service.show(world.ctx, placed.uuid)["state"] == "deleting"
    other = world.order(A)
    url = f"/servers/{other.uuid}/actions/reinstall"
    assert "linux" in text(client.get(url))
    host = vps_service.show(world.ctx, other.uuid)["hostname"]
    r = client.post(url, data={"hostname": host, "image": "linux"})
    job = jobs.get_job(world.ctx, r.headers["Location"].removeprefix("/jobs/"))
    assert job["kind"] == "reinstall"


def test_simple_actions_and_their_conflicts(world: World, monkeypatch) -> None:
    tried = forbid_libvirt_work(monkeypatch)
    placed = world.order(A)
    client = world.client(A)
    assert client.get(f"/servers/{placed.uuid}/actions/reboot").status_code == 404
    assert client.post(f"/servers/{placed.uuid}/actions/format-disk").status_code == 404
    r = client.post(f"/servers/{placed.uuid}/actions/reboot", follow_redirects=True)
    assert "Reboot of vm" in text(r) and "requested" in text(r)
    finish_job(world.ctx, jobs.list_jobs(world.ctx, vps_uuid=placed.uuid)[0]["id"])
    r = client.post(f"/servers/{placed.uuid}/actions/start", follow_redirects=True)
    assert "cannot start" in text(r) and "it is running" in text(r)
    assert tried == []


def test_dashboard_polls_live_state_from_the_database(world: World) -> None:
    placed = world.order(A)
    client = world.client(A)
    states = client.get("/servers/state.json").get_json()["servers"]
    assert [s["state"] for s in states] == ["running"]
    with world.ctx.db.session() as s:
        s.execute(update(Vps).where(Vps.uuid == placed.uuid).values(state=VpsState.STOPPED))
    assert client.get("/servers/state.json").get_json()["servers"][0]["state"] == "stopped"
    assert world.client(B).get("/servers/state.json").get_json()["servers"] == []


def test_csrf_token_missing_or_wrong_is_400(csrf_world: World) -> None:
    anonymous = csrf_world.app.test_client()
    anonymous.get("/login")
    assert anonymous.post("/login", data={"email": A, "password": PASSWORD}).status_code == 400
    r = anonymous.post("/login", data={"email": A, "password": PASSWORD, "csrf_token": "x"})
    assert r.status_code == 400 and "CSRF" in text(r)
    client = csrf_world.client(A)
    before = vps_count(csrf_world.ctx)
    assert client.post("/order", data=ORDER).status_code == 400
    assert client.post("/order", data={**ORDER, "csrf_token": "forged"}).status_code == 400
    assert client.post("/logout").status_code == 400
    assert vps_count(csrf_world.ctx) == before
    assert client.get("/servers").status_code == 200  # still logged in


def test_security_headers_and_cookie_flags(web_ctx: Context) -> None:
    client = make_app(web_ctx).test_client()
    r = client.get("/")
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"
    r = client.post("/login", data={"email": A, "password": PASSWORD})
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    secure = make_app(web_ctx, HTTPS=True).test_client()
    r = secure.post("/login", data={"email": A, "password": PASSWORD}, base_url="https://localhost")
    assert "Secure" in r.headers["Set-Cookie"]
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")


def test_login_attempts_are_rate_limited_per_address_and_email(web_ctx: Context) -> None:
    app: Flask = make_app(web_ctx, RATELIMIT_ENABLED=True)
    client = app.test_client()
    for _ in range(5):
        assert client.post("/login", data={"email": A, "password": "nope" * 3}).status_code == 401
    r = client.post("/login", data={"email": A, "password": PASSWORD})
    assert r.status_code == 429 and "Too Many Requests" in text(r)
    assert client.post("/login", data={"email": B, "password": PASSWORD}).status_code == 302


def test_pages_escape_what_users_typed(world: World) -> None:
    tokens.create_token(world.ctx, A, "<script>alert(1)</script>")
    page = world.client(A).get("/account").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_api_token_made_on_the_account_page_is_shown_once(world: World) -> None:
    client = world.client(A)
    r = client.post("/account", data={"name": "deploy"}, follow_redirects=True)
    token = text(r).split('id="token" type="text" readonly value="')[1].split('"')[0]
    assert token.startswith("kvp_") and "will not be shown again" in text(r)
    api = world.app.test_client()
    assert api.get("/api/v1/plans", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert token not in text(client.get("/account"))
    token_id = tokens.list_tokens(world.ctx, A)[0]["id"]
    assert client.post(f"/account/tokens/{token_id}/revoke").status_code == 302
    assert api.get("/api/v1/plans", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_operator_suspends_and_sees_everything(world: World) -> None:
    placed = world.order(A)
    op = world.client(OP)
    page = text(op.get("/admin/servers"))
    assert A in page and "vm" in page
    r = op.post(
        f"/admin/servers/{placed.uuid}/suspend",
        data={"reason": "unpaid invoice"},
        follow_redirects=True,
    )
    assert "is suspended." in text(r) and "Suspended: unpaid invoice" in text(r)
    assert jobs.list_jobs(world.ctx, vps_uuid=placed.uuid)[0]["kind"] == "suspend"
    hosts = text(op.get("/admin/hosts"))
    assert "Pinned vCPUs" in hosts and "Committed memory" in hosts
    assert "create" in text(op.get("/admin/jobs"))
    assert "vps.suspend" in text(op.get("/admin/audit"))
    assert op.get("/admin/jobs?state=bogus").status_code == 400


def test_a_failed_reset_never_shows_its_password(world: World) -> None:
    from sqlalchemy import update as sql_update

    from kvmvps.models import Job, JobState

    placed = world.order(A, image="linux")
    hostname = vps_service.show(world.ctx, placed.uuid)["hostname"]
    client = world.client(A)
    r = client.post(f"/servers/{placed.uuid}/actions/password_reset", data={"hostname": hostname})
    job_id = r.headers["Location"].removeprefix("/jobs/")
    with world.ctx.db.session() as s:
        s.execute(
            sql_update(Job)
            .where(Job.uuid == job_id)
            .values(state=JobState.FAILED, error="the guest served the wrong host key")
        )
    page = client.get(f"/servers/{placed.uuid}/credentials")
    assert shown_password(page) is None
    assert "did not work: The new password could not be set." in text(page)
    assert "wrong host key" not in text(page)  # the reason is for operators


def test_customers_read_failures_in_plain_words_operators_read_the_reason(world: World) -> None:
    from sqlalchemy import update as sql_update

    from kvmvps.models import Job, JobState

    placed = world.order(A, image="linux")
    reason = (
        "building web9 failed at step 'host-key': no host key on the console after 120 s; "
        "rolled back"
    )
    with world.ctx.db.session() as s:
        s.execute(
            sql_update(Vps)
            .where(Vps.uuid == placed.uuid)
            .values(state=VpsState.ERROR, error=reason)
        )
        s.execute(
            sql_update(Job)
            .where(Job.uuid == placed.job)
            .values(state=JobState.FAILED, error=reason)
        )
    plain = "The server did not answer SSH in time. Nothing was left half-made"
    customer = world.client(A)
    for path in ("/servers", f"/servers/{placed.uuid}/credentials", f"/jobs/{placed.job}"):
        page = text(customer.get(path))
        assert plain in page and "at step" not in page and "console after" not in page, path
    polled = customer.get(f"/jobs/{placed.job}/status.json").get_json()
    assert polled["error"].startswith(plain) and "host-key" not in polled["error"]
    state = customer.get("/servers/state.json").get_json()["servers"][0]
    assert state["error"].startswith(plain)
    token, _ = tokens.create_token(world.ctx, A, "t")
    api = world.app.test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    shown = api.get(f"/api/v1/servers/{placed.uuid}", headers=bearer).get_json()
    assert shown["error"].startswith(plain)
    assert (
        api.get(f"/api/v1/jobs/{placed.job}", headers=bearer).get_json()["error"].startswith(plain)
    )
    assert "no host key on the console after 120 s" in text(world.client(OP).get("/admin/jobs"))


def test_images_without_credentials_say_so(world: World) -> None:
    placed = world.order(A, image="base")
    page = text(world.client(A).get(f"/servers/{placed.uuid}/credentials"))
    assert "does not get a password from us" in page and "was shown once" not in page


def test_no_capacity_is_a_clear_503(world: World) -> None:
    from kvmvps.services import inventory

    inventory.add_plan(world.ctx, "huge", 1, 1_000_000, 1)
    before = vps_count(world.ctx)
    r = world.client(A).post("/order", data={**ORDER, "plan": "huge"})
    assert r.status_code == 503 and "no host has" in text(r)
    api = world.app.test_client().post(
        "/api/v1/servers",
        headers=world.bearer(A),
        json={"plan": "huge", "image": "base", "hostname": "h"},
    )
    assert api.status_code == 503 and "no host has" in api.get_json()["error"]
    assert vps_count(world.ctx) == before


def test_unknown_pages_are_friendly_404s(world: World) -> None:
    client = world.client(A)
    for path in ("/servers/0000", "/jobs/nope", "/no-such-page"):
        r = client.get(path)
        assert r.status_code == 404 and "Traceback" not in text(r) and "Error 404" in text(r)


def test_unexpected_errors_are_a_titled_500_page(web_ctx: Context, caplog) -> None:
    """The title is the status's name, never a Python object's repr."""
    app = make_app(web_ctx)

    def boom() -> str:
        raise RuntimeError("disk on fire")

    app.add_url_rule("/boom", "boom", boom)
    app.add_url_rule("/api/v1/boom", "api_boom", boom)
    with caplog.at_level(logging.ERROR, logger="web.errors"):
        page = app.test_client().get("/boom")
        api = app.test_client().get("/api/v1/boom")
    body = text(page)
    assert page.status_code == 500 and "Error 500" in body
    assert "<title>Internal Server Error" in body and "<h1>Internal Server Error</h1>" in body
    assert "property object" not in body and "disk on fire" not in body
    assert "Traceback" not in body and "internal error; the operators have been told" in body
    assert api.status_code == 500 and api.get_json() == {
        "error": "internal error; the operators have been told"
    }
    assert "unhandled error in GET /boom" in caplog.text


def test_https_is_on_unless_turned_off(web_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """KVMVPS_WEB_HTTPS: secure by default (as the README's settings table says); 0 turns it off."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = re.search(r"^\| `KVMVPS_WEB_HTTPS` \| `([^`]*)` \|", readme, re.MULTILINE)
    assert row is not None and row[1] == HTTPS_DEFAULT == "1"
    base = {"KVMVPS_CONTEXT": web_ctx, "SECRET_KEY": "k", "TESTING": True}
    monkeypatch.delenv("KVMVPS_WEB_HTTPS", raising=False)
    app = create_app(base)
    assert app.config["HTTPS"] and app.config["SESSION_COOKIE_SECURE"]
    assert app.config["PREFERRED_URL_SCHEME"] == "https"
    for off in ("0", "no", "false"):
        monkeypatch.setenv("KVMVPS_WEB_HTTPS", off)
        app = create_app(base)
        assert not app.config["HTTPS"] and not app.config["SESSION_COOKIE_SECURE"]
    monkeypatch.setenv("KVMVPS_WEB_HTTPS", "1")
    assert create_app(base).config["REMEMBER_COOKIE_SECURE"]
