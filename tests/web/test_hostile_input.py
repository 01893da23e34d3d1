"""What a hostile customer types into the website and the API: control characters, huge numbers."""

from __future__ import annotations

import pytest

from kvmvps.services import audit, tokens
from tests.web.conftest import PASSWORD, A, World
from tests.web.helpers import field_errors
from tests.web.test_site import ORDER, vps_count

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
