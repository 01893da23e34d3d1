"""``jobs``, ``worker`` and ``reconcile``: keeping the work moving and the truth straight."""

from __future__ import annotations

import logging

import click

from kvmvps import logs
from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.control import ControlServer
from kvmvps.cli.output import emit_json, record, table
from kvmvps.models import JobState
from kvmvps.services import Context, hosts, jobs, reconcile
from kvmvps.worker import Worker

JOB_COLUMNS = ("id", "kind", "vps", "state", "step", "progress", "attempts", "error")


@click.group("jobs")
def jobs_group() -> None:
    """Queued and finished work: orders and actions.

    \b
    Examples:
      kvmvps-admin jobs list --state failed
      kvmvps-admin jobs show 3f2a
    """


@jobs_group.command("list")
@click.option("--state", type=click.Choice(JobState.ALL))
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@pass_obj
def jobs_list(obj: Obj, state: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    rows = jobs.list_jobs(obj.ctx, state=state, limit=limit)
    if as_json:
        emit_json(rows)
    else:
        table([{**r, "id": r["id"][:8], "vps": (r["vps"] or "-")[:8]} for r in rows], JOB_COLUMNS)


@jobs_group.command("show")
@click.argument("ref")
@json_option
@pass_obj
def jobs_show(obj: Obj, ref: str, as_json: bool) -> None:
    """Show one job (by id or unique id prefix)."""
    view = jobs.get_job(obj.ctx, ref)
    emit_json(view) if as_json else record(view)


@click.command("worker")
@click.option("--max-jobs", type=click.IntRange(1), help="Exit after this many jobs.")
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    help="Log lines as text or JSON (default: KVMVPS_LOG_FORMAT, else text).",
)
@click.option(
    "--host",
    "agent_host",
    help="Run as this host's agent, on the host itself: its jobs and host-local work only.",
)
@pass_obj
def worker_cmd(
    obj: Obj, max_jobs: int | None, log_format: str | None, agent_host: str | None
) -> None:
    """Run jobs until stopped (SIGTERM finishes the current step, then exits).

    Run one or more per machine; with PostgreSQL, on as many machines as you
    like. Each also reconciles the database with libvirt periodically. It
    logs every job to stderr at INFO, one line per event: claimed, each step
    with its duration, finished or failed with the reason.
    """
    ctx = obj.ctx
    if agent_host is not None:
        ctx = Context(hosts.agent_settings(ctx, agent_host))
    logs.setup(logging.DEBUG if obj.debug else logging.INFO, log_format or ctx.settings.log_format)
    worker = Worker(ctx)
    worker.install_signal_handlers()
    worker.watch_events()
    control = _control_server(ctx, agent_host)
    try:
        worker.run(max_jobs=max_jobs)
    finally:
        if control is not None:
            control.close()


def _control_server(ctx: Context, agent_host: str | None) -> ControlServer | None:
    """A central worker answers read-only commands on its control socket (kvmvps.cli.fastpath)."""
    root = click.get_current_context().find_root().command
    if agent_host is not None or not isinstance(root, click.Group):
        return None
    server = ControlServer(ctx, root)
    return server if server.start() else None


@click.command("reconcile")
@click.option("--fix", is_flag=True, help="Remove orphaned domains, volumes and DHCP entries.")
@json_option
@pass_obj
def reconcile_cmd(obj: Obj, fix: bool, as_json: bool) -> None:
    """Compare the database with libvirt on every host; correct power states.

    Domains, volumes and DHCP entries that carry kvmvps's prefix but belong to
    no VPS are reported, and removed with --fix.
    """
    report = reconcile.run(obj.ctx, fix=fix, actor=actor())
    if as_json:
        emit_json(reconcile.report_dict(report))
        return
    for item in report.drift:
        click.echo(f"drift     {item['hostname']}: {item['from']} -> {item['to']} (corrected)")
    for item in report.held:
        click.echo(f"held      {item['hostname']}: suspended, was running; paused again")
    for item in report.vanished:
        click.echo(f"vanished  {item['hostname']}: domain {item['domain']} is gone")
    verb = "removed" if fix else "orphan"
    for item in report.orphan_domains:
        click.echo(f"{verb:9} domain {item['domain']} on {item['host']}")
    for item in report.orphan_volumes:
        click.echo(f"{verb:9} volume {item['volume']} in pool {item['pool']} on {item['host']}")
    for item in report.orphan_dhcp:
        click.echo(f"{verb:9} DHCP entry {item['mac']} {item['ip']} in {item['network']}")
    for item in report.rolled_back:
        click.echo(f"rollback  {item['hostname']}: its failed build undone on {item['host']}")
    for item in report.forwarding:
        click.echo(f"network   {item['host']}: {item['action']}")
    for error in report.errors:
        click.echo(f"error     {error}")
    if report.clean and not (
        report.drift or report.held or report.forwarding or report.rolled_back
    ):
        click.echo(f"in sync: {', '.join(report.hosts)}")


def register(cli: click.Group) -> None:
    for command in (jobs_group, worker_cmd, reconcile_cmd):
        cli.add_command(command)
