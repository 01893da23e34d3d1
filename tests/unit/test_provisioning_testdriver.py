"""The provisioning service end to end on libvirt's test driver."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import func, select

from kvmvps.errors import StepFailed
from kvmvps.models import CpuPin, IpLease, Vps, VpsState
from kvmvps.services import Context, orders, provisioning, steps, vps
from kvmvps.services.provisioning import OrderRequest
from kvmvps.xmlspec import SENTINEL_MAC

ORDER = OrderRequest(plan="small", image="base", hostname="web1")


def leftovers(ctx: Context) -> dict[str, object]:
    """Everything a VPS could leave behind, in libvirt and in the database."""
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    with ctx.db.session() as s:
        counts = {
            "IpLease": s.scalar(
                select(func.count()).select_from(IpLease).where(IpLease.vps_id.is_not(None))
            ),
            "CpuPin": s.scalar(select(func.count()).select_from(CpuPin)),
        }
    return {
        "domains": sorted(hv.list_domains(prefix="kvmvps-")),
        "volumes": hv.list_volumes(ctx.settings.storage_pool),
        "dhcp": [e for e in hv.dhcp_hosts(ctx.settings.network) if e.mac != SENTINEL_MAC],
        **counts,
    }


EMPTY = {"domains": [], "volumes": [], "dhcp": [], "IpLease": 0, "CpuPin": 0}


def test_create_then_delete_leaves_nothing(td_ctx: Context) -> None:
    uuid = orders.create(td_ctx, ORDER).uuid
    shown = vps.show(td_ctx, uuid)
    assert shown["state"] == "running"
    assert shown["ip"] == "10.231.0.2"  # .1 is the gateway
    assert shown["mac"].startswith("52:54:00:")
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    assert hv.state(shown["domain"]) == "running"
    assert {(e.mac, e.ip) for e in hv.dhcp_hosts(td_ctx.settings.network)} == {
        (shown["mac"], shown["ip"]),
        (SENTINEL_MAC, "10.231.0.254"),
    }
    provisioning.delete(td_ctx, uuid)
    assert leftovers(td_ctx) == EMPTY
    with td_ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Vps)) == 0


def test_addresses_macs_and_pins_are_distinct(td_ctx: Context) -> None:
    uuids = [
        orders.create(td_ctx, dataclasses.replace(ORDER, hostname=f"web{i}")).uuid for i in range(3)
    ]
    shown = [vps.show(td_ctx, u) for u in uuids]
    assert [v["ip"] for v in shown] == ["10.231.0.2", "10.231.0.3", "10.231.0.4"]
    assert len({v["mac"] for v in shown}) == 3
    # two host CPUs on the test driver... or whatever it reports: least-pinned first
    assert shown[0]["pinned_cpus"] != shown[1]["pinned_cpus"]
    provisioning.delete(td_ctx, uuids[1])
    again = orders.create(td_ctx, dataclasses.replace(ORDER, hostname="web9")).uuid
    assert vps.show(td_ctx, again)["ip"] == "10.231.0.5"  # never-used addresses come first


@pytest.mark.parametrize("failing", [s.name for s in provisioning.STEPS])
@pytest.mark.parametrize("when", ["before", "after"])
def test_failure_at_each_step_rolls_back(
    td_ctx: Context, monkeypatch: pytest.MonkeyPatch, failing: str, when: str
) -> None:
    """A step that fails before or after doing its work leaves nothing behind."""

    def inject(step: steps.Step) -> steps.Step:
        if step.name != failing:
            return step

        def broken(b: steps.Build) -> None:
            if when == "after":
                step.do(b)
            raise RuntimeError(f"injected failure in {failing}")

        return dataclasses.replace(step, do=broken)

    monkeypatch.setattr(provisioning, "STEPS", tuple(inject(s) for s in provisioning.STEPS))
    with pytest.raises(StepFailed, match=f"failed at step '{failing}'.*injected failure"):
        orders.create(td_ctx, ORDER)
    assert leftovers(td_ctx) == EMPTY
    with td_ctx.db.session() as s:
        row = s.scalar(select(Vps))
        assert row.state == VpsState.ERROR and "injected failure" in row.error
        assert row.ip is None and row.mac is None


def test_power_actions_follow_libvirt(td_ctx: Context) -> None:
    uuid = orders.create(td_ctx, ORDER).uuid
    assert vps.suspend(td_ctx, "web1")["state"] == "suspended"
    assert vps.resume(td_ctx, "web1")["state"] == "running"
    assert vps.destroy(td_ctx, "web1")["state"] == "stopped"
    assert vps.start(td_ctx, uuid[:6])["state"] == "running"
    assert vps.shutdown(td_ctx, "web1", timeout=5)["state"] == "stopped"


def test_vanished_domain_is_marked(td_ctx: Context) -> None:
    uuid = orders.create(td_ctx, ORDER).uuid
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    hv.undefine(vps.show(td_ctx, uuid)["domain"])
    shown = vps.sync_state(td_ctx, uuid)
    assert shown["state"] == "error" and "vanished" in shown["error"]
