"""NAT VPSes reached from outside: a client "on the internet" in a network namespace.

The namespace is joined to the host by a veth pair with TEST-NET addresses;
the host's end is the installation's public address. Real tiny guests,
real iptables on the host (chains named for this test process), a real
haproxy. Traffic goes only to the namespace's addresses, the host's end of
the veth and the test's own guest network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from kvmvps import firewall, keys, proxy
from kvmvps.config import load_settings
from kvmvps.models import Host, Vps
from kvmvps.services import Context, forwards, inventory, setup
from tests import conftest
from tests.forwarding import PID, cli, sh
from tests.guestcheck import known_hosts, paramiko_client, virsh

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

SLOT = (PID % 64) * 4
HOST_SIDE, NS_SIDE = f"198.51.100.{SLOT + 1}", f"198.51.100.{SLOT + 2}"
NS, VETH = f"kvn{PID}", f"kvh{PID}"
PREFIX = f"KVE{PID}"


@dataclass
class World:
    ctx: Context
    network: str

    def ns_python(self, script: str, *args: str, timeout: float = 20) -> str:
        """Run a Python snippet inside the namespace; its stdout ('' when it failed)."""
        done = subprocess.run(
            ["ip", "netns", "exec", NS, sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout if done.returncode == 0 else ""


HTTP_GET = """
import sys, socket
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(("GET /%s HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n" % (sys.argv[3], sys.argv[4])).encode())
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode(errors="replace"))
"""
TLS_HELLO = """
import sys, socket, ssl
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
try:
    ssl.create_default_context().wrap_socket(s, server_hostname=sys.argv[3])
except Exception:
    pass
