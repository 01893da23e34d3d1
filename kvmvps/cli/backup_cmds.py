"""``vps backup``: full copies of a VPS's disk, and putting one back."""

from __future__ import annotations

import click

from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.inventory_cmds import plan_group
from kvmvps.cli.output import emit_json, record, table
from kvmvps.cli.vps_cmds import follow, print_with_password, vps_group
from kvmvps.services import backup_orders, backups
from kvmvps.services import vps as vps_service

COLUMNS = ("id", "hostname", "kind", "state", "consistency", "size_bytes", "created_at")


@click.group("backup")
def backup_group() -> None:
    """Backups of a VPS's disk, kept in KVMVPS_BACKUP_DIR as a qcow2 and a JSON file each.

    A running VPS is backed up while it runs; a restore stops it, puts the
    disk back and starts it again (address, credentials and host key stay).

    \b
    Examples:
      kvmvps-admin vps backup create web1
      kvmvps-admin vps backup list web1 --json
      kvmvps-admin vps backup restore web1 3f2a --yes
      kvmvps-admin vps backup restore web1 3f2a --as-new web2
      kvmvps-admin vps backup delete web1 3f2a
    """


@backup_group.command("create")
@click.argument("ref")
@json_option
@pass_obj
def backup_create(obj: Obj, ref: str, as_json: bool) -> None:
    """Back up the VPS's disk now (within its plan's backup slots)."""
    req = backups.create(obj.ctx, ref, actor=actor())
    follow(obj.ctx, req.job, as_json)
    shown = [b for b in backups.list_backups(obj.ctx, req.vps) if b["id"] == req.backup]
    emit_json(shown[0]) if as_json else record(shown[0])


@backup_group.command("list")
@click.argument("ref")
@json_option
@pass_obj
def backup_list(obj: Obj, ref: str, as_json: bool) -> None:
    """List the VPS's backups, newest first."""
    rows = backups.list_backups(obj.ctx, ref)
    emit_json(rows) if as_json else table(rows, COLUMNS)


@backup_group.command("restore")
@click.argument("ref")
@click.argument("backup")
@click.option(
    "--as-new",
    "as_new",
    metavar="HOSTNAME",
    help="Make a new VPS of this name from the backup instead (REF may be a deleted VPS).",
)
@click.option("--plan", help="With --as-new: the new VPS's plan (default: the backed-up VPS's).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_obj
def backup_restore(
    obj: Obj, ref: str, backup: str, as_new: str | None, plan: str | None, yes: bool, as_json: bool
) -> None:
    """Replace the VPS's disk with one of its backups (what it holds now is lost),
    or with --as-new make a new VPS from it (its password is shown this once)."""
    if as_new is not None:
        order = backup_orders.restore_as_new(obj.ctx, ref, backup, as_new, plan=plan, actor=actor())
        follow(obj.ctx, order.job, as_json)
        made = {**vps_service.show(obj.ctx, order.uuid), "job": order.job}
        print_with_password(made, order.password, as_json)
        return
    if plan is not None:
        raise click.UsageError("--plan goes with --as-new only")
    if not yes:
        click.confirm(f"Replace the disk of {ref} with backup {backup}?", abort=True)
    req = backups.restore(obj.ctx, ref, backup, actor=actor())
    follow(obj.ctx, req.job, as_json)
    view = vps_service.show(obj.ctx, req.vps)
    emit_json(view) if as_json else record(view, vps_service.VIEW_KEYS)


@backup_group.command("delete")
@click.argument("ref")
@click.argument("backup")
@pass_obj
def backup_delete(obj: Obj, ref: str, backup: str) -> None:
    """Delete a backup and its files."""
    gone = backups.delete(obj.ctx, ref, backup, actor=actor())
    click.echo(f"backup {gone['id']} of {gone['hostname']} deleted")


@click.command("backups")
@click.argument("name")
@click.option("--slots", type=int, help="Backups a VPS of the plan may keep (0: none).")
@click.option(
    "--schedule",
    type=click.Choice([*backups.SCHEDULES, "none"]),
    help="Back every VPS of the plan up this often (the worker does it).",
)
@click.option("--keep", type=int, help="Scheduled backups kept per VPS; older ones are pruned.")
@json_option
@pass_obj
def plan_backups(
    obj: Obj,
    name: str,
    slots: int | None,
    schedule: str | None,
    keep: int | None,
    as_json: bool,
) -> None:
    """Show or change a plan's backup slots and schedule."""
    view = backups.set_plan_backups(obj.ctx, name, slots, schedule, keep, actor=actor())
    emit_json(view) if as_json else record(view)


def register(cli: click.Group) -> None:
    """Add the groups to the ``vps`` and ``plan`` groups (``cli`` must already hold them)."""
    vps_group.add_command(backup_group)
    plan_group.add_command(plan_backups)
