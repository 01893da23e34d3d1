"""``vps snapshot``: quick point-in-time states of a VPS's disk, and going back to one."""

from __future__ import annotations

import click

from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.inventory_cmds import plan_group
from kvmvps.cli.output import emit_json, record, table
from kvmvps.cli.vps_cmds import follow, vps_group
from kvmvps.services import snapshots
from kvmvps.services import vps as vps_service

COLUMNS = ("id", "label", "state", "with_memory", "created_at")


@click.group("snapshot")
def snapshot_group() -> None:
    """Snapshots of a VPS's disk (and memory, when it runs), kept inside its own volume.

    Quick to take and to go back to, for "before I upgrade" moments; not a
    backup (they live on the same disk). The plan limits how many a VPS keeps.

    \b
    Examples:
      kvmvps-admin vps snapshot create web1 --label "before upgrade"
      kvmvps-admin vps snapshot list web1 --json
      kvmvps-admin vps snapshot revert web1 3f2a --yes
      kvmvps-admin vps snapshot delete web1 3f2a
    """


@snapshot_group.command("create")
@click.argument("ref")
@click.option("--label", default="", help="A note shown with it (at most 64 characters).")
@json_option
@pass_obj
def snapshot_create(obj: Obj, ref: str, label: str, as_json: bool) -> None:
    """Take a snapshot now (within the plan's limit); a running VPS pauses for a moment."""
    req = snapshots.create(obj.ctx, ref, label, actor=actor())
    follow(obj.ctx, req.job, as_json)
    shown = [x for x in snapshots.list_snapshots(obj.ctx, req.vps) if x["id"] == req.snapshot]
    emit_json(shown[0]) if as_json else record(shown[0])


@snapshot_group.command("list")
@click.argument("ref")
@json_option
@pass_obj
def snapshot_list(obj: Obj, ref: str, as_json: bool) -> None:
    """List the VPS's snapshots, newest first."""
    rows = snapshots.list_snapshots(obj.ctx, ref)
    emit_json(rows) if as_json else table(rows, COLUMNS)


@snapshot_group.command("revert")
@click.argument("ref")
@click.argument("snapshot")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_obj
def snapshot_revert(obj: Obj, ref: str, snapshot: str, yes: bool, as_json: bool) -> None:
    """Go back to a snapshot (what the disk holds now is lost; the snapshot stays)."""
    if not yes:
        click.confirm(f"Put {ref} back to snapshot {snapshot}?", abort=True)
    req = snapshots.revert(obj.ctx, ref, snapshot, actor=actor())
    follow(obj.ctx, req.job, as_json)
    view = vps_service.show(obj.ctx, req.vps)
    emit_json(view) if as_json else record(view, vps_service.VIEW_KEYS)


@snapshot_group.command("delete")
@click.argument("ref")
@click.argument("snapshot")
@pass_obj
def snapshot_delete(obj: Obj, ref: str, snapshot: str) -> None:
    """Delete a snapshot."""
    req = snapshots.delete(obj.ctx, ref, snapshot, actor=actor())
    if req.job:
        follow(obj.ctx, req.job, True)
    click.echo(f"snapshot {req.snapshot} deleted")


@click.command("snapshots")
@click.argument("name")
@click.option(
    "--limit", type=int, required=True, help="Snapshots a VPS of the plan may keep (0: none)."
)
@json_option
@pass_obj
def plan_snapshots(obj: Obj, name: str, limit: int, as_json: bool) -> None:
    """Set how many snapshots a VPS of the plan may keep."""
    view = snapshots.set_plan_snapshots(obj.ctx, name, limit, actor=actor())
    emit_json(view) if as_json else record(view)


def register(cli: click.Group) -> None:
    """Add the groups to the ``vps`` and ``plan`` groups (``cli`` must already hold them)."""
    vps_group.add_command(snapshot_group)
    plan_group.add_command(plan_snapshots)