print("sent")
"""


def http_get(host: str, port: int, path: str, name: str) -> str:
    """The same request from the host itself (no namespace)."""
    return subprocess.run(
        [sys.executable, "-c", HTTP_GET, host, str(port), path, name],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    ).stdout


def eventually(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(1)
    return False


def ok(ctx: Context, *args: str) -> dict | list:
    result = cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def root_run(ctx: Context, hostname: str, command: str) -> bytes:
    """A command as root in the guest, over SSH with the provisioning key."""
    with ctx.db.session() as s:
        vps = s.scalar(select(Vps).where(Vps.hostname == hostname))
        ip, host_key = vps.ip, vps.host_key
    client = paramiko_client(
        ip, 22, host_key, "root", key_filename=str(keys.provisioning_key_path(ctx.settings))
    )
    try:
        _, out, _ = client.exec_command(command, timeout=30)
        return out.read()
    finally:
        client.close()


def serve_http(ctx: Context, hostname: str, port: int, token: str) -> None:
    root_run(
        ctx,
        hostname,
        f"mkdir -p /tmp/www{port} && echo {token} > /tmp/www{port}/index.html"
        f" && busybox httpd -p {port} -h /tmp/www{port}",
    )


def iptables_save() -> str:
    return sh("iptables-save").stdout


@pytest.fixture(scope="module")
def world(real_ctx: Context, tiny_image: str) -> Iterator[World]:
    """An installation with forwarding on, and the namespace "on the internet"."""
    state = conftest.make_state_dir("forward-")
    shutil.copytree(real_ctx.settings.keys_dir, state / "keys")  # the key the image carries
    name, subnet = f"kvw{PID}", f"10.{190 + PID % 40}.2.0/24"
    ctx = Context(
        load_settings(
            conftest.test_env(
                state,
                name=name,
                subnet=subnet,
                KVMVPS_PUBLIC_ADDRESS=HOST_SIDE,
                KVMVPS_CHAIN_PREFIX=PREFIX,
                KVMVPS_BASE_DOMAIN="e2e.test",
            )
        )
    )
    try:
        setup.init(ctx)
        conftest.add_tiny_as_base(real_ctx, ctx, tiny_image)
        inventory.add_plan(ctx, "fw", 1, 256, 1, extra_forwards=2)
        _make_namespace()
        yield World(ctx=ctx, network=name)
    finally:
        _tear_down(ctx, state)


def _make_namespace() -> None:
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NS)
    sh("ip", "addr", "add", f"{HOST_SIDE}/30", "dev", VETH)
    sh("ip", "link", "set", VETH, "up")
    sh("ip", "-n", NS, "addr", "add", f"{NS_SIDE}/30", "dev", "eth0")
    for dev in ("eth0", "lo"):
        sh("ip", "-n", NS, "link", "set", dev, "up")


def _tear_down(ctx: Context, state: Path) -> None:
    try:
        conftest.cleanup_installation(ctx)
        with ctx.db.session() as s:
            host_id = s.scalar(select(Host.id).where(Host.uri == ctx.settings.libvirt_uri))
        if host_id is not None:
            forwards.remove_rules(ctx, host_id)
        proxy.Proxy(ctx.settings.proxy_path).stop()
    finally:
        sh("ip", "link", "del", VETH, check=False)
        sh("ip", "netns", "del", NS, check=False)
        conftest._remove_pool(ctx.settings.storage_pool)
        ctx.close()
        shutil.rmtree(state, ignore_errors=True)
    assert PREFIX not in iptables_save(), "the test's chains outlived it"


def _order(world: World, hostname: str) -> tuple[dict, str]:
    """Order a VPS the way an operator does (no --json); its view and password."""
    result = cli(
        world.ctx,
        "vps",
        "create",
        "--plan",
        "fw",
        "--image",
        "base",
        "--hostname",
        hostname,
        "--wait",
        "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    shown = ok(world.ctx, "vps", "show", hostname, "--json")
    assert shown["ssh_host"] == HOST_SIDE and 20000 <= shown["ssh_port"] <= 29999
    login = f"log in: ssh -p {shown['ssh_port']} vps@{HOST_SIDE}"
    assert login in result.stdout, result.stdout
    password = next(
        ln.split()[1] for ln in result.stdout.splitlines() if ln.startswith("password ")
    )
    return shown, password


def _ssh_from_outside(world: World, vps: dict, password: str, tmp: Path) -> str:
    with world.ctx.db.session() as s:
        host_key = s.scalar(select(Vps.host_key).where(Vps.uuid == vps["id"]))
    kh = known_hosts(tmp, HOST_SIDE, vps["ssh_port"], host_key)
    argv = [
        "ip",
        "netns",
        "exec",
        NS,
        "sshpass",
        "-e",
        "ssh",
        "-o",
        f"UserKnownHostsFile={kh}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "PubkeyAuthentication=no",
        "-p",
        str(vps["ssh_port"]),
        f"vps@{HOST_SIDE}",
        "hostname",
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"SSHPASS": password, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        stdin=subprocess.DEVNULL,
    )
    return done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr.strip()}"


def _hairpin(world: World, port: int, ssh_port: int) -> None:
    """PUBLIC:PORT from the host itself, and from another guest (fwb), reaches fwa.

    Where br_netfilter is on (as on the test machine), conntrack answers a
    guest for its neighbour even without the masquerade rule; the rule itself
    is proven in tests/unit/test_firewall_netns.py, on a bridge without it.
    """
    assert f"extra-{PID}" in http_get(HOST_SIDE, port, "", "x")
    fetched = root_run(
        world.ctx,
        "fwb",
        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox timeout 10 busybox nc {HOST_SIDE} {port}",
    )
    assert f"extra-{PID}".encode() in fetched
    banner = root_run(
        world.ctx, "fwb", f"echo | busybox timeout 10 busybox nc {HOST_SIDE} {ssh_port}"
    )
    assert banner.startswith(b"SSH-2.0-")


def test_forwards_reach_a_guest_from_outside(world: World, tmp_path: Path) -> None:
    ctx = world.ctx
    vps, password = _order(world, "fwa")
    other, _ = _order(world, "fwb")

    # SSH from the internet, with the credentials the order gave
    assert _ssh_from_outside(world, vps, password, tmp_path) == "fwa"

    # an extra forward reaches a port served inside the guest
    serve_http(ctx, "fwa", 8080, f"extra-{PID}")
    extra = ok(ctx, "vps", "forward", "add", "fwa", "--guest-port", "8080", "--json")
    port = extra["public_port"]
    assert f"extra-{PID}" in world.ns_python(HTTP_GET, HOST_SIDE, str(port), "", "x")

    _hairpin(world, port, vps["ssh_port"])

    def reachable() -> bool:
        return f"extra-{PID}" in world.ns_python(
            HTTP_GET, HOST_SIDE, str(port), "", "x", timeout=10
        )

    # our chain flushed: one reconcile pass brings it back
    sh("iptables", "-t", "nat", "-F", f"{PREFIX}-DNAT")
    assert not reachable()
    report = ok(ctx, "reconcile", "--json")
    assert any(f["action"] == "forwarding rules rewritten" for f in report["forwarding"])
    assert reachable()

    # the libvirt network restarted (its bridge made anew, its rules rewritten)
    virsh("net-destroy", world.network)
    virsh("net-start", world.network)
    assert not reachable()
    report = ok(ctx, "reconcile", "--json")
    assert any("put back on bridge" in f["action"] for f in report["forwarding"]), report
    assert eventually(reachable)
    assert _ssh_from_outside(world, vps, password, tmp_path) == "fwa"

    # delete: nothing of the VPS stays in iptables; the other one is untouched
    assert cli(ctx, "vps", "delete", "fwa", "--yes").exit_code == 0
    saved = iptables_save()
    assert vps["id"] not in saved and f"{vps['ip']}:" not in saved
    assert f"--dport {port} " not in saved and f"--dport {vps['ssh_port']} " not in saved
    assert other["id"] in saved
    assert cli(ctx, "vps", "delete", "fwb", "--yes").exit_code == 0
    assert firewall.read_state(firewall.Iptables(), PREFIX) == firewall.desired(PREFIX, [])


def test_names_reach_a_guest_through_the_proxy(world: World) -> None:
    ctx = world.ctx
    vps, _ = _order(world, "web")
    serve_http(ctx, "web", 80, f"by-name-{PID}")
    shown = ok(ctx, "vps", "http", "add", "web", "shop", "--json")
    assert shown["name"] == "shop.e2e.test"

    # HTTP by Host header, from outside and from the host itself
    answer = world.ns_python(HTTP_GET, HOST_SIDE, "80", "", "shop.e2e.test")
    assert f"by-name-{PID}" in answer
    assert f"by-name-{PID}" in http_get(HOST_SIDE, 80, "", "SHOP.e2e.test:80")
    assert " 503 " in world.ns_python(HTTP_GET, HOST_SIDE, "80", "", "other.e2e.test")

    # HTTPS by SNI, passed through undecrypted to the guest's port 443
    root_run(ctx, "web", "busybox nc -l -p 443 </dev/null >/tmp/tls.bin 2>&1 &")
    assert world.ns_python(TLS_HELLO, HOST_SIDE, "443", "shop.e2e.test").strip() == "sent"
    assert eventually(lambda: b"shop.e2e.test" in root_run(ctx, "web", "cat /tmp/tls.bin"), 10)

    # delete: the proxy no longer knows the name, and nothing stays in iptables
    config = proxy.Proxy(ctx.settings.proxy_path)
    assert "shop.e2e.test" in config.current()
    assert cli(ctx, "vps", "delete", "web", "--yes").exit_code == 0
    assert config.current() is None and config.pid() is None
    assert vps["id"] not in iptables_save()
