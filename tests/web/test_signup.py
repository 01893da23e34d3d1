"""Sign-up control: KVMVPS_SIGNUP open, closed or invite; invitation codes are shown once,
stored hashed, work once, expire, and may be bound to one address.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from kvmvps.errors import Forbidden, InvalidInput
from kvmvps.models import Invitation, User
from kvmvps.services import Context, audit, jobs, signup
from tests.badinput import assert_one_line_error, run_cli
from tests.snapshots import db_snapshot
from tests.web.conftest import PASSWORD, make_app
from tests.web.helpers import text


def ctx_with(web_ctx: Context, mode: str) -> Iterator[Context]:
    ctx = Context(dataclasses.replace(web_ctx.settings, signup=mode))
    yield ctx
    ctx.close()


@pytest.fixture
def closed_ctx(web_ctx: Context) -> Iterator[Context]:
    yield from ctx_with(web_ctx, "closed")


@pytest.fixture
def invite_ctx(web_ctx: Context) -> Iterator[Context]:
    yield from ctx_with(web_ctx, "invite")


def client(ctx: Context) -> FlaskClient:
    return make_app(ctx).test_client()


def form(email: str, code: str | None = None) -> dict[str, str]:
    data = {"email": email, "password": PASSWORD, "confirm": PASSWORD}
    if code is not None:
        data["invite"] = code
    return data


def emails(ctx: Context) -> set[str]:
    with ctx.db.session() as s:
        return set(s.scalars(select(User.email)))


def test_closed_sign_up_refuses_and_creates_nothing(closed_ctx: Context) -> None:
    site = client(closed_ctx)
    assert "Sign-up is closed" in text(site.get("/signup"))
    before = db_snapshot(closed_ctx)
    r = site.post("/signup", data=form("eve@example.com"))
    assert r.status_code == 403 and "sign-up is closed" in text(r)
    assert db_snapshot(closed_ctx) == before
    entry = audit.list_entries(closed_ctx, action="user.signup")[0]
    assert entry["result"] == "failed" and entry["target"] == "eve@example.com"


def test_invitation_works_once_and_is_stored_hashed(invite_ctx: Context) -> None:
    code, view = signup.invite(invite_ctx, "os:root")
    assert code.startswith("inv_") and view["used"] is False
    assert code not in repr(db_snapshot(invite_ctx))
    site = client(invite_ctx)
    assert 'name="invite"' in site.get("/signup").get_data(as_text=True)
    before = db_snapshot(invite_ctx)
    for data in (form("eve@example.com"), form("eve@example.com", "inv_guessed")):
        r = site.post("/signup", data=data)
        assert r.status_code == 403 and "invitation" in text(r)
    assert db_snapshot(invite_ctx) == before
    r = site.post("/signup", data=form("eve@example.com", code))
    assert r.status_code == 302, text(r)
    replay = client(invite_ctx).post("/signup", data=form("mallory@example.com", code))
    assert replay.status_code == 403 and "mallory@example.com" not in emails(invite_ctx)
    with invite_ctx.db.session() as s:
        row = s.scalar(select(Invitation))
        assert row.used_at is not None and row.used_by_id is not None


def test_expired_and_bound_invitations_are_refused(invite_ctx: Context) -> None:
    bound, _ = signup.invite(invite_ctx, "os:root", email="carol@example.com")
    old, _ = signup.invite(invite_ctx, "os:root", days=1)
    with invite_ctx.db.session() as s:
        s.execute(
            update(Invitation)
            .where(Invitation.email.is_(None))
            .values(expires_at=jobs.now() - timedelta(seconds=1))
        )
    with pytest.raises(Forbidden, match="expired"):
        signup.sign_up(invite_ctx, "dave@example.com", PASSWORD, old)
    with pytest.raises(Forbidden, match="another e-mail"):
        signup.sign_up(invite_ctx, "dave@example.com", PASSWORD, bound)
    with pytest.raises(InvalidInput, match="not an invitation code"):
        signup.sign_up(invite_ctx, "dave@example.com", PASSWORD, "inv_\x1b[2J" + "x" * 5)
    assert "dave@example.com" not in emails(invite_ctx)
    assert signup.sign_up(invite_ctx, "Carol@Example.com", PASSWORD, bound).email == (
        "carol@example.com"
    )


def test_one_code_used_twice_at_once_makes_one_account(invite_ctx: Context) -> None:
    code, _ = signup.invite(invite_ctx, "os:root")
    barrier, results = threading.Barrier(4), []

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            signup.sign_up(invite_ctx, f"racer{n}@example.com", PASSWORD, code)
            results.append("ok")
        except Forbidden:
            results.append("refused")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "refused", "refused", "refused"]
    assert len([e for e in emails(invite_ctx) if e.startswith("racer")]) == 1


def test_open_sign_up_needs_no_code(web_ctx: Context) -> None:
    r = client(web_ctx).post("/signup", data=form("frank@example.com"))
    assert r.status_code == 302 and "frank@example.com" in emails(web_ctx)
    assert audit.list_entries(web_ctx, action="user.signup")[0]["result"] == "ok"


def test_cli_invite_prints_the_code_once(web_ctx: Context) -> None:
    result = run_cli(web_ctx, "user", "invite", "--email", "gina@example.com", "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["code"].startswith("inv_") and shown["email"] == "gina@example.com"
    listed = repr(db_snapshot(web_ctx))
    assert shown["code"] not in listed
    for bad in (("--days", "0"), ("--days", "99999999999999999999"), ("--email", "a\nb@x.org")):
        before = db_snapshot(web_ctx)
        assert_one_line_error(run_cli(web_ctx, "user", "invite", *bad), 2)
        assert db_snapshot(web_ctx) == before
    assert_one_line_error(run_cli(web_ctx, "user", "invite", "--email", "alice@example.com"), 1)
