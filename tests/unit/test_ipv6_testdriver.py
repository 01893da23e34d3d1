"""IPv6 on the test driver: prefixes, addresses, filters, views, bad input."""

from __future__ import annotations

import ipaddress
import json

import libvirt
import pytest
from lxml import etree

from kvmvps import cloudinit, validation
from kvmvps.errors import InvalidInput
from kvmvps.services import Context
from tests.badinput import assert_one_line_error, create_args, run_cli


def ok(ctx: Context, *args: str) -> dict | list:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def networks(ctx: Context) -> dict[str, dict]:
    return {n["name"]: n for n in ok(ctx, "network", "list", "--json")}


def test_a_vps_gets_a_fixed_ipv6_address_released_and_reused_with_its_ipv4(
    td_ctx: Context,
) -> None:
    prefix = ipaddress.IPv6Network(networks(td_ctx)[td_ctx.settings.network]["ipv6_prefix"])
    assert prefix.prefixlen == 64 and prefix.network_address.exploded.startswith("fd")
    one = ok(td_ctx, *create_args(hostname="one"))
    two = ok(td_ctx, *create_args(hostname="two"))
    for vps in (one, two):
        offset = int(ipaddress.IPv4Address(vps["ip"]).packed[-1])
        assert vps["ipv6"] == str(prefix.network_address + offset)
    assert one["ipv6"] != two["ipv6"]
    # shown in show and list (json and table)
    assert ok(td_ctx, "vps", "show", "one", "--json")["ipv6"] == one["ipv6"]
    listed = run_cli(td_ctx, "vps", "list")
    assert one["ipv6"] in listed.stdout and "IPV6" in listed.stdout.upper()
    # the network routes the prefix: the host's address is PREFIX::1
    conn = libvirt.open(td_ctx.settings.libvirt_uri)
    net = etree.fromstring(conn.networkLookupByName(td_ctx.settings.network).XMLDesc().encode())
    conn.close()
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    v6 = net.find("ip[@family='ipv6']")
    assert v6.get("address") == str(prefix.network_address + 1) and v6.get("prefix") == "64"
    # the NIC's filter covers IPv6 with the VPS's own address
    dom = etree.fromstring(hv.domain_xml(one["domain"], inactive=True).encode())
    ref = dom.find("devices/interface/filterref")
    assert ref.get("filter").endswith("-ipv6")
    params = dict((p.get("name"), p.get("value")) for p in ref.iterfind("parameter"))
    assert params["IPV6"] == one["ipv6"] and params["IP"] == one["ip"]
    # deleted: the address goes back with the IPv4 one (never-used ones first, as IPv4)
    assert run_cli(td_ctx, "vps", "delete", "one", "--yes").exit_code == 0
    three = ok(td_ctx, *create_args(hostname="three"))
    assert three["ipv6"] not in (one["ipv6"], two["ipv6"])


def test_network_add_takes_a_routed_prefix_and_refuses_overlaps(td_ctx: Context) -> None:
    net = ok(
        td_ctx, "network", "add", "pub", "--subnet", "10.237.0.0/24", "--ipv6",
        "2001:db8:7:1::/64", "--pool-start", "10.237.0.10", "--pool-end", "10.237.0.11", "--json",
    )  # fmt: skip
    assert net["ipv6_prefix"] == "2001:db8:7:1::/64"
    first = ok(td_ctx, *create_args(hostname="pub1"), "--network", "pub")
    second = ok(td_ctx, *create_args(hostname="pub2"), "--network", "pub")
    assert (first["ipv6"], second["ipv6"]) == ("2001:db8:7:1::a", "2001:db8:7:1::b")
    full = run_cli(td_ctx, *create_args(hostname="pub3"), "--network", "pub")
    assert full.exit_code != 0
    # released with the IPv4 address, and reused with it
    assert run_cli(td_ctx, "vps", "delete", "pub1", "--yes").exit_code == 0
    again = ok(td_ctx, *create_args(hostname="pub4"), "--network", "pub")
    assert (again["ip"], again["ipv6"]) == (first["ip"], first["ipv6"])
    before = networks(td_ctx)
    result = run_cli(
        td_ctx, "network", "add", "dup", "--subnet", "10.238.0.0/24", "--ipv6", "2001:db8:7:1::/64"
    )
    assert_one_line_error(result, 1, "overlaps network 'pub'")
    assert networks(td_ctx) == before
    none = ok(
        td_ctx, "network", "add", "v4", "--subnet", "10.239.0.0/24", "--ipv6", "none", "--json"
    )
    assert none["ipv6_prefix"] is None
    v4 = ok(td_ctx, *create_args(hostname="v4only"), "--network", "v4")
    assert v4["ipv6"] is None


BAD_PREFIXES = (
    ("fd00::/48", "must be a /64"),
    ("2001:db8::1/64", "not an IPv6 network"),
    ("fe80::/64", "link-local"),
    ("fd00::/64\x1b[2J", "control characters"),
)


def test_bad_prefixes_are_refused_in_one_line_and_change_nothing(td_ctx: Context) -> None:
    before = networks(td_ctx)
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    for value, fragment in BAD_PREFIXES:
        result = run_cli(
            td_ctx, "network", "add", "bad", "--subnet", "10.240.0.0/24", "--ipv6", value
        )
        assert_one_line_error(result, 2, fragment)
        assert "\x1b" not in result.stderr
        assert networks(td_ctx) == before
        assert not hv.network_exists("bad")


def test_a_bridge_network_takes_no_prefix(td_ctx: Context) -> None:
    result = run_cli(
        td_ctx, "network", "add", "br", "--kind", "bridge", "--bridge", "br9",
        "--subnet", "203.0.113.0/24", "--ipv6", "2001:db8:9::/64",
    )  # fmt: skip
    assert_one_line_error(result, 2, "only NAT networks")
    assert "br" not in networks(td_ctx)


def test_validation_and_cloud_init_network_config() -> None:
    assert str(validation.ipv6_prefix("2001:DB8:1:2::/64")) == "2001:db8:1:2::/64"
    for bad in ("ff02::/64", "10.0.0.0/24", "x" * 5000, "fd00:\n:/64", "::/64"):
        with pytest.raises(InvalidInput):
            validation.ipv6_prefix(bad)
    text = cloudinit.render_network_config(
        mac="52:54:00:AA:BB:CC", ipv6="fd00:1::17", ipv6_gateway="fd00:1::1"
    )
    assert "dhcp4: true" in text and "accept-ra: false" in text
    assert "fd00:1::17/64" in text and "gateway6: fd00:1::1" in text
    assert "52:54:00:aa:bb:cc" in text
    with pytest.raises(InvalidInput):
        cloudinit.render_network_config(mac="x", ipv6="fd00::1\nruncmd: x", ipv6_gateway="fd00::1")
