"""Port forwards on libvirt's test driver: allocation, limits, validation, views.

The test driver's host is not local, so no iptables rule is written here;
tests/unit/test_firewall_netns.py writes them, in a network namespace.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from kvmvps.config import load_settings
from kvmvps.errors import InvalidInput, NotFound, StepFailed
from kvmvps.models import Forward, Host, Image
from kvmvps.services import (
    Context,
    forwards,
    host_edge,
    inventory,
    orders,
    provisioning,
    steps,
    users,
    vps,
)
from kvmvps.services.provisioning import OrderRequest
from tests.badinput import assert_one_line_error, create_args
from tests.forwarding import PID, cli
from tests.snapshots import db_snapshot, snapshot

PUBLIC = "198.51.100.7"


@pytest.fixture
def fw_ctx(td_ctx: Context) -> Iterator[Context]:
    """td_ctx's installation with forwarding configured (ports 20000-20009)."""
    settings = dataclasses.replace(
        td_ctx.settings,
        public_address=PUBLIC,
        forward_ports="20000-20009",
        base_domain="vps.test",
        chain_prefix=f"KVU{PID}",
    )
    ctx = Context(settings)
    yield ctx
    ctx.close()


def ok(ctx: Context, *args: str, **env: str) -> dict | list:
    result = cli(ctx, *args, **env)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def create(ctx: Context, hostname: str, *extra: str, **env: str) -> dict:
    return ok(ctx, *create_args("small", "base", hostname, *extra), **env)


def held(ctx: Context) -> list[tuple[str, int, int]]:
    with ctx.db.session() as s:
        rows = s.execute(
            select(Forward.protocol, Forward.public_port, Forward.guest_port)
            .where(Forward.vps_id.is_not(None))
            .order_by(Forward.public_port)
        )
        return [tuple(r) for r in rows]


def test_an_order_gets_an_ssh_forward_in_its_transaction(fw_ctx: Context) -> None:
    first, second = create(fw_ctx, "web1"), create(fw_ctx, "web2")
    assert (first["ssh_host"], first["ssh_port"]) == (PUBLIC, 20000)
    assert (second["ssh_host"], second["ssh_port"]) == (PUBLIC, 20001)
    assert first["ip"] != PUBLIC and "expires_at" in first  # the shape is unchanged
    assert ok(fw_ctx, "vps", "forward", "list", "web1", "--json") == [
        {
            "vps": first["id"],
            "hostname": "web1",
            "protocol": "tcp",
            "public_address": PUBLIC,
            "public_port": 20000,
            "guest_ip": first["ip"],
            "guest_port": 22,
            "kind": "ssh",
        }
    ]
    assert held(fw_ctx) == [("tcp", 20000, 22), ("tcp", 20001, 22)]


def test_a_hosts_own_public_address_wins(fw_ctx: Context) -> None:
    create(fw_ctx, "web1")
    host = inventory.list_hosts(fw_ctx)[0].name
    shown = ok(fw_ctx, "host", "public-address", host, "203.0.113.9", "--json")
    assert shown["public_address"] == "203.0.113.9"
    assert vps.show(fw_ctx, "web1")["ssh_host"] == "203.0.113.9"  # moved with the host
    assert create(fw_ctx, "web2")["ssh_host"] == "203.0.113.9"
    assert_one_line_error(
        cli(fw_ctx, "host", "public-address", host, "not-an-ip"), 2, "not an IPv4 address"
    )
    ok(fw_ctx, "host", "public-address", host, "--clear", "--json")
    assert vps.show(fw_ctx, "web1")["ssh_host"] == PUBLIC


def test_without_a_public_address_ssh_stays_on_port_22(td_ctx: Context) -> None:
    created = create(td_ctx, "web1")
    assert (created["ssh_host"], created["ssh_port"]) == (created["ip"], 22)
    assert ok(td_ctx, "vps", "forward", "list", "web1", "--json") == []
    before = db_snapshot(td_ctx)
    result = cli(
        td_ctx, "vps", "forward", "add", "web1", "--guest-port", "80", KVMVPS_PUBLIC_ADDRESS=""
    )
    assert_one_line_error(result, 1, "port forwarding is not configured")
    assert db_snapshot(td_ctx) == before


