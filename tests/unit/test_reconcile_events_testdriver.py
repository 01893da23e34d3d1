"""A reconcile pass reads only the domains libvirt told of a change of, and each one in turn.

On libvirt's test driver (test:///default, whose node every connection of the
process shares). What a pass read is counted at ``Hypervisor.domain_documents``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from lxml import etree
from sqlalchemy import update

from kvmvps.config import load_settings
from kvmvps.errors import InvalidInput
from kvmvps.hypervisor import Hypervisor, LifecycleWatch
from kvmvps.hypervisor.streams import DomainChanges
from kvmvps.models import Vps
from kvmvps.services import Context, isolation, reconcile
from tests.badinput import create_args, run_cli


def ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The domains whose documents a pass read, in order; a memo of its own (turns from 0)."""
    monkeypatch.setattr(reconcile, "MEMO", isolation.Memo())
    seen: list[str] = []
    read = Hypervisor.domain_documents

    def counted(self: Hypervisor, name: str, live: bool) -> list[tuple[bool, str]]:
        seen.append(name)
        return read(self, name, live)

    monkeypatch.setattr(Hypervisor, "domain_documents", counted)
    yield seen


def two(ctx: Context) -> tuple[dict, dict]:
    """Two running VPSes, and every event of their builds told (see :func:`settle`)."""
    vpses = ok(ctx, *create_args()), ok(ctx, *create_args(hostname="web2"))
    settle(ctx)
    return vpses


def settle(ctx: Context, change: Callable[[], object] | None = None) -> None:
    """Make ``change`` and wait until libvirt told of it, and of everything before it.

    libvirt tells of events in order, a little later. A watch registered after
    the pass's callbacks hears of an event after them; a throwaway domain
    defined last is heard of after everything before it.
    """
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    heard = threading.Event()
    watch = LifecycleWatch(ctx.settings.libvirt_uri, lambda name: name == BARRIER and heard.set())
    try:
        if change is not None:
            change()
        hv.define_domain(BARRIER_XML)
        assert heard.wait(10), "libvirt told of nothing"
    finally:
        watch.close()
        hv.undefine(BARRIER)


BARRIER = "settle-barrier"
BARRIER_XML = (
    f"<domain type='test'><name>{BARRIER}</name><memory>1024</memory>"
    "<os><type>hvm</type></os></domain>"
)


def expected(names: list[str], turn: int, recheck: int, told: set[str] = frozenset()) -> list[str]:
    """The domains a pass number ``turn`` reads: those told of, and those whose turn came."""
    return sorted(n for n in names if n in told or isolation.due(turn, n, recheck))


def strip_definition(hv: Hypervisor, domain: str) -> None:
    root = etree.fromstring(hv.domain_xml(domain, inactive=True).encode())
    nic = root.find("devices/interface")
    nic.remove(nic.find("filterref"))
    hv.define_domain(etree.tostring(root, encoding="unicode"))


def problems(report: reconcile.Report) -> list[tuple[str, str]]:
    return [(i["hostname"], i["problem"]) for i in report.isolation]


FILTER = "kvmvps-clean-traffic-open-ipv6"


def passes(ctx: Context, reads: list[str], count: int) -> tuple[list[list[str]], list]:
    """``count`` passes: what each read (sorted), and every isolation problem found."""
    each, found = [], []
    for _ in range(count):
        before = len(reads)
        found += problems(reconcile.run(ctx, incremental=True))
        each.append(sorted(reads[before:]))
    return each, found


def test_a_clean_pass_is_followed_by_ones_that_read_only_what_changed(
    td_ctx: Context, reads: list[str]
) -> None:
    mine, other = two(td_ctx)
    names = [mine["domain"], other["domain"]]
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    each, found = passes(td_ctx, reads, 4)
    assert found == []
    assert each[0] == sorted(names)  # the first pass of a process reads everything
    assert each[1:] == [expected(names, turn, 10) for turn in (1, 2, 3)]
    assert sum(map(len, each[1:])) < 6  # one turn in ten: not every domain every pass
    settle(td_ctx, lambda: strip_definition(hv, mine["domain"]))
    each, found = passes(td_ctx, reads, 1)
    assert found == [("web1", "definition: filter is missing, not " + FILTER)]
    assert each == [expected(names, 4, 10, told={mine["domain"]})]


