"""Log-in and sign-up limits: counted in the database before the password is checked."""

from __future__ import annotations

import http.cookiejar
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from kvmvps.errors import InvalidInput
from kvmvps.models import LoginCounter
from kvmvps.services import Context, audit, logins
from tests.badinput import _env_of
from tests.web.conftest import PASSWORD, A, B, csrf_token, make_app
from tests.web.helpers import text
from tests.web.test_serve import LAUNCH, ROOT, free_port, wait_for

WRONG = "wrong password!"


def limited_app(ctx: Context, **limits: str) -> Flask:
    return make_app(ctx, RATELIMIT_ENABLED=True, **limits)


def post_login(app: Flask, email: str, password: str, addr: str = "127.0.0.1", **kw: Any) -> Any:
    client = app.test_client()
    return client.post(
        "/login",
        data={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": addr},
        **kw,
    )


def test_forty_parallel_attempts_check_the_password_exactly_five_times(web_ctx: Context) -> None:
    """The attack of the issue: 40 at once, each with another guess (SQLite and PostgreSQL)."""
    app = limited_app(web_ctx)
    start = threading.Barrier(40)
    statuses: list[int] = []
    lock = threading.Lock()

    def guess(n: int) -> None:
        client = app.test_client()
        start.wait()
        r = client.post("/login", data={"email": A, "password": f"guess number {n}"})
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    counts = Counter(statuses)
    assert counts == {401: 5, 429: 35}, counts
    # ...and even the right password is refused now, from that address
    r = post_login(app, A, PASSWORD)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "too many attempts" in text(r)


def test_the_limit_is_per_address_across_e_mails(web_ctx: Context) -> None:
    app = limited_app(web_ctx, LOGIN_ADDRESS_LIMIT="3/minute")
    for n in range(3):
        assert post_login(app, f"nobody{n}@example.com", WRONG).status_code == 401
    assert post_login(app, B, PASSWORD).status_code == 429  # a fourth e-mail, same address
    assert post_login(app, B, PASSWORD, addr="192.0.2.7").status_code == 302


def test_the_limit_is_per_e_mail_across_addresses(web_ctx: Context) -> None:
    app = limited_app(web_ctx, LOGIN_EMAIL_LIMIT="4/hour")
    for n in range(4):
        assert post_login(app, A, WRONG, addr=f"203.0.113.{n}").status_code == 401
    assert post_login(app, A, PASSWORD, addr="203.0.113.99").status_code == 429
    assert post_login(app, B, PASSWORD, addr="203.0.113.99").status_code == 302


def test_workers_share_the_count_through_the_database(web_ctx: Context) -> None:
    """Two app instances (as two gunicorn workers) over one database add up to one limit."""
    first, second = limited_app(web_ctx), limited_app(web_ctx)
    for app in (first, second, first, second, first):
        assert post_login(app, A, WRONG).status_code == 401
    assert post_login(second, A, PASSWORD).status_code == 429
    assert post_login(first, A, PASSWORD).status_code == 429
    with web_ctx.db.session() as s:
        # the address and e-mail, the address, the e-mail
        assert s.scalar(select(func.count()).select_from(LoginCounter)) == 3


def test_successful_logins_never_add_up(web_ctx: Context) -> None:
    app = limited_app(web_ctx, LOGIN_LIMIT="3/minute")
    for _ in range(10):
        assert post_login(app, A, PASSWORD).status_code == 302
    for _ in range(3):
        assert post_login(app, A, WRONG).status_code == 401
    assert post_login(app, A, PASSWORD).status_code == 429


@pytest.mark.parametrize("proxies", [0, 1])
def test_the_client_address_honours_kvmvps_web_proxies(web_ctx: Context, proxies: int) -> None:
    app = limited_app(web_ctx, LOGIN_LIMIT="2/minute", PROXIES=proxies)
    for n in range(2):
        headers = {"X-Forwarded-For": f"198.51.100.{n}"}
        assert post_login(app, A, WRONG, headers=headers).status_code == 401
    r = post_login(app, A, WRONG, headers={"X-Forwarded-For": "198.51.100.99"})
    # behind a trusted proxy each forwarded address is a client of its own;
    # without one, a forged header changes nothing
    assert r.status_code == (401 if proxies else 429)


def test_the_first_refusal_is_audited_once(web_ctx: Context) -> None:
    app = limited_app(web_ctx, LOGIN_LIMIT="2/minute")
    for _ in range(6):
        post_login(app, A, WRONG)
    refused = [
        e
        for e in audit.list_entries(web_ctx, action="user.login")
        if "too many attempts" in (e["detail"] or "")
    ]
    assert len(refused) == 1
    assert refused[0]["actor"] == "web:127.0.0.1" and refused[0]["target"] == A


def test_sign_ups_are_limited_per_address(web_ctx: Context) -> None:
    app = limited_app(web_ctx, SIGNUP_LIMIT="2/hour")
    for n in range(3):
        r = app.test_client().post(
            "/signup",
            data={"email": f"new{n}@example.com", "password": PASSWORD, "confirm": PASSWORD},
        )
        assert r.status_code == (302 if n < 2 else 429)
    with pytest.raises(InvalidInput, match="'bogus' is not like 5/minute"):
        limited_app(web_ctx, SIGNUP_LIMIT="bogus")


def test_window_edges_do_not_double_the_limit(web_ctx: Context) -> None:
    """Five at the end of one window and more at the start of the next: still five."""
    rate = logins.Rate.parse("5/minute")
    limit = [logins.Limit("edge-test", rate)]
    kw = {"actor": "test", "action": "user.login", "target": "x"}
    allowed = [logins.attempt(web_ctx, limit, now=59.0, **kw).allowed for _ in range(5)]
    allowed += [logins.attempt(web_ctx, limit, now=61.0, **kw).allowed for _ in range(5)]
    assert allowed == [True] * 5 + [False] * 5
    assert logins.attempt(web_ctx, limit, now=181.0, **kw).allowed


@pytest.mark.parametrize("bad", ["", "5", "five/minute", "5/fortnight", "0/minute", "5/minute x"])
def test_bad_rates_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="is not like 5/minute"):
        logins.Rate.parse(bad)


def test_gunicorn_workers_share_the_limit(web_ctx: Context) -> None:
    """Two real gunicorn processes, 12 guesses in parallel: the password is checked 5 times."""
    if web_ctx.settings.database_url:
        pytest.skip("one database is enough for this")
    port = free_port()
    argv = [sys.executable, "-c", LAUNCH, "serve", "--port", str(port), "--production"]
    env = {**os.environ, **_env_of(web_ctx), "KVMVPS_WEB_HTTPS": "0"}
    proc = subprocess.Popen(
        [*argv, "--workers", "2", "--threads", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", proc)
        statuses: list[int] = []
        threads = [
            threading.Thread(target=lambda: statuses.append(_guess(port))) for _ in range(12)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert Counter(statuses) == {401: 5, 429: 7}, statuses


def _guess(port: int) -> int:
    """A fresh client: fetch the form (session and CSRF token), then post a wrong password."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    url = f"http://127.0.0.1:{port}/login"
    with opener.open(url, timeout=30) as page:
        token = csrf_token(page.read().decode())
    body = urllib.parse.urlencode({"email": A, "password": WRONG, "csrf_token": token})
    try:
        with opener.open(url, data=body.encode(), timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