def test_the_login_line_shows_the_forwarded_port(fw_ctx: Context) -> None:
    with fw_ctx.db.session() as s:
        base = inventory.get_by_name(s, Image, "base", "image").base_path
    inventory.add_image(fw_ctx, "withlogin", base, login_user="vps")
    result = cli(
        fw_ctx, "vps", "create", "--plan", "small", "--image", "withlogin", "--hostname", "web1"
    )  # queued only: the password and login are shown now
    assert result.exit_code == 0, result.stderr
    assert f"log in: ssh -p 20000 vps@{PUBLIC}" in result.stdout


def test_an_exhausted_port_range_refuses_the_order_and_changes_nothing(fw_ctx: Context) -> None:
    create(fw_ctx, "web1", KVMVPS_FORWARD_PORTS="20000-20000")
    before = snapshot(fw_ctx)
    result = cli(fw_ctx, *create_args("small", "base", "web2"), KVMVPS_FORWARD_PORTS="20000-20000")
    assert_one_line_error(result, 1, "no free public tcp ports", "20000-20000")
    assert snapshot(fw_ctx) == before


def test_ports_are_released_on_delete_and_reused_oldest_first(fw_ctx: Context) -> None:
    three = {"KVMVPS_FORWARD_PORTS": "20000-20002"}
    assert create(fw_ctx, "pa", **three)["ssh_port"] == 20000
    assert create(fw_ctx, "pb", **three)["ssh_port"] == 20001
    for name in ("pa", "pb"):
        assert cli(fw_ctx, "vps", "delete", name, "--yes").exit_code == 0
    assert held(fw_ctx) == []
    assert create(fw_ctx, "pc", **three)["ssh_port"] == 20002  # never used comes first
    assert create(fw_ctx, "pd", **three)["ssh_port"] == 20000  # then released longest ago
    assert create(fw_ctx, "pe", **three)["ssh_port"] == 20001


def test_a_failed_build_releases_its_port(fw_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_b: steps.Build) -> None:
        raise RuntimeError("injected failure")

    failing = tuple(
        dataclasses.replace(s, do=broken) if s.name == "start" else s for s in provisioning.STEPS
    )
    monkeypatch.setattr(provisioning, "STEPS", failing)
    with pytest.raises(StepFailed, match="injected failure"):
        orders.create(fw_ctx, OrderRequest(plan="small", image="base", hostname="bad"))
    assert held(fw_ctx) == []
    shown = vps.show(fw_ctx, "bad")
    assert shown["state"] == "error" and (shown["ssh_host"], shown["ssh_port"]) == (None, None)
    monkeypatch.undo()
    assert create(fw_ctx, "good")["ssh_port"] == 20001  # 20000 rests a while first


def test_extra_forwards_up_to_the_plans_limit(fw_ctx: Context) -> None:
    ok(
        fw_ctx,
        "plan",
        "add",
        "fw2",
        "--vcpus",
        "1",
        "--memory-mib",
        "128",
        "--disk-gib",
        "1",
        "--extra-forwards",
        "2",
        "--json",
    )
    create(fw_ctx, "web1", "--plan", "fw2")  # the later --plan wins
    web = ok(fw_ctx, "vps", "forward", "add", "web1", "--guest-port", "8080", "--json")
    assert (web["protocol"], web["public_port"], web["guest_port"], web["kind"]) == (
        "tcp",
        20001,
        8080,
        "extra",
    )
    dns = ok(
        fw_ctx, "vps", "forward", "add", "web1", "--guest-port", "53", "--protocol", "udp", "--json"
    )
    assert (dns["protocol"], dns["public_port"]) == ("udp", 20000)  # ports are per protocol
    before = db_snapshot(fw_ctx)
    third = cli(fw_ctx, "vps", "forward", "add", "web1", "--guest-port", "8443")
    assert_one_line_error(third, 1, "has 2 extra forward(s)", "allows 2")
    again = cli(fw_ctx, "vps", "forward", "add", "web1", "--guest-port", "8080")
    assert_one_line_error(again, 1, "already forwards tcp port 8080")
    assert db_snapshot(fw_ctx) == before


