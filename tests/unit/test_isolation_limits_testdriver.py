"""Network isolation and plan limits on the test driver: XML, CLI, bad input, reconcile."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from lxml import etree

from kvmvps import limits
from kvmvps.errors import HypervisorError, InvalidInput
from kvmvps.hvtypes import NicState
from kvmvps.services import Context, isolation, reconcile
from kvmvps.services.facts import DOMAIN_PREFIX
from tests.badinput import assert_one_line_error, create_args, run_cli
from tests.snapshots import snapshot


def ok(ctx: Context, *args: str) -> dict | list:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def nic_of(ctx: Context, domain: str) -> etree._Element:
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    return etree.fromstring(hv.domain_xml(domain, inactive=True).encode()).find("devices/interface")


def test_every_guest_nic_is_filtered_and_isolated(td_ctx: Context) -> None:
    vps = ok(td_ctx, *create_args())
    nic = nic_of(td_ctx, vps["domain"])
    ref = nic.find("filterref")
    # clean-traffic plus the IPv6 source check (the network has an IPv6 prefix)
    assert ref.get("filter") == "kvmvps-clean-traffic-open-ipv6"
    params = sorted((p.get("name"), p.get("value")) for p in ref.iterfind("parameter"))
    assert params == [("IP", vps["ip"]), ("IPV6", vps["ipv6"]), ("MAC", vps["mac"])]
    assert nic.find("port").get("isolated") == "yes"


def test_a_network_may_allow_guest_traffic(td_ctx: Context) -> None:
    net = ok(
        td_ctx,
        "network",
        "add",
        "open",
        "--subnet",
        "10.236.0.0/24",
        "--allow-guest-traffic",
        "--json",
    )
    assert net["allow_guest_traffic"] is True
    listed = {n["name"]: n["allow_guest_traffic"] for n in ok(td_ctx, "network", "list", "--json")}
    assert listed == {td_ctx.settings.network: False, "open": True}
    vps = ok(td_ctx, *create_args(hostname="web2"), "--network", "open")
    nic = nic_of(td_ctx, vps["domain"])
    assert nic.find("port") is None  # not isolated
    # still filtered
    assert nic.find("filterref").get("filter") == "kvmvps-clean-traffic-open-ipv6"


def test_reconcile_reports_a_stripped_filter(td_ctx: Context) -> None:
    """The test driver cannot update devices: the loss is reported as an error."""
    vps = ok(td_ctx, *create_args())
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    root = etree.fromstring(hv.domain_xml(vps["domain"], inactive=True).encode())
    nic = root.find("devices/interface")
    nic.remove(nic.find("filterref"))
    nic.remove(nic.find("port"))
    hv.define_domain(etree.tostring(root, encoding="unicode"))
    report = reconcile.run(td_ctx)
    problems = [i["problem"] for i in report.isolation]
    assert any("filter is missing" in p for p in problems), report.isolation
    assert any("port isolation off" in p for p in problems), report.isolation
    assert not report.clean and any("fix failed" in e for e in report.errors)


def _strip_filter(hv, domain: str) -> None:
    root = etree.fromstring(hv.domain_xml(domain, inactive=True).encode())
    nic = root.find("devices/interface")
    nic.remove(nic.find("filterref"))
    hv.define_domain(etree.tostring(root, encoding="unicode"))


def test_a_pass_knows_which_domains_run_from_one_listing(td_ctx: Context) -> None:
    """Reconcile checks a running guest's live NIC too; whether it runs comes from the
    host's listing (one call), and libvirt is asked only of a domain the listing lacks."""
    vps = ok(td_ctx, *create_args())
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    listed = hv.list_domains(prefix=DOMAIN_PREFIX)
    assert listed == {vps["domain"]: "running"}
    assert isolation.Known(listed).active(hv, vps["domain"]) is True
    hv.destroy(vps["domain"])
    listed = hv.list_domains(prefix=DOMAIN_PREFIX)
    assert listed == {vps["domain"]: "shut off"}
    assert isolation.Known(listed).active(hv, vps["domain"]) is False
    assert isolation.Known({}).active(hv, vps["domain"]) is False  # asked: shut off
    hv.start(vps["domain"])
    assert isolation.Known({}).active(hv, vps["domain"]) is True  # asked: running


def test_start_as_refuses_another_domains_xml_and_starts_nothing(td_ctx: Context) -> None:
    """The first boot's XML must be the domain's own: never another guest's NIC or disk."""
    mine, theirs = ok(td_ctx, *create_args()), ok(td_ctx, *create_args(hostname="web2"))
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    hv.destroy(mine["domain"])
    foreign = hv.domain_xml(theirs["domain"], inactive=True)
    with pytest.raises(HypervisorError, match="another domain's"):
        hv.start_as(mine["domain"], foreign)
    assert hv.state(mine["domain"]) == "shut off"
    assert hv.state(theirs["domain"]) == "running"


def test_a_link_left_down_is_a_problem_reconcile_reports() -> None:
    want = NicState(
        mac="52:54:00:aa:bb:cc", filter="kvmvps-clean-traffic", parameters=(), isolated=True
    )
    assert isolation.problems(want, want) == []
    assert isolation.problems(replace(want, link_down=True), want) == ["link down"]
    stripped = replace(want, filter=None, link_down=True)
    assert isolation.problems(stripped, want) == [
        "filter is missing, not kvmvps-clean-traffic",
        "link down",
    ]


