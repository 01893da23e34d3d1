"""A second hypervisor run by its own host agent, with PostgreSQL as the only channel.

The second libvirtd (scripts/second-host.sh) lives in network and mount
namespaces of its own; its agent (``kvmvps-admin worker --host NAME``) runs in
that network namespace and reaches PostgreSQL over the veth link, as it would
from another machine. The test's own process plays the operator's machine:
it orders through the CLI, and reaches the guest only through the second
host's public address, as a customer would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from kvmvps import keys
from kvmvps.config import load_settings
from kvmvps.models import Vps
from kvmvps.services import Context, inventory, jobs, setup
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
    uri: str  # its libvirt
    ns: str  # its network namespace
    agent_env: dict[str, str]
    agent_log: Path
    far: dict = field(default_factory=dict)  # far1, shared by the tests in order
    secrets: list[str] = field(default_factory=list)  # passwords shown: never in a log


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
    agent_env = {
        **env,
        "KVMVPS_DATABASE_URL": agent_url,
        "KVMVPS_RECONCILE_INTERVAL": "4",
        "KVMVPS_HOST_WAIT": "8",  # a job waits this long for its host when it stops answering
    }
    try:
        setup.init(ctx)
        conftest.add_tiny_as_base(real_ctx, ctx, tiny_image)
        inventory.add_plan(ctx, "small", 1, 256, 1, extra_forwards=1)
        inventory.add_plan(ctx, "roomy", 1, 320, 2, extra_forwards=1)
        hv2 = "hv2"
        _ok(ctx, "host", "add", hv2, "--uri", second_host["uri"])
        _ok(ctx, "host", "public-address", hv2, second_host["address"])
        yield Site(
            ctx, hv2, second_host["address"], second_host["uri"], f"kvh-{second_host['name']}",
            agent_env, state / "agent.log",
        )  # fmt: skip
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


class Agents:
    """``kvmvps-admin worker --host hv2``, run inside the second host's network namespace."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.proc: subprocess.Popen | None = None

    def start(self, hold_after: str = "", marker: Path | None = None) -> None:
        """Start the agent; ``hold_after``: a build holds after that step until ``marker`` goes."""
        site, env = self.site, dict(self.site.agent_env)
        program = ["-m", "kvmvps", "worker", "--host", site.host]
        if hold_after and marker is not None:
            env.update(PAUSE_AFTER=hold_after, PAUSE_MARKER=str(marker), PAUSE_UNTIL_GONE="1")
            program = [str(Path(__file__).with_name("pausing_worker.py")), "--host", site.host]
        with site.agent_log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    site.ns,
                    "env",
                    f"PYTHONPATH={ROOT}",
                    *(f"{k}={v}" for k, v in env.items()),
                    sys.executable,
                    *program,
                ],  # fmt: skip
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            code = proc.wait(timeout=60)
            assert code == 0, self.site.agent_log.read_text()[-3000:]