def test_removing_forwards(fw_ctx: Context) -> None:
    ok(
        fw_ctx,
        "plan",
        "add",
        "fw3",
        "--vcpus",
        "1",
        "--memory-mib",
        "128",
        "--disk-gib",
        "1",
        "--extra-forwards",
        "3",
        "--json",
    )
    create(fw_ctx, "web1", "--plan", "fw3")
    ok(fw_ctx, "vps", "forward", "add", "web1", "--guest-port", "8080", "--json")
    ok(fw_ctx, "vps", "forward", "add", "web1", "--guest-port", "53", "--protocol", "udp", "--json")
    before = db_snapshot(fw_ctx)
    assert_one_line_error(
        cli(fw_ctx, "vps", "forward", "remove", "web1", "20000"), 2, "give the protocol"
    )  # tcp 20000 (ssh) and udp 20000
    assert_one_line_error(
        cli(fw_ctx, "vps", "forward", "remove", "web1", "20000", "--protocol", "tcp"),
        1,
        "is the SSH forward of web1",
    )
    assert_one_line_error(
        cli(fw_ctx, "vps", "forward", "remove", "web1", "29999"),
        2,
        "no forward on public port 29999",
    )
    assert db_snapshot(fw_ctx) == before
    out = cli(fw_ctx, "vps", "forward", "remove", "web1", "20001")
    assert out.exit_code == 0 and "forward tcp/20001 of web1 removed" in out.stdout
    out = cli(fw_ctx, "vps", "forward", "remove", "web1", "20000", "--protocol", "udp")
    assert out.exit_code == 0, out.stderr
    assert [f["kind"] for f in ok(fw_ctx, "vps", "forward", "list", "web1", "--json")] == ["ssh"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--guest-port", "0"], "from 1 to 65535"),
        (["--guest-port", "65536"], "from 1 to 65535"),
        (["--guest-port", "-5"], "from 1 to 65535"),
        (["--guest-port", "http"], "is not a valid integer"),
        (["--guest-port", "80", "--protocol", "icmp"], "'icmp' is not one of"),
        ([], "Missing option '--guest-port'"),
    ],
)
def test_bad_guest_ports_change_nothing(fw_ctx: Context, args: list[str], fragment: str) -> None:
    ok(
        fw_ctx,
        "plan",
        "add",
        "fw1",
        "--vcpus",
        "1",
        "--memory-mib",
        "128",
        "--disk-gib",
        "1",
        "--extra-forwards",
        "1",
        "--json",
    )
    create(fw_ctx, "web1", "--plan", "fw1")
    before = db_snapshot(fw_ctx)
    assert_one_line_error(cli(fw_ctx, "vps", "forward", "add", "web1", *args), 2, fragment)
    assert db_snapshot(fw_ctx) == before


def test_the_service_checks_owner_and_values(fw_ctx: Context) -> None:
    inventory.add_plan(fw_ctx, "fw1", 1, 128, 1, extra_forwards=1)
    create(fw_ctx, "web1", "--plan", "fw1")
    other = users.add_user(fw_ctx, "other@example.com", None, False)
    with pytest.raises(NotFound):
        forwards.add(fw_ctx, "web1", 80, owner_id=other.id)
    with pytest.raises(NotFound):
        forwards.list_forwards(fw_ctx, "web1", owner_id=other.id)
    for bad in (True, 0, 70000, "80"):
        with pytest.raises(InvalidInput):
            forwards.add(fw_ctx, "web1", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="tcp or udp"):
        forwards.add(fw_ctx, "web1", 80, "sctp")
    with fw_ctx.db.session() as s:
        owner = s.scalar(select(func.min(users.User.id)))
    assert forwards.add(fw_ctx, "web1", 80, owner_id=owner)["guest_port"] == 80


