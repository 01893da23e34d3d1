"""The REST API: JSON in and out, bearer tokens, field errors, the OpenAPI document."""

from __future__ import annotations

import logging
import re

import pytest

from kvmvps.limits import LIMIT_FIELDS
from kvmvps.services import audit, jobs
from kvmvps.services import vps as vps_service
from kvmvps.services.vps import VIEW_KEYS
from tests.web.conftest import A, B, World, finish_job
from tests.web.helpers import assert_not_stored, forbid_libvirt_work

ORDER = {"plan": "nano", "image": "linux", "hostname": "api1"}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop"


@pytest.fixture
def api(world: World):
    """A client that sends A's bearer token with every call."""
    client = world.app.test_client()
    headers = world.bearer(A)

    def call(method: str, path: str, **kwargs):
        return client.open(
            f"/api/v1{path}",
            method=method,
            headers={**headers, **kwargs.pop("headers", {})},
            **kwargs,
        )

    return call


def test_plans_and_images_show_no_host_paths(api) -> None:
    plans = api("GET", "/plans").get_json()["plans"]
    assert {p["name"] for p in plans} == {"nano", "small"}
    nano = next(p for p in plans if p["name"] == "nano")
    assert nano == {
        "name": "nano",
        "vcpus": 1,
        "memory_mib": 16,
        "disk_gib": 1,
        "price_cents": 299,
        "network": None,
        "available": True,
        "limits": {f.name: None for f in LIMIT_FIELDS},
        "limits_summary": [],
    }
    images = api("GET", "/images").get_json()["images"]
    assert [i["name"] for i in images] == ["base", "linux"]
    assert all("base_path" not in i and "kernel" not in i for i in images)


