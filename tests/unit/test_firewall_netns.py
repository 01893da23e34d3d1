"""The forwarding rules: computed as text, and written by real iptables in a network namespace.

The namespace has iptables tables of its own, so these tests never touch the
machine's rules. The VPSes come from libvirt's test driver, whose host is
treated as local here so that :func:`forwards.apply` writes into the namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kvmvps import firewall
from kvmvps.services import Context, forwards, host_edge, reconcile
from tests.badinput import assert_one_line_error, create_args
from tests.forwarding import PID, cli, iptables_save, netns, netns_available, netns_iptables
from tests.snapshots import db_snapshot
from tests.tools import needs

PUBLIC = "198.51.100.7"
PREFIX = "KVT"
FW = firewall.PortForward(
    protocol="tcp",
    public_address=PUBLIC,
    public_port=20000,
    guest_ip="10.231.0.2",
    guest_port=22,
    bridge="kvmvpstest0",
    subnet="10.231.0.0/24",
    tag="kvmvps:uuid-1",
)


# -- the rules as text --------------------------------------------------------
def test_one_forward_makes_three_rules() -> None:
    assert firewall.forward_rules(PREFIX, FW) == {
        "DNAT": f"-A KVT-DNAT -d {PUBLIC}/32 -p tcp -m tcp --dport 20000 -m comment "
        '--comment "kvmvps:uuid-1" -j DNAT --to-destination 10.231.0.2:22',
        "POST": "-A KVT-POST -s 10.231.0.0/24 -d 10.231.0.2/32 -o kvmvpstest0 -p tcp -m tcp "
        '--dport 22 -m conntrack --ctstate DNAT -m comment --comment "kvmvps:uuid-1" '
        "-j MASQUERADE",
        "FWD": "-A KVT-FWD -d 10.231.0.2/32 -o kvmvpstest0 -p tcp -m tcp --dport 22 "
        '-m conntrack --ctstate DNAT -m comment --comment "kvmvps:uuid-1" -j ACCEPT',
    }


def test_restore_text_from_nothing_declares_chains_and_inserts_jumps_first() -> None:
    udp = dataclasses.replace(FW, protocol="udp", public_port=20000, guest_port=53)
    text = firewall.restore_text(PREFIX, firewall.ABSENT, firewall.desired(PREFIX, [udp, FW]))
    lines = text.splitlines()
    assert lines[:3] == ["*nat", ":KVT-DNAT - [0:0]", ":KVT-POST - [0:0]"]
    assert [ln for ln in lines if ln.startswith("-I ")] == [
        "-I PREROUTING 1 -j KVT-DNAT",
        "-I OUTPUT 1 -j KVT-DNAT",
        "-I POSTROUTING 1 -j KVT-POST",
        "-I FORWARD 1 -j KVT-FWD",
    ]
    dnat = [ln for ln in lines if ln.startswith("-A KVT-DNAT")]
    assert ["-p tcp" in dnat[0], "-p udp" in dnat[1]] == [True, True]  # sorted: stable text
    assert lines.count("COMMIT") == 2 and lines[-1] == "COMMIT"
    assert not any(ln.startswith(("-D", "-F", "-X")) for ln in lines)


def test_restore_text_moves_a_jump_back_to_the_top_and_nothing_else() -> None:
    target = firewall.desired(PREFIX, [FW])
    current = dataclasses.replace(
        target, jumps={**target.jumps, ("filter", "FORWARD", "KVT-FWD"): (3,)}
    )
    text = firewall.restore_text(PREFIX, current, target)
    filter_part = text[text.index("*filter") :].splitlines()
    assert "-D FORWARD -j KVT-FWD" in filter_part and "-I FORWARD 1 -j KVT-FWD" in filter_part
    assert not any("PREROUTING" in ln or "OUTPUT" in ln for ln in text.splitlines())
    assert firewall.restore_text(PREFIX, target, target) == ""


def test_removing_deletes_jumps_before_chains() -> None:
    text = firewall.restore_text(PREFIX, firewall.desired(PREFIX, [FW]), firewall.ABSENT)
    lines = text.splitlines()
    assert lines.index("-D FORWARD -j KVT-FWD") < lines.index("-X KVT-FWD")
    assert not any(ln.startswith((":", "-A", "-I")) for ln in lines)


# -- real iptables, in a namespace -------------------------------------------
needs_netns = needs(netns_available(), "needs root, ip and iptables")


@pytest.fixture
def ns_ctx(td_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Context, str]]:
    """td_ctx with forwarding on, its host's rules written into a namespace of its own."""
    ctx = Context(
        dataclasses.replace(
            td_ctx.settings, public_address=PUBLIC, forward_ports="20000-20009", chain_prefix=PREFIX
        )
    )
    with netns(f"kvu{PID}") as ns:
        monkeypatch.setattr(forwards, "iptables_for", lambda host: netns_iptables(ns))
        monkeypatch.setattr(host_edge, "is_local", lambda uri: True)
        monkeypatch.setattr(forwards, "_reattach", lambda ctx, host: [])
        yield ctx, ns
    ctx.close()


