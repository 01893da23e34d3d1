"""Reconciliation on the test driver: drift, vanished domains, orphans, the lock."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sqlalchemy import select, update

from kvmvps import xmlrender
from kvmvps.hypervisor import DhcpEntry
from kvmvps.models import Host, Vps
from kvmvps.services import Context, hosts, provisioning, reconcile, runner
from kvmvps.services import vps as vps_service
from kvmvps.services.provisioning import OrderRequest
from kvmvps.xmlspec import DhcpHost, RawVolumeSpec
from tests.badinput import create_args, run_cli
from tests.unit.test_admin_cli import node_uri
from tests.unit.test_host_failure_testdriver import NOBODY

ORPHAN_XML = """<domain type='test'><name>kvmvps-0rphan000000</name><memory>65536</memory>
<os><type>hvm</type></os></domain>"""


def created(ctx: Context, name: str = "web1") -> dict:
    result = run_cli(ctx, *create_args(hostname=name))
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_power_drift_is_corrected(td_ctx: Context) -> None:
    vps = created(td_ctx)
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    hv.destroy(vps["domain"])  # behind kvmvps's back
    report = reconcile.run(td_ctx)
    assert report.drift == [
        {"vps": vps["id"], "hostname": "web1", "from": "running", "to": "stopped"}
    ]
    out = json.loads(run_cli(td_ctx, "vps", "show", "web1", "--json").stdout)
    assert out["state"] == "stopped"
    assert reconcile.run(td_ctx).drift == []  # in sync now


def test_vanished_domain_is_marked(td_ctx: Context) -> None:
    vps = created(td_ctx)
    td_ctx.hypervisor(td_ctx.settings.libvirt_uri).undefine(vps["domain"])
    report = reconcile.run(td_ctx)
    assert [v["vps"] for v in report.vanished] == [vps["id"]]
    assert json.loads(run_cli(td_ctx, "vps", "show", "web1", "--json").stdout)["state"] == "error"


def test_orphans_are_reported_then_removed_with_fix(td_ctx: Context) -> None:
    created(td_ctx)
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    pool, net = td_ctx.settings.storage_pool, td_ctx.settings.network
    hv.define_domain(ORPHAN_XML)
    hv.create_volume(
        pool,
        "kvmvps-0rphan000000.qcow2",
        xmlrender.raw_volume_xml(RawVolumeSpec("kvmvps-0rphan000000.qcow2", 1 << 20)),
    )
    stray = DhcpHost("52:54:00:de:ad:01", "10.231.0.200", "stray")
    hv.add_dhcp_host(
        net, DhcpEntry(stray.mac, stray.ip, stray.name), xmlrender.dhcp_host_xml(stray)
    )

    report = reconcile.run(td_ctx)
    assert [d["domain"] for d in report.orphan_domains] == ["kvmvps-0rphan000000"]
    assert [v["volume"] for v in report.orphan_volumes] == ["kvmvps-0rphan000000.qcow2"]
    assert [(d["mac"], d["ip"]) for d in report.orphan_dhcp] == [(stray.mac, stray.ip)]
    assert hv.domain_exists("kvmvps-0rphan000000")  # only reported

    fixed = json.loads(run_cli(td_ctx, "reconcile", "--fix", "--json").stdout)
    assert fixed["fixed"] and len(fixed["orphan_domains"]) == 1
    assert not hv.domain_exists("kvmvps-0rphan000000")
    assert "kvmvps-0rphan000000.qcow2" not in hv.list_volumes(pool)
    assert stray.mac not in [e.mac for e in hv.dhcp_hosts(net)]
    again = reconcile.run(td_ctx, fix=True)
    assert again.clean and again.drift == []
    assert json.loads(run_cli(td_ctx, "vps", "show", "web1", "--json").stdout)["state"] == "running"


def test_two_reconciles_do_not_fight(td_ctx: Context) -> None:
    assert reconcile.acquire(td_ctx, "first")
    assert not reconcile.acquire(td_ctx, "second")
    results: list[object] = []

    def second() -> None:
        try:
            results.append(reconcile.run(td_ctx, fix=True, holder="second", wait=False))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)

    t = threading.Thread(target=second)
    t.start()
    t.join()
    assert "another reconcile is running" in str(results[0])
    reconcile.release(td_ctx, "first")
    assert reconcile.run(td_ctx, fix=True, holder="second", wait=False).fixed


def test_cli_reconcile_reports_in_words(td_ctx: Context) -> None:
    created(td_ctx)
    out = run_cli(td_ctx, "reconcile").stdout
    assert out.startswith("in sync:")


def test_another_installations_domain_is_not_an_orphan(td_ctx: Context) -> None:
    """Two kvmvps installations (pools) on one libvirt host leave each other alone."""
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    theirs = ORPHAN_XML.replace("kvmvps-0rphan000000", "kvmvps-their000000").replace(
        "<memory>",
        "<metadata><kvmvps:vps xmlns:kvmvps='https://kvmvps.org/xmlns/domain/1' "
        "uuid='x' installation='someoneelse'/></metadata><memory>",
    )
    hv.define_domain(theirs)
    hv.define_domain(ORPHAN_XML)
    try:
        report = reconcile.run(td_ctx, fix=True)
        assert [d["domain"] for d in report.orphan_domains] == ["kvmvps-0rphan000000"]
        assert hv.domain_exists("kvmvps-their000000")
    finally:
        hv.undefine("kvmvps-their000000")


def test_a_domain_removed_between_listing_and_reading_is_no_orphan_and_no_error(
    td_ctx: Context,
) -> None:
    """Another installation on the same libvirtd may remove its domain mid-pass."""
    with td_ctx.db.reading() as s:
        host = s.scalars(select(Host)).one()
    hv = td_ctx.hypervisor(host.uri)
    report = reconcile.Report(fixed=True)
    gone = "kvmvps-0123456789ab"
    assert not hv.domain_exists(gone)
    reconcile._orphan_domains(hv, host, {gone}, True, report, td_ctx.settings.storage_pool)
    assert report.orphan_domains == [] and report.errors == []


def test_hosts_are_passed_together_and_one_that_is_gone_spoils_nothing(
    td_ctx: Context, tmp_path: Path
) -> None:
    """A pass looks at several hosts at once: each host's drift is corrected, one host that
    no longer answers is reported and marked, and the report keeps the hosts' order."""
    ctx = td_ctx
    uris = {"a": ctx.settings.libvirt_uri}
    for name in ("h1", "h2"):
        (tmp_path / name).mkdir()
        uris[name] = node_uri(tmp_path / name)
        hosts.add_host(ctx, name, uris[name])
    with ctx.db.reading() as s:
        first = s.scalar(select(Host.name).where(Host.uri == uris["a"]))
    built = {}
    for name, host in (("a", first), ("b", "h1"), ("c", "h2")):
        order = provisioning.record_order(ctx, OrderRequest("small", "base", name, host=host))
        assert runner.run_inline(ctx, order.job)
        built[name] = vps_service.show(ctx, name)
    assert (built["b"]["host"], built["c"]["host"]) == ("h1", "h2")
    for name, uri in (("a", uris["a"]), ("b", uris["h1"])):  # behind kvmvps's back
        ctx.hypervisor(uri).destroy(built[name]["domain"])
    with ctx.db.session() as s:  # h2's libvirtd is gone
        s.execute(update(Host).where(Host.name == "h2").values(uri=NOBODY))
    report = reconcile.run(ctx)
    assert report.hosts[1:] == ["h1", "h2"]
    assert sorted((d["hostname"], d["to"]) for d in report.drift) == [
        ("a", "stopped"),
        ("b", "stopped"),
    ]
    assert [e.split(":")[0] for e in report.errors] == ["h2", "h2"]  # the error, then the mark
    assert vps_service.show(ctx, "a")["state"] == vps_service.show(ctx, "b")["state"] == "stopped"
    assert vps_service.show(ctx, "c")["state"] == "unknown"  # its host does not answer
    with ctx.db.reading() as s:
        assert s.scalar(select(Host.down_since).where(Host.name == "h2")) is not None
        assert s.scalar(select(Host.down_since).where(Host.name == "h1")) is None


def test_a_state_changed_since_the_pass_read_it_stands(td_ctx: Context) -> None:
    """The pass writes what it found only where the VPS is still as it read it: a job that
    changed the state meanwhile (a start, a delete) is not undone by an older look."""
    vps = created(td_ctx)
    with td_ctx.db.session() as s:
        vps_id = s.scalar(select(Vps.id).where(Vps.uuid == vps["id"]))
        s.execute(update(Vps).where(Vps.id == vps_id).values(state="stopped"))  # the job's
    reconcile._write_states(td_ctx, [(vps_id, "running", "error", "vanished, once")])
    shown = vps_service.show(td_ctx, "web1")
    assert (shown["state"], shown["error"]) == ("stopped", None)
    reconcile._write_states(td_ctx, [(vps_id, "stopped", "error", "vanished, now")])
    shown = vps_service.show(td_ctx, "web1")
    assert (shown["state"], shown["error"]) == ("error", "vanished, now")