def test_a_change_nobody_tells_of_is_found_within_the_recheck_passes(
    td_ctx: Context, reads: list[str]
) -> None:
    """A change libvirt told nobody of (a live device update in place, on a real host):
    the domain's turn finds it, within N passes. (The test driver has no device updates:
    a definition changed, and its events swallowed, stands in for one.)"""
    td_ctx.settings = replace(td_ctx.settings, reconcile_recheck_passes=3)
    mine, other = two(td_ctx)
    names = [mine["domain"], other["domain"]]
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    assert passes(td_ctx, reads, 1)[1] == []
    settle(td_ctx, lambda: strip_definition(hv, mine["domain"]))
    hv.domain_changes()  # whatever libvirt told of is swallowed: as if it had told nothing
    turn = next(t for t in (1, 2, 3) if isolation.due(t, mine["domain"], 3))
    each, found = passes(td_ctx, reads, 3)
    # found in its turn; read in every pass after that (the test driver cannot put it back)
    assert found == [("web1", "definition: filter is missing, not " + FILTER)] * (4 - turn)
    wrong = {mine["domain"]}
    assert each == [expected(names, t, 3, told=wrong if t > turn else set()) for t in (1, 2, 3)]
    assert sum(isolation.due(t, other["domain"], 3) for t in (1, 2, 3)) == 1


def test_every_pass_reads_everything_with_a_recheck_of_one(
    td_ctx: Context, reads: list[str]
) -> None:
    td_ctx.settings = replace(td_ctx.settings, reconcile_recheck_passes=1)
    mine, other = two(td_ctx)
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    passes(td_ctx, reads, 1)
    settle(td_ctx, lambda: strip_definition(hv, other["domain"]))
    hv.domain_changes()  # swallowed, as in the test above
    each, found = passes(td_ctx, reads, 2)
    # found at once, and again in the next pass (the test driver cannot put it back)
    assert found == [("web2", "definition: filter is missing, not " + FILTER)] * 2
    assert each == [sorted([mine["domain"], other["domain"]])] * 2


def test_after_a_lost_connection_every_domain_is_read(td_ctx: Context, reads: list[str]) -> None:
    """Events may have been missed while the connection was down: nothing is taken as clean."""
    mine, other = two(td_ctx)
    names = sorted([mine["domain"], other["domain"]])
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    passes(td_ctx, reads, 2)
    hv.close()
    assert passes(td_ctx, reads, 1) == ([names], [])
    hv._forget(hv._connection())  # as a call that found libvirtd gone does
    assert passes(td_ctx, reads, 1) == ([names], [])
    assert passes(td_ctx, reads, 1) == ([expected(names, 4, 10)], [])


def test_the_operators_reconcile_reads_every_domain(td_ctx: Context, reads: list[str]) -> None:
    """``kvmvps-admin reconcile`` trusts no memo: a change nobody told of is found at once."""
    mine, other = two(td_ctx)
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    passes(td_ctx, reads, 2)
    settle(td_ctx, lambda: strip_definition(hv, other["domain"]))
    hv.domain_changes()  # swallowed
    reads.clear()
    report = ok(td_ctx, "reconcile", "--json")
    assert [(i["hostname"], i["problem"]) for i in report["isolation"]] == [
        ("web2", "definition: filter is missing, not " + FILTER)
    ]
    assert sorted(reads) == sorted([mine["domain"], other["domain"]])


def test_a_change_in_the_database_or_the_settings_is_read_at_once(
    td_ctx: Context, reads: list[str]
) -> None:
    mine, other = two(td_ctx)
    names = [mine["domain"], other["domain"]]
    passes(td_ctx, reads, 1)
    with td_ctx.db.session() as s:
        s.execute(update(Vps).where(Vps.uuid == other["id"]).values(ip="10.231.0.99"))
    each, found = passes(td_ctx, reads, 1)
    assert {h for h, _ in found} == {"web2"}  # the filter's address differs: put back
    assert each == [expected(names, 1, 10, told={other["domain"]})]
    td_ctx.settings = replace(td_ctx.settings, reconcile_recheck_passes=7)
    assert passes(td_ctx, reads, 1)[0] == [sorted(names)]


def test_domain_changes_says_when_anything_may_have_changed() -> None:
    changes = DomainChanges()
    assert changes.take() is None  # attached to nothing: nothing is known
    changes.following = True
    assert changes.take() == set()

    class Dom:
        def __init__(self, name: str) -> None:
            self._name = name

        def name(self) -> str:
            return self._name

    changes._on_event(None, Dom("a"), 0, 0, None)
    changes._on_event(None, Dom("b"), "alias", None)
    assert changes.take() == {"a", "b"}
    assert changes.take() == set()
    changes._on_event(None, Dom("a"), 0, 0, None)
    changes.lost()
    assert changes.take() is None
    assert changes.take() == set()


@pytest.mark.parametrize("value", ["0", "1001", "-3", "ten", "1.5"])
def test_a_bad_recheck_setting_is_one_line(value: str) -> None:
    with pytest.raises(InvalidInput) as err:
        load_settings({"KVMVPS_RECONCILE_RECHECK_PASSES": value})
    assert "KVMVPS_RECONCILE_RECHECK_PASSES" in str(err.value)
    assert "\n" not in str(err.value)
