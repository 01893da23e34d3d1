"""``vps console`` and ``vps resize`` through the CLI, on libvirt's test driver."""

from __future__ import annotations

import json

import pytest
from lxml import etree
from sqlalchemy import select, update

from kvmvps.hypervisor import Hypervisor
from kvmvps.models import Job, Vps
from kvmvps.services import Context, inventory
from kvmvps.services.vps import VIEW_KEYS
from kvmvps.storage import GIB
from tests.badinput import assert_one_line_error, create_args, run_cli
from tests.snapshots import snapshot


def ok(ctx: Context, *args: str) -> str:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.stdout


def made(ctx: Context, hostname: str = "web1") -> dict:
    return json.loads(ok(ctx, *create_args(hostname=hostname)))


def stopped(ctx: Context, hostname: str = "web1") -> dict:
    made(ctx, hostname)
    view = json.loads(ok(ctx, "vps", "destroy", hostname, "--json"))
    assert view["state"] == "stopped"
    return view


def full_state(ctx: Context, domain: str) -> tuple:
    """The database, libvirt's objects and the domain's definition."""
    return snapshot(ctx), ctx.hypervisor(ctx.settings.libvirt_uri).domain_xml(domain)


def domain_facts(ctx: Context, ref: str) -> tuple[int, int, list[str]]:
    """vCPUs, memory (KiB) and the pinned cpusets, as libvirt has them."""
    root = etree.fromstring(ok(ctx, "vps", "xml", ref).encode())
    pins = [p.get("cpuset") for p in root.iterfind("./cputune/vcpupin")]
    return int(root.findtext("vcpu")), int(root.findtext("memory")), pins


# -- console --------------------------------------------------------------------
def test_console_failures(td_ctx: Context) -> None:
    made(td_ctx)
    # the test driver has no consoles: one line, exit 1, and the refusal is audited
    assert_one_line_error(run_cli(td_ctx, "vps", "console", "web1"), 1, "console of kvmvps-")
    entries = json.loads(ok(td_ctx, "audit", "--json"))
    assert (entries[0]["action"], entries[0]["result"]) == ("vps.console", "failed")
    assert_one_line_error(run_cli(td_ctx, "vps", "console", "nope"), 2, "no VPS matches 'nope'")
    ok(td_ctx, "vps", "destroy", "web1")
    assert_one_line_error(run_cli(td_ctx, "vps", "console", "web1"), 1, "web1 is stopped; start it")


def test_console_log(td_ctx: Context) -> None:
    vps = made(td_ctx)
    assert_one_line_error(
        run_cli(td_ctx, "vps", "console", "web1", "--log"), 1, "web1 has no console log yet"
    )
    log = td_ctx.settings.console_dir / f"{vps['domain']}.log"
    log.write_bytes(b"[    0.000000] Linux version 6.1\nlogin: \xff\n")
    assert ok(td_ctx, "vps", "console", vps["id"][:8], "--log") == (
        "[    0.000000] Linux version 6.1\nlogin: \ufffd\n"
    )
    # the console is read-only: never audited
    assert [e["action"] for e in json.loads(ok(td_ctx, "audit", "--json"))] == ["vps.create"]


# -- resize ---------------------------------------------------------------------
def test_resize_vcpus_and_memory(td_ctx: Context) -> None:
    vps = stopped(td_ctx)
    assert domain_facts(td_ctx, "web1")[:2] == (1, 256 * 1024)
    inventory.add_plan(td_ctx, "wide", 2, 512, 1)
    view = json.loads(ok(td_ctx, "vps", "resize", "web1", "--plan", "wide", "--json"))
    assert set(view) == set(VIEW_KEYS) and view["id"] == vps["id"]
    assert (view["plan"], view["vcpus"], view["memory_mib"], view["disk_gib"]) == (
        "wide",
        2,
        512,
        1,
    )
    assert view["state"] == "stopped" and len(view["pinned_cpus"]) == 2
    vcpus, memory_kib, pins = domain_facts(td_ctx, "web1")
    assert (vcpus, memory_kib) == (2, 512 * 1024)
    assert pins == [str(c) for c in view["pinned_cpus"]]
    text = ok(td_ctx, "vps", "resize", "web1", "--plan", "small")  # down again: disk equal
    assert "small" in text and domain_facts(td_ctx, "web1")[:2] == (1, 256 * 1024)
    started = json.loads(ok(td_ctx, "vps", "start", "web1", "--json"))
    assert started["state"] == "running"
    audit = json.loads(ok(td_ctx, "audit", "--action", "vps.resize", "--json"))
    assert [(e["target"], e["result"]) for e in audit] == [("web1", "ok"), ("web1", "ok")]


