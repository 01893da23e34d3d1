"""Hostile tenants on the real libvirtd: two tiny guests on one NAT network.

``mallory`` has root in its guest (the provisioning key) and tries to take
over ``victim``'s address; ``victim`` must stay reachable, keep its ARP entry
on the host and keep working credentials. Then the plan's limits are moved
onto a running guest and measured inside it. One pair of guests for the
whole module; traffic goes only to the test's own guest network.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import select

from kvmvps import keys, xmlrender
from kvmvps.config import load_settings
from kvmvps.models import Vps
from kvmvps.services import Context, inventory, isolation, reconcile, setup
from kvmvps.services.facts import domain_spec, load_facts
from kvmvps.xmlspec import filters_after_start
from tests import conftest
from tests.badinput import run_cli
from tests.forwarding import netns, netns_available, sh
from tests.guestcheck import paramiko_client
from tests.tools import needs

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

PID = os.getpid()
NAME, SUBNET = f"kvi{PID}", f"10.{190 + PID % 40}.3.0/24"
GATEWAY = SUBNET.replace(".0/24", ".1")
BRIDGE = f"{NAME}0"[:15]
DISK_LIMIT = 2 << 20  # bytes/s
NET_LIMIT_KIB = 1024  # KiB/s


@dataclass
class Pair:
    ctx: Context
    victim: dict
    mallory: dict


def ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args, "--json")
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def order(ctx: Context, hostname: str) -> dict:
    args = ("vps", "create", "--plan", "iso", "--image", "base", "--hostname", hostname, "--wait")
    return ok(ctx, *args)


def root_run(ctx: Context, hostname: str, command: str, timeout: float = 60) -> str:
    """A command as root in the guest over SSH (pinned host key); stdout and stderr."""
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.hostname == hostname))
        ip, host_key = vps.ip, vps.host_key
    client = paramiko_client(
        ip, 22, host_key, "root", key_filename=str(keys.provisioning_key_path(ctx.settings))
    )
    try:
        _, out, err = client.exec_command(command, timeout=timeout)
        return out.read().decode() + err.read().decode()
    finally:
        client.close()


def host_neighbour(ip: str) -> str:
    """The host's ARP entry for ``ip`` on the test bridge ('' if none)."""
    return subprocess.run(
        ["ip", "neigh", "show", "dev", BRIDGE, "to", ip], capture_output=True, text=True
    ).stdout.strip()


def host_ping(ip: str) -> bool:
    return (
        subprocess.run(
            ["busybox", "ping", "-c", "1", "-W", "2", ip], capture_output=True
        ).returncode
        == 0
    )


@pytest.fixture(scope="module")
def pair(real_ctx: Context, tiny_image: str) -> Iterator[Pair]:
    state = conftest.make_state_dir("tenants-")
    shutil.copytree(real_ctx.settings.keys_dir, state / "keys")  # the key the image carries
    ctx = Context(load_settings(conftest.test_env(state, name=NAME, subnet=SUBNET)))
    try:
        setup.init(ctx)
        conftest.add_tiny_as_base(real_ctx, ctx, tiny_image)
        inventory.add_plan(ctx, "iso", 1, 256, 1)
        yield Pair(ctx=ctx, victim=order(ctx, "victim"), mallory=order(ctx, "mallory"))
    finally:
        conftest.cleanup_installation(ctx)
        conftest._remove_pool(ctx.settings.storage_pool)
        ctx.close()
        shutil.rmtree(state, ignore_errors=True)


def ebtables_nat() -> str:
    """``ebtables -t nat -L``, asked again while libvirt changes the ruleset (exit 4: busy)."""
    for _ in range(50):
        listed = subprocess.run(["ebtables", "-t", "nat", "-L"], capture_output=True, text=True)
        if listed.returncode != 4:
            break
        time.sleep(0.1)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_root_in_one_guest_cannot_take_over_its_neighbour(pair: Pair) -> None:
    ctx, victim = pair.ctx, pair.victim
    vip, vmac = victim["ip"], victim["mac"]
    tap = interface(ctx, pair.mallory["domain"]).find("target").get("dev")
    rules = ebtables_nat()
    assert f"-i {tap} -j libvirt-I-{tap}" in rules, rules  # the filter is in the kernel
    assert host_ping(vip)
    assert vmac in host_neighbour(vip)

    # unicast only to the gateway's MAC: no direct path to the neighbour; the host answers
    out = root_run(ctx, "mallory", f"ping -c 2 -W 2 {vip}; echo rc=$?")
    assert "rc=0" not in out, out
    out = root_run(ctx, "mallory", f"ping -c 1 -W 2 {GATEWAY}; echo rc=$?")
    assert "rc=0" in out, out

    # the takeover: the neighbour's address on our NIC, announced by gratuitous ARP
    attack = (
        f"ip addr add {vip}/24 dev eth0; "
        f"arping -U -c 3 -I eth0 {vip}; arping -A -c 3 -I eth0 {vip}; "
        f"ping -c 2 -W 1 -I {vip} {GATEWAY}; echo done"
    )
    out = root_run(ctx, "mallory", attack)
    assert "done" in out and "not found" not in out and "Sent 3 probe" in out, out
    try:
        time.sleep(1)
        assert vmac in host_neighbour(vip), host_neighbour(vip)
        assert pair.mallory["mac"] not in host_neighbour(vip)
        assert host_ping(vip)
        # the victim's credentials still work: its pinned host key still answers
        reset = ok(ctx, "vps", "password-reset", "victim")
        assert reset["password"] and reset["state"] == "running"
        assert root_run(ctx, "victim", "hostname").strip() == "victim"
    finally:
        root_run(ctx, "mallory", f"ip addr del {vip}/24 dev eth0")