@pytest.mark.parametrize("value", ["-1", "101"])
def test_plan_extra_forwards_are_checked(td_ctx: Context, value: str) -> None:
    result = cli(
        td_ctx,
        "plan",
        "add",
        "p",
        "--vcpus",
        "1",
        "--memory-mib",
        "128",
        "--disk-gib",
        "1",
        "--extra-forwards",
        value,
    )
    assert_one_line_error(result, 2, "extra forwards must be a whole number from 1 to 100")


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"KVMVPS_FORWARD_PORTS": "30000-20000"}, "is not a port range"),
        ({"KVMVPS_FORWARD_PORTS": "1-70000"}, "is not a port range"),
        ({"KVMVPS_FORWARD_PORTS": "many"}, "is not a port range"),
        ({"KVMVPS_PUBLIC_ADDRESS": "2001:db8::1"}, "is not an IPv4 address"),
        ({"KVMVPS_FORWARD_PORTS": "1-1000"}, "KVMVPS_PROXY_HTTP_PORT 80 must be a port outside"),
        ({"KVMVPS_CHAIN_PREFIX": "bad prefix"}, "KVMVPS_CHAIN_PREFIX"),
        ({"KVMVPS_BASE_DOMAIN": "not_a_domain"}, "KVMVPS_BASE_DOMAIN"),
    ],
)
def test_bad_forwarding_settings_are_one_line_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment) as err:
        load_settings(env)
    assert "\n" not in str(err.value)


def test_local_uris() -> None:
    assert host_edge.is_local("qemu:///system") and host_edge.is_local("qemu+unix:///system")
    assert host_edge.is_local("qemu:///system?socket=/run/x")
    assert not host_edge.is_local("qemu+ssh://root@kvm2/system")
    assert not host_edge.is_local("test:///default")

    def host(uri: str, agent: bool = False) -> Host:
        return Host(name="h", uri=uri, cpus=1, memory_mib=1, agent=agent)

    assert host_edge.serves_forwards(host("test:///default"))  # no rules to write, but ports
    assert host_edge.serves_forwards(host("qemu:///system"))
    assert not host_edge.serves_forwards(host("qemu+ssh://root@kvm2/system"))
    assert host_edge.serves_forwards(host("qemu+ssh://root@kvm2/system", agent=True))
    assert not host_edge.serves_forwards(host("test://kvm2/default"))


def test_the_database_refuses_a_port_held_twice(fw_ctx: Context) -> None:
    from sqlalchemy.exc import IntegrityError

    create(fw_ctx, "web1")
    with pytest.raises(IntegrityError), fw_ctx.db.session() as s:
        host_id = s.scalar(select(Forward.host_id))
        s.add(Forward(host_id=host_id, protocol="tcp", public_port=20000))
    with fw_ctx.db.session() as s:  # the same port for udp is another port
        s.add(Forward(host_id=host_id, protocol="udp", public_port=20000))


def test_a_port_taken_meanwhile_is_skipped(
    fw_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two orders racing for one port: the loser takes the next one, never the same."""
    create(fw_ctx, "web1")  # holds 20000: its row is no longer free
    with fw_ctx.db.session() as s:
        held_row = s.scalar(select(Forward.id).where(Forward.public_port == 20000))
    real = forwards._next_free_port
    # what concurrent transactions saw a moment ago: 20000 new, 20000 released
    answers = iter([(20000, None), (20000, held_row)])

    def stale_then_real(*args: object) -> tuple[int, int | None]:
        return next(answers, None) or real(*args)

    monkeypatch.setattr(forwards, "_next_free_port", stale_then_real)
    assert create(fw_ctx, "web2")["ssh_port"] == 20001
    assert held(fw_ctx) == [("tcp", 20000, 22), ("tcp", 20001, 22)]
