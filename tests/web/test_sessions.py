"""Sessions end everywhere on log-out, a new password, or a disabled account."""

from __future__ import annotations

from flask.testing import FlaskClient

from kvmvps.services import Context, audit, users
from tests.badinput import run_cli
from tests.web.conftest import OP, PASSWORD, A, B, World, login
from tests.web.helpers import field_errors, text

COOKIE = "kvmvps_session"
NEW = "a brand new passphrase"


def logged_in(client: FlaskClient) -> bool:
    return client.get("/servers").status_code == 200


def copy_of(world: World, client: FlaskClient) -> FlaskClient:
    """Another browser holding a copy of ``client``'s session cookie (a stolen cookie)."""
    other = world.app.test_client()
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    other.set_cookie(COOKIE, cookie.value)
    return other


def test_logging_out_ends_copies_of_the_session_and_other_sessions(world: World) -> None:
    client = world.client(A)
    stolen, laptop = copy_of(world, client), world.client(A)
    bystander = world.client(B)
    assert logged_in(stolen) and logged_in(laptop)
    assert client.post("/logout").status_code == 302
    assert not logged_in(client) and not logged_in(stolen) and not logged_in(laptop)
    assert logged_in(bystander)  # another user's session is untouched
    assert logged_in(world.client(A))  # logging in again works


def test_changing_the_password_ends_every_other_session(world: World) -> None:
    client, other = world.client(A), world.client(A)
    stolen = copy_of(world, client)
    r = client.post(
        "/account/password", data={"current": PASSWORD, "password": NEW, "confirm": NEW}
    )
    assert r.status_code == 302
    assert "every other session of yours has ended" in text(client.get("/account"))
    assert logged_in(client) and not logged_in(other) and not logged_in(stolen)
    fresh = world.app.test_client()
    assert login(fresh, A).status_code == 401
    assert login(fresh, A, NEW).status_code == 302
    entry = audit.list_entries(world.ctx, action="user.password")[0]
    assert entry["actor"] == f"user:{A}" and entry["result"] == "ok"


def test_a_wrong_current_password_changes_nothing(world: World) -> None:
    client, other = world.client(A), world.client(A)
    r = client.post(
        "/account/password",
        data={"current": "not my password", "password": NEW, "confirm": NEW},
    )
    assert r.status_code == 400
    assert "the current password is wrong" in field_errors(r, "current")
    assert logged_in(client) and logged_in(other)
    assert users.authenticate(world.ctx, A, PASSWORD) is not None
    entry = audit.list_entries(world.ctx, action="user.password")[0]
    assert entry["result"] == "failed" and "wrong" in entry["detail"]
    r = client.post("/account/password", data={"current": PASSWORD, "password": "short"})
    assert r.status_code == 400 and users.authenticate(world.ctx, A, PASSWORD) is not None


def test_the_operators_new_password_ends_the_sessions(world: World) -> None:
    client = world.client(A)
    result = run_cli(world.ctx, "user", "password", A, "--password", NEW)
    assert result.exit_code == 0, result.stderr
    assert not logged_in(client)


def test_disabling_ends_sessions_and_enabling_does_not_revive_them(world: World) -> None:
    client = world.client(A)
    op = world.client(OP)
    user_id = users.get_user(world.ctx, A).id
    assert op.post(f"/admin/users/{user_id}/disable").status_code == 302
    assert not logged_in(client)
    assert op.post(f"/admin/users/{user_id}/enable").status_code == 302
    assert not logged_in(client)
    assert logged_in(world.client(A))


def test_a_session_without_an_epoch_is_not_accepted(world: World, web_ctx: Context) -> None:
    client = world.app.test_client()
    user_id = users.get_user(web_ctx, A).id
    for forged in (str(user_id), f"{user_id}:", f"{user_id}:x", f"{user_id}:-1", "1" * 40 + ":0"):
        with client.session_transaction() as sess:
            sess["_user_id"], sess["_fresh"] = forged, True
        assert not logged_in(client), forged
    with client.session_transaction() as sess:
        sess["_user_id"] = f"{user_id}:0"
    assert logged_in(client)