def interface(ctx: Context, domain: str) -> etree._Element:
    xml = ctx.hypervisor(ctx.settings.libvirt_uri).domain_xml(domain)
    return etree.fromstring(xml.encode()).find("devices/interface")


def test_the_bridge_forwards_a_guests_first_frame(pair: Pair) -> None:
    """No spanning tree on the network's bridge: a new guest port forwards at once.

    With it on, the kernel raises the bridge's forward delay to its minimum of
    2 s and holds every new port in two 2-s states first: each boot's first
    DHCP request was lost. The guests' filters keep loops and BPDUs out.
    """
    bridge = Path(f"/sys/class/net/{BRIDGE}/bridge")
    assert (bridge / "stp_state").read_text().strip() == "0"
    for vps in (pair.victim, pair.mallory):
        tap = interface(pair.ctx, vps["domain"]).find("target").get("dev")
        assert (bridge.parent / "brif" / tap / "state").read_text().strip() == "3"  # forwarding
    # what keeps loops and BPDUs out: a guest's frames of any other kind are dropped
    tap = interface(pair.ctx, pair.mallory["domain"]).find("target").get("dev")
    chain = ebtables_nat().split(f"Bridge chain: libvirt-I-{tap},")[1].split("\n\n")[0]
    assert chain.strip().splitlines()[-1] == "-j DROP", chain


def test_reconcile_puts_a_removed_filter_back(pair: Pair) -> None:
    ctx, domain = pair.ctx, pair.mallory["domain"]
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    nic = interface(ctx, domain)
    for tag in ("filterref", "port", "target", "alias", "address"):
        for el in nic.findall(tag):
            nic.remove(el)
    hv.update_device(domain, etree.tostring(nic, encoding="unicode"))
    assert interface(ctx, domain).find("filterref") is None  # unfiltered now

    report = ok(ctx, "reconcile")
    fixed = [i for i in report["isolation"] if i["hostname"] == "mallory"]
    assert fixed and all(i["action"] == "filter and isolation put back" for i in fixed), fixed
    nic = interface(ctx, domain)
    assert nic.find("filterref").get("filter") == "kvmvps-clean-traffic-ipv6"
    params = {p.get("name"): p.get("value") for p in nic.iterfind("filterref/parameter")}
    assert params["IP"] == pair.mallory["ip"] and params["MAC"] == pair.mallory["mac"]
    assert params["IPV6"] == pair.mallory["ipv6"]
    assert params["GATEWAY_MAC"] == hv.network_mac(NAME)
    assert ok(ctx, "reconcile")["isolation"] == []  # in order now
    out = root_run(ctx, "mallory", f"ping -c 2 -W 2 {pair.victim['ip']}; echo rc=$?")
    assert "rc=0" not in out, out


def _measure_disk(ctx: Context, hostname: str, mib: int) -> float:
    """Write ``mib`` MiB with O_DIRECT in the guest; bytes per second it took."""
    out = root_run(
        ctx,
        hostname,
        "read a _ </proc/uptime; "
        f"dd if=/dev/zero of=/root/dd.bin bs=64k count={mib * 16} oflag=direct 2>/dev/null; "
        "read b _ </proc/uptime; rm -f /root/dd.bin; echo $a $b",
        timeout=120,
    )
    start, end = (float(x) for x in out.split()[-2:])
    return mib * (1 << 20) / (end - start)


