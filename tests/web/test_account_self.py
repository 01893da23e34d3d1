"""Customers serve themselves: e-mail, forgotten password, 2FA, saved keys, one-time secrets.

Mail goes to a real SMTP server (aiosmtpd) the test starts on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes

import pyotp
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flask.testing import FlaskClient
from sqlalchemy import select, update

from kvmvps.models import AccountToken, Job, JobState, SavedKey, User, Vps
from kvmvps.services import Context, jobs, saved_keys, tokens, users
from tests.web.conftest import OP, PASSWORD, A, B, World, finish_job, login, make_app
from tests.web.helpers import assert_not_stored, shown_password, text

NEW = "a brand new password"
LINK = re.compile(r"http://localhost/\S+")


class Mailbox:
    """What the local SMTP server received."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.content))  # type: ignore[attr-defined]
        return "250 OK"

    def wait(self, count: int, timeout: float = 10) -> list[tuple[list[str], str]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        out = []
        for to, raw in self.messages:
            body = message_from_bytes(raw).get_payload(decode=True)
            out.append((to, body.decode() if isinstance(body, bytes) else ""))
        return out


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    with socket.socket() as probe:  # a free port (the controller cannot be told port 0)
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = Controller(box, hostname="127.0.0.1", port=port, server_hostname="localhost")
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def mail_ctx(web_ctx: Context, mailbox: tuple[Mailbox, int]) -> Context:
    settings = dataclasses.replace(
        web_ctx.settings,
        smtp_host="127.0.0.1",
        smtp_port=mailbox[1],
        smtp_starttls=0,
        smtp_from="noreply@example.com",
    )
    return Context(settings)


def _link(body: str) -> str:
    match = LINK.search(body)
    assert match, body
    return match.group(0).removeprefix("http://localhost")


def public_key(comment: str = "me@laptop") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}"


# -- tokens: POST, redirect, GET --------------------------------------------------------
def test_a_token_is_made_once_and_shown_once_after_the_redirect(
    world: World, web_ctx: Context
) -> None:
    client = world.client(A)
    made = client.post("/account", data={"name": "deploy"})
    assert made.status_code == 302 and made.location.endswith("/account")
    page = text(client.get("/account"))
    token = re.search(r'id="token" type="text" readonly value="([^"]+)"', page)
    assert token and token.group(1).startswith("kvp_")
    again = text(client.get("/account"))  # the reload
    assert token.group(1) not in again and "Your new token" not in again
    assert [t["name"] for t in tokens.list_tokens(web_ctx, A)] == ["deploy"]
    assert_not_stored(web_ctx, token.group(1))
    client = world.client(A)
    wrong = client.post("/account/email", data={"email": "a2@example.com", "current": "nope"})
    assert wrong.status_code == 400
    assert "the current password is wrong" in text(wrong)
    for bad in ("a\x1b[31m@example.com", "x" * 300 + "@example.com", B):
        refused = client.post("/account/email", data={"email": bad, "current": PASSWORD})
        assert refused.status_code in (400, 409), bad
    assert users.get_user(world.ctx, A).email == A
    done = client.post("/account/email", data={"email": "A2@Example.com", "current": PASSWORD})
    assert done.status_code == 302
    assert users.get_user(world.ctx, "a2@example.com").id
    assert client.get("/servers").status_code == 200  # still logged in under the new address


