"""``vps forward`` and ``vps http``: reaching a NAT VPS from outside."""

from __future__ import annotations

import click

from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.output import emit_json, record, table
from kvmvps.cli.vps_cmds import vps_group
from kvmvps.services import forwards, http_names

FORWARD_COLUMNS = ("protocol", "public_address", "public_port", "guest_ip", "guest_port", "kind")
NAME_COLUMNS = ("name", "guest_ip", "http", "https")


@click.group("forward")
def forward_group() -> None:
    """Public ports of the host forwarded to a NAT VPS.

    Every NAT VPS has one to its SSH port; its plan may allow more.

    \b
    Examples:
      kvmvps-admin vps forward add web1 --guest-port 8080
      kvmvps-admin vps forward add web1 --guest-port 53 --protocol udp --json
      kvmvps-admin vps forward list web1
      kvmvps-admin vps forward remove web1 20007
    """


@forward_group.command("add")
@click.argument("ref")
@click.option("--guest-port", type=int, required=True, help="The port inside the VPS (1-65535).")
@click.option("--protocol", type=click.Choice(forwards.PROTOCOLS), default="tcp", show_default=True)
@json_option
@pass_obj
def forward_add(obj: Obj, ref: str, guest_port: int, protocol: str, as_json: bool) -> None:
    """Forward a new public port (kvmvps picks it) to a port of the VPS."""
    view = forwards.add(obj.ctx, ref, guest_port, protocol, actor=actor())
    emit_json(view) if as_json else record(view)


@forward_group.command("list")
@click.argument("ref")
@json_option
@pass_obj
def forward_list(obj: Obj, ref: str, as_json: bool) -> None:
    """List the VPS's forwards."""
    rows = forwards.list_forwards(obj.ctx, ref)
    emit_json(rows) if as_json else table(rows, FORWARD_COLUMNS)


@forward_group.command("remove")
@click.argument("ref")
@click.argument("public_port", type=int)
@click.option(
    "--protocol",
    type=click.Choice(forwards.PROTOCOLS),
    help="Needed only when the port is forwarded for both tcp and udp.",
)
@pass_obj
def forward_remove(obj: Obj, ref: str, public_port: int, protocol: str | None) -> None:
    """Remove an extra forward; its public port is released."""
    view = forwards.remove(obj.ctx, ref, public_port, protocol, actor=actor())
    click.echo(f"forward {view['protocol']}/{view['public_port']} of {view['hostname']} removed")


@click.group("http")
def http_group() -> None:
    """Names that the proxy routes to a NAT VPS: HTTP to its port 80, HTTPS (SNI) to 443.

    A single label becomes LABEL.KVMVPS_BASE_DOMAIN; a name with dots is used
    as it is (point its DNS at the public address).

    \b
    Examples:
      kvmvps-admin vps http add web1 shop
      kvmvps-admin vps http add web1 www.example.org
      kvmvps-admin vps http list web1
      kvmvps-admin vps http remove web1 shop
    """


@http_group.command("add")
@click.argument("ref")
@click.argument("name")
@json_option
@pass_obj
def http_add(obj: Obj, ref: str, name: str, as_json: bool) -> None:
    """Route NAME to the VPS."""
    view = http_names.add(obj.ctx, ref, name, actor=actor())
    emit_json(view) if as_json else record(view)


@http_group.command("list")
@click.argument("ref")
@json_option
@pass_obj
def http_list(obj: Obj, ref: str, as_json: bool) -> None:
    """List the names routed to the VPS."""
    rows = http_names.list_names(obj.ctx, ref)
    emit_json(rows) if as_json else table(rows, NAME_COLUMNS)


@http_group.command("remove")
@click.argument("ref")
@click.argument("name")
@pass_obj
def http_remove(obj: Obj, ref: str, name: str) -> None:
    """Stop routing NAME to the VPS."""
    view = http_names.remove(obj.ctx, ref, name, actor=actor())
    click.echo(f"name {view['name']} of {view['hostname']} removed")


def register(cli: click.Group) -> None:
    """Add the groups to the ``vps`` group (``cli`` must already hold it)."""
    for group in (forward_group, http_group):
        vps_group.add_command(group)