@pytest.fixture(scope="module")
def agents(site: Site) -> Iterator[Agents]:
    running = Agents(site)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(second_host: dict[str, str]) -> Iterator[str]:
    """A customer's machine: a network namespace of its own, routed to the public address."""
    tag = os.getpid() % 100_000
    ns, near, peer = f"kvc-{tag}", f"kvc{tag}h", f"kvc{tag}p"
    net = f"10.253.{os.getpid() % 250 + 1}"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", near, "type", "veth", "peer", "name", peer],
        ["ip", "link", "set", peer, "netns", ns],
        ["ip", "addr", "add", f"{net}.1/30", "dev", near],
        ["ip", "link", "set", near, "up"],
        ["ip", "-n", ns, "addr", "add", f"{net}.2/30", "dev", peer],
        ["ip", "-n", ns, "link", "set", peer, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "route", "add", "default", "via", f"{net}.1"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", near], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.3)


BANNER = (
    "import socket, sys\n"
    "with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:\n"
    "    c.settimeout(5); sys.exit(0 if c.recv(64).startswith(b'SSH-') else 1)\n"
)


def _banner(client: str, address: str, port: int) -> bool:
    """Whether an SSH server answers at ``address``:``port`` seen from the client's namespace."""
    probe = subprocess.run(
        ["ip", "netns", "exec", client, sys.executable, "-c", BANNER, address, str(port)],
        capture_output=True,
        timeout=15,
        check=False,
    )
    return probe.returncode == 0


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


def test_an_order_on_the_agent_host_reached_through_its_public_address(
    site: Site, agents: Agents, client: str, tmp_path: Path
) -> None:
    ctx, ns, address = site.ctx, site.ns, site.address
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
    site.secrets.append(order["password"])

    agents.start()
    view = _wait_running(ctx, "far1")
    assert (view["ssh_host"], view["host"]) == (address, site.host)
    host_key = _host_key(ctx, "far1")
    assert host_key  # read from the console (the image has no cloud-init)
    # the customer's way in: the forward on the second host's public address, from a
    # client in a network namespace of its own
    login = _ssh(client, tmp_path, view, host_key, "hostname", order["password"])
    assert login.returncode == 0 and login.stdout.strip() == "far1", login.stderr
    site.far = {**view, "password": order["password"], "host_key": host_key}

    # a web server in the guest, reached through an extra forward and an HTTP name,
    # both added centrally and written by the agent on its host (iptables, haproxy)
    token = f"far-{os.getpid()}"
    served = _root(ns, ctx, view["ip"], host_key, tmp_path, (
        f"mkdir -p /tmp/w && echo {token} > /tmp/w/index.html && busybox httpd -p 80 -h /tmp/w"
    ))  # fmt: skip
    assert served.returncode == 0, served.stderr
    extra = _ok(ctx, "vps", "forward", "add", "far1", "--guest-port", "80")
    assert extra["public_address"] == address
    site.far["extra_port"] = extra["public_port"]
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


def test_every_lifecycle_action_on_the_agent_host(
    site: Site, agents: Agents, client: str, tmp_path: Path
) -> None:
    """The single-host walk, on the booted guest of the agent's host."""
    ctx, far = site.ctx, _far1(site)
    domain, virsh = far["domain"], ["virsh", "-q", "-c", site.uri]

    def state(expected: str) -> None:
        assert _ok(ctx, "vps", "show", "far1")["state"] == expected
        witness = subprocess.run([*virsh, "domstate", domain], capture_output=True, text=True)
        assert witness.stdout.strip() == WITNESS[expected], witness

    assert _ok(ctx, "vps", "reboot", "far1")["state"] == "running"
    state("running")
    # drift: the guest powered off behind kvmvps's back, on the far host itself
    subprocess.run([*virsh, "destroy", domain], check=True, capture_output=True)
    _wait("the drift seen", lambda: _ok(ctx, "vps", "show", "far1")["state"] == "stopped")
    state("stopped")
    # resize while stopped: the definition on the far host follows the new plan
    resized = _ok(ctx, "vps", "resize", "far1", "--plan", "roomy")
    assert (resized["plan"], resized["memory_mib"]) == ("roomy", 320)
    xml = subprocess.run([*virsh, "dumpxml", "--inactive", domain], capture_output=True, text=True)
    assert "<memory unit='KiB'>327680</memory>" in xml.stdout, xml.stdout[:600]
    assert _ok(ctx, "vps", "start", "far1")["state"] == "running"
    state("running")

    reset = _ok(ctx, "vps", "password-reset", "far1")
    assert reset["password"] and reset["password"] != far["password"]
    site.secrets.append(reset["password"])
    login = _ssh(client, tmp_path, far, far["host_key"], "id -un", reset["password"])
    assert login.returncode == 0 and login.stdout.strip() == "vps", login.stderr

    # a backup over qemu+ssh: the far host's QEMU writes it, the worker sees it
    taken = _ok(ctx, "vps", "backup", "create", "far1")
    assert taken["state"] == "ready", taken
    assert (ctx.settings.backup_path / f"{taken['id']}.qcow2").stat().st_size > 0

    # rescue: the rescue system boots with the VPS's disk; root logs in with a one-time password
    _ok(ctx, "image", "edit", "base", "--rescue")
    rescued = _ok(ctx, "vps", "rescue", "far1")
    assert rescued["rescue"] is True and rescued["state"] == "running"
    site.secrets.append(rescued["password"])
    rescue_key = _rescue_host_key(ctx, "far1")
    inside = _ssh(client, tmp_path, far, rescue_key, "ls /dev/vdb", rescued["password"], "root")
    assert inside.returncode == 0 and "/dev/vdb" in inside.stdout, inside.stderr
    back = _ok(ctx, "vps", "unrescue", "far1")
    assert back["rescue"] is False and back["state"] == "running"
    _wait("SSH after unrescue", lambda: _banner(client, far["ssh_host"], far["ssh_port"]), 90)

    reinstalled = _ok(ctx, "vps", "reinstall", "far1", "--yes")
    assert reinstalled["state"] == "running" and reinstalled["password"] != reset["password"]
    site.secrets.append(reinstalled["password"])
    new_key = _host_key(ctx, "far1")
    assert new_key and new_key != far["host_key"]
    login = _ssh(client, tmp_path, far, new_key, "hostname", reinstalled["password"])
    assert login.returncode == 0 and login.stdout.strip() == "far1", login.stderr
    far.update(host_key=new_key, password=reinstalled["password"])


def test_reconcile_sees_orphans_on_the_agent_host(site: Site, agents: Agents, client: str) -> None:
    ctx, far = site.ctx, _far1(site)
    virsh = ["virsh", "-q", "-c", site.uri]
    pool = ctx.settings.storage_pool
    orphan = f"kvmvps-orphan{os.getpid()}.qcow2"
    subprocess.run([*virsh, "vol-create-as", pool, orphan, "1M", "--format", "qcow2"],
                   check=True, capture_output=True)  # fmt: skip
    seen = _ok(ctx, "reconcile")
    assert {"host": site.host, "pool": pool, "volume": orphan} in seen["orphan_volumes"]
    # both hosts' pools are one directory here: far1's disk is nobody's orphan on either
    assert [v["volume"] for v in seen["orphan_volumes"]] in ([orphan], [orphan, orphan])
    _ok(ctx, "reconcile", "--fix")
    left = subprocess.run([*virsh, "vol-list", pool], capture_output=True, text=True).stdout
    assert orphan not in left and far["domain"] in left
    assert _ok(ctx, "reconcile")["orphan_volumes"] == []
    assert _banner(client, far["ssh_host"], far["ssh_port"])


def test_the_host_fails_during_a_build_and_while_idle(
    site: Site, agents: Agents, second_host: dict[str, str], client: str, tmp_path: Path
) -> None:
    """B's libvirtd stops while far2 is half built (domain started) and far1 runs idle."""
    ctx, far = site.ctx, _far1(site)
    hostenv = {"KVMVPS_SECOND_HOST_DIR": second_host["KVMVPS_SECOND_HOST_DIR"]}
    marker = tmp_path / "held"
    agents.stop()
    agents.start(hold_after="start", marker=marker)  # far2's build holds after its start
    args = ("vps", "create", "--plan", "small", "--image", "base", "--hostname", "far2")
    order = _ok(ctx, *args, "--host", site.host)
    site.secrets.append(order["password"])
    _wait("the build at its start step", marker.exists, 90)
    down = conftest.second_host_script("stop-libvirtd", second_host["name"], env=hostenv)
    assert down.returncode == 0, down.stderr
    run_cli(ctx, "reconcile")
    # the truth: not known (the guests run on); no orders, no actions there
    assert _ok(ctx, "vps", "show", "far1")["state"] == "unknown"
    assert _ok(ctx, "vps", "show", "far2")["state"] == "unknown"
    refused = run_cli(ctx, *args, "--host", site.host, "--hostname", "far3")
    assert refused.exit_code == 1 and "not answering" in refused.stderr
    refused = run_cli(ctx, "vps", "reboot", "far1")
    assert refused.exit_code == 1 and "is not answering" in refused.stderr
    # the build goes on, waits KVMVPS_HOST_WAIT for its host, fails, and keeps its address
    marker.unlink()
    _wait("the build failed", lambda: _job(ctx, order["job"])["state"] == "failed", 60)
    failed = _ok(ctx, "vps", "show", "far2")
    assert failed["state"] == "error" and failed["ip"] == order["ip"]
    assert "rolled back when the host answers again" in failed["error"]

    back = conftest.second_host_script("start-libvirtd", second_host["name"], env=hostenv)
    assert back.returncode == 0, back.stderr
    _wait("the host answers again", lambda: run_cli(ctx, "reconcile").exit_code == 0)
    _wait("far2 rolled back", lambda: _ok(ctx, "vps", "show", "far2")["ip"] is None)
    rolled = _ok(ctx, "vps", "show", "far2")
    assert rolled["state"] == "error" and "answered again" in rolled["error"]
    far_hv = ctx.hypervisor(site.uri)
    assert order["domain"] not in far_hv.list_domains()
    assert not [v for v in far_hv.list_volumes(ctx.settings.storage_pool) if order["domain"] in v]
    assert _ok(ctx, "vps", "show", "far1")["state"] == "running"
    assert _banner(client, far["ssh_host"], far["ssh_port"])
    clean = _ok(ctx, "reconcile")
    assert clean["clean"] and not clean["orphan_dhcp"], clean
    assert run_cli(ctx, "vps", "delete", "far2", "--yes").exit_code == 0


def test_shutdown_and_delete_on_the_agent_host_leave_nothing(site: Site, agents: Agents) -> None:
    ctx, far = site.ctx, _far1(site)
    stopped = _ok(ctx, "vps", "shutdown", "far1", "--timeout", "30", "--force")
    assert stopped["state"] == "stopped"
    deleted = run_cli(ctx, "vps", "delete", "far1", "--yes")
    assert deleted.exit_code == 0, deleted.stderr
    assert far["domain"] not in ctx.hypervisor(site.uri).list_domains()
    _wait("rules gone", lambda: f"--dport {far['extra_port']} " not in _rules(site.ns))
    agents.stop()
    log = site.agent_log.read_text()
    assert "(create far1): finished" in log and "(edge): finished" in log
    assert "(create far2): failed" in log
    for secret in site.secrets:
        assert secret not in log


WITNESS = {"running": "running", "stopped": "shut off", "suspended": "paused"}


def _far1(site: Site) -> dict:
    if not site.far:
        pytest.fail("far1 was not ordered (see the order test above)")
    return site.far


def _host_key(ctx: Context, hostname: str) -> str:
    with ctx.db.session() as s:
        return s.scalar(select(Vps.host_key).where(Vps.hostname == hostname)) or ""


def _rescue_host_key(ctx: Context, hostname: str) -> str:
    with ctx.db.session() as s:
        return s.scalar(select(Vps.rescue_host_key).where(Vps.hostname == hostname)) or ""


def _job(ctx: Context, job: str) -> dict:
    return dict(jobs.get_job(ctx, job))


def _step(ctx: Context, job: str) -> str | None:
    return _job(ctx, job)["step"]


def _ssh(
    client: str, tmp: Path, view: dict, host_key: str, command: str, password: str, user: str = ""
) -> subprocess.CompletedProcess:
    """``command`` over OpenSSH from the client's own namespace, through the public address."""
    return openssh(
        tmp, view["ssh_host"], view["ssh_port"], host_key, user or view["username"], command,
        password=password, netns=client,
    )  # fmt: skip


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
