"""One audit path on the website and the API: each change is recorded once, by the service.

The views pass the actor (``user:<email>``, for a session or a bearer token)
to the service call; they decide nothing about what changes state. Pages
and reads record nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmvps.services import audit, jobs, users
from kvmvps.services import vps as vps_service
from tests.web.conftest import OP, A, B, World, finish_job


def new_entries(world: World, act: Callable[[], Any]) -> list[dict[str, Any]]:
    """The audit entries ``act`` wrote, oldest first."""
    before = len(audit.list_entries(world.ctx, limit=10_000))
    act()
    after = audit.list_entries(world.ctx, limit=10_000)
    return list(reversed(after[: len(after) - before]))


def test_api_changes_are_recorded_once_and_reads_not_at_all(world: World) -> None:
    client = world.app.test_client()
    headers = world.bearer(A)

    def call(method: str, path: str, **kwargs: Any) -> Any:
        return client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)

    order = {"plan": "nano", "image": "linux", "hostname": "aud1"}
    got = new_entries(world, lambda: call("POST", "/servers", json=order))
    assert [(e["actor"], e["action"], e["target"], e["result"]) for e in got] == [
        (f"user:{A}", "vps.create", "aud1", "ok")
    ]
    placed = world.order(A)  # a running one (recorded by the fixture itself)
    uuid = placed.uuid
    reads = [
        lambda: call("GET", "/servers"),
        lambda: call("GET", f"/servers/{uuid}"),
        lambda: call("GET", f"/jobs/{placed.job}"),
        lambda: call("GET", "/plans"),
        lambda: call("GET", "/images"),
    ]
    for read in reads:
        assert new_entries(world, read) == []
    got = new_entries(
        world, lambda: call("POST", f"/servers/{uuid}/actions", json={"action": "reboot"})
    )
    assert [(e["action"], e["result"]) for e in got] == [("vps.reboot", "ok")]
    assert got[0]["target"] == vps_service.show(world.ctx, uuid)["hostname"]
    # refusals: an operator's action, another customer's server, a bad state
    r = None

    def refused() -> None:
        nonlocal r
        r = call("POST", f"/servers/{uuid}/actions", json={"action": "suspend"})

    got = new_entries(world, refused)
    assert r is not None and r.status_code == 403 and "for operators" in r.get_json()["error"]
    assert [(e["action"], e["result"], e["detail"]) for e in got] == [
        ("vps.pause", "failed", "suspend is for operators")  # the API's suspend pauses
    ]
    theirs = world.order(B)
    got = new_entries(world, lambda: call("DELETE", f"/servers/{theirs.uuid}"))
    assert [(e["action"], e["target"], e["result"]) for e in got] == [
        ("vps.delete", theirs.uuid, "failed")
    ]
    assert got[0]["detail"].startswith("no VPS matches")
    got = new_entries(world, lambda: call("DELETE", f"/servers/{uuid}"))
    assert [(e["action"], e["result"]) for e in got] == [("vps.delete", "failed")]
    assert "already has an action pending" in got[0]["detail"]  # the reboot: one at a time
    for job in jobs.active_jobs(world.ctx, [uuid]).values():
        finish_job(world.ctx, job["id"])
    got = new_entries(world, lambda: call("DELETE", f"/servers/{uuid}"))
    assert [(e["action"], e["result"]) for e in got] == [("vps.delete", "ok")]


def test_site_changes_are_recorded_once(world: World) -> None:
    customer = world.client(A)
    got = new_entries(world, lambda: customer.post("/account", data={"name": "ci"}))
    assert [(e["actor"], e["action"], e["target"]) for e in got] == [
        (f"user:{A}", "token.create", A)
    ]
    for page in ("/servers", "/order", "/account"):
        assert new_entries(world, lambda page=page: customer.get(page)) == []
    op = world.client(OP)
    ids = {u.email: u.id for u in users.list_users(world.ctx)}
    got = new_entries(world, lambda: op.post(f"/admin/users/{ids[B]}/disable"))
    assert [(e["actor"], e["action"], e["target"], e["result"]) for e in got] == [
        (f"user:{OP}", "user.disable", B, "ok")
    ]
    got = new_entries(world, lambda: op.post(f"/admin/users/{ids[OP]}/disable"))
    assert [(e["action"], e["target"], e["result"]) for e in got] == [
        ("user.disable", OP, "failed")
    ]
    for page in ("/admin/servers", "/admin/hosts", "/admin/users", "/admin/audit"):
        assert new_entries(world, lambda page=page: op.get(page)) == []
