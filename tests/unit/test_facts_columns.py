"""A reconcile pass reads each VPS's facts as columns of one query, not ORM objects:
those facts must be exactly the ones every other path loads from the objects."""

from __future__ import annotations

from sqlalchemy import select, update

from kvmvps.models import Plan, Vps
from kvmvps.services import Context, provisioning, runner
from kvmvps.services.facts import facts_from_row, facts_query, load_facts, pins_of


def _both(ctx: Context) -> tuple[list[object], list[object]]:
    with ctx.db.reading() as s:
        ids = select(Vps.id)
        pins = pins_of(s, ids)
        rows = s.execute(facts_query().order_by(Vps.id)).all()
        from_rows = [facts_from_row(r, pins.get(r.id, ()), ctx.settings) for r in rows]
        from_objects = [
            load_facts(s, vps_id, ctx.settings) for vps_id in s.scalars(ids.order_by(Vps.id))
        ]
    return from_rows, from_objects


def test_the_facts_of_rows_equal_the_facts_of_objects(td_ctx: Context) -> None:
    ctx = td_ctx
    for hostname in ("f1", "f2", "f3"):
        order = provisioning.record_order(ctx, provisioning.OrderRequest("small", "base", hostname))
        assert runner.run_inline(ctx, order.job)
    with ctx.db.session() as s:
        # limits on the plan, one VPS held to a transfer throttle, one without an address
        s.execute(update(Plan).values(cpu_shares=512, net_in_kibps=8000, net_out_kibps=4000))
        s.execute(update(Vps).where(Vps.hostname == "f2").values(throttle_kibps=1000))
        s.execute(update(Vps).where(Vps.hostname == "f3").values(ip=None, ipv6=None))
    from_rows, from_objects = _both(ctx)
    assert len(from_rows) == 3
    assert from_rows == from_objects
    by_name = {f.hostname: f for f in from_rows}  # type: ignore[attr-defined]
    # what the comparison covers is there to compare: pins, IPv6, the throttle, the limits
    assert by_name["f1"].pinned_cpus and by_name["f1"].ipv6 and by_name["f1"].ipv6_gateway
    assert by_name["f2"].limits.net_in_kibps == 1000 and by_name["f1"].limits.net_in_kibps == 8000
    assert by_name["f3"].ip is None and by_name["f1"].limits.cpu_shares == 512