def test_a_workers_pass_finds_a_change_nobody_told_of_in_its_turn(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's passes read only what libvirt told of a change of, and each domain in its
    turn: a filter taken away with a live device update is put back within N passes."""
    ctx, domain = pair.ctx, pair.mallory["domain"]
    monkeypatch.setattr(ctx, "settings", replace(ctx.settings, reconcile_recheck_passes=3))
    monkeypatch.setattr(reconcile, "MEMO", isolation.Memo())  # turns from 0
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    turn = 0  # the first pass reads everything; then up to mallory's turn, all clean
    while turn == 0 or not isolation.due(turn - 1, domain, 3):
        assert reconcile.run(ctx, incremental=True).isolation == []
        turn += 1
    nic = interface(ctx, domain)
    for tag in ("filterref", "port", "target", "alias", "address"):
        for el in nic.findall(tag):
            nic.remove(el)
    hv.update_device(domain, etree.tostring(nic, encoding="unicode"))
    found = []
    for t in (turn, turn + 1, turn + 2):  # mallory's next turn is the last of these
        found += [(t, i["action"]) for i in reconcile.run(ctx, incremental=True).isolation]
    # in the first pass if libvirt told of the update, else in mallory's turn; once
    assert {t for t, _ in found} in ({turn}, {turn + 2}), found
    assert all(action == "filter and isolation put back" for _, action in found), found
    assert interface(ctx, domain).find("filterref").get("filter") == "kvmvps-clean-traffic-ipv6"


def test_limits_move_onto_a_running_guest_and_hold(pair: Pair) -> None:
    ctx, domain = pair.ctx, pair.victim["domain"]
    args = ("plan", "add", "capped", "--vcpus", "1", "--memory-mib", "256", "--disk-gib", "1")
    ok(ctx, *args, "--disk-bytes-sec", str(DISK_LIMIT), "--cpu-quota-pct", "80")
    view = ok(ctx, "vps", "resize", "victim", "--plan", "capped")
    assert view["plan"] == "capped" and view["state"] == "running"
    tune = subprocess.run(
        ["virsh", "-c", conftest.REAL_URI, "blkdeviotune", domain, "vda", "--live"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(rf"total_bytes_sec\s*:\s*{DISK_LIMIT}\b", tune), tune
    rate = _measure_disk(ctx, "victim", 6)
    assert 0.8 * DISK_LIMIT <= rate <= 1.2 * DISK_LIMIT, f"{rate / (1 << 20):.2f} MiB/s"

    # and off again, live: the same write is much faster than the limit
    ok(ctx, "vps", "resize", "victim", "--plan", "iso")
    assert _measure_disk(ctx, "victim", 6) > 2 * DISK_LIMIT


def tc_police_available() -> bool:
    """libvirt's outbound <bandwidth> is a tc police action (kernel: act_police)."""
    ns = f"kvtc{PID}"
    run = lambda *a: subprocess.run(list(a), capture_output=True).returncode  # noqa: E731 - tiny helper
    if run("ip", "netns", "add", ns):
        return False
    try:
        ip = ("ip", "netns", "exec", ns)
        run(*ip, "ip", "link", "add", "d0", "type", "dummy")
        run(*ip, "tc", "qdisc", "add", "dev", "d0", "ingress")
        police = "u32 match u32 0 0 police rate 1mbit burst 10k drop flowid :1"
        return not run(*ip, "tc", "filter", "add", "dev", "d0", "parent", "ffff:", *police.split())
    finally:
        run("ip", "netns", "del", ns)


def _receive(server: socket.socket, marks: list[tuple[float, int]]) -> None:
    conn, _ = server.accept()
    total = 0
    with conn:
        while chunk := conn.recv(65536):
            total += len(chunk)
            marks.append((time.monotonic(), total))


def test_network_limit_holds_for_traffic_from_the_guest(pair: Pair) -> None:
    if not tc_police_available():
        pytest.skip("this kernel has no tc police action (act_police): libvirt cannot shape")
    ctx = pair.ctx
    args = ("plan", "add", "slow", "--vcpus", "1", "--memory-mib", "256", "--disk-gib", "1")
    ok(ctx, *args, "--net-out-kibps", str(NET_LIMIT_KIB), "--net-out-burst-kib", "64")
    ok(ctx, "vps", "resize", "mallory", "--plan", "slow")
    server = socket.create_server((GATEWAY, 0))
    marks: list[tuple[float, int]] = []
    reader = threading.Thread(target=_receive, args=(server, marks))
    reader.start()
    port = server.getsockname()[1]
    root_run(ctx, "mallory", f"dd if=/dev/zero bs=64k count=64 | nc {GATEWAY} {port}", timeout=60)
    reader.join(60)
    server.close()
    assert marks and marks[-1][1] == 4 << 20
    # the rate after the first 512 KiB, so the burst does not count
    t0, b0 = next(m for m in marks if m[1] >= 512 << 10)
    rate = (marks[-1][1] - b0) / (marks[-1][0] - t0)
    assert 0.8 * NET_LIMIT_KIB * 1024 <= rate <= 1.2 * NET_LIMIT_KIB * 1024, rate


# -- IPv6 ------------------------------------------------------------------
V6_LINK = f"fd5e:{PID % 65536:x}:0:1"  # the client namespace's own /64, routed via the host


@contextmanager
def v6_client(name: str) -> Iterator[str]:
    """A namespace on a veth to the host with its own IPv6 /64; default route via the host."""
    host_end, client_end = f"v6h{PID}"[:15], f"v6c{PID}"[:15]
    with netns(name):
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", client_end)
        try:
            sh("ip", "link", "set", client_end, "netns", name)
            sh("ip", "-6", "addr", "add", f"{V6_LINK}::1/64", "dev", host_end, "nodad")
            sh("ip", "link", "set", host_end, "up")
            inside = ("ip", "netns", "exec", name)
            sh(*inside, "ip", "-6", "addr", "add", f"{V6_LINK}::2/64", "dev", client_end, "nodad")
            sh(*inside, "ip", "link", "set", client_end, "up")
            sh(*inside, "ip", "-6", "route", "add", "default", "via", f"{V6_LINK}::1")
            yield name
        finally:
            sh("ip", "link", "del", host_end, check=False)


def _ssh_v6(ctx: Context, ns: str, hostname: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """OpenSSH from the namespace to the guest's IPv6 address, its host key pinned."""
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.hostname == hostname))
        address, host_key = vps.ipv6, vps.host_key
    known = tmp / f"known_hosts_{hostname}"
    known.write_text(f"{address} {host_key.split()[0]} {host_key.split()[1]}\n")
    key = str(keys.provisioning_key_path(ctx.settings))
    opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]
    argv = ["ip", "netns", "exec", ns, "ssh", *opts, "-o", f"UserKnownHostsFile={known}"]
    return sh(*argv, "-i", key, f"root@{address}", "hostname", check=False)


