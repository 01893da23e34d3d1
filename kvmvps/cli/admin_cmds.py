"""``user``, ``token``, ``audit`` and ``host`` commands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from kvmvps.cli.context import Obj, actor, json_option, pass_obj, simple_command
from kvmvps.cli.lazy import make_lazy
from kvmvps.cli.output import emit_json, record, table
from kvmvps.services import audit, hosts, tokens, users

USER_COLUMNS = ("email", "is_admin", "is_active", "has_password", "created_at")
TOKEN_COLUMNS = ("id", "user", "name", "revoked", "created_at", "last_used_at")
AUDIT_COLUMNS = ("at", "actor", "action", "target", "result", "detail")
HOST_COLUMNS = ("name", "uri", "cpus", "memory_mib", "enabled", "public_address")


def _emit(
    data: Mapping[str, Any] | list[Any], as_json: bool, columns: tuple[str, ...] = ()
) -> None:
    """One object as ``key: value`` lines or a list as a table; or JSON."""
    if as_json:
        emit_json(data)
    elif isinstance(data, list):
        table(data, columns)
    else:
        record(data)


# -- users --------------------------------------------------------------------
@click.group("user")
def user_group() -> None:
    """People who log in to the website or the API.

    \b
    Examples:
      kvmvps-admin user add alice@example.com --admin
      kvmvps-admin user add bob@example.com --password 'correct horse battery'
      kvmvps-admin user list --json
      kvmvps-admin user disable bob@example.com
    """


# 'user quota' and 'user invite' come from tenant_cmds, imported when one runs
make_lazy(user_group, dict.fromkeys(("quota", "invite"), "kvmvps.cli.tenant_cmds"))


def _ask_password() -> str:
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@user_group.command("add")
@click.argument("email")
@click.option("--admin", is_flag=True, help="An operator, not a customer.")
@click.option("--password", help="The password (asked for, hidden, when omitted).")
@click.option("--no-password", is_flag=True, help="No password: API tokens only.")
@json_option
@pass_obj
def user_add(
    obj: Obj, email: str, admin: bool, password: str | None, no_password: bool, as_json: bool
) -> None:
    """Add a user; the password must be at least 10 characters."""
    if password is not None and no_password:
        raise click.UsageError("give --password or --no-password, not both")
    users.ensure_available(obj.ctx, email, actor=actor())  # fail before asking for a password
    if password is None and not no_password:
        password = _ask_password()
    user = users.add_user(obj.ctx, email, password, admin, actor=actor())
    _emit(users.user_view(user), as_json)


@user_group.command("list")
@json_option
@pass_obj
def user_list(obj: Obj, as_json: bool) -> None:
    """List users."""
    _emit([users.user_view(u) for u in users.list_users(obj.ctx)], as_json, USER_COLUMNS)


@user_group.command("disable")
@click.argument("email")
@pass_obj
def user_disable(obj: Obj, email: str) -> None:
    """Stop a user logging in, end their sessions and revoke all their API tokens."""
    revoked = users.disable_user(obj.ctx, email, actor=actor())
    click.echo(f"user {email} disabled; {revoked} API token(s) revoked")


simple_command(
    user_group,
    "enable",
    users.enable_user,
    "user {} enabled",
    "Let a disabled user log in again (revoked tokens stay revoked).",
    argument="email",
)


@user_group.command("password")
@click.argument("email")
@click.option("--password", help="The new password (asked for, hidden, when omitted).")
@pass_obj
def user_password(obj: Obj, email: str, password: str | None) -> None:
    """Set a user's password; every website session of theirs ends."""
    users.check_password_change(obj.ctx, email, actor=actor())  # fail before asking
    new = password if password is not None else _ask_password()
    users.set_password(obj.ctx, email, new, actor=actor())
    click.echo(f"password of {email} changed")


# -- API tokens -----------------------------------------------------------------
@click.group("token")
def token_group() -> None:
    """Bearer tokens for the REST API; a token is shown only when it is made.

    \b
    Examples:
      kvmvps-admin token create alice@example.com --name ci --json
      kvmvps-admin token list --user alice@example.com
      kvmvps-admin token revoke 3
    """


@token_group.command("create")
@click.argument("email")
@click.option("--name", default="", help="What the token is for, e.g. 'ci'.")
@json_option
@pass_obj
def token_create(obj: Obj, email: str, name: str, as_json: bool) -> None:
    """Make an API token for a user and show it this once."""
    plaintext, view = tokens.create_token(obj.ctx, email, name, actor=actor())
    if as_json:
        emit_json({**view, "token": plaintext})
        return
    record({**view, "token": plaintext}, (*tokens.VIEW_KEYS, "token"))
    click.echo("(the token is shown only this once and will not be shown again; store it now)")


@token_group.command("list")
@click.option("--user", "email", help="Only this user's tokens (e-mail).")
@json_option
@pass_obj
def token_list(obj: Obj, email: str | None, as_json: bool) -> None:
    """List API tokens (never the tokens themselves)."""
    _emit(tokens.list_tokens(obj.ctx, email), as_json, TOKEN_COLUMNS)


