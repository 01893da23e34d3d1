"""A second hypervisor run by its own host agent, with PostgreSQL as the only channel.

The second libvirtd (scripts/second-host.sh) lives in network and mount
namespaces of its own; its agent (``kvmvps-admin worker --host NAME``) runs in
that network namespace and reaches PostgreSQL over the veth link, as it would
from another machine. The test's own process plays the operator's machine:
it orders through the CLI, and reaches the guest only through the second
host's public address, as a customer would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from kvmvps import keys
from kvmvps.config import load_settings
from kvmvps.models import Vps
from kvmvps.services import Context, inventory, setup
from tests import conftest
from tests.badinput import run_cli
from tests.guestcheck import known_hosts, openssh

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
NAME = f"kva{os.getpid()}"
SUBNET = f"10.{190 + conftest._SLOT}.2.0/24"


@dataclass
class Site:
    ctx: Context
    host: str  # the second host's name in kvmvps
    address: str  # its public address
    agent_env: dict[str, str]
    agent_log: Path


def _ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _rules(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture(scope="module")
def site(real_ctx: Context, tiny_image: str, second_host: dict[str, str]) -> Iterator[Site]:
    if not conftest.PG_URL:
        pytest.fail("a host agent needs PostgreSQL: set KVMVPS_TEST_POSTGRES_URL")
    db = f"kva_{os.getpid()}"
    admin = create_engine(conftest.PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{db}"')
    url = make_url(conftest.PG_URL).set(database=db)
    state = conftest.make_state_dir("agent-")
    shutil.copytree(real_ctx.settings.keys_dir, state / "keys")  # the key the image carries
    env = conftest.test_env(state, name=NAME, subnet=SUBNET, KVMVPS_BASE_DOMAIN="example.test")
    env["KVMVPS_DATABASE_URL"] = url.render_as_string(hide_password=False)
    ctx = Context(load_settings(env))
    # the agent, on "the other machine", reaches PostgreSQL over the link
    agent_url = url.set(host=second_host["link"]).render_as_string(hide_password=False)
    agent_env = {**env, "KVMVPS_DATABASE_URL": agent_url, "KVMVPS_RECONCILE_INTERVAL": "2"}
    try:
        setup.init(ctx)
        conftest.add_tiny_as_base(real_ctx, ctx, tiny_image)
        inventory.add_plan(ctx, "small", 1, 256, 1, extra_forwards=1)
        hv2 = "hv2"
        _ok(ctx, "host", "add", hv2, "--uri", second_host["uri"])
        _ok(ctx, "host", "public-address", hv2, second_host["address"])
        yield Site(ctx, hv2, second_host["address"], agent_env, state / "agent.log")
    finally:
        conftest.cleanup_installation(ctx)
        far = ctx.hypervisor(second_host["uri"])
        for domain in far.list_domains(prefix="kvmvps-"):
            far.undefine(domain)
        for net in inventory.list_networks(ctx):
            far.remove_network(net.libvirt_name)
        conftest._remove_pool(ctx.settings.storage_pool)
        subprocess.run(
            ["virsh", "-c", second_host["uri"], "pool-destroy", ctx.settings.storage_pool],
            capture_output=True,
        )
        ctx.close()
        conftest._drop_database(admin, db)
        admin.dispose()
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def agent(site: Site, ns: str) -> Iterator[subprocess.Popen]:
    """``kvmvps-admin worker --host hv2``, run inside the second host's network namespace."""
    with site.agent_log.open("ab") as log:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "env",
                *(f"{k}={v}" for k, v in site.agent_env.items()),
                sys.executable,
                "-m",
                "kvmvps",
                "worker",
                "--host",
                site.host,
            ],  # fmt: skip
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            code = proc.wait(timeout=60)
    assert code == 0, site.agent_log.read_text()[-3000:]


def _wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.3)


def _banner(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2) as conn:
            conn.settimeout(5)
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def test_bad_requests_for_hosts_change_nothing(site: Site) -> None:
    ctx = site.ctx
    before = _ok(ctx, "vps", "list")
    args = ("vps", "create", "--plan", "small", "--image", "base", "--hostname", "x1")
    for bad in ("nosuch", "vm;reboot", "hv2\n"):
        refused = run_cli(ctx, *args, "--host", bad)
        assert refused.exit_code == 1 and refused.stderr.startswith("error: there is no enabled")
        assert len(refused.stderr.strip().splitlines()) == 1
    for bad in (["host", "agent", "nosuch", "on"], ["host", "agent", site.host, "maybe"]):
        refused = run_cli(ctx, *bad)
        assert refused.exit_code in (1, 2) and "Traceback" not in refused.stderr
    _ok(ctx, "host", "agent", site.host, "off")
    refused = run_cli(ctx, "worker", "--host", site.host)  # not handed to an agent
    assert refused.exit_code == 1 and "host agent" in refused.stderr
    assert _ok(ctx, "vps", "list") == before


