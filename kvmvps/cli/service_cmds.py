"""``service`` (the worker and the website as services) and ``demo``."""

from __future__ import annotations

import click

from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.output import emit_json, job_progress, table
from kvmvps.services import daemons, demo, setup
from kvmvps.services import vps as vps_service

STATUS_COLUMNS = ("name", "manager", "running", "pid", "uptime", "log", "url")
names_argument = click.argument("names", nargs=-1, type=click.Choice(daemons.NAMES))


@click.group("service")
def service_group() -> None:
    """The worker and the website, run as services.

    Under systemd they are the kvmvps-worker and kvmvps-web units (logs in
    journald); elsewhere supervised background processes with pid files and
    logs in the state dir (run/, logs/). The website listens on
    KVMVPS_WEB_HOST:KVMVPS_WEB_PORT (127.0.0.1:8000).

    \b
    Examples:
      kvmvps-admin service start
      kvmvps-admin service status
      kvmvps-admin service stop web
    """


def _status_rows(statuses: list[daemons.Status]) -> list[dict]:
    return [
        {**s.as_dict(), "uptime": f"{s.uptime_seconds:.0f} s" if s.uptime_seconds else None}
        for s in statuses
    ]


def _show(statuses: list[daemons.Status], as_json: bool) -> None:
    if as_json:
        emit_json([s.as_dict() for s in statuses])
    else:
        table(_status_rows(statuses), STATUS_COLUMNS)


@service_group.command("start")
@names_argument
@json_option
@pass_obj
def service_start(obj: Obj, names: tuple[str, ...], as_json: bool) -> None:
    """Start the worker and the website (or the ones named) unless they run already."""
    _show(daemons.start_all(obj.ctx, names, actor=actor()), as_json)


@service_group.command("status")
@names_argument
@json_option
@pass_obj
def service_status(obj: Obj, names: tuple[str, ...], as_json: bool) -> None:
    """Show each service: running?, pid, uptime, log, URL."""
    _show([daemons.status(obj.ctx, name) for name in names or daemons.NAMES], as_json)


@service_group.command("stop")
@names_argument
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=daemons.STOP_TIMEOUT,
    show_default=True,
    help="Seconds to let a job's current step finish before killing the worker.",
)
@json_option
@pass_obj
def service_stop(obj: Obj, names: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Stop the services (SIGTERM: the worker finishes its current step first)."""
    _show(daemons.stop_all(obj.ctx, names, timeout, actor=actor()), as_json)


@service_group.command("supervise", hidden=True)
@click.argument("name", type=click.Choice(daemons.NAMES))
@pass_obj
def service_supervise(obj: Obj, name: str) -> None:
    """Run one service in the foreground, restarting it when it crashes."""
    daemons.supervise(obj.ctx.settings, name)


@click.command("demo")
@click.option("--operator", default=demo.OPERATOR, show_default=True, help="Operator's e-mail.")
@pass_obj
def demo_cmd(obj: Obj, operator: str) -> None:
    """Set up the demo (scripts/demo.sh runs this): services, operator, one VPS.

    It runs 'init', starts the worker and the website ('service start'),
    makes the tiny image, a plan and an operator, and has the worker build
    one VPS. Run again, it reuses what exists: the same VPS and the same
    operator, whose passwords were shown the first time.
    """
    setup.init(obj.raw_ctx)
    ctx = obj.ctx
    click.echo("==> the tiny image and the demo plan", err=True)
    demo.ensure_catalogue(ctx)
    click.echo("==> starting the worker and the website", err=True)
    daemons.start_all(ctx, actor=actor())
    op_password = demo.ensure_operator(ctx, operator)
    made = demo.ensure_vps(ctx, actor())
    click.echo(f"==> {'reusing' if made.reused else 'building'} VPS {demo.HOSTNAME}", err=True)
    with job_progress() as progress:
        demo.wait(ctx, made, progress)
    view = vps_service.show(ctx, made.uuid)
    web = daemons.status(ctx, "web")
    statuses = [daemons.status(ctx, name) for name in daemons.NAMES]
    lines = [
        "",
        f"website:             {web.url or daemons.url(ctx.settings)}"
        f"{'' if web.running else ' (not running: kvmvps-admin service start)'}",
        "                     plain HTTP on this machine only (KVMVPS_WEB_HTTPS=0 for the demo;",
        "                     put a TLS proxy in front and KVMVPS_WEB_HTTPS=1 for real use)",
        f"operator login:      {operator}",
        f"operator password:   {op_password or '(shown when it was made; kvmvps-admin user password ' + operator + ')'}",
        f"VPS:                 {view['hostname']} ({view['id'][:8]}) {view['state']}",
        f"log in:              ssh -p {view['ssh_port']} {view['username']}@{view['ssh_host']}",
        f"VPS password:        {made.password or '(shown when it was made; kvmvps-admin vps password-reset ' + demo.HOSTNAME + ')'}",
        f"host key:            {demo.host_key(ctx, made.uuid)}",
        f"fingerprint:         {view['host_key_fingerprint']}",
    ]
    if op_password or made.password:
        lines.append("(passwords are shown only this once; they are stored hashed or not at all)")
    click.echo("\n".join(lines))
    click.echo("\nservices (see: kvmvps-admin service status; stop: kvmvps-admin service stop):")
    table(_status_rows(statuses), STATUS_COLUMNS)


def register(cli: click.Group) -> None:
    cli.add_command(service_group)
    cli.add_command(demo_cmd)