def test_resize_grows_the_disk(td_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test driver cannot resize volumes: record the call instead."""
    vps = stopped(td_ctx)
    grown = []
    monkeypatch.setattr(
        Hypervisor, "resize_volume", lambda self, pool, name, size: grown.append((pool, name, size))
    )
    inventory.add_plan(td_ctx, "deep", 1, 256, 3)
    view = json.loads(ok(td_ctx, "vps", "resize", "web1", "--plan", "deep", "--json"))
    assert view["disk_gib"] == 3
    assert grown == [(td_ctx.settings.storage_pool, f"{vps['domain']}.qcow2", 3 * GIB)]


def test_resize_failure_changes_nothing(td_ctx: Context) -> None:
    """Growing fails on the test driver: the domain and the database stay as they were."""
    vps = stopped(td_ctx)
    inventory.add_plan(td_ctx, "deepwide", 2, 512, 3)
    before = full_state(td_ctx, vps["domain"])
    result = run_cli(td_ctx, "vps", "resize", "web1", "--plan", "deepwide")
    assert_one_line_error(result, 1, "resize volume", "not supported")
    assert full_state(td_ctx, vps["domain"]) == before
    assert domain_facts(td_ctx, "web1")[:2] == (1, 256 * 1024)


def test_resize_bad_input(td_ctx: Context) -> None:
    made(td_ctx)
    inventory.add_plan(td_ctx, "wide", 2, 512, 1)
    inventory.add_plan(td_ctx, "deep", 1, 256, 3)
    inventory.add_plan(td_ctx, "huge", 1, 1_000_000, 3)
    inventory.add_plan(td_ctx, "many", 17, 256, 3)
    ok(td_ctx, "vps", "destroy", "web1")
    with td_ctx.db.session() as s:  # a disk already larger than plan "wide"
        vps = s.scalar(select(Vps).where(Vps.hostname == "web1"))
        vps.plan = inventory.get_by_name(s, type(vps.plan), "deep", "plan")
        domain = vps.domain_name
    before = full_state(td_ctx, domain)
    for args, code, fragment in [
        (["web1", "--plan", "wide"], 2, "a disk cannot shrink: plan 'wide' has 1 GiB, web1 "),
        (["web1", "--plan", "deep"], 2, "web1 already has plan 'deep'"),
        (["web1", "--plan", "nope"], 2, "no plan named 'nope'"),
        (["nope", "--plan", "wide"], 2, "no VPS matches 'nope'"),
        (["web1"], 2, "Missing option '--plan'"),
        (["web1", "--plan", "huge"], 1, "too little to grow web1"),
        (["web1", "--plan", "many"], 1, "only 16 CPUs"),
    ]:
        assert_one_line_error(run_cli(td_ctx, "vps", "resize", *args), code, fragment)
    assert full_state(td_ctx, domain) == before


def test_resize_running_vps_defines_the_next_boot(td_ctx: Context) -> None:
    """A running VPS moves at once in its definition; the live guest keeps its size."""
    vps = made(td_ctx)
    inventory.add_plan(td_ctx, "wide", 2, 512, 1)
    view = json.loads(ok(td_ctx, "vps", "resize", "web1", "--plan", "wide", "--json"))
    assert (view["state"], view["vcpus"], view["memory_mib"]) == ("running", 2, 512)
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    defined = etree.fromstring(hv.domain_xml(vps["domain"], inactive=True).encode())
    assert (defined.findtext("vcpu"), defined.findtext("memory")) == ("2", str(512 * 1024))
    assert etree.fromstring(hv.domain_xml(vps["domain"]).encode()).findtext("vcpu") == "1"


def test_resize_refuses_when_libvirt_or_a_job_disagrees(td_ctx: Context) -> None:
    vps = made(td_ctx)
    inventory.add_plan(td_ctx, "wide", 2, 512, 1)
    with td_ctx.db.session() as s:  # the database lags behind a running domain
        s.execute(update(Vps).where(Vps.uuid == vps["id"]).values(state="stopped"))
    assert_one_line_error(
        run_cli(td_ctx, "vps", "resize", "web1", "--plan", "wide"),
        1,
        "it is stopped but running according to libvirt",
    )
    td_ctx.hypervisor(td_ctx.settings.libvirt_uri).destroy(vps["domain"])  # now they agree
    with td_ctx.db.session() as s:
        s.add(Job(kind="start", vps_uuid=vps["id"], state="queued"))
    assert_one_line_error(
        run_cli(td_ctx, "vps", "resize", "web1", "--plan", "wide"),
        1,
        "a job is still working on it",
    )
