"""``vps list`` reads columns, not ORM objects: it must show exactly what ``vps show`` shows.

The listing is the one path that builds a VPS's view from plain rows (for
speed at thousands of VPSes); every other path builds it from the ORM object.
These tests build VPSes with forwards, pins, a rescue image, a suspension, a
failed build, a second owner and a host that stopped answering, and compare
the two views field by field, with every filter.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from kvmvps.errors import InvalidInput
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
        query = vps_service.list_query().order_by(Vps.created_at, Vps.uuid)  # the listing's order
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


# -- pages ---------------------------------------------------------------------
def _walk(ctx: Context, limit: int, **where: object) -> list[list[str]]:
    """Every page of the listing, as hostnames, following each page's next."""
    pages, after = [], None
    while True:
        page = vps_service.list_page(ctx, limit=limit, after=after, **where)  # type: ignore[arg-type]
        pages.append([v["hostname"] for v in page["servers"]])
        if page["next"] is None:
            return pages
        after = page["next"]
        assert len(pages) <= 10, "the pages never end"


def test_pages_show_the_listing_once_in_order(listed_ctx: Context) -> None:
    ctx = listed_ctx
    everything = vps_service.list_vps(ctx)
    assert vps_service.list_page(ctx) == {"servers": everything, "next": None}
    assert _walk(ctx, 1) == [["a1"], ["a2"], ["b1"], ["b2"]]
    assert _walk(ctx, 3) == [["a1", "a2", "b1"], ["b2"]]
    assert _walk(ctx, 4) == [["a1", "a2", "b1", "b2"]]  # no empty page after a full one
    first = vps_service.list_page(ctx, limit="2")
    assert first["servers"] == everything[:2]  # the same views as the whole listing
    assert vps_service.list_page(ctx, limit=2, after=first["next"])["servers"] == everything[2:]
    assert _walk(ctx, 1, owner="other@example.test") == [["b1"], ["b2"]]
    assert _walk(ctx, 1, state="error") == [["b2"]]


def test_a_page_starts_where_the_last_ended_though_that_vps_is_gone(listed_ctx: Context) -> None:
    ctx = listed_ctx
    first = vps_service.list_page(ctx, limit=2)
    assert [v["hostname"] for v in first["servers"]] == ["a1", "a2"]
    assert cli(ctx, "vps", "delete", "a2", "--yes").exit_code == 0
    assert cli(ctx, *create_args("small", "base", "c1")).exit_code == 0  # ordered meanwhile
    rest = vps_service.list_page(ctx, limit=2, after=first["next"])
    assert [v["hostname"] for v in rest["servers"]] == ["b1", "b2"]
    last = vps_service.list_page(ctx, limit=2, after=rest["next"])
    assert [v["hostname"] for v in last["servers"]] == ["c1"] and last["next"] is None


def test_a_customers_pages_hold_only_their_own_whatever_the_cursor(listed_ctx: Context) -> None:
    ctx = listed_ctx
    with ctx.db.reading() as s:
        other = s.scalar(select(Vps.owner_id).where(Vps.hostname == "b1"))
        mine = s.scalar(select(Vps.owner_id).where(Vps.hostname == "a1"))
    # the operator's cursor after a1 (another customer's VPS, to "other")
    operators = vps_service.list_page(ctx, limit=1)["next"]
    page = vps_service.list_page(ctx, owner_id=other, limit=5, after=operators)
    assert [v["hostname"] for v in page["servers"]] == ["b1", "b2"]
    assert vps_service.list_page(ctx, owner_id=mine, limit=5, after=operators)["servers"] == [
        vps_service.list_vps(ctx, owner_id=mine)[1]
    ]
    assert all(v["owner"] != "other@example.test" for v in _own_pages(ctx, mine))


def _own_pages(ctx: Context, owner_id: int) -> list[vps_service.VpsView]:
    shown, after = [], None
    for _ in range(5):
        page = vps_service.list_page(ctx, owner_id=owner_id, limit=1, after=after)
        shown += page["servers"]
        if (after := page["next"]) is None:
            return shown
    raise AssertionError("the pages never end")


BAD_LIMITS = [0, -1, 1001, 10**30, "abc", "1e3", "\uff11", "1 0", "5\x00", True]
_B64 = base64.urlsafe_b64encode
BAD_AFTERS = [
    "x",
    "a" * 500,
    "%%%",
    "\x00",
    "é",
    _B64(b"no tilde here").decode(),
    _B64(b"2026-01-01T00:00:00+00:00~not-a-uuid").decode(),
    _B64(b"2026-01-01T00:00:00~" + b"0" * 8 + b"-0000-0000-0000-" + b"0" * 12).decode(),  # no zone
    _B64(b"yesterday~" + b"0" * 8 + b"-0000-0000-0000-" + b"0" * 12).decode(),
    _B64(b"\xff\xfe~").decode(),
]


def test_a_bad_page_size_or_cursor_is_refused_in_one_line(listed_ctx: Context) -> None:
    ctx = listed_ctx
    for limit in BAD_LIMITS:
        with pytest.raises(InvalidInput, match="^limit must be a whole number from 1 to 1000$"):
            vps_service.list_page(ctx, limit=limit)  # type: ignore[arg-type]
    for after in BAD_AFTERS:
        with pytest.raises(InvalidInput) as refused:
            vps_service.list_page(ctx, limit=2, after=after)
        assert str(refused.value) == "after must be the next of a page, as the listing gave it"
    assert vps_service.list_page(ctx, limit=1000)["next"] is None  # the largest page is fine
    assert len(vps_service.list_vps(ctx)) == 4


def test_the_cli_lists_a_page_and_says_how_to_get_the_next(listed_ctx: Context) -> None:
    ctx = listed_ctx
    shown = cli(ctx, "vps", "list", "--limit", "3")
    assert shown.exit_code == 0, shown.stderr
    assert [line.split()[1] for line in shown.stdout.splitlines()[1:]] == ["a1", "a2", "b1"]
    page = vps_service.list_page(ctx, limit=3)
    assert shown.stderr.strip() == f"next page: --limit 3 --after {page['next']}"
    rest = cli(ctx, "vps", "list", "--limit", "3", "--after", str(page["next"]), "--json")
    assert rest.exit_code == 0, rest.stderr
    assert json.loads(rest.stdout) == vps_service.list_page(ctx, limit=3, after=page["next"])
    assert [v["hostname"] for v in json.loads(rest.stdout)["servers"]] == ["b2"]
    for args in (("--limit", "0"), ("--limit", "2", "--after", "junk")):
        refused = cli(ctx, "vps", "list", *args)
        assert refused.exit_code != 0 and "Traceback" not in refused.output
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "limit must be" in refused.stderr or "after must be" in refused.stderr
