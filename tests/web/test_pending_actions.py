"""One pending action per VPS for customers; capped shutdown waits; no lost passwords.

Website and REST API on the test driver (SQLite and PostgreSQL). Every
refusal is a 409 (or 400) with a plain message, is audited, and changes
nothing: no new job, the sealed pending password untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from kvmvps.errors import Conflict
from kvmvps.models import Job, Vps
from kvmvps.services import Context, actions, audit, jobs
from tests.badinput import assert_one_line_error, run_cli
from tests.web.conftest import OP, A, World, finish_job
from tests.web.helpers import text


def job_count(ctx: Context) -> int:
    with ctx.db.session() as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def sealed(ctx: Context, uuid: str) -> str | None:
    with ctx.db.session() as s:
        return s.scalar(select(Vps.pending_password).where(Vps.uuid == uuid))


Api = Callable[..., TestResponse]


@pytest.fixture
def api(world: World) -> Api:
    client = world.app.test_client()
    headers = world.bearer(A)

    def call(method: str, path: str, **kwargs: Any) -> TestResponse:
        return client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)

    return call


@pytest.mark.parametrize("second", ["reboot", "shutdown", "password_reset", "reinstall", "delete"])
def test_api_second_action_while_one_is_pending_is_409(world: World, api: Api, second: str) -> None:
    placed = world.order(A, image="linux")
    url = f"/servers/{placed.uuid}/actions"
    first = api("POST", url, json={"action": "reboot"})
    assert first.status_code == 202
    before = job_count(world.ctx)
    r = (
        api("DELETE", f"/servers/{placed.uuid}")
        if second == "delete"
        else api("POST", url, json={"action": second})
    )
    assert r.status_code == 409, r.get_json()
    message = r.get_json()["error"]
    assert "already has an action pending: reboot" in message and "\n" not in message
    assert job_count(world.ctx) == before
    assert sealed(world.ctx, placed.uuid) is None
    shown = api("GET", f"/servers/{placed.uuid}").get_json()
    assert shown["state"] == "running"
    failed = audit.list_entries(world.ctx, action=actions.audit_action(second))
    assert failed and failed[0]["result"] == audit.FAILED and "pending" in failed[0]["detail"]
    finish_job(world.ctx, first.get_json()["job"])
    assert api("POST", url, json={"action": "reboot"}).status_code == 202  # free again


def test_web_form_second_action_is_409_with_the_reason(world: World) -> None:
    placed = world.order(A, image="linux")
    client = world.client(A)
    hostname = api_hostname(world, placed.uuid)
    assert client.post(f"/servers/{placed.uuid}/actions/reboot").status_code == 302
    before = job_count(world.ctx)
    for action, data in (
        ("reboot", {}),
        ("shutdown", {}),
        ("password_reset", {"hostname": hostname}),
        ("reinstall", {"hostname": hostname, "image": "linux"}),
        ("delete", {"hostname": hostname}),
    ):
        r = client.post(f"/servers/{placed.uuid}/actions/{action}", data=data)
        assert r.status_code == 409, (action, r.status_code)
        assert "already has an action pending: reboot" in text(r), action
    assert job_count(world.ctx) == before
    assert sealed(world.ctx, placed.uuid) is None
    assert api_state(world, placed.uuid) == "running"
    assert len(audit.list_entries(world.ctx, action="vps.reboot")) == 2  # the ok and the refusal


def api_hostname(world: World, uuid: str) -> str:
    from kvmvps.services import vps as vps_service

    return vps_service.show(world.ctx, uuid)["hostname"]


def api_state(world: World, uuid: str) -> str:
    from kvmvps.services import vps as vps_service

    return vps_service.show(world.ctx, uuid)["state"]


@pytest.mark.parametrize(
    ("first", "second"), [("password_reset", "reinstall"), ("reinstall", "password_reset")]
)
def test_api_second_password_change_keeps_the_first_password(
    world: World, api: Api, first: str, second: str
) -> None:
    placed = world.order(A, image="linux")
    url = f"/servers/{placed.uuid}/actions"
    accepted = api("POST", url, json={"action": first})
    assert accepted.status_code == 202 and accepted.get_json()["password"]
    token = sealed(world.ctx, placed.uuid)
    assert token is not None
    again = api("POST", url, json={"action": second})
    assert again.status_code == 409 and "pending" in again.get_json()["error"]
    assert again.get_json().get("password") is None
    assert sealed(world.ctx, placed.uuid) == token  # the password shown first is still the one


def test_double_submit_in_parallel_queues_one_action(world: World) -> None:
    """A customer firing the same action eight times at once gets one job and seven 409s."""
    placed = world.order(A)
    token = world.token(A)
    statuses: list[int] = []
    gate = threading.Barrier(8)

    def fire() -> None:
        client = world.app.test_client()
        gate.wait()
        r = client.post(
            f"/api/v1/servers/{placed.uuid}/actions",
            json={"action": "reboot"},
            headers={"Authorization": f"Bearer {token}"},
        )
        statuses.append(r.status_code)

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [202] + [409] * 7
    assert len(jobs.list_jobs(world.ctx, vps_uuid=placed.uuid, state="queued")) == 1


@pytest.mark.parametrize(
    ("timeout", "status"), [(120, 202), (120.5, 400), (121, 400), (10**30, 400), (0, 400)]
)
def test_customer_shutdown_timeout_is_capped(
    world: World, api: Api, timeout: float, status: int
) -> None:
    placed = world.order(A)
    before = job_count(world.ctx)
    r = api(
        "POST", f"/servers/{placed.uuid}/actions", json={"action": "shutdown", "timeout": timeout}
    )
    assert r.status_code == status, r.get_json()
    if status == 400:
        assert "timeout must be between 0 and 120 seconds" in r.get_json()["error"]
        assert job_count(world.ctx) == before


def test_operator_may_queue_behind_and_wait_longer(world: World) -> None:
    placed = world.order(A, image="linux")
    first = actions.request(world.ctx, placed.uuid, "reboot", actor="op")
    behind = actions.request(
        world.ctx, placed.uuid, "shutdown", actor="op", timeout=1800, force=False
    )
    assert jobs.get_job(world.ctx, first.job)["state"] == "queued"
    assert jobs.get_job(world.ctx, behind.job)["state"] == "queued"
    operator = world.app.test_client()
    r = operator.post(
        f"/api/v1/servers/{placed.uuid}/actions",
        json={"action": "reboot"},
        headers=world.bearer(OP),
    )
    assert r.status_code == 202  # an operator's API call may queue behind too


def test_operator_second_password_change_is_refused_too(world: World) -> None:
    placed = world.order(A, image="linux")
    first = actions.request(world.ctx, placed.uuid, "password_reset", actor="op")
    token = sealed(world.ctx, placed.uuid)
    with pytest.raises(Conflict, match="has a new password pending: password reset"):
        actions.request(world.ctx, placed.uuid, "reinstall", actor="op")
    before = job_count(world.ctx)
    result = run_cli(world.ctx, "vps", "password-reset", placed.uuid)
    assert_one_line_error(result, 1, "has a new password pending")
    assert job_count(world.ctx) == before and sealed(world.ctx, placed.uuid) == token
    finish_job(world.ctx, first.job)