def _echo_listener(ns: str, until_twice_from: str) -> subprocess.Popen[str]:
    """A raw ICMPv6 socket in the namespace printing the source of each echo request.

    It ends at the second echo request from ``until_twice_from`` (or after 60 s).
    """
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET6,socket.SOCK_RAW,socket.IPPROTO_ICMPV6)\n"
        "s.settimeout(60);print('ready',flush=True);seen=0\n"
        "while seen<2:\n"
        "    d,a=s.recvfrom(200)\n"
        "    if d[0]==128:\n"
        "        print('echo',a[0],flush=True);seen+=a[0]==sys.argv[1]\n"
    )
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", code, until_twice_from]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@needs(netns_available(), "network namespaces (root, ip) for the IPv6 client")
def test_ipv6_reaches_the_guest_from_outside_and_cannot_be_spoofed(
    pair: Pair, tmp_path: Path
) -> None:
    ctx, victim, mallory = pair.ctx, pair.victim, pair.mallory
    vip6, mip6 = victim["ipv6"], mallory["ipv6"]
    assert vip6 and mip6 and vip6 != mip6, (victim, mallory)
    net = ok(ctx, "network", "list")[0]
    assert ipaddress.IPv6Address(vip6) in ipaddress.IPv6Network(net["ipv6_prefix"])
    gw6 = str(ipaddress.IPv6Network(net["ipv6_prefix"]).network_address + 1)
    # the address is configured persistently in the guest, router adverts ignored
    out = root_run(ctx, "victim", "cat /etc/kvmvps/ipv6; ip -6 addr show dev eth0 scope global")
    assert f"{vip6}/64 {gw6}" in out and f"inet6 {vip6}/64" in out, out
    assert out.count("inet6 ") == 1, out  # no SLAAC address beside it
    with v6_client(f"kv6c{PID}") as ns:
        res = _ssh_v6(ctx, ns, "victim", tmp_path)
        assert res.returncode == 0 and res.stdout.strip() == "victim", res.stderr
        # root in mallory takes victim's IPv6 address: its traffic from it goes nowhere
        listener = _echo_listener(ns, until_twice_from=mip6)
        client = f"{V6_LINK}::2"
        try:
            out = root_run(
                ctx,
                "mallory",
                f"ip -6 addr add {vip6}/64 dev eth0; "
                f"ping -c 1 -W 2 -I {mip6} {client}; echo own=$?; "
                f"ping -c 1 -W 1 -I {vip6} {client}; echo spoofed=$?; "
                f"ping -c 1 -W 1 -I {vip6} {gw6}; echo gateway=$?; "
                # the last echo, after the spoofed one on the same path, ends the listener
                f"ping -c 1 -W 2 -I {mip6} {client}; echo own2=$?",
            )
            got, _ = listener.communicate(timeout=70)
        finally:
            listener.kill()
            root_run(ctx, "mallory", f"ip -6 addr del {vip6}/64 dev eth0")
        assert "own=0" in out and "own2=0" in out, out
        assert "spoofed=0" not in out and "gateway=0" not in out, out
        assert f"echo {mip6}" in got, (got, out)
        assert f"echo {vip6}" not in got, got
        # the host still reaches victim's address at victim, and ssh still lands there
        neigh = sh("ip", "-6", "neigh", "show", "dev", BRIDGE, "to", vip6).stdout
        assert pair.mallory["mac"] not in neigh, neigh
        res = _ssh_v6(ctx, ns, "victim", tmp_path)
        assert res.returncode == 0 and res.stdout.strip() == "victim", res.stderr
    # no router advertisements from a guest (ebtables names or numbers the type)
    rules = ebtables_nat()
    assert "router-advertisement" in rules or "icmp-type 134" in rules, rules


