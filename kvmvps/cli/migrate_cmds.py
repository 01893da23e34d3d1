"""``vps migrate`` and ``host evacuate``: moving VPSes between hosts."""

from __future__ import annotations

import click

from kvmvps.cli.admin_cmds import host_group
from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.output import emit_json, record
from kvmvps.cli.vps_cmds import SHOW_KEYS, follow, vps_group
from kvmvps.services import migration
from kvmvps.services import vps as vps_service
from kvmvps.services.migration import Requested


def _line(req: Requested) -> str:
    how = "live" if req.live else "cold"
    return f"{req.vps}: {req.source} -> {req.target} ({how}), job {req.job}"


@vps_group.command("migrate")
@click.argument("ref")
@click.option("--to", "to", required=True, help="The host to move the VPS to.")
@click.option(
    "--live/--cold",
    default=None,
    help="Live: it keeps running (memory and disk copied). Cold: powered off, copied, "
    "started there. Default: live if it runs, else cold.",
)
@click.option("--wait", is_flag=True, help="Wait until it has moved (or the move failed).")
@json_option
@pass_obj
def vps_migrate(obj: Obj, ref: str, to: str, live: bool | None, wait: bool, as_json: bool) -> None:
    """Move a VPS to another host, keeping its identity, credentials and host key.

    Its public ports may change (the customer is told). A failed move leaves
    it running where it was, with nothing left on the target.

    \b
    Examples:
      kvmvps-admin vps migrate web1 --to kvm2 --wait
      kvmvps-admin vps migrate web1 --to kvm2 --cold
    """
    req = migration.request(obj.ctx, ref, to, live=live, actor=actor())
    if not wait:
        if as_json:
            emit_json({"job": req.job, "vps": req.vps, "from": req.source, "to": req.target,
                       "live": req.live})  # fmt: skip
        else:
            click.echo(f"queued: {_line(req)}")
        return
    follow(obj.ctx, req.job, as_json)
    view = vps_service.show(obj.ctx, req.vps)
    emit_json(view) if as_json else record(view, SHOW_KEYS)


@host_group.command("evacuate")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait until every VPS has moved.")
@json_option
@pass_obj
def host_evacuate(obj: Obj, name: str, wait: bool, as_json: bool) -> None:
    """Put a host in maintenance and move every VPS it carries to other hosts.

    Running VPSes move live, stopped ones cold, each to the host with most
    free memory. Nothing is queued unless all of them fit elsewhere.

    \b
    Examples:
      kvmvps-admin host evacuate kvm1 --wait
    """
    queued = migration.evacuate(obj.ctx, name, actor=actor())
    for req in queued:
        if wait:
            follow(obj.ctx, req.job, as_json)
    if as_json:
        emit_json([{"job": r.job, "vps": r.vps, "from": r.source, "to": r.target, "live": r.live}
                   for r in queued])  # fmt: skip
        return
    for req in queued:
        click.echo(("moved: " if wait else "queued: ") + _line(req))
    if not queued:
        click.echo(f"host {name} carries no VPS; it is in maintenance now")


def register(cli: click.Group) -> None:
    """The commands join the ``vps`` and ``host`` groups when this module is imported."""
