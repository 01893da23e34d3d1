"""Migration on libvirt's test driver (SQLite and PostgreSQL): refusals, jobs, rollback.

Two test-driver "hosts" (test:///default and a node file of its own) hold
pools, networks, volumes, DHCP entries and domains, but cannot migrate or
stream volumes: a live move fails at step 'migrate', a cold one at
'volumes', for real, after the earlier steps put things on the target. The
successful moves are in tests/e2e/test_migration_real.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kvmvps.errors import StepFailed
from kvmvps.models import Forward, Job, JobState, Vps
from kvmvps.services import (
    Context,
    actions,
    hosts,
    migration,
    migration_work,
    orders,
    reconcile,
    suspension,
)
from kvmvps.services import vps as vps_service
from kvmvps.services.facts import VpsFacts
from kvmvps.services.provisioning import OrderRequest
from kvmvps.services.runner import JobFailed, run_or_follow
from tests.badinput import assert_one_line_error, run_cli
from tests.unit.test_admin_cli import local_host, node_uri

OP = "os:operator"


@pytest.fixture
def two(td_ctx: Context, tmp_path: Path) -> tuple[Context, str, str]:
    """A running VPS web1 on the local test host; a second host node2 with room and an address."""
    local = local_host(td_ctx)  # before another host is listed
    hosts.add_host(td_ctx, "node2", node_uri(tmp_path), actor=OP)
    hosts.set_public_address(td_ctx, "node2", "203.0.113.7", actor=OP)
    hosts.set_public_address(td_ctx, local, "203.0.113.1", actor=OP)
    order = OrderRequest(plan="small", image="base", hostname="web1", host=local)
    return td_ctx, orders.create(td_ctx, order).uuid, local


def _dir(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name


def _snapshot(ctx: Context, uuid: str) -> tuple[object, ...]:
    """What a refused or rolled-back move must leave as it was."""
    with ctx.db.reading() as s:
        vps = s.scalar(select(Vps).where(Vps.uuid == uuid))
        assert vps is not None
        migrates = s.scalar(select(func.count()).select_from(Job).where(Job.kind == "migrate"))
        return (
            vps.host.name,
            vps.state,
            vps.ip,
            vps.mac,
            vps.error,
            tuple(vps.pinned_cpus),
            sorted(
                (row.public_port, row.guest_port)
                for row in s.scalars(select(Forward).where(Forward.vps_id == vps.id))
            ),
            migrates,
        )


def _target_traces(ctx: Context, node: str, uuid: str) -> list[str]:
    """The VPS's domain, volumes and DHCP entry on host ``node``."""
    view = vps_service.show(ctx, uuid)
    uri = next(h for h in hosts.list_hosts(ctx) if h["name"] == node)["uri"]
    hv = ctx.hypervisor(uri)
    found = [d for d in hv.list_domains(prefix="kvmvps-") if d == view["domain"]]
    found += [v for v in hv.list_volumes(ctx.settings.storage_pool) if view["domain"] in v]
    found += [e.mac for e in hv.dhcp_hosts(view["network"]) if e.mac == view["mac"]]
    return found


