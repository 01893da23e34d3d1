"""``vps console`` and ``vps resize``, added to the ``vps`` group."""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import tty

import click

from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.output import emit_json, escape, record
from kvmvps.cli.vps_cmds import vps_group
from kvmvps.services import console, vps_extra
from kvmvps.services.vps import VIEW_KEYS

ESCAPE = b"\x1d"  # Ctrl+], as virsh


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
    target = console.console_target(obj.ctx, ref)
    with console.open_session(obj.ctx, target, actor()) as session:
        click.echo(f"connected to {target.hostname}; leave with Ctrl+]", err=True)
        relay(session, sys.stdin.fileno(), sys.stdout.fileno())
    click.echo(f"\nleft the console of {target.hostname}", err=True)


def _pump_output(session: console.ConsoleSession, out_fd: int, done: threading.Event) -> None:
    while not done.is_set():
        data = session.read(0.2)
        if data == b"":
            break
        if data:
            os.write(out_fd, data)
    done.set()


def relay(session: console.ConsoleSession, in_fd: int, out_fd: int) -> None:
    """Copy keystrokes to the console and its output back until Ctrl+] or its end."""
    saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
    done = threading.Event()
    pump = threading.Thread(target=_pump_output, args=(session, out_fd, done), daemon=True)
    try:
        if saved is not None:
            tty.setraw(in_fd)
        pump.start()
        while not done.is_set():
            ready, _, _ = select.select([in_fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(in_fd, 4096)
            if not data or ESCAPE in data:
                session.write(data.split(ESCAPE)[0])
                break
            session.write(data)
    finally:
        done.set()
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
    pump.join(timeout=2)


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
