"""``vps console`` and ``vps resize``, added to the ``vps`` group."""

from __future__ import annotations

import os
import sys

import click

from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.output import emit_json, escape, record
from kvmvps.cli.vps_cmds import vps_group
from kvmvps.errors import KvmvpsError
from kvmvps.services import vps_extra
from kvmvps.services.vps import VIEW_KEYS


@click.command("console")
@click.argument("ref")
@click.option(
    "--log", "show_log", is_flag=True, help="Print the serial console log instead of attaching."
)
@pass_obj
def vps_console(obj: Obj, ref: str, show_log: bool) -> None:
    """Attach to a VPS's serial console (leave with Ctrl+]), or print its log.

    \b
    Examples:
      kvmvps-admin vps console web1
      kvmvps-admin vps console web1 --log | tail -50
    """
    if show_log:
        text = vps_extra.console_log(obj.ctx, ref).replace("\r\n", "\n")
        click.echo(escape(text, keep="\n\t"), nl=False)  # the guest wrote it: no raw escapes
        return
    argv = vps_extra.console_command(obj.ctx, ref)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - exec of virsh with an argument list
    except OSError as exc:
        raise KvmvpsError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


@click.command("resize")
@click.argument("ref")
@click.option("--plan", required=True, help="The new plan.")
@json_option
@pass_obj
def vps_resize(obj: Obj, ref: str, plan: str, as_json: bool) -> None:
    """Move a stopped VPS to another plan: vCPUs and memory follow it, the disk only grows.

    The guest's partition and filesystem are not grown; cloud-init images
    usually grow them at the next boot.

    \b
    Examples:
      kvmvps-admin vps shutdown web1
      kvmvps-admin vps resize web1 --plan medium
      kvmvps-admin vps start web1
    """
    view = vps_extra.resize(obj.ctx, ref, plan, actor=actor())
    emit_json(view) if as_json else record(view, VIEW_KEYS)


def register(cli: click.Group) -> None:
    """Add the commands to the ``vps`` group (``cli`` must already hold it)."""
    for command in (vps_console, vps_resize):
        vps_group.add_command(command)