def _create(ctx: Context, hostname: str, *extra: str) -> dict:
    result = cli(ctx, *create_args("small", "base", hostname, *extra))
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _state(ns: str) -> firewall.State:
    return firewall.read_state(netns_iptables(ns), PREFIX)


@needs_netns
def test_a_build_writes_the_rules_and_apply_is_idempotent(ns_ctx: tuple[Context, str]) -> None:
    ctx, ns = ns_ctx
    one, two = _create(ctx, "web1"), _create(ctx, "web2")
    saved = iptables_save(netns_iptables(ns))
    for vps in (one, two):
        assert (
            f'--dport {vps["ssh_port"]} -m comment --comment "kvmvps:{vps["id"]}" '
            f"-j DNAT --to-destination {vps['ip']}:22"
        ) in saved
    state = _state(ns)
    assert all(pos == (1,) for pos in state.jumps.values()) and len(state.jumps) == 4
    host_id = _host_id(ctx)
    assert forwards.apply(ctx, host_id) is False  # already right: nothing rewritten
    assert _state(ns) == state


def _host_id(ctx: Context) -> int:
    from kvmvps.services import inventory

    return inventory.list_hosts(ctx)[0].id


@needs_netns
def test_reconcile_restores_flushed_and_displaced_rules(ns_ctx: tuple[Context, str]) -> None:
    ctx, ns = ns_ctx
    _create(ctx, "web1")
    want = _state(ns)
    ipt = netns_iptables(ns)
    ipt.run(["iptables", "-t", "nat", "-F", f"{PREFIX}-DNAT"])
    ipt.run(["iptables", "-I", "FORWARD", "1", "-o", "kvmvpstest0", "-j", "REJECT"])
    assert _state(ns) != want
    report = reconcile.run(ctx)
    assert {"host": report.hosts[0], "action": "forwarding rules rewritten"} in report.forwarding
    assert _state(ns) == want
    forward_chain = ipt.run(["iptables", "-S", "FORWARD"]).stdout.splitlines()
    assert forward_chain[1:] == [
        f"-A FORWARD -j {PREFIX}-FWD",  # ours first, theirs kept
        "-A FORWARD -o kvmvpstest0 -j REJECT --reject-with icmp-port-unreachable",
    ]
    assert reconcile.run(ctx).forwarding == []  # in sync now


@needs_netns
def test_delete_leaves_nothing_of_the_vps_in_iptables(ns_ctx: tuple[Context, str]) -> None:
    ctx, ns = ns_ctx
    ipt = netns_iptables(ns)
    ipt.run(["iptables", "-t", "nat", "-N", "SOMEONE-ELSE"])
    ipt.run(
        [
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "7",
            "-j",
            "SOMEONE-ELSE",
        ]
    )
    gone, kept = _create(ctx, "web1"), _create(ctx, "web2")
    assert cli(ctx, "vps", "delete", "web1", "--yes").exit_code == 0
    saved = iptables_save(ipt)
    assert gone["id"] not in saved and f"{gone['ip']}:22" not in saved
    assert f"--dport {gone['ssh_port']} " not in saved
    assert kept["id"] in saved
    assert "-A PREROUTING -p tcp -m tcp --dport 7 -j SOMEONE-ELSE" in saved  # not ours: kept
    assert forwards.remove_rules(ctx, _host_id(ctx)) is True
    saved = iptables_save(ipt)
    assert PREFIX not in saved and "SOMEONE-ELSE" in saved