LIMIT_ARGS = (
    "--cpu-shares",
    "512",
    "--cpu-quota-pct",
    "50",
    "--disk-bytes-sec",
    "2097152",
    "--disk-write-iops",
    "100",
    "--net-out-kibps",
    "1024",
    "--net-out-burst-kib",
    "64",
)


def test_plan_limits_are_listed_and_rendered(td_ctx: Context) -> None:
    args = ("plan", "add", "capped", "--vcpus", "1", "--memory-mib", "256", "--disk-gib", "1")
    plan = ok(td_ctx, *args, *LIMIT_ARGS, "--json")
    assert plan["limits"]["cpu_quota_pct"] == 50 and plan["limits"]["disk_iops"] is None
    assert "disk: 2 MiB/s" in plan["limits_summary"]
    listed = {p["name"]: p for p in ok(td_ctx, "plan", "list", "--json")}
    assert listed["small"]["limits"] == {f.name: None for f in limits.LIMIT_FIELDS}
    assert listed["capped"]["limits"]["net_out_kibps"] == 1024
    table = run_cli(td_ctx, "plan", "list").stdout
    assert "network out: 1 MiB/s" in table

    vps = ok(td_ctx, *create_args(plan="capped"))
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    root = etree.fromstring(hv.domain_xml(vps["domain"], inactive=True).encode())
    assert root.findtext("cputune/shares") == "512"
    assert root.findtext("cputune/quota") == "50000"
    assert root.findtext("devices/disk/iotune/total_bytes_sec") == "2097152"
    assert root.findtext("devices/disk/iotune/write_iops_sec") == "100"
    out = root.find("devices/interface/bandwidth/outbound")
    assert (out.get("average"), out.get("burst")) == ("1024", "64")


BAD_LIMITS = [
    (["--cpu-quota-pct", "-5"], "--cpu-quota-pct must be a whole number"),
    (["--cpu-quota-pct", "101"], "from 1 to 100"),
    (["--cpu-shares", "99999999999999999999999"], "--cpu-shares must be a whole number"),
    (["--disk-bytes-sec", str(1 << 50)], "--disk-bytes-sec must be from"),
    (["--disk-bytes-sec", "1\n2"], "--disk-bytes-sec must be a whole number"),
    (["--net-in-kibps", "1\x1b[2J"], "--net-in-kibps must be a whole number"),
    (["--net-in-peak-kibps", "10"], "need --net-in-kibps"),
    (["--net-out-kibps", "100", "--net-out-peak-kibps", "50"], "must not be below"),
    (["--disk-bytes-sec", "8192", "--disk-read-bytes-sec", "8192"], "excludes"),
    (["--disk-iops", "0"], "--disk-iops must be from 1"),
    (["--net-out-burst-kib", "４"], "must be a whole number"),
]


@pytest.mark.parametrize(("extra", "fragment"), BAD_LIMITS)
def test_bad_limits_change_nothing(td_ctx: Context, extra: list[str], fragment: str) -> None:
    before = snapshot(td_ctx)
    args = ("plan", "add", "bad", "--vcpus", "1", "--memory-mib", "256", "--disk-gib", "1")
    assert_one_line_error(run_cli(td_ctx, *args, *extra), 2, fragment)
    assert_one_line_error(run_cli(td_ctx, "plan", "edit", "small", *extra), 2, fragment)
    assert snapshot(td_ctx) == before


def test_plan_edit_and_lifting_a_limit(td_ctx: Context) -> None:
    args = ("plan", "add", "other", "--vcpus", "1", "--memory-mib", "256", "--disk-gib", "1")
    ok(td_ctx, *args, "--json")
    edited = ok(td_ctx, "plan", "edit", "other", "--disk-bytes-sec", "1048576", "--json")
    assert edited["limits"]["disk_bytes_sec"] == 1 << 20 and edited["vps_updated"] == 0
    lifted = ok(td_ctx, "plan", "edit", "other", "--disk-bytes-sec", "unlimited", "--json")
    assert lifted["limits"]["disk_bytes_sec"] is None
    assert_one_line_error(run_cli(td_ctx, "plan", "edit", "other"), 2, "nothing to change")
    assert_one_line_error(
        run_cli(td_ctx, "plan", "edit", "nope", "--cpu-shares", "5"), 2, "no plan"
    )


def test_plan_edit_that_a_guest_refuses_changes_nothing(td_ctx: Context) -> None:
    """The test driver refuses these I/O limits: the plan row stays as it was."""
    ok(td_ctx, *create_args())
    assert ok(td_ctx, "vps", "destroy", "web1", "--json")["state"] == "stopped"
    before = snapshot(td_ctx)
    result = run_cli(td_ctx, "plan", "edit", "small", "--disk-bytes-sec", "1048576")
    assert_one_line_error(result, 1, "set I/O limits")
    assert snapshot(td_ctx) == before


def test_limits_check_refuses_odd_values() -> None:
    with pytest.raises(InvalidInput, match="whole number"):
        limits.check({"cpu_shares": True})
    with pytest.raises(InvalidInput, match="unknown limit"):
        limits.check({"gpu": 1})
    assert limits.check({"cpu_quota_pct": 25}).cputune().quota_us == 25_000
