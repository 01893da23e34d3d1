"""Migration between two real hypervisors (scripts/second-host.sh), with PostgreSQL.

A running tiny guest moves live from this machine's libvirtd (A) to the
second host (B) and back. The test process plays the operator (the CLI) and
reaches the guest as root with the provisioning key and the VPS's pinned
host key: directly while it is on A, from inside B's network namespace while
it is on B. A move that fails for real (QEMU cannot reach the target) first
proves that nothing is left on the target and the VPS still runs on A.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from kvmvps import keys
from kvmvps.config import load_settings
from kvmvps.models import AuditEntry, Host, Vps
from kvmvps.services import Context, forwards, inventory, setup
from kvmvps.services import hosts as hosts_service
from tests import conftest
from tests.badinput import create_args, run_cli
from tests.guestcheck import known_hosts

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

NAME = f"kvm{os.getpid()}"
SUBNET = f"10.{190 + conftest._SLOT}.5.0/24"


@dataclass
class Hosts:
    ctx: Context
    a: str  # this machine's libvirtd, by its kvmvps name
    b: str  # the second host
    b_uri: str
    b_address: str
    b_ns: str
    link: str  # this machine's address on the link to B
    tmp: Path


def _ok(ctx: Context, *args: str) -> dict:
    result = run_cli(ctx, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def hosts(real_ctx: Context, tiny_image: str, second_host: dict[str, str]) -> Iterator[Hosts]:
    if not conftest.PG_URL:
        pytest.fail("this test runs on PostgreSQL: set KVMVPS_TEST_POSTGRES_URL")
    db = f"kvm_{os.getpid()}"
    admin = create_engine(conftest.PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{db}"')
    state = conftest.make_state_dir("migrate-")
    shutil.copytree(real_ctx.settings.keys_dir, state / "keys")  # the key the image carries
    # forwards on A's link address go into chains of this test's own
    env = conftest.test_env(
        state, name=NAME, subnet=SUBNET, KVMVPS_CHAIN_PREFIX=f"KVM{os.getpid()}"
    )
    env["KVMVPS_DATABASE_URL"] = (
        make_url(conftest.PG_URL).set(database=db).render_as_string(hide_password=False)
    )
    ctx = Context(load_settings(env))
    uri = second_host["uri"]
    # B's pool in a directory of its own, as on another machine (prepare_host keeps it)
    far_pool = state / "pool-b"
    far_pool.mkdir(mode=0o755)
    pool = ctx.settings.storage_pool
    subprocess.run(
        ["virsh", "-q", "-c", uri, "pool-define-as", pool, "dir", "--target", str(far_pool)],
        check=True,
        capture_output=True,
    )
    try:
        setup.init(ctx)
        conftest.add_tiny_as_base(real_ctx, ctx, tiny_image)
        inventory.add_plan(ctx, "small", 1, 256, 1)
        a = next(
            h["name"] for h in _ok(ctx, "host", "list") if h["uri"] == real_ctx.settings.libvirt_uri
        )
        _ok(ctx, "host", "add", "hv2", "--uri", uri)
        _ok(ctx, "host", "public-address", "hv2", second_host["address"])
        # B's QEMU reaches A over the link (a failed move goes back that way)
        _ok(ctx, "host", "public-address", a, second_host["link"])
        ns = f"kvh-{second_host['name']}"
        yield Hosts(ctx, a, "hv2", uri, second_host["address"], ns, second_host["link"], state)
    finally:
        for host in hosts_service.list_hosts(ctx):
            if host["uri"] == ctx.settings.libvirt_uri:
                forwards.remove_rules(ctx, _host_id(ctx, host["name"]))
        conftest.cleanup_installation(ctx)
        far = ctx.hypervisor(uri)
        for domain in far.list_domains(prefix="kvmvps-"):
            far.undefine(domain)
        for net in inventory.list_networks(ctx):
            far.remove_network(net.libvirt_name)
        for verb in ("pool-destroy", "pool-delete", "pool-undefine"):
            subprocess.run(["virsh", "-q", "-c", uri, verb, pool], capture_output=True)
        conftest._remove_pool(pool)
        ctx.close()
        conftest._drop_database(admin, db)
        admin.dispose()
        shutil.rmtree(state, ignore_errors=True)


def _host_id(ctx: Context, name: str) -> int:
    with ctx.db.session() as s:
        host_id = s.scalar(select(Host.id).where(Host.name == name))
    assert host_id is not None
    return host_id


def _root(h: Hosts, ns: str | None, ip: str, host_key: str, command: str) -> str:
    """``command`` as root in the guest (provisioning key, pinned host key); its output."""
    kh = known_hosts(h.tmp, ip, 22, host_key)
    key = keys.provisioning_key_path(h.ctx.settings)
    ssh = ["ssh", "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes",
           "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
           "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5", "-i", str(key), f"root@{ip}"]  # fmt: skip
    prefix = ["ip", "netns", "exec", ns] if ns else []
    deadline = time.monotonic() + 60
    while True:  # after a move the guest's neighbours learn where it is within moments
        done = subprocess.run(
            [*prefix, *ssh, command], capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return done.stdout
        time.sleep(0.5)


def _traces(h: Hosts, uri: str, view: dict) -> list[str]:
    """What of the VPS a host has: its domain, volumes, DHCP entry."""
    hv = h.ctx.hypervisor(uri)
    found = [d for d in hv.list_domains(prefix="kvmvps-") if d == view["domain"]]
    found += [v for v in hv.list_volumes(h.ctx.settings.storage_pool) if view["domain"] in v]
    found += [f"dhcp {e.mac}" for e in hv.dhcp_hosts(view["network"]) if e.mac == view["mac"]]
    return found


def test_live_there_and_back_and_a_failed_move_leaves_nothing(hosts: Hosts) -> None:
    h, ctx = hosts, hosts.ctx
    a_uri = ctx.settings.libvirt_uri
    view = _ok(ctx, *create_args(hostname="mig1")[:-1], "--host", h.a)
    with ctx.db.session() as s:
        host_key = s.scalar(select(Vps.host_key).where(Vps.uuid == view["id"]))
    assert host_key
    token = f"moved-{os.getpid()}"
    _root(h, None, view["ip"], host_key, f"echo {token} > /root/mark && sync")

    # a move that fails for real: B's address is this machine's, where no QEMU listens
    _ok(ctx, "host", "public-address", h.b, h.link)
    failed = run_cli(ctx, "vps", "migrate", "mig1", "--to", h.b, "--live", "--wait")
    _ok(ctx, "host", "public-address", h.b, h.b_address)
    assert failed.exit_code == 1 and "Traceback" not in failed.stderr
    assert "failed at step 'migrate'" in failed.stderr and f"stays on {h.a}" in failed.stderr
    assert _traces(h, h.b_uri, view) == []
    assert sorted(_traces(h, a_uri, view)) == sorted(
        [view["domain"], f"{view['domain']}.qcow2", f"dhcp {view['mac']}"]
    )
    shown = _ok(ctx, "vps", "show", "mig1")
    assert (shown["host"], shown["state"], shown["error"]) == (h.a, "running", None)
    assert _root(h, None, view["ip"], host_key, "cat /root/mark").strip() == token

    # live to B: the same guest (same disk content, same host key) answers there
    started = time.monotonic()
    moved = _ok(ctx, "vps", "migrate", "mig1", "--to", h.b, "--wait")
    there = time.monotonic() - started
    assert (moved["host"], moved["state"], moved["id"], moved["ip"]) == (
        h.b, "running", view["id"], view["ip"]
    )  # fmt: skip
    assert moved["host_key_fingerprint"] == view["host_key_fingerprint"]
    assert _traces(h, a_uri, view) == []
    assert _root(h, h.b_ns, view["ip"], host_key, "cat /root/mark").strip() == token
    _root(h, h.b_ns, view["ip"], host_key, f"echo {token}-b >> /root/mark && sync")

    # and back, live: what was written on B came along
    back = _ok(ctx, "vps", "migrate", "mig1", "--to", h.a, "--live", "--wait")
    assert (back["host"], back["state"]) == (h.a, "running")
    # B serves no forwards (no agent): the SSH forward went, and came back on A's address
    assert (view["ssh_host"], moved["ssh_host"], back["ssh_host"]) == (h.link, view["ip"], h.link)
    assert back["ssh_port"] != 22 and moved["ssh_port"] == 22
    assert _traces(h, h.b_uri, view) == []
    marks = _root(h, None, view["ip"], host_key, "cat /root/mark").split()
    assert marks == [token, f"{token}-b"]
    with ctx.db.session() as s:
        row = s.scalar(select(Vps).where(Vps.uuid == view["id"]))
        assert row is not None and row.host_key == host_key
        actions = list(s.scalars(select(AuditEntry.action).where(AuditEntry.target == view["id"])))
    assert actions.count("vps.migrate_notice") == 2
    print(f"\nlive migration of an idle tiny guest A->B: {there:.1f} s (with the CLI)")

    # cold, stopped: the disk is copied through the worker; started on B it is the same guest
    _ok(ctx, "vps", "destroy", "mig1")
    cold = _ok(ctx, "vps", "migrate", "mig1", "--to", h.b, "--wait")
    assert (cold["host"], cold["state"], cold["ip"]) == (h.b, "stopped", view["ip"])
    assert _traces(h, a_uri, view) == []
    assert _ok(ctx, "vps", "start", "mig1")["state"] == "running"
    marks = _root(h, h.b_ns, view["ip"], host_key, "cat /root/mark").split()
    assert marks == [token, f"{token}-b"]