def test_bad_requests_are_one_line_errors_and_change_nothing(
    two: tuple[Context, str, str], tmp_path: Path
) -> None:
    ctx, uuid, local = two
    before = _snapshot(ctx, uuid)
    cases = [
        (["--to", "nosuch"], "no enabled host named 'nosuch'"),
        (["--to", local], f"web1 is on host {local} already"),
        (["--to", "node2\n"], "no enabled host"),
        (["--to", "node2\x1b[31m"], "no enabled host"),
        (["--to", "n" * 5000], "no enabled host"),
        (["--to", " "], "name the host"),
    ]
    for args, fragment in cases:
        code = 1 if "already" in fragment else 2  # a refusal; else bad usage or no such host
        assert_one_line_error(run_cli(ctx, "vps", "migrate", "web1", *args), code, fragment)
    refused = run_cli(ctx, "vps", "migrate", "nosuchvps", "--to", "node2")
    assert_one_line_error(refused, refused.exit_code, "nosuchvps")
    assert refused.exit_code in (1, 2)
    for off, on, fragment in (
        (["maintenance", "node2", "on"], ["maintenance", "node2", "off"], "in maintenance"),
        (["disable", "node2"], ["enable", "node2"], "no enabled host"),
    ):
        assert run_cli(ctx, "host", *off).exit_code == 0
        result = run_cli(ctx, "vps", "migrate", "web1", "--to", "node2")
        assert_one_line_error(result, 2 if "enabled" in fragment else 1, fragment)
        assert run_cli(ctx, "host", *on).exit_code == 0
    assert _snapshot(ctx, uuid) == before
    # stopped: only cold
    run_or_follow(ctx, actions.request(ctx, "web1", "destroy", actor=OP).job)
    live = run_cli(ctx, "vps", "migrate", "web1", "--to", "node2", "--live")
    assert_one_line_error(live, 1, "use --cold")
    run_or_follow(ctx, actions.request(ctx, "web1", "start", actor=OP).job)
    # no room: a host too small for the plan
    hosts.add_host(ctx, "tiny", node_uri(_dir(tmp_path, "t"), memory_mib=128), actor=OP)
    assert_one_line_error(
        run_cli(ctx, "vps", "migrate", "web1", "--to", "tiny"), 1, "no host has 1 vCPU(s)"
    )
    # live needs an address for the migration traffic
    hosts.add_host(ctx, "noaddr", node_uri(_dir(tmp_path, "n")), actor=OP)
    assert_one_line_error(
        run_cli(ctx, "vps", "migrate", "web1", "--to", "noaddr"), 1, "no address for migration"
    )
    assert _snapshot(ctx, uuid) == before
    # a double submit: the first is queued, the second refused while it waits
    queued = migration.request(ctx, "web1", "node2", actor=OP)
    assert queued.live and (queued.source, queued.target) == (two[2], "node2")
    again = run_cli(ctx, "vps", "migrate", "web1", "--to", "node2")
    assert_one_line_error(again, 1, "a job is still working on it")
    with ctx.db.session() as s:
        job = s.scalar(select(Job).where(Job.uuid == queued.job))
        assert job is not None and (job.kind, job.state) == ("migrate", JobState.QUEUED)
        assert job.params == '{"live": true, "to": "node2"}'
        s.delete(job)
    # suspended by the operators
    suspension.suspend(ctx, "web1", "unpaid", OP)
    assert_one_line_error(run_cli(ctx, "vps", "migrate", "web1", "--to", "node2"), 1, "suspended")
    assert _snapshot(ctx, uuid)[-1] == before[-1]  # no move is queued


def _fail_with(ctx: Context, uuid: str, failing: str) -> list[str]:
    """Run a live move whose step ``failing`` fails after doing its work; the steps undone."""
    ran: list[str] = []

    def wrapped(step: migration_work.MoveStep) -> migration_work.MoveStep:
        def do(m: migration_work.Move) -> None:
            step.do(m)
            raise RuntimeError(f"injected after {step.name}")

        def undo(m: migration_work.Move) -> None:
            ran.append(step.name)
            step.undo(m)

        return replace(step, do=do if step.name == failing else step.do, undo=undo)

    steps = tuple(wrapped(s) for s in migration_work.STEPS)
    with pytest.raises(StepFailed, match=f"failed at step '{failing}'.*injected"):
        migration_work.run(ctx, uuid, "node2", live=True, steps=steps)
    return ran


