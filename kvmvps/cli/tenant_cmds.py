"""An operator's word over tenants: ``vps suspend/unsuspend``, ``user quota``, ``user invite``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from kvmvps.cli.admin_cmds import user_group
from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.output import emit_json, record
from kvmvps.cli.vps_cmds import SHOW_KEYS, vps_group
from kvmvps.services import quotas, signup, suspension
from kvmvps.services import vps as vps_service
from kvmvps.services.runner import run_or_follow

QUOTA_OPTIONS = (
    ("vps", "--vps", "How many VPSes."),
    ("vcpus", "--vcpus", "vCPUs over all their VPSes."),
    ("memory_mib", "--memory-mib", "MiB of memory over all their VPSes."),
    ("disk_gib", "--disk-gib", "GiB of disk over all their VPSes."),
)


@vps_group.command("suspend")
@click.argument("ref")
@click.option("--reason", required=True, help="Why; the customer sees it.")
@json_option
@pass_obj
def vps_suspend(obj: Obj, ref: str, reason: str, as_json: bool) -> None:
    """Suspend a VPS: it is paused, and its customer can change nothing until you lift it."""
    shown = suspension.suspend(obj.ctx, ref, reason, actor())
    run_or_follow(obj.ctx, shown["job"])
    _print(vps_service.show(obj.ctx, shown["id"]), as_json)


@vps_group.command("unsuspend")
@click.argument("ref")
@json_option
@pass_obj
def vps_unsuspend(obj: Obj, ref: str, as_json: bool) -> None:
    """Lift a suspension: a paused VPS resumes, a stopped one stays stopped."""
    shown = suspension.unsuspend(obj.ctx, ref, actor())
    if shown["job"]:
        run_or_follow(obj.ctx, shown["job"])
    _print(vps_service.show(obj.ctx, shown["id"]), as_json)


def _print(view: Mapping[str, Any], as_json: bool) -> None:
    emit_json(view) if as_json else record(view, SHOW_KEYS)


@user_group.command("quota")
@click.argument("email")
@click.option("--vps", type=str, help="How many VPSes ('default' for the setting).")
@click.option("--vcpus", type=str, help="vCPUs over all their VPSes.")
@click.option("--memory-mib", type=str, help="MiB of memory over all their VPSes.")
@click.option("--disk-gib", type=str, help="GiB of disk over all their VPSes.")
@json_option
@pass_obj
def user_quota(obj: Obj, email: str, as_json: bool, **given: str | None) -> None:
    """Show a user's limits and usage, or give them limits of their own.

    \b
    Examples:
      kvmvps-admin user quota bob@example.com
      kvmvps-admin user quota bob@example.com --vps 3 --memory-mib 4096
      kvmvps-admin user quota bob@example.com --vps default
    """
    changes: dict[str, int | str | None] = {
        key: value for key, value in given.items() if value is not None
    }
    if changes:
        view = quotas.set_quota(obj.ctx, email, changes, actor())
    else:
        view = quotas.quota_view(obj.ctx, email)
    if as_json:
        emit_json(view)
        return
    click.echo(f"{view['email']}{' (operator: no limits)' if view['unlimited'] else ''}")
    for key in quotas.RESOURCES:
        item = view[key]
        origin = "own" if item["own"] else "default"
        click.echo(f"  {key.ljust(10)}  {item['used']:>8} of {item['limit']:<8} ({origin})")


@user_group.command("invite")
@click.option("--email", help="Only this address may use the code.")
@click.option("--days", type=click.IntRange(1, 366), help="Valid this many days.")
@json_option
@pass_obj
def user_invite(obj: Obj, email: str | None, days: int | None, as_json: bool) -> None:
    """Make a single-use sign-up code (for KVMVPS_SIGNUP=invite); it is shown once."""
    code, view = signup.invite(obj.ctx, actor(), email, days)
    if as_json:
        emit_json({**view, "code": code})
        return
    record({**view, "code": code})
    click.echo("(the code is shown only this once; it works once, until it expires)")


def register(cli: click.Group) -> None:
    """The commands join the ``vps`` and ``user`` groups when this module is imported."""
