"""No libvirt call is made while a write transaction is open.

On SQLite a write session holds ``BEGIN IMMEDIATE``: every other writer
waits for it. Over ``qemu+ssh`` a libvirt call can take seconds, so the
services ask libvirt before the write transaction (and re-check in it) or
after it. Here the hypervisor adapter of the test driver refuses any call
made while this thread has a write session open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from kvmvps.db import Database
from kvmvps.errors import KvmvpsError
from kvmvps.hypervisor import Hypervisor
from kvmvps.models import Host
from kvmvps.services import (
    Context,
    actions,
    hosts,
    inventory,
    provisioning,
    reconcile,
    runner,
    tuning,
    views,
)
from kvmvps.services import vps as vps_service
from tests.unit.test_admin_cli import node_uri


class InsideWrite(AssertionError):
    """A libvirt call was made inside a write transaction."""


class Guarded:
    """A hypervisor adapter that refuses calls while a write session is open."""

    def __init__(self, real: Hypervisor, depth: threading.local, calls: list[str]) -> None:
        self._real, self._depth, self._calls = real, depth, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._depth, "n", 0):
                raise InsideWrite(f"libvirt call {name} inside a write transaction")
            self._calls.append(name)
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def guarded(td_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> tuple[Context, list[str]]:
    depth = threading.local()
    real_session = Database.session

    @contextmanager
    def counted(self: Database) -> Iterator[Session]:
        depth.n = getattr(depth, "n", 0) + 1
        try:
            with real_session(self) as s:
                yield s
        finally:
            depth.n -= 1

    monkeypatch.setattr(Database, "session", counted)
    real_hypervisor: Callable[[Host | str], Hypervisor] = td_ctx.hypervisor
    calls: list[str] = []
    monkeypatch.setattr(
        td_ctx, "hypervisor", lambda host: Guarded(real_hypervisor(host), depth, calls)
    )
    return td_ctx, calls


def test_the_guard_refuses_a_call_inside_a_write(guarded: tuple[Context, list[str]]) -> None:
    ctx, calls = guarded
    ctx.hypervisor(ctx.settings.libvirt_uri).ping()
    with ctx.db.session(), pytest.raises(InsideWrite, match="host_info"):
        ctx.hypervisor(ctx.settings.libvirt_uri).host_info()
    with ctx.db.reading():
        ctx.hypervisor(ctx.settings.libvirt_uri).host_info()  # reading holds no write lock
    assert calls == ["ping", "host_info"]


def test_an_order_its_build_and_sync_state(guarded: tuple[Context, list[str]]) -> None:
    ctx, calls = guarded
    order = provisioning.record_order(ctx, provisioning.OrderRequest("small", "base", "web1"))
    assert {"ensure_pool", "ensure_network", "dhcp_leases"} <= set(calls)
    runner.run_inline(ctx, order.job)
    assert vps_service.sync_state(ctx, "web1")["state"] == "running"
    ctx.hypervisor(ctx.settings.libvirt_uri).destroy(vps_service.show(ctx, "web1")["domain"])
    assert vps_service.sync_state(ctx, "web1")["state"] == "stopped"
    assert "state" in calls
    for action in ("start", "reboot", "suspend", "resume", "destroy"):
        runner.run_inline(ctx, actions.request(ctx, "web1", action).job)
    assert vps_service.domain_xml(ctx, "web1").startswith("<domain")
    assert reconcile.run(ctx, fix=True).clean
    runner.run_inline(ctx, actions.request(ctx, "web1", "delete").job)
    assert vps_service.list_vps(ctx) == []


def test_network_add_and_remove(guarded: tuple[Context, list[str]]) -> None:
    ctx, calls = guarded
    inventory.add_network(ctx, "lan2", "nat", "10.232.9.0/24")
    assert ctx.hypervisor(ctx.settings.libvirt_uri).network_exists("lan2")
    inventory.remove_network(ctx, "lan2")
    assert not ctx.hypervisor(ctx.settings.libvirt_uri).network_exists("lan2")
    assert {"ensure_network", "remove_network"} <= set(calls)


def test_a_network_refused_in_the_write_is_removed_again(
    guarded: tuple[Context, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The duplicate check runs again in the write; losing it leaves no libvirt network."""
    ctx, _calls = guarded
    checks: list[str] = []
    real = inventory._refuse_duplicate

    def second_time_taken(session: Session, model: type, name: str, what: str) -> None:
        checks.append(name)
        if len(checks) == 2:
            raise inventory.Conflict(f"a {what} named {name!r} already exists")
        real(session, model, name, what)

    monkeypatch.setattr(inventory, "_refuse_duplicate", second_time_taken)
    with pytest.raises(inventory.Conflict, match="already exists"):
        inventory.add_network(ctx, "lan3", "nat", "10.232.10.0/24")
    assert not ctx.hypervisor(ctx.settings.libvirt_uri).network_exists("lan3")
    assert [n.name for n in inventory.list_networks(ctx)] == [ctx.settings.network]


def test_hosts_are_prepared_outside_the_write(
    guarded: tuple[Context, list[str]], tmp_path: Path
) -> None:
    ctx, calls = guarded
    hosts.add_host(ctx, "node2", node_uri(tmp_path))
    hosts.disable_host(ctx, "node2")
    hosts.enable_host(ctx, "node2")
    assert calls.count("ensure_pool") == 2 and "host_info" in calls


def test_plan_edit_asks_libvirt_outside_the_write(guarded: tuple[Context, list[str]]) -> None:
    """The limits go to the running VPS before the plan is written (here libvirt refuses them)."""
    ctx, calls = guarded
    order = provisioning.record_order(ctx, provisioning.OrderRequest("small", "base", "web1"))
    runner.run_inline(ctx, order.job)
    before = views.plan_views(ctx, admin=True)
    calls.clear()
    with pytest.raises(KvmvpsError) as refused:  # the test driver has no CPU tuning
        tuning.edit_plan(ctx, "small", {"cpu_quota_pct": 50})
    assert not isinstance(refused.value, InsideWrite) and calls
    assert views.plan_views(ctx, admin=True) == before
