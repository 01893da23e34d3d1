"""``vps list`` reads columns, not ORM objects: it must show exactly what ``vps show`` shows.

The listing is the one path that builds a VPS's view from plain rows (for
speed at thousands of VPSes); every other path builds it from the ORM object.
These tests build VPSes with forwards, pins, a rescue image, a suspension, a
failed build, a second owner and a host that stopped answering, and compare
the two views field by field, with every filter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from kvmvps.models import Host, Image, Vps
from kvmvps.services import Context, jobs, suspension, users
from kvmvps.services import vps as vps_service
from tests.badinput import create_args
from tests.forwarding import PID, cli

PUBLIC = "198.51.100.9"
OTHER = ("--owner", "other@example.test")


@pytest.fixture
def listed_ctx(td_ctx: Context) -> Iterator[Context]:
    """Four VPSes of two owners, with forwards, in every shape ``view`` distinguishes."""
    settings = dataclasses.replace(
        td_ctx.settings,
        public_address=PUBLIC,
        forward_ports="21000-21009",
        chain_prefix=f"KVL{PID}",
    )
    ctx = Context(settings)
    users.add_user(ctx, "other@example.test", "a long enough password")
    for hostname, owner in (("a1", ()), ("a2", ()), ("b1", OTHER), ("b2", OTHER)):
        built = cli(ctx, *create_args("small", "base", hostname, *owner))  # built by the CLI
        assert built.exit_code == 0, built.stderr
    suspension.suspend(ctx, "a2", "unpaid invoice", actor="os:test")
    with ctx.db.session() as s:
        rescue = s.scalar(select(Image.id))
        s.execute(update(Vps).where(Vps.hostname == "b1").values(rescue_image_id=rescue))
        s.execute(
            update(Vps)
            .where(Vps.hostname == "b2")
            .values(state="error", error="step define failed: libvirt said no at /var/lib/x")
        )
    yield ctx
    ctx.close()


def _orm_views(ctx: Context, **where: object) -> list[vps_service.VpsView]:
    with ctx.db.reading() as s:
        query = vps_service.list_query().order_by(Vps.created_at, Vps.id)
        for name, value in where.items():
            query = query.where(getattr(Vps, name) == value)
        return [vps_service.view(v) for v in s.scalars(query)]


def test_the_listing_equals_the_views_of_the_objects(listed_ctx: Context) -> None:
    ctx = listed_ctx
    everything = vps_service.list_vps(ctx)
    assert [v["hostname"] for v in everything] == ["a1", "a2", "b1", "b2"]
    assert everything == _orm_views(ctx)
    shown = {v["hostname"]: v for v in everything}
    assert shown["a1"]["ssh_host"] == PUBLIC and shown["a1"]["ssh_port"] == 21000
    assert shown["a1"]["pinned_cpus"] == vps_service.show(ctx, "a1")["pinned_cpus"]
    assert shown["a2"]["suspended_reason"] == "unpaid invoice"
    assert shown["b1"]["rescue"] is True and shown["a1"]["rescue"] is False
    assert vps_service.list_vps(ctx, state="error") == _orm_views(ctx, state="error")
    assert vps_service.list_vps(ctx, owner="OTHER@example.test") == [shown["b1"], shown["b2"]]
    assert vps_service.list_vps(ctx, host="nosuchhost") == []
    with ctx.db.reading() as s:
        host = s.scalar(select(Host.name))
    assert vps_service.list_vps(ctx, host=host) == everything


def test_a_customer_sees_plain_words_and_only_their_own(listed_ctx: Context) -> None:
    ctx = listed_ctx
    with ctx.db.reading() as s:
        other = s.scalar(select(Vps.owner_id).where(Vps.hostname == "b1"))
    mine = vps_service.list_vps(ctx, owner_id=other)
    assert [v["hostname"] for v in mine] == ["b1", "b2"]
    failed = mine[1]["error"]
    assert failed and "/var/lib" not in failed and "libvirt" not in failed
    assert failed == vps_service.show(ctx, "b2", owner_id=other)["error"]


def test_a_host_that_does_not_answer_lists_its_settled_vpses_as_unknown(
    listed_ctx: Context,
) -> None:
    ctx = listed_ctx
    with ctx.db.session() as s:
        s.execute(update(Host).values(down_since=jobs.now()))
    listed = vps_service.list_vps(ctx)
    assert listed == _orm_views(ctx)
    states = {v["hostname"]: v["state"] for v in listed}
    assert states["b2"] == "error"  # not settled: shown as it is
    assert states["a1"] == "unknown" and states["a2"] == "unknown"  # running and suspended