def test_create_answers_202_with_the_password_once(world: World, api, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    tried = forbid_libvirt_work(monkeypatch)
    r = api("POST", "/servers", json={**ORDER, "ssh_keys": [KEY]})
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert set(body) == set(VIEW_KEYS) | {"job", "password"}
    assert body["state"] == "queued" and body["owner"] == A and body["hostname"] == "api1"
    assert isinstance(body["password"], str) and len(body["password"]) >= 16
    assert r.headers["Location"].endswith(f"/api/v1/servers/{body['id']}")
    assert "Set-Cookie" not in r.headers and tried == []
    assert jobs.get_job(world.ctx, body["job"])["state"] == "queued"
    shown = api("GET", f"/servers/{body['id']}").get_json()
    assert set(shown) == set(VIEW_KEYS) and "password" not in shown
    listed = api("GET", "/servers").get_json()["servers"]
    assert [s["id"] for s in listed] == [body["id"]] and "password" not in listed[0]
    for path in (f"/servers/{body['id']}", "/servers", f"/jobs/{body['job']}"):
        assert body["password"] not in api("GET", path).get_data(as_text=True)
    assert_not_stored(world.ctx, body["password"])
    assert body["password"] not in caplog.text
    assert audit.list_entries(world.ctx, action="vps.create")[0]["target"] == "api1"


def test_images_without_credentials_give_no_password(api) -> None:
    r = api("POST", "/servers", json={**ORDER, "image": "base"})
    assert r.status_code == 202 and r.get_json()["password"] is None


@pytest.mark.parametrize(
    ("body", "field", "message", "status"),
    [
        ({"hostname": "web_1;reboot"}, "hostname", "not a valid DNS label", 400),
        ({"hostname": "a" * 64}, "hostname", "too long", 400),
        ({"hostname": 7}, "hostname", "must be a string", 400),
        ({"plan": "nope"}, "plan", "no plan named 'nope'", 400),
        ({"plan": None}, "plan", "choose a plan", 400),
        ({"image": "nope"}, "image", "no image named 'nope'", 400),
        ({"image": "i" * 100}, "image", "too long", 400),
        ({"ssh_keys": ["hello"]}, "ssh_keys", "not an SSH public key", 400),
        (
            {"ssh_keys": ["ssh-ed25519 AAAAnotbase64!!"]},
            "ssh_keys",
            "malformed SSH public key",
            400,
        ),
        ({"ssh_keys": KEY}, "ssh_keys", "must be a list of strings", 400),
        ({"ssh_keys": [KEY] * 21}, "ssh_keys", "at most 20", 400),
        ({"ssh_keys": [1]}, "ssh_keys", "must be a list of strings", 400),
        ({"colour": "blue"}, "colour", "unknown field", 400),
        ({"hostname": "taken"}, "hostname", "you already have a VPS named 'taken'", 409),
    ],
)
def test_create_bad_input_gives_field_errors(
    world: World, api, body: dict, field: str, message: str, status: int
) -> None:
    assert api("POST", "/servers", json={**ORDER, "hostname": "taken"}).status_code == 202
    before = len(vps_service.list_vps(world.ctx))
    r = api("POST", "/servers", json={**ORDER, **body})
    assert r.status_code == status, r.get_json()
    error = r.get_json()
    assert message in error["fields"][field] and message in error["error"]
    assert len(vps_service.list_vps(world.ctx)) == before


def test_several_field_errors_at_once(api) -> None:
    r = api("POST", "/servers", json={"plan": "x", "image": "y", "hostname": "-"})
    assert r.status_code == 400 and set(r.get_json()["fields"]) == {"plan", "image", "hostname"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "must be a JSON object"),
        (b"   ", "must be a JSON object"),
        (b"not json", "not valid JSON"),
        (b'{"plan": "nano",', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2]", "not a JSON array"),
        (b'"nano"', "not a JSON string"),
        (b"null", "not a JSON null"),
        (b"42", "not a JSON number"),
        (b"[" * 30_000 + b"]" * 30_000, "not valid JSON"),
    ],
)
@pytest.mark.parametrize("path", ["/servers", "/servers/{id}/actions"])
def test_bodies_that_are_not_json_objects_are_400(
    world: World, api, raw: bytes, message: str, path: str
) -> None:
    placed = world.order(A)
    r = api(
        "POST", path.format(id=placed.uuid), data=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    assert message in r.get_json()["error"]


def test_too_large_a_body_is_413_json(api) -> None:
    r = api(
        "POST",
        "/servers",
        data=b'{"x": "' + b"a" * 70_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413 and "error" in r.get_json()


def test_actions(world: World, api, monkeypatch) -> None:
    tried = forbid_libvirt_work(monkeypatch)
    placed = world.order(A, image="linux")
    url = f"/servers/{placed.uuid}/actions"
    r = api("POST", url, json={"action": "format_disk"})
    assert r.status_code == 400 and "must be one of" in r.get_json()["fields"]["action"]
    r = api("POST", url, json={"action": "start"})
    assert r.status_code == 409 and "cannot start" in r.get_json()["error"]
    r = api("POST", url, json={"action": "shutdown", "timeout": "soon"})
    assert r.status_code == 400 and "timeout" in r.get_json()["fields"]
    r = api("POST", url, json={"action": "shutdown", "timeout": 99999})
    assert r.status_code == 400 and "timeout must be between 0 and" in r.get_json()["error"]
    r = api("POST", url, json={"action": "password_reset"})
    assert r.status_code == 202
    reset = r.get_json()
    assert reset["action"] == "password_reset" and len(reset["password"]) >= 16
    assert jobs.get_job(world.ctx, reset["job"])["kind"] == "password_reset"
    finish_job(world.ctx, reset["job"])
    r = api("POST", url, json={"action": "reinstall", "image": "nope"})
    assert r.status_code == 404 and "no image named 'nope'" in r.get_json()["error"]
    r = api("POST", url, json={"action": "reboot"})
    assert r.status_code == 202 and r.get_json()["password"] is None
    assert tried == []
    assert_not_stored(world.ctx, reset["password"])


def test_delete(world: World, api) -> None:
    placed = world.order(A)
    r = api("DELETE", f"/servers/{placed.uuid}")
    assert r.status_code == 202 and r.get_json()["id"] == placed.uuid
    assert api("GET", f"/servers/{placed.uuid}").get_json()["state"] == "deleting"
    r = api("DELETE", f"/servers/{placed.uuid}")
    assert r.status_code == 409 and "it is deleting" in r.get_json()["error"]


def test_someone_elses_server_and_job_are_404(world: World, api) -> None:
    theirs = world.order(B)
    for method, path in (
        ("GET", f"/servers/{theirs.uuid}"),
        ("DELETE", f"/servers/{theirs.uuid}"),
        ("GET", f"/jobs/{theirs.job}"),
        ("GET", f"/jobs/{theirs.job[:8]}"),
    ):
        r = api(method, path)
        assert r.status_code == 404 and "no " in r.get_json()["error"], (method, path)
    r = api("POST", f"/servers/{theirs.uuid}/actions", json={"action": "reboot"})
    assert r.status_code == 404
    assert vps_service.show(world.ctx, theirs.uuid)["state"] == "running"


def test_jobs_of_my_server(world: World, api) -> None:
    mine = world.order(A)
    job = api("GET", f"/jobs/{mine.job}").get_json()
    assert job["id"] == mine.job and job["state"] == "succeeded" and job["vps"] == mine.uuid
    assert api("GET", f"/jobs/{mine.job[:8]}").get_json()["id"] == mine.job
    assert api("GET", "/jobs/" + "f" * 200).status_code == 400


def test_routing_errors_are_json(api) -> None:
    r = api("GET", "/nothing-here")
    assert r.status_code == 404 and "error" in r.get_json()
    r = api("PUT", "/servers")
    assert r.status_code == 405 and "error" in r.get_json()
    assert "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]


def _flask_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?([a-z_]+)>", r"{\1}", rule)


def test_openapi_document_matches_the_routes(world: World) -> None:
    doc = world.app.test_client().get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    routes = {
        (_flask_path(r.rule.removeprefix("/api/v1")), m.lower())
        for r in world.app.url_map.iter_rules()
        if r.endpoint.startswith("api.")
        for m in r.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == routes
    server = doc["components"]["schemas"]["Server"]
    assert set(server["properties"]) == set(VIEW_KEYS) == set(server["required"])
    actions = doc["components"]["schemas"]["ActionRequest"]["properties"]["action"]["enum"]
    from web.api import CUSTOMER_ACTIONS, OPERATOR_ACTIONS, ORDER_FIELDS

    assert set(actions) == set(CUSTOMER_ACTIONS + OPERATOR_ACTIONS)
    order = doc["components"]["schemas"]["OrderRequest"]["properties"]
    assert set(order) == set(ORDER_FIELDS)
    for path, item in doc["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            params = item.get("parameters", [])
            assert any(p["name"] == name and p["in"] == "path" for p in params), path


def test_documented_shapes_match_the_answers(world: World, api) -> None:
    doc = world.app.test_client().get("/api/v1/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    placed = world.order(A)
    assert set(api("GET", f"/jobs/{placed.job}").get_json()) == set(schemas["Job"]["properties"])
    plan = api("GET", "/plans").get_json()["plans"][0]
    assert set(plan) == set(schemas["Plan"]["properties"])
    image = api("GET", "/images").get_json()["images"][0]
    assert set(image) == set(schemas["Image"]["properties"])
    action = api("POST", f"/servers/{placed.uuid}/actions", json={"action": "reboot"}).get_json()
    assert set(action) == set(schemas["ActionAccepted"]["properties"])


def test_a_lost_race_for_the_hostname_is_409(world: World, api, monkeypatch) -> None:
    from sqlalchemy.exc import IntegrityError

    from kvmvps.services import ordering, provisioning

    assert api("POST", "/servers", json=ORDER).status_code == 202
    monkeypatch.setattr(provisioning, "check_order", lambda *a, **k: {})  # the web's early check
    r = api("POST", "/servers", json=ORDER)  # record_order's own check
    assert r.status_code == 409 and "already has a VPS named 'api1'" in r.get_json()["error"]

    def racing(*_a, **_k):
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(ordering, "_insert_order", racing)  # its commit lost the race
    r = api("POST", "/servers", json={**ORDER, "hostname": "api2"})
    assert r.status_code == 409 and "you already have a VPS named 'api2'" in r.get_json()["error"]


def test_servers_come_a_page_at_a_time_and_only_ones_own(world: World, api) -> None:
    mine = [world.order(A).uuid for _ in range(3)]
    theirs = world.order(B).uuid
    whole = api("GET", "/servers").get_json()
    assert [s["id"] for s in whole["servers"]] == mine and whole["next"] is None
    first = api("GET", "/servers?limit=2").get_json()
    assert [s["id"] for s in first["servers"]] == mine[:2]
    rest = api("GET", f"/servers?limit=2&after={first['next']}").get_json()
    assert [s["id"] for s in rest["servers"]] == mine[2:] and rest["next"] is None
    # a cursor taken from the operator's listing, just before B's server, shows B nothing
    everyone = vps_service.list_page(world.ctx, limit=3)
    assert everyone["next"] is not None
    after_b = api("GET", f"/servers?after={everyone['next']}").get_json()
    assert after_b == {"servers": [], "next": None}
    assert theirs not in str(api("GET", "/servers?limit=1").get_json())
    for query, message in (
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=1001", "limit must be a whole number from 1 to 1000"),
        ("limit=%00", "limit must be a whole number from 1 to 1000"),
        ("after=junk", "after must be the next of a page, as the listing gave it"),
        ("after=" + "A" * 5000, "after must be the next of a page, as the listing gave it"),
    ):
        r = api("GET", f"/servers?{query}")
        assert r.status_code == 400 and r.get_json()["error"] == message, query
