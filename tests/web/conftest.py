"""Fixtures for the website and API: the app over ``td_ctx`` (test driver, SQLite or PostgreSQL).

Customers A and B and an operator exist in every test; ``World`` makes
fresh VPSes (recorded, then marked running in the database: no worker runs
here), log-ins and API tokens.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from kvmvps.models import Image, Job, JobState, Vps, VpsState
from kvmvps.services import Context, inventory, provisioning, tokens, users
from tests.unit.conftest import database_url, td_ctx  # noqa: F401 - fixtures used here
from web import create_app

PASSWORD = "correct horse battery"
A, B, OP = "alice@example.com", "bob@example.com", "ops@example.com"
CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def make_app(ctx: Context, csrf: bool = False, **extra: Any) -> Flask:
    config = {
        "KVMVPS_CONTEXT": ctx,
        "SECRET_KEY": "test-secret",
        "TESTING": True,
        "WTF_CSRF_ENABLED": csrf,
        "RATELIMIT_ENABLED": False,
        "HTTPS": False,  # the test client talks plain HTTP, as the demo does
        **extra,
    }
    return create_app(config)


def csrf_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = CSRF_INPUT.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


@pytest.fixture
def web_ctx(td_ctx: Context) -> Context:  # noqa: F811 - the imported fixture
    """td_ctx plus image 'linux' that takes a password, and a tiny plan 'nano'."""
    with td_ctx.db.session() as s:
        base = inventory.get_by_name(s, Image, "base", "image").base_path
    inventory.add_image(td_ctx, "linux", base, login_user="vps", credentials=True)
    inventory.add_plan(td_ctx, "nano", 1, 16, 1, price_cents=299)
    for email, admin in ((A, False), (B, False), (OP, True)):
        users.add_user(td_ctx, email, PASSWORD, admin=admin)
    return td_ctx


@pytest.fixture
def app(web_ctx: Context) -> Flask:
    """The app with CSRF checks off (tests of CSRF use ``csrf_app``)."""
    return make_app(web_ctx)


@pytest.fixture
def csrf_app(web_ctx: Context) -> Flask:
    return make_app(web_ctx, csrf=True)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def login(
    client: FlaskClient, email: str, password: str = PASSWORD, token: str | None = None
) -> Any:
    data = {"email": email, "password": password}
    if token is not None:
        data["csrf_token"] = token
    return client.post("/login", data=data)


@dataclass
class World:
    """Users, their log-ins, VPSes and tokens, made on demand."""

    ctx: Context
    app: Flask
    names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def client(self, email: str | None) -> FlaskClient:
        client = self.app.test_client()
        if email is not None:
            page = client.get("/login")
            token = csrf_token(page.get_data(as_text=True)) if self.csrf else None
            assert login(client, email, token=token).status_code == 302
        return client

    @property
    def csrf(self) -> bool:
        return bool(self.app.config["WTF_CSRF_ENABLED"])

    def order(
        self, email: str, image: str = "base", plan: str = "nano", running: bool = True
    ) -> provisioning.Order:
        """A VPS recorded for ``email``; marked running with its build done unless told."""
        name = f"vm{next(self.names)}"
        placed = provisioning.record_order(
            self.ctx,
            provisioning.OrderRequest(plan, image, name, owner_email=email),
            actor=f"user:{email}",
        )
        if running:
            finish_build(self.ctx, placed)
        return placed

    def token(self, email: str) -> str:
        return tokens.create_token(self.ctx, email, "test")[0]

    def bearer(self, email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(email)}"}


def finish_build(ctx: Context, placed: provisioning.Order) -> None:
    """What a worker's successful build leaves in the database (no guest is run)."""
    with ctx.db.session() as s:
        s.execute(
            update(Vps)
            .where(Vps.uuid == placed.uuid)
            .values(
                state=VpsState.RUNNING,
                pending_password=None,
                host_key_fingerprint="SHA256:testfingerprintAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )
        )
        s.execute(
            update(Job)
            .where(Job.uuid == placed.job)
            .values(state=JobState.SUCCEEDED, progress=100, step="credentials")
        )


def finish_job(ctx: Context, job: str) -> None:
    with ctx.db.session() as s:
        s.execute(update(Job).where(Job.uuid == job).values(state=JobState.SUCCEEDED, progress=100))


@pytest.fixture
def world(app: Flask, web_ctx: Context) -> World:
    return World(web_ctx, app)


@pytest.fixture
def csrf_world(csrf_app: Flask, web_ctx: Context) -> World:
    return World(web_ctx, csrf_app)