@token_group.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@pass_obj
def token_revoke(obj: Obj, token_id: int) -> None:
    """Revoke an API token by its id (see 'token list')."""
    view = tokens.revoke_token(obj.ctx, token_id, actor=actor())
    click.echo(f"token {view['id']} of {view['user']} revoked")


# -- audit log ------------------------------------------------------------------
@click.command("audit")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@click.option("--actor", help="Only entries by this actor, e.g. os:root.")
@click.option("--action", help="Only this action, e.g. vps.create.")
@click.option("--target", help="Only entries about this object.")
@json_option
@pass_obj
def audit_cmd(
    obj: Obj, limit: int, actor: str | None, action: str | None, target: str | None, as_json: bool
) -> None:
    """Show the audit log, newest first.

    \b
    Examples:
      kvmvps-admin audit --limit 20
      kvmvps-admin audit --action vps.create --json
      kvmvps-admin audit --actor os:root --target web1
    """
    rows = audit.list_entries(obj.ctx, limit=limit, actor=actor, action=action, target=target)
    _emit(rows, as_json, AUDIT_COLUMNS)


# -- hosts ----------------------------------------------------------------------
@click.group("host")
def host_group() -> None:
    """libvirt hosts that run VPSes.

    \b
    Examples:
      kvmvps-admin host add kvm2 --uri qemu+ssh://root@kvm2.example.com/system
      kvmvps-admin host list
      kvmvps-admin host show kvm2 --json
      kvmvps-admin host disable kvm2
      kvmvps-admin host maintenance kvm2 on
      kvmvps-admin host public-address kvm1 203.0.113.7
      kvmvps-admin host agent kvm2 on   # then on kvm2: kvmvps-admin worker --host kvm2
    """


make_lazy(host_group, {"evacuate": "kvmvps.cli.migrate_cmds"})


@host_group.command("add")
@click.argument("name")
@click.option("--uri", required=True, help="libvirt URI, e.g. qemu+ssh://root@kvm2/system.")
@json_option
@pass_obj
def host_add(obj: Obj, name: str, uri: str, as_json: bool) -> None:
    """Register a host and create kvmvps's pool and networks on it."""
    host = hosts.add_host(obj.ctx, name, uri, actor=actor())
    view = hosts.show_host(obj.ctx, host.name)
    emit_json(view) if as_json else record(view, hosts.SHOW_KEYS)


@host_group.command("list")
@json_option
@pass_obj
def host_list(obj: Obj, as_json: bool) -> None:
    """List hosts."""
    _emit(hosts.list_hosts(obj.ctx), as_json, HOST_COLUMNS)


@host_group.command("show")
@click.argument("name")
@json_option
@pass_obj
def host_show(obj: Obj, name: str, as_json: bool) -> None:
    """Show a host with its capacity and what it carries."""
    view = hosts.show_host(obj.ctx, name)
    emit_json(view) if as_json else record(view, hosts.SHOW_KEYS)


@host_group.command("public-address")
@click.argument("name")
@click.argument("address", required=False)
@click.option("--clear", is_flag=True, help="Use KVMVPS_PUBLIC_ADDRESS again.")
@json_option
@pass_obj
def host_public_address(
    obj: Obj, name: str, address: str | None, clear: bool, as_json: bool
) -> None:
    """Set the host's public IPv4 for port forwards (overrides KVMVPS_PUBLIC_ADDRESS)."""
    if clear == (address is not None):
        raise click.UsageError("give an ADDRESS or --clear")
    view = hosts.set_public_address(obj.ctx, name, address, actor=actor())
    emit_json(view) if as_json else record(view, hosts.SHOW_KEYS)


@host_group.command("agent")
@click.argument("name")
@click.argument("switch", type=click.Choice(["on", "off"]))
@json_option
@pass_obj
def host_agent(obj: Obj, name: str, switch: str, as_json: bool) -> None:
    """Let the host's own agent ('worker --host NAME' run on it) do its work, or stop.

    With an agent, the host gets port forwards and HTTP names on its public
    address, and images without cloud-init work there: the agent reaches its
    guests and writes its iptables rules and proxy itself.
    """
    view = hosts.set_agent(obj.ctx, name, switch == "on", actor=actor())
    emit_json(view) if as_json else record(view, hosts.SHOW_KEYS)


@host_group.command("maintenance")
@click.argument("name")
@click.argument("state", type=click.Choice(["on", "off"]))
@json_option
@pass_obj
def host_maintenance(obj: Obj, name: str, state: str, as_json: bool) -> None:
    """Maintenance on: place no new VPSes on the host; those it carries keep running."""
    hosts.set_maintenance(obj.ctx, name, state == "on", actor=actor())
    view = hosts.show_host(obj.ctx, name)
    emit_json(view) if as_json else record(view, hosts.SHOW_KEYS)


simple_command(
    host_group,
    "remove",
    hosts.remove_host,
    "host {} removed",
    "Forget a host that carries no VPS (nothing on the host is deleted).",
)
simple_command(
    host_group,
    "disable",
    hosts.disable_host,
    "host {} disabled",
    "Place no new VPSes on a host; those it carries keep running.",
)
simple_command(
    host_group, "enable", hosts.enable_host, "host {} enabled", "Put a host back in service."
)


def register(cli: click.Group) -> None:
    for command in (user_group, token_group, audit_cmd, host_group):
        cli.add_command(command)
