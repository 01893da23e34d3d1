"""Host agents: who claims which job, and what each process writes (test driver)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sqlalchemy import select, update

from kvmvps.errors import NotFound
from kvmvps.models import Host, Job, JobState
from kvmvps.services import Context, claims, host_edge, hosts, jobs
from kvmvps.services.runner import NoWorker, run_or_follow
from tests.badinput import create_args, run_cli
from tests.snapshots import snapshot


def _far(ctx: Context, agent: bool = True) -> int:
    """A second host (never contacted here), handed to its agent."""
    with ctx.db.session() as s:
        host = Host(name="far", uri="qemu+ssh://root@far/system", cpus=4, memory_mib=4096)
        host.agent = agent
        s.add(host)
        s.flush()
        return host.id


def _local_id(ctx: Context) -> int:
    with ctx.db.session() as s:
        return s.scalars(select(Host.id).where(Host.name != "far")).one()


def _queue(ctx: Context, host_id: int | None, vps: str) -> str:
    with ctx.db.session() as s:
        return jobs.enqueue(s, "start", vps, host_id).uuid


def _as_agent(ctx: Context, name: str) -> Context:
    return Context(dataclasses.replace(ctx.settings, agent_host=name))


def test_central_workers_leave_the_agents_jobs_and_agents_take_only_theirs(td_ctx: Context) -> None:
    far = _far(td_ctx)
    theirs = _queue(td_ctx, far, "v-far")  # queued first: oldest
    ours = _queue(td_ctx, _local_id(td_ctx), "v-local")
    loose = _queue(td_ctx, None, "v-none")
    agent = _as_agent(td_ctx, "far")
    try:
        first = claims.claim(td_ctx, "central")
        assert first is not None and first.uuid == ours
        second = claims.claim(td_ctx, "central")
        assert second is not None and second.uuid == loose
        assert claims.claim(td_ctx, "central") is None  # the agent's job stays queued
        mine = claims.claim(agent, "agent:far:1")
        assert mine is not None and mine.uuid == theirs and mine.host_id == far
        assert claims.claim(agent, "agent:far:1") is None
    finally:
        agent.close()


def test_an_agent_of_an_unknown_host_claims_nothing(td_ctx: Context) -> None:
    _queue(td_ctx, _local_id(td_ctx), "v-local")
    ghost = _as_agent(td_ctx, "ghost")
    try:
        with pytest.raises(NotFound, match="ghost"):
            claims.claim(ghost, "agent:ghost:1")
    finally:
        ghost.close()
    with td_ctx.db.session() as s:
        assert s.scalar(select(Job.state)) == JobState.QUEUED


def test_switching_the_agent_off_hands_its_jobs_back(td_ctx: Context) -> None:
    far = _far(td_ctx)
    queued = _queue(td_ctx, far, "v-far")
    assert claims.claim(td_ctx, "central") is None
    hosts.set_agent(td_ctx, "far", False, actor="test")
    claimed = claims.claim(td_ctx, "central")
    assert claimed is not None and claimed.uuid == queued


def test_a_waiting_command_names_the_agent_to_start(td_ctx: Context) -> None:
    _far(td_ctx)
    job = _queue(td_ctx, _far_id(td_ctx), "v-far")
    with pytest.raises(NoWorker, match=r"'kvmvps-admin worker --host far'"):
        run_or_follow(td_ctx, job, timeout=60)
    with td_ctx.db.session() as s:
        assert s.scalar(select(Job.state).where(Job.uuid == job)) == JobState.QUEUED


def _far_id(ctx: Context) -> int:
    with ctx.db.session() as s:
        return s.scalars(select(Host.id).where(Host.name == "far")).one()


def test_edge_work_goes_to_the_agent_once(td_ctx: Context) -> None:
    far = _far(td_ctx)
    with td_ctx.db.session() as s:
        host = s.get(Host, far)
        assert host is not None
        assert not host_edge.runs_here(td_ctx, host)
        jobs.request_edge(s, host)
        jobs.request_edge(s, host)  # asked twice: one job
    with td_ctx.db.session() as s:
        edges = list(s.scalars(select(Job).where(Job.kind == "edge")))
        assert [(j.host_id, j.state) for j in edges] == [(far, JobState.QUEUED)]
    agent, local_id = _as_agent(td_ctx, "far"), _local_id(td_ctx)
    try:
        with agent.db.session() as s:
            host = s.get(Host, far)
            local = s.get(Host, local_id)
            assert host is not None and local is not None
            assert host_edge.runs_here(agent, host) and not host_edge.runs_here(agent, local)
    finally:
        agent.close()


def test_the_cli_refuses_bad_agent_requests(td_ctx: Context) -> None:
    _far(td_ctx, agent=False)
    refused = run_cli(td_ctx, "worker", "--host", "far")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        "error: host 'far' is not run by an agent; first: kvmvps-admin host agent far on"
    )
    unknown = run_cli(td_ctx, "worker", "--host", "nosuch")
    assert unknown.exit_code == 2 and unknown.stderr.strip() == "error: no host named 'nosuch'"
    bad = run_cli(td_ctx, "host", "agent", "far", "sometimes")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr
    on = run_cli(td_ctx, "host", "agent", "far", "on", "--json")
    assert on.exit_code == 0 and '"agent": true' in on.stdout


def test_a_host_that_does_not_answer_takes_no_orders_and_its_vpses_show_unknown(
    td_ctx: Context,
) -> None:
    made = run_cli(td_ctx, *create_args(hostname="dark1"), "--wait")
    assert made.exit_code == 0, made.stderr
    with td_ctx.db.session() as s:
        s.execute(update(Host).values(down_since=jobs.now()))
    shown = run_cli(td_ctx, "vps", "show", "dark1", "--json")
    assert json.loads(shown.stdout)["state"] == "unknown"
    refused = run_cli(td_ctx, "vps", "reboot", "dark1")
    assert refused.exit_code == 1
    assert "its host" in refused.stderr and "is not answering" in refused.stderr
    before = snapshot(td_ctx)
    for extra in ((), ("--host", _host_name(td_ctx))):
        order = run_cli(td_ctx, *create_args(hostname="dark2"), *extra)
        assert order.exit_code == 1 and order.stderr.startswith("error: ")
    assert snapshot(td_ctx) == before
    # it answers again: the next reconcile pass says so and lifts it
    done = run_cli(td_ctx, "reconcile", "--json")
    assert done.exit_code == 0, done.stderr
    assert (
        json.loads(run_cli(td_ctx, "vps", "show", "dark1", "--json").stdout)["state"] == "running"
    )
    with td_ctx.db.session() as s:
        assert s.scalar(select(Host.down_since)) is None


def _host_name(ctx: Context) -> str:
    with ctx.db.session() as s:
        return s.scalars(select(Host.name)).one()