def test_a_failed_move_leaves_the_vps_as_it_was_and_nothing_on_the_target(
    two: tuple[Context, str, str],
) -> None:
    ctx, uuid, _local = two
    before = _snapshot(ctx, uuid)
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    domain = vps_service.show(ctx, uuid)["domain"]
    # live: the test host cannot migrate, after volume and DHCP entry were made there
    req = migration.request(ctx, "web1", "node2", actor=OP)
    with pytest.raises(JobFailed, match="failed at step 'migrate'.*stays on"):
        run_or_follow(ctx, req.job)
    with ctx.db.reading() as s:
        job = s.scalar(select(Job).where(Job.uuid == req.job))
        assert job is not None and (job.state, job.step) == (JobState.FAILED, "migrate")
    # cold: powered off, then the copy fails; it is started again where it was
    req = migration.request(ctx, "web1", "node2", live=False, actor=OP)
    with pytest.raises(JobFailed, match="failed at step 'volumes'"):
        run_or_follow(ctx, req.job)
    # every step a test host can run, made to fail after doing its work
    names = [s.name for s in migration_work.STEPS]
    for failing in ("prepare", "stop", "volumes", "dhcp", "render"):
        undone = _fail_with(ctx, uuid, failing)
        assert undone == list(reversed(names[: names.index(failing) + 1]))
        assert _target_traces(ctx, "node2", uuid) == [], failing
    assert _target_traces(ctx, "node2", uuid) == []
    assert hv.state(domain) == "running"
    after = _snapshot(ctx, uuid)
    assert after[:-1] == before[:-1] and after[-1] == before[-1] + 2  # the two failed jobs


def test_reconcile_leaves_a_move_in_progress_alone(two: tuple[Context, str, str]) -> None:
    """``reconcile --fix`` while the target holds a volume of a VPS whose host is the source."""
    ctx, uuid, _local = two
    migration.request(ctx, "web1", "node2", actor=OP)  # queued: the VPS has a job at work
    seen: list[object] = []

    def meanwhile(_m: migration_work.Move) -> None:
        seen.append(reconcile.run(ctx, fix=True).orphan_volumes)
        seen.append(len(_target_traces(ctx, "node2", uuid)))
        raise RuntimeError("injected after a reconcile")

    names = [s.name for s in migration_work.STEPS]
    steps = migration_work.STEPS[: names.index("dhcp") + 1]
    steps += (migration_work.MoveStep("reconcile", meanwhile, migration_work.STEPS[0].undo),)
    with pytest.raises(StepFailed, match="injected after a reconcile"):
        migration_work.run(ctx, uuid, "node2", live=True, steps=steps)
    assert seen == [[], 2]  # the overlay volume and the DHCP entry were left alone
    assert _target_traces(ctx, "node2", uuid) == []


def test_retarget_points_disks_filter_and_pins_at_the_target() -> None:
    facts = _facts()
    xml = (
        "<domain><cputune><vcpupin vcpu='0' cpuset='5'/></cputune><devices>"
        "<disk type='volume' device='disk'><source pool='p' volume='d.qcow2'/>"
        "<backingStore type='file'><source file='/base'/></backingStore><target dev='vda'/></disk>"
        "<disk type='volume' device='disk'><source pool='p' volume='d-seed.iso'/>"
        "<target dev='vdb'/></disk>"
        "<interface type='network'><filterref filter='f'>"
        "<parameter name='GATEWAY_MAC' value='52:54:00:00:00:01'/>"
        "<parameter name='IP' value='10.0.0.2'/></filterref></interface></devices></domain>"
    )
    paths = {"d.qcow2": "/far/d.qcow2", "d-seed.iso": "/far/d-seed.iso"}
    out = migration_work.retarget(xml, facts, paths, "52:54:00:aa:bb:cc", (1,))
    assert '<source file="/far/d.qcow2"/>' in out and "backingStore" not in out
    assert '<source file="/far/d-seed.iso"/>' in out and 'type="volume"' not in out
    assert 'value="52:54:00:aa:bb:cc"' in out and 'value="10.0.0.2"' in out
    assert 'cpuset="1"' in out