@needs_netns
def test_iptables_failing_mid_way_changes_nothing(
    ns_ctx: tuple[Context, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """nat is committed before filter fails: the nat table is put back, the order refused."""
    ctx, ns = ns_ctx
    from kvmvps.services import inventory

    inventory.add_plan(ctx, "fw1", 1, 128, 1, extra_forwards=1)
    _create(ctx, "web1", "--plan", "fw1")
    before_rules, before_db = iptables_save(netns_iptables(ns)), db_snapshot(ctx)
    real = firewall.desired

    def with_a_bad_filter_rule(prefix: str, fws: list) -> firewall.State:
        state = real(prefix, fws)
        key = ("filter", f"{prefix}-FWD")
        chains = {**state.chains, key: (*state.chains[key], f"-A {prefix}-FWD -j NO-SUCH")}
        return dataclasses.replace(state, chains=chains)

    monkeypatch.setattr(firewall, "desired", with_a_bad_filter_rule)
    result = cli(ctx, "vps", "forward", "add", "web1", "--guest-port", "8080")
    assert_one_line_error(result, 1, "iptables-restore failed", "put back as they were")
    assert iptables_save(netns_iptables(ns)) == before_rules
    assert db_snapshot(ctx) == before_db


SERVER = """
import socket, sys
srv = socket.create_server(("0.0.0.0", 8080))
print("listening", flush=True)
while True:
    conn, peer = srv.accept()
    conn.sendall(("hello from A to %s" % peer[0]).encode())
    conn.close()
"""
CLIENT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print(s.recv(100).decode())
except OSError as exc:
    print("failed:", exc)
"""


def _ns_run(ns: str, *argv: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


@contextlib.contextmanager
def _two_guests_behind_a_host() -> Iterator[tuple[str, str, str]]:
    """Namespaces: a "host" with bridge br0 (10.77.0.1/24), guests A (.2) and B (.3) on it.

    The host bridges without br_netfilter (bridge-nf-call-iptables=0, per
    namespace), as many hosts do: the guests answer each other directly
    unless the hairpin rule masquerades.
    """
    with netns(f"kvr{PID}") as host, netns(f"kva{PID}") as a, netns(f"kvb{PID}") as b:
        sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        _ns_run(host, "sh", "-c", f"[ ! -e {sysctl} ] || echo 0 > {sysctl}")
        _ns_run(host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _ns_run(host, "ip", "link", "add", "br0", "type", "bridge")
        _ns_run(host, "ip", "addr", "add", "10.77.0.1/24", "dev", "br0")
        _ns_run(host, "ip", "addr", "add", f"{PUBLIC}/32", "dev", "lo")
        _ns_run(host, "ip", "link", "set", "br0", "up")
        for guest, ip, port in ((a, "10.77.0.2", "pa"), (b, "10.77.0.3", "pb")):
            _ns_run(
                host,
                "ip",
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                guest,
            )
            _ns_run(host, "ip", "link", "set", port, "master", "br0", "up")
            _ns_run(guest, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            _ns_run(guest, "ip", "link", "set", "eth0", "up")
            _ns_run(guest, "ip", "route", "add", "default", "via", "10.77.0.1")
        yield host, a, b


@needs_netns
def test_hairpin_from_another_guest_and_from_the_host() -> None:
    with _two_guests_behind_a_host() as (host, a, b):
        server = subprocess.Popen(
            ["ip", "netns", "exec", a, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout.readline().strip() == "listening"
            fw = firewall.PortForward(
                "tcp", PUBLIC, 20000, "10.77.0.2", 8080, "br0", "10.77.0.0/24", "kvmvps:hairpin"
            )
            ipt = netns_iptables(host)
            firewall.apply(ipt, PREFIX, firewall.desired(PREFIX, [fw]))

            def from_(ns: str) -> str:
                return _ns_run(ns, sys.executable, "-c", CLIENT, PUBLIC, "20000")

            assert from_(b) == "hello from A to 10.77.0.1"  # masqueraded: B hears back
            assert from_(host).startswith("hello from A to ")  # the host itself
            ipt.run(["iptables", "-t", "nat", "-F", f"{PREFIX}-POST"])
            assert from_(b).startswith("failed:")  # A answered B directly: no connection
            assert firewall.apply(ipt, PREFIX, firewall.desired(PREFIX, [fw])) is True
            assert from_(b) == "hello from A to 10.77.0.1"
        finally:
            server.kill()
            server.wait()