def test_a_new_email_waits_for_the_mailed_link(
    mail_ctx: Context, mailbox: tuple[Mailbox, int]
) -> None:
    app = make_app(mail_ctx)
    client = app.test_client()
    assert login(client, A).status_code == 302
    sent = client.post("/account/email", data={"email": "new@example.com", "current": PASSWORD})
    assert sent.status_code == 302
    (to, body), *_ = mailbox[0].wait(1)
    assert to == ["new@example.com"]
    assert users.get_user(mail_ctx, A).email == A  # not before the link is opened
    link = _link(body)
    assert client.get(link).status_code == 200  # a page with a button: scanners change nothing
    assert users.get_user(mail_ctx, A).email == A
    assert client.post(link).status_code == 302
    assert users.get_user(mail_ctx, "new@example.com").email == "new@example.com"
    assert client.post(link).status_code == 400  # used
    app = make_app(mail_ctx)
    old = app.test_client()
    assert login(old, B).status_code == 302
    client = app.test_client()
    known = client.post("/password/forgot", data={"email": B})
    unknown = client.post("/password/forgot", data={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 200
    answer = re.compile(r"<div class=\"alert alert-info\"[^>]*>(.*?)</div>", re.S)
    assert answer.findall(text(known)) == answer.findall(text(unknown))
    mails = mailbox[0].wait(2)[1:]
    time.sleep(0.3)  # would a third (wrong) mail arrive?
    assert [to for to, _ in mailbox[0].wait(2)[1:]] == [[B]]
    link = _link(mails[0][1])
    secret = link.rsplit("/", 1)[1]
    assert client.get(link).status_code == 200
    short = client.post(link, data={"password": "short", "confirm": "short"})
    assert short.status_code == 400
    done = client.post(link, data={"password": NEW, "confirm": NEW})
    assert done.status_code == 302
    assert old.get("/servers").status_code == 302  # every old session ended
    assert login(app.test_client(), B, NEW).status_code == 302
    replay = client.post(
        link, data={"password": "another password!", "confirm": "another password!"}
    )
    assert replay.status_code == 400
    assert login(app.test_client(), B, "another password!").status_code != 302
    assert_not_stored(mail_ctx, secret)
    client = make_app(mail_ctx).test_client()
    client.post("/password/forgot", data={"email": "new@example.com"})
    link = _link(mailbox[0].wait(3)[2][1])
    with mail_ctx.db.session() as s:
        s.execute(update(AccountToken).values(expires_at=jobs.now() - timedelta(seconds=1)))
    assert client.get(link).status_code == 400
    assert client.post(link, data={"password": NEW, "confirm": NEW}).status_code == 400
    for forged in ("/password/reset/x", "/password/reset/" + "a" * 5000, "/password/reset/%00"):
        assert client.post(forged, data={"password": NEW, "confirm": NEW}).status_code in (400, 404)
    assert login(client, "new@example.com", NEW).status_code != 302
    assert login(make_app(mail_ctx).test_client(), "new@example.com").status_code == 302


def test_reset_requests_are_limited_and_need_mail(web_ctx: Context, mail_ctx: Context) -> None:
    nomail = make_app(web_ctx).test_client()
    assert nomail.post("/password/forgot", data={"email": A}).status_code == 400
    limited = make_app(mail_ctx, RATELIMIT_ENABLED=True, RESET_LIMIT="3/hour").test_client()
    codes = [limited.post("/password/forgot", data={"email": A}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    ctrl = limited.post("/password/forgot", data={"email": "a\x00@example.com"})
    assert ctrl.status_code in (400, 429)


# -- TOTP ---------------------------------------------------------------------------------
def _enroll(client: FlaskClient) -> tuple[pyotp.TOTP, list[str]]:
    page = text(client.get("/account/2fa"))
    assert 'src="data:image/svg+xml' in page
    secret = re.search(r"data-totp-secret>([A-Z2-7]+)<", page)
    assert secret
    totp = pyotp.TOTP(secret.group(1))
    wrong = client.post(
        "/account/2fa", data={"code": "000000" if totp.now() != "000000" else "111111"}
    )
    assert wrong.status_code == 400
    first = totp.now()
    done = client.post("/account/2fa", data={"code": first})
    assert done.status_code == 302
    shown = text(client.get("/account/2fa"))
    codes = re.findall(r"data-recovery-code>([0-9a-f-]+)<", shown)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert "data-recovery-code" not in text(client.get("/account/2fa"))  # shown once
    return totp, [first, *codes]


def _second_step(client: FlaskClient, code: str) -> int:
    return client.post("/login/code", data={"code": code}).status_code


def test_two_factor_login_refuses_wrong_and_replayed_codes(world: World, web_ctx: Context) -> None:
    client = world.client(A)
    totp, (used, *codes) = _enroll(client)
    with web_ctx.db.reading() as s:
        stored = s.scalar(select(User.totp_secret).where(User.email == A))
    assert stored and totp.secret not in stored  # sealed
    assert_not_stored(web_ctx, totp.secret)
    for code in codes:
        assert_not_stored(web_ctx, code)
    fresh = world.app.test_client()
    first = login(fresh, A)
    assert first.status_code == 302 and first.location.endswith("/login/code")
    assert fresh.get("/servers").status_code == 302  # no session before the code
    assert _second_step(fresh, "123") == 401
    assert _second_step(fresh, used) == 401  # spent when the factor was turned on
    assert fresh.get("/servers").status_code == 302
    nxt = totp.at(time.time() + 30)
    assert _second_step(fresh, nxt) == 302
    assert fresh.get("/servers").status_code == 200
    again = world.app.test_client()
    login(again, A)
    assert _second_step(again, nxt) == 401  # the same code twice
    assert _second_step(again, codes[0]) == 302  # a recovery code
    third = world.app.test_client()
    login(third, A)
    assert _second_step(third, codes[0]) == 401  # once only
    assert world.app.test_client().get("/login/code").status_code == 302
    later = codes[1]  # a recovery code stands in for a code here too
    no_pw = client.post("/account/2fa/off", data={"password": "wrong!", "code": later})
    assert no_pw.status_code == 400
    no_code = client.post("/account/2fa/off", data={"password": PASSWORD, "code": "999999x"})
    assert no_code.status_code == 400
    off = client.post("/account/2fa/off", data={"password": PASSWORD, "code": later})
    assert off.status_code == 302
    assert login(world.app.test_client(), A).location.endswith("/servers")


def test_guessing_codes_is_limited(web_ctx: Context) -> None:
    app = make_app(web_ctx, RATELIMIT_ENABLED=True, CODE_LIMIT="3/hour")
    client = app.test_client()
    assert login(client, B).status_code == 302
    totp, _codes = _enroll(client)
    guesser = app.test_client()
    assert login(guesser, B).status_code == 302
    tries = [_second_step(guesser, f"{n:06d}") for n in range(4)]
    assert tries[:2] == [401, 401] and tries[-1] == 429  # (enrolling counted a wrong code too)
    assert _second_step(guesser, totp.at(time.time() + 30)) == 429  # even the right one now


def test_operators_need_two_factor_when_required(web_ctx: Context) -> None:
    ctx = Context(dataclasses.replace(web_ctx.settings, require_2fa_admins=1))
    client = make_app(ctx).test_client()
    assert login(client, OP).status_code == 302
    page = client.get("/admin/users")
    assert page.status_code == 302 and page.location.endswith("/account/2fa")
    _enroll(client)
    assert client.get("/admin/users").status_code == 200


# -- saved keys ------------------------------------------------------------------------------
def test_saved_keys_are_offered_at_order_time(world: World, web_ctx: Context) -> None:
    client = world.client(A)
    key = public_key()
    assert client.post("/account/keys", data={"public_key": key}).status_code == 302
    twice = client.post("/account/keys", data={"public_key": key})
    assert twice.status_code == 409
    for bad in ("ssh-ed25519 AAAAnotakey", "hello", key + "\x1b[2J", "ssh-rsa " + "A" * 20000):
        assert client.post("/account/keys", data={"public_key": bad}).status_code == 400
    with web_ctx.db.reading() as s:
        (saved,) = s.scalars(select(SavedKey))
    order = client.get("/order")
    assert f'name="saved_keys" value="{saved.id}"' in text(order)
    made = client.post(
        "/order",
        data={"plan": "nano", "image": "linux", "hostname": "withkey", "saved_keys": [saved.id]},
    )
    assert made.status_code == 302
    with web_ctx.db.reading() as s:
        keys = s.scalar(select(Vps.ssh_keys).where(Vps.hostname == "withkey"))
    assert keys == key
    b = world.client(B)
    assert b.post("/account/keys", data={"public_key": public_key("bob")}).status_code == 302
    with web_ctx.db.reading() as s:
        bobs = s.scalar(select(SavedKey.id).where(SavedKey.name == "bob"))
    a = world.client(A)
    taken = a.post(
        "/order",
        data={"plan": "nano", "image": "linux", "hostname": "stolen", "saved_keys": [bobs]},
    )
    assert taken.status_code == 400
    assert f"no saved key with id {bobs}" in text(taken)
    for weird in ("-1", "99999999999999999999", "1 OR 1=1"):
        bad = a.post(
            "/order",
            data={"plan": "nano", "image": "linux", "hostname": "w", "saved_keys": [weird]},
        )
        assert bad.status_code == 400
    assert a.post(f"/account/keys/{bobs}/delete").status_code == 404
    with web_ctx.db.reading() as s:
        assert s.scalar(select(Vps.id).where(Vps.hostname == "stolen")) is None
        assert s.scalar(select(SavedKey.id).where(SavedKey.name == "bob")) == bobs


# -- a new password waits until shown once ----------------------------------------------------------
def test_a_new_password_waits_in_the_database_until_shown_once(
    world: World, web_ctx: Context
) -> None:
    client = world.client(A)
    made = client.post("/order", data={"plan": "nano", "image": "linux", "hostname": "later"})
    assert made.status_code == 302
    with web_ctx.db.reading() as s:
        vps = s.scalar(select(Vps).where(Vps.hostname == "later"))
        job = s.scalar(select(Job.uuid).where(Job.vps_uuid == vps.uuid))
    with web_ctx.db.session() as s:  # the build ends while the customer is away
        s.execute(
            update(Vps).where(Vps.id == vps.id).values(state="running", pending_password=None)
        )
    finish_job(web_ctx, job)
    elsewhere = world.client(A)  # another browser, a new session
    listing = text(elsewhere.get("/servers"))
    assert "A new password for later is waiting" in listing
    assert world.client(B).get(f"/servers/{vps.uuid}/credentials").status_code == 404
    shown = shown_password(elsewhere.get(f"/servers/{vps.uuid}/credentials"))
    assert shown and len(shown) >= 12
    assert shown_password(elsewhere.get(f"/servers/{vps.uuid}/credentials")) is None
    assert shown_password(client.get(f"/servers/{vps.uuid}/credentials")) is None
    assert "is waiting" not in text(elsewhere.get("/servers"))
    assert_not_stored(web_ctx, shown)
    placed = world.order(A, image="linux")
    client = world.client(A)
    assert "data-host-key-changed" not in text(client.get(f"/servers/{placed.uuid}"))
    asked = client.post(
        f"/servers/{placed.uuid}/actions/reinstall", data={"hostname": "vm1", "image": "linux"}
    )
    assert asked.status_code == 302
    with web_ctx.db.session() as s:
        job = s.scalar(select(Job.uuid).where(Job.kind == "reinstall"))
        s.execute(
            update(Vps)
            .where(Vps.uuid == placed.uuid)
            .values(host_key_fingerprint="SHA256:newkeyBBBB")
        )
        s.execute(update(Job).where(Job.uuid == job).values(state=JobState.SUCCEEDED))
    page = text(client.get(f"/servers/{placed.uuid}"))
    assert "data-host-key-changed" in page and "SHA256:newkeyBBBB" in page
    assert "ssh-keygen -R" in page


def test_the_api_orders_with_saved_keys_of_the_caller_only(world: World, web_ctx: Context) -> None:
    key = public_key("api")
    mine = saved_keys.add_key(web_ctx, users.get_user(web_ctx, A).id, key)
    theirs = saved_keys.add_key(web_ctx, users.get_user(web_ctx, B).id, public_key("b"))
    api = world.app.test_client()
    auth = world.bearer(A)
    order = {"plan": "nano", "image": "linux", "hostname": "apikey"}
    for bad, status in (([theirs["id"]], 400), (["1"], 400), ([True], 400), ([10**30], 400)):
        r = api.post("/api/v1/servers", json={**order, "saved_keys": bad}, headers=auth)
        assert r.status_code == status and "saved_keys" in r.get_json()["fields"], bad
    made = api.post("/api/v1/servers", json={**order, "saved_keys": [mine["id"]]}, headers=auth)
    assert made.status_code == 202
    with web_ctx.db.reading() as s:
        assert s.scalar(select(Vps.ssh_keys).where(Vps.hostname == "apikey")) == key