def _facts() -> VpsFacts:
    return VpsFacts(
        vps_id=1, uuid="u", hostname="h", domain="d", host_uri="test:///default", pool="p",
        overlay_volume="d.qcow2", seed_volume="d-seed.iso", console_log="/c", network_kind="nat",
        network_libvirt="n", bridge="b", mac="52:54:00:00:00:02", ip="10.0.0.2", vcpus=1,
        memory_mib=256, disk_gib=1, pinned_cpus=(5,), image_name="i", base_path="/base",
        kernel_path=None, initrd_path=None, cmdline=None, cloud_init=True, credentials=True,
        login_user="u",
    )  # fmt: skip


def test_evacuate_queues_every_vps_or_none(two: tuple[Context, str, str], tmp_path: Path) -> None:
    ctx, uuid, local = two
    orders.create(ctx, OrderRequest(plan="small", image="base", hostname="web2", host=local))
    run_or_follow(ctx, actions.request(ctx, "web2", "destroy", actor=OP).job)
    # node2 is full: nothing is queued, the host stays as it was
    hosts.set_maintenance(ctx, "node2", True, actor=OP)
    hosts.add_host(ctx, "small", node_uri(_dir(tmp_path, "s"), memory_mib=300), actor=OP)
    hosts.set_public_address(ctx, "small", "203.0.113.9", actor=OP)
    refused = run_cli(ctx, "host", "evacuate", local)
    assert_one_line_error(refused, 1, "no other host has room for", "nothing of")
    assert not hosts.show_host(ctx, local)["maintenance"]
    with ctx.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "migrate")) == 0
    assert_one_line_error(run_cli(ctx, "host", "evacuate", "nosuch"), 2, "no host named")
    # with room: both are queued, live for the running one, cold for the stopped one
    hosts.set_maintenance(ctx, "node2", False, actor=OP)
    done = run_cli(ctx, "host", "evacuate", local)
    assert done.exit_code == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    assert lines[0].startswith(f"queued: web1: {local} -> ") and "(live)" in lines[0]
    assert lines[1].startswith(f"queued: web2: {local} -> ") and "(cold)" in lines[1]
    assert hosts.show_host(ctx, local)["maintenance"]
    del uuid


def test_shared_storage_is_found_and_the_probe_removed(two: tuple[Context, str, str]) -> None:
    """One pool seen by both ends (here: the same host) would make the move delete the disk."""
    ctx, uuid, local = two
    pool = ctx.settings.storage_pool
    same = migration_work.load(ctx, uuid, local, live=True)
    assert migration_work._shared_pool(same) is True
    other = migration_work.load(ctx, uuid, "node2", live=True)
    assert migration_work._shared_pool(other) is False
    for hv in (same.src, other.dst):
        assert not [v for v in hv.list_volumes(pool) if v.startswith("migrate-probe-")]


def test_a_live_move_that_arrived_before_its_worker_died_is_finished_not_undone(
    two: tuple[Context, str, str],
) -> None:
    """The guest runs on the target and is shut off on the source: the job finishes the move.

    That is where a worker killed after libvirt's migration and before the
    commit leaves a live move. Undoing it would move the running guest (and the
    data written since) back for nothing; refusing would leave the database
    naming the wrong host and reconcile calling the running guest an orphan.
    """
    ctx, uuid, local = two
    domain = vps_service.show(ctx, uuid)["domain"]
    # what libvirt's migration had done: on the target the volume, the DHCP entry and
    # the domain, running; on the source the domain, defined and shut off
    m = migration_work.load(ctx, uuid, "node2", live=True)
    for step in migration_work.STEPS[:5]:  # prepare, stop, volumes, dhcp, render
        step.do(m)
    m.dst.define_domain(m.xml)
    m.dst.start(domain)
    m.src.destroy(domain)
    req = migration.request(ctx, "web1", "node2", actor=OP)
    run_or_follow(ctx, req.job)
    shown = vps_service.show(ctx, uuid)
    assert (shown["host"], shown["state"]) == ("node2", "running")
    assert m.dst.state(domain) == "running"
    assert not m.src.domain_exists(domain)  # the source's half is gone
    assert _target_traces(ctx, local, uuid) == []
    report = reconcile.run(ctx)
    assert report.orphan_domains == [] and report.vanished == [], report