def _tap_rx_packets(tap: str) -> int:
    """Frames the host has received from the guest's NIC (its tap's receive counter)."""
    return int(Path(f"/sys/class/net/{tap}/statistics/rx_packets").read_text())


def _host_key_printed(console_log: str) -> bool:
    """Whether the tiny guest has printed its host key block (the log starts anew at each start)."""
    log = Path(console_log)
    return log.exists() and "BEGIN SSH HOST KEY" in log.read_text(errors="replace")


def test_a_first_boot_sends_nothing_before_its_filter_is_in_place(pair: Pair) -> None:
    """Builds start a guest unfiltered and unplugged, and plug it in live once filtered.

    Here the plug-in never comes (a worker killed at that moment): the guest
    boots and asks for its address, and not one frame leaves its NIC; the
    definition keeps its filter; reconcile then puts filter and link right.
    Last in the module: it reboots mallory.
    """
    ctx, domain = pair.ctx, pair.mallory["domain"]
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    with ctx.db.reading() as s:
        vps_id = s.scalar(select(Vps.id).where(Vps.hostname == "mallory"))
        facts = load_facts(s, vps_id, ctx.settings)
    spec = domain_spec(facts, ctx.domain_type, False, isolation.gateway_mac(hv, facts))
    first_boot = filters_after_start(spec)
    assert first_boot is not None
    hv.destroy(domain)
    assert hv.start_as(domain, xmlrender.domain_xml(first_boot)) is False
    nic = interface(ctx, domain)
    assert nic.find("filterref") is None and nic.find("link").get("state") == "down"
    defined = etree.fromstring(hv.domain_xml(domain, inactive=True).encode())
    assert defined.find("devices/interface/filterref") is not None  # the definition is unchanged
    assert defined.find("devices/interface/link") is None
    tap = nic.find("target").get("dev")
    assert f"libvirt-I-{tap}" not in ebtables_nat()

    # the guest has booted (its rc printed the host key after starting DHCP) and retried
    deadline = time.monotonic() + 120
    while not _host_key_printed(facts.console_log):
        assert time.monotonic() < deadline, "mallory did not boot"
        time.sleep(0.5)
    time.sleep(3)
    assert _tap_rx_packets(tap) == 0
    assert not host_ping(pair.mallory["ip"])

    report = ok(ctx, "reconcile")
    fixed = [i for i in report["isolation"] if i["hostname"] == "mallory"]
    problems = " | ".join(i["problem"] for i in fixed)
    assert "running guest: filter is missing" in problems and "link down" in problems, fixed
    assert all(i["action"] == "filter and isolation put back" for i in fixed), fixed
    nic = interface(ctx, domain)
    assert nic.find("filterref").get("filter") == "kvmvps-clean-traffic-ipv6"
    assert nic.find("link") is None or nic.find("link").get("state") == "up"
    assert f"-i {tap} -j libvirt-I-{tap}" in ebtables_nat()
    deadline = time.monotonic() + 60
    while not host_ping(pair.mallory["ip"]):
        assert time.monotonic() < deadline, "mallory's NIC did not come up"
    assert root_run(ctx, "mallory", "hostname").strip() == "mallory"
    assert _tap_rx_packets(tap) > 0
    assert ok(ctx, "reconcile")["isolation"] == []
