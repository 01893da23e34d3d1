"""Per-customer quotas: refused orders leave nothing behind, parallel orders cannot slip
past, operators are not limited on their own account, the shop marks full plans.
"""

from __future__ import annotations

import re
import threading

import pytest
from sqlalchemy import update

from kvmvps.errors import InvalidInput, QuotaExceeded
from kvmvps.models import Host
from kvmvps.services import audit, provisioning, quotas, users, views
from tests.badinput import assert_one_line_error, run_cli
from tests.snapshots import db_snapshot
from tests.web.conftest import OP, A, World
from tests.web.helpers import forbid_libvirt, text

ORDER = {"plan": "nano", "image": "base"}


def rows(world: World) -> dict:
    """Every row but the API tokens' (a token's use is recorded on it)."""
    return {k: v for k, v in db_snapshot(world.ctx).items() if k != "api_tokens"}


def test_an_order_over_quota_is_refused_and_leaves_nothing(world: World, monkeypatch) -> None:
    quotas.set_quota(world.ctx, A, {"vps": 1}, "os:root")
    world.order(A)
    headers = world.bearer(A)
    forbid_libvirt(monkeypatch)
    before = rows(world)
    api = world.app.test_client()
    r = api.post("/api/v1/servers", headers=headers, json={**ORDER, "hostname": "over1"})
    assert r.status_code == 403, r.get_json()
    assert r.get_json()["error"].startswith("this order needs 1 VPS(es)")
    assert "uses 1 of 1" in r.get_json()["error"]
    site = world.client(A)
    r = site.post("/order", data={**ORDER, "hostname": "over2"})
    assert r.status_code == 403 and "uses 1 of 1" in text(r)
    assert rows(world) == before  # no VPS row, address, port, pin or job
    failed = [
        e for e in audit.list_entries(world.ctx, action="vps.create") if e["result"] == "failed"
    ]
    assert {e["target"] for e in failed} == {"over1", "over2"}


def test_memory_and_vcpu_limits_count_every_vps(world: World) -> None:
    quotas.set_quota(world.ctx, A, {"memory_mib": 40, "vcpus": 5}, "os:root")
    world.order(A)
    world.order(A)  # 32 of 40 MiB
    with pytest.raises(QuotaExceeded, match="16 MiB of memory and alice@example.com uses 32 of 40"):
        world.order(A)
    shown = quotas.quota_view(world.ctx, A)
    assert shown["memory_mib"] == {"limit": 40, "used": 32, "own": True}
    assert shown["vps"]["own"] is False and shown["vcpus"]["used"] == 2


def test_the_dashboard_shows_usage_against_quota(world: World) -> None:
    quotas.set_quota(world.ctx, A, {"vps": 3}, "os:root")
    world.order(A)
    page = world.client(A).get("/servers").get_data(as_text=True)
    assert re.search(r'data-quota="vps">\s*1 of 3\s', page)
    assert "Your limits" in text(world.client(A).get("/order"))
    assert "Your limits" not in text(world.client(OP).get("/servers"))  # operators: none


def test_operators_are_not_limited_on_their_own_account(world: World) -> None:
    quotas.set_quota(world.ctx, OP, {"vps": 0}, "os:root")
    r = world.app.test_client().post(
        "/api/v1/servers", headers=world.bearer(OP), json={**ORDER, "hostname": "mine"}
    )
    assert r.status_code == 202, r.get_json()


def test_an_operator_ordering_for_a_customer_meets_their_quota(world: World) -> None:
    quotas.set_quota(world.ctx, A, {"vps": 0}, "os:root")
    before = db_snapshot(world.ctx)
    result = run_cli(
        world.ctx,
        *("vps", "create", "--plan", "nano", "--image", "base", "--hostname", "forA"),
        *("--owner", A),
    )
    assert_one_line_error(result, 1, "uses 0 of 0")
    assert db_snapshot(world.ctx) == before


@pytest.mark.parametrize("value", ["99999999999999999999", "-1", "ten", "1e3", "1\n2", "٣"])
def test_cli_quota_refuses_bad_numbers(world: World, value: str) -> None:
    before = db_snapshot(world.ctx)
    assert_one_line_error(run_cli(world.ctx, "user", "quota", A, "--vps", value), 2)
    assert db_snapshot(world.ctx) == before


def test_cli_quota_sets_shows_and_resets(world: World) -> None:
    assert_one_line_error(run_cli(world.ctx, "user", "quota", "nobody@x.org", "--vps", "1"), 2)
    assert run_cli(world.ctx, "user", "quota", A, "--vps", "2", "--disk-gib", "7").exit_code == 0
    shown = quotas.quota_view(world.ctx, A)
    assert shown["vps"]["limit"] == 2 and shown["disk_gib"]["limit"] == 7
    result = run_cli(world.ctx, "user", "quota", A, "--vps", "default")
    assert result.exit_code == 0 and "vps" in result.stdout
    assert quotas.quota_view(world.ctx, A)["vps"]["own"] is False
    with pytest.raises(InvalidInput):
        quotas.set_quota(world.ctx, A, {"vps": 10**30}, "os:root")
    with pytest.raises(InvalidInput):
        quotas.set_quota(world.ctx, A, {"bogus": 1}, "os:root")


def test_admin_quota_form_refuses_a_huge_number(world: World) -> None:
    op = world.client(OP)
    user_id = next(u for u in _users(world) if u["email"] == A)["id"]
    before = db_snapshot(world.ctx)
    for value in ("9" * 5000, "99999999999", "-3", "<b>"):
        r = op.post(f"/admin/users/{user_id}/quota", data={"vps": value}, follow_redirects=True)
        assert r.status_code == 200 and "saved" not in text(r)
    assert db_snapshot(world.ctx) == before
    r = op.post(f"/admin/users/{user_id}/quota", data={"vps": "4"}, follow_redirects=True)
    assert "are saved" in text(r) and quotas.quota_view(world.ctx, A)["vps"]["limit"] == 4


def _users(world: World) -> list[dict]:
    return users.user_rows(world.ctx)


def test_parallel_orders_cannot_both_slip_under_the_limit(world: World) -> None:
    quotas.set_quota(world.ctx, A, {"vps": 2}, "os:root")
    world.order(A)
    barrier, results = threading.Barrier(4), []

    def order(n: int) -> None:
        barrier.wait()
        try:
            provisioning.record_order(
                world.ctx, provisioning.OrderRequest("nano", "base", f"race{n}", owner_email=A)
            )
            results.append("ok")
        except QuotaExceeded:
            results.append("refused")

    threads = [threading.Thread(target=order, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "refused", "refused", "refused"]
    assert quotas.quota_view(world.ctx, A)["vps"]["used"] == 2


def test_the_shop_marks_plans_no_host_can_fit(world: World, monkeypatch) -> None:
    with world.ctx.db.session() as s:
        s.execute(update(Host).values(memory_mib=20))  # room for nano (16), not small (256)
    forbid_libvirt(monkeypatch)
    listed = {p["name"]: p["available"] for p in views.plan_views(world.ctx)}
    assert listed == {"nano": True, "small": False}
    api = world.app.test_client().get("/api/v1/plans", headers=world.bearer(A)).get_json()
    assert {p["name"]: p["available"] for p in api["plans"]} == listed
    page = text(world.app.test_client().get("/"))
    assert "sold out" in page and "Choose nano" in page and "Choose small" not in page
    order_page = world.client(A).get("/order").get_data(as_text=True)
    assert 'value="small" disabled' in order_page and 'value="nano" disabled' not in order_page
