"""What a hostile customer types into the website and the API: control characters, huge numbers."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from kvmvps.services import audit, jobs, tokens
from tests.web.conftest import OP, PASSWORD, A, World
from tests.web.helpers import field_errors
from tests.web.test_site import ORDER, vps_count
from web.openapi import spec

ESC = "\x1b]0;pwned\x07"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.mark.parametrize(
    ("path", "data", "field"),
    [
        (
            "/signup",
            {"email": f"x{ESC}@example.com", "password": PASSWORD, "confirm": PASSWORD},
            "email",
        ),
        ("/order", {**ORDER, "hostname": f"web{ESC}"}, "hostname"),
        ("/order", {**ORDER, "hostname": "web\u202e1"}, "hostname"),
        ("/order", {**ORDER, "ssh_keys": f"{KEY} me{ESC}"}, "ssh_keys"),
        ("/order", {**ORDER, "plan": f"nano{ESC}"}, "plan"),
        ("/account", {"name": f"ci{ESC}"}, "name"),
    ],
)
def test_forms_refuse_control_characters(world: World, path: str, data: dict, field: str) -> None:
    client = world.client(A)
    if path == "/signup":
        client = world.app.test_client()
    before = vps_count(world.ctx), len(tokens.list_tokens(world.ctx))
    r = client.post(path, data=data)
    assert r.status_code == 400
    assert any("control characters" in e for e in field_errors(r, field)), field_errors(r, field)
    assert (vps_count(world.ctx), len(tokens.list_tokens(world.ctx))) == before


def test_login_with_control_characters_is_refused_and_audited_legibly(world: World) -> None:
    r = world.app.test_client().post("/login", data={"email": f"{A}{ESC}", "password": PASSWORD})
    assert r.status_code == 400
    assert all("\x1b" not in repr(e) for e in audit.list_entries(world.ctx))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"plan": "nano", "image": "base", "hostname": f"web{ESC}"}, "hostname"),
        ({"plan": f"nano{ESC}", "image": "base", "hostname": "web"}, "plan"),
        ({"plan": "nano", "image": "base", "hostname": "web\n"}, "hostname"),
        (
            {"plan": "nano", "image": "base", "hostname": "w", "ssh_keys": [f"{KEY} a{ESC}"]},
            "ssh_keys",
        ),
    ],
)
def test_the_api_refuses_control_characters(world: World, body: dict, field: str) -> None:
    before = vps_count(world.ctx)
    r = world.app.test_client().post("/api/v1/servers", headers=world.bearer(A), json=body)
    assert r.status_code == 400, r.get_json()
    assert field in r.get_json()["fields"]
    assert vps_count(world.ctx) == before


HUGE = ["1" + "0" * 30, "1" + "0" * 400, str(2**63), "1e999", "-1e999", "1" * 4000]


@pytest.mark.parametrize("number", HUGE)
def test_huge_numbers_in_the_api_are_a_400(world: World, number: str) -> None:
    placed = world.order(A)
    client = world.app.test_client()
    headers = {**world.bearer(A), "Content-Type": "application/json"}
    before = vps_count(world.ctx)
    for body in (
        f'{{"action": "shutdown", "timeout": {number}}}',
        f'{{"action": "shutdown", "timeout": 5, "force": {number}}}',
        f'{{"action": {number}}}',
    ):
        r = client.post(f"/api/v1/servers/{placed.uuid}/actions", data=body, headers=headers)
        assert r.status_code == 400, (body[:80], r.get_json())
        assert "error" in r.get_json()
    for field in ("plan", "image", "hostname", "ssh_keys"):
        body = {"plan": "nano", "image": "base", "hostname": "h"}
        raw = json.dumps(body)[:-1] + f', "{field}": {number}}}'
        r = client.post("/api/v1/servers", data=raw, headers=headers)
        assert r.status_code == 400, (field, r.get_json())
    assert vps_count(world.ctx) == before
    assert jobs.list_jobs(world.ctx, vps_uuid=placed.uuid)[0]["kind"] == "create"


def test_huge_ids_in_urls_are_not_found(world: World) -> None:
    op, customer = world.client(OP), world.client(A)
    for number in (2**31, 2**63, 10**30):
        assert customer.post(f"/account/tokens/{number}/revoke").status_code == 404
        assert op.post(f"/admin/users/{number}/disable").status_code == 404


def test_the_openapi_timestamps_are_timezone_aware(world: World) -> None:
    """Every *_at of every API answer is ISO 8601 with an offset, as the document says."""
    placed = world.order(A)
    client, headers = world.app.test_client(), world.bearer(A)
    answers = [
        client.get("/api/v1/servers", headers=headers).get_json()["servers"][0],
        client.get(f"/api/v1/servers/{placed.uuid}", headers=headers).get_json(),
        client.get(f"/api/v1/jobs/{placed.job}", headers=headers).get_json(),
        client.post(
            "/api/v1/servers",
            headers=headers,
            json={"plan": "nano", "image": "base", "hostname": "stamp"},
        ).get_json(),
    ]
    seen = 0
    for answer in answers:
        for key, value in answer.items():
            if key.endswith("_at") and value is not None:
                assert datetime.fromisoformat(value).utcoffset() is not None, (key, value)
                seen += 1
    assert seen >= 7  # servers: created, updated (x3); the job: created
    schemas = spec()["components"]["schemas"]
    for name in ("Server", "Job"):
        for key, schema in schemas[name]["properties"].items():
            if key.endswith("_at"):
                assert schema.get("format") == "date-time", (name, key)


def test_a_refused_token_name_is_audited(world: World) -> None:
    r = world.client(A).post("/account", data={"name": f"ci{ESC}"})
    assert r.status_code == 400 and tokens.list_tokens(world.ctx) == []
    entry = audit.list_entries(world.ctx, action="token.create")[0]
    assert entry["result"] == "failed" and "control characters" in entry["detail"]