def test_an_order_and_its_life_on_the_agent_host(
    site: Site, second_host: dict[str, str], tmp_path: Path
) -> None:
    ctx, ns, address = site.ctx, f"kvh-{second_host['name']}", site.address
    hostenv = {"KVMVPS_SECOND_HOST_DIR": second_host["KVMVPS_SECOND_HOST_DIR"]}
    _ok(ctx, "host", "agent", site.host, "on")
    # no agent runs yet: a waiting order says what to start, and still shows the password
    args = ("vps", "create", "--plan", "small", "--image", "base", "--hostname", "far1")
    waited = run_cli(ctx, *args, "--host", site.host, "--wait", "--json")
    assert waited.exit_code == 1
    assert (
        waited.stderr.strip().splitlines() == [waited.stderr.strip()]
        and f"'kvmvps-admin worker --host {site.host}'" in waited.stderr
    )
    order = json.loads(waited.stdout)
    assert order["state"] == "queued" and order["host"] == site.host and order["password"]

    with agent(site, ns):
        view = _wait_running(ctx, "far1")
        assert (view["ssh_host"], view["host"]) == (address, site.host)
        with ctx.db.session() as s:
            host_key = s.scalar(select(Vps.host_key).where(Vps.hostname == "far1"))
        assert host_key  # read from the console (the image has no cloud-init)
        # the customer's way in: the forward on the second host's public address
        login = openssh(
            tmp_path, address, view["ssh_port"], host_key, "vps", "hostname",
            password=order["password"],
        )  # fmt: skip
        assert login.returncode == 0 and login.stdout.strip() == "far1", login.stderr

        # a web server in the guest, reached through an extra forward and an HTTP name,
        # both added centrally and written by the agent on its host (iptables, haproxy)
        token = f"far-{os.getpid()}"
        served = _root(ns, ctx, view["ip"], host_key, tmp_path, (
            f"mkdir -p /tmp/w && echo {token} > /tmp/w/index.html && busybox httpd -p 80 -h /tmp/w"
        ))  # fmt: skip
        assert served.returncode == 0, served.stderr
        extra = _ok(ctx, "vps", "forward", "add", "far1", "--guest-port", "80")
        assert extra["public_address"] == address
        _wait(
            "the extra forward",
            lambda: _fetch(f"http://{address}:{extra['public_port']}/") == token,
        )
        name = _ok(ctx, "vps", "http", "add", "far1", "www.example.test")["name"]
        assert name == "www.example.test"
        _wait("the HTTP name", lambda: _fetch(f"http://{address}/", name) == token)

        # rules removed on the host are put back by the agent's reconcile
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-t", "nat", "-F",
                        f"{ctx.settings.chain_prefix}-DNAT"], check=True)  # fmt: skip
        assert f"--dport {view['ssh_port']}" not in _rules(ns)
        _wait("rules put back", lambda: f"--dport {view['ssh_port']} " in _rules(ns))

        # lifecycle through the agent: a reboot, and the guest answers again
        rebooted = run_cli(ctx, "vps", "reboot", "far1")
        assert rebooted.exit_code == 0, rebooted.stderr
        _wait("SSH after the reboot", lambda: _banner(address, view["ssh_port"]), timeout=120)

        # the host fails: its libvirtd goes away (the guest keeps running)
        down = conftest.second_host_script("stop-libvirtd", second_host["name"], env=hostenv)
        assert down.returncode == 0, down.stderr
        run_cli(ctx, "reconcile")
        assert _ok(ctx, "vps", "show", "far1")["state"] == "unknown"
        refused = run_cli(ctx, *args, "--host", site.host, "--hostname", "far2")
        assert refused.exit_code == 1 and "not answering" in refused.stderr
        refused = run_cli(ctx, "vps", "reboot", "far1")
        assert refused.exit_code == 1 and "is not answering" in refused.stderr
        # and comes back: reconcile restores the truth
        back = conftest.second_host_script("start-libvirtd", second_host["name"], env=hostenv)
        assert back.returncode == 0, back.stderr
        _wait("the host answers again", lambda: run_cli(ctx, "reconcile").exit_code == 0)
        assert _ok(ctx, "vps", "show", "far1")["state"] == "running"
        assert _banner(address, view["ssh_port"])

        deleted = run_cli(ctx, "vps", "delete", "far1", "--yes")
        assert deleted.exit_code == 0, deleted.stderr
        far = ctx.hypervisor(second_host["uri"])
        assert view["domain"] not in far.list_domains()
        _wait("rules gone", lambda: f"--dport {extra['public_port']} " not in _rules(ns))
    log = site.agent_log.read_text()
    assert "(create far1): finished" in log and "(edge): finished" in log
    assert order["password"] not in log


def _root(
    ns: str, ctx: Context, ip: str, host_key: str, tmp: Path, command: str
) -> subprocess.CompletedProcess:
    """``command`` as root in the guest, from inside its host (provisioning key, pinned key)."""
    kh = known_hosts(tmp, ip, 22, host_key)
    key = keys.provisioning_key_path(ctx.settings)
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ssh",
            "-o",
            f"UserKnownHostsFile={kh}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(key),
            f"root@{ip}",
            command,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _fetch(url: str, host: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})  # noqa: S310 - http:// URLs of the test
    try:
        with urllib.request.urlopen(request, timeout=3) as answer:  # noqa: S310 - as above
            return answer.read().decode().strip()
    except OSError:
        return ""


def _wait_running(ctx: Context, hostname: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = _ok(ctx, "vps", "show", hostname)
        if view["state"] == "running":
            return view
        assert view["state"] not in ("error", "failed"), view
        assert time.monotonic() < deadline, f"{hostname} is {view['state']} after {timeout} s"
        time.sleep(0.5)
