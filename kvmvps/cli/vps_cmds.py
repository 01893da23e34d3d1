"""``vps`` commands: create, inspect, power and delete guests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from kvmvps import validation
from kvmvps.cli.context import Obj, actor, json_option, pass_obj
from kvmvps.cli.lazy import make_lazy
from kvmvps.cli.output import emit_json, job_progress, record, table
from kvmvps.services import Context
from kvmvps.services import vps as vps_service
from kvmvps.services.vps import VpsView

# Commands that change a VPS import the services that build, run and follow
# jobs (paramiko, libvirt, Jinja2, lxml) inside their bodies: 'vps list' and
# 'vps show' never load them, and start in a third of the time (speed, not cycles).

LIST_COLUMNS = ("id", "hostname", "state", "ip", "ipv6", "plan", "image", "host", "owner")
SHOW_KEYS = vps_service.VIEW_KEYS


@click.group("vps")
def vps_group() -> None:
    """Customers' virtual servers.

    A VPS is named by its id, a unique id prefix, or its hostname.

    \b
    Examples:
      kvmvps-admin vps create --plan small --image tiny --hostname web1 --json
      kvmvps-admin vps list --state running
      kvmvps-admin vps show web1
      kvmvps-admin vps shutdown web1 --timeout 30 --force
      kvmvps-admin vps delete 3f2a --yes
    """


# subcommands other modules add, each imported only when one of its commands runs
make_lazy(
    vps_group,
    {
        **dict.fromkeys(("console", "resize"), "kvmvps.cli.vps_extra_cmds"),
        **dict.fromkeys(("forward", "http"), "kvmvps.cli.forward_cmds"),
        **dict.fromkeys(("suspend", "unsuspend"), "kvmvps.cli.tenant_cmds"),
        "backup": "kvmvps.cli.backup_cmds",
        "snapshot": "kvmvps.cli.snapshot_cmds",
        "migrate": "kvmvps.cli.migrate_cmds",
    },
)


def follow(ctx: Context, job: str, quiet: bool = False) -> None:
    """Wait for a job with its steps on stderr (a bar on a terminal); nothing when quiet.

    With no worker alive, the job (and any queued before it) runs here; a note says so.
    """
    from kvmvps.services.runner import run_or_follow  # lazy for speed: see above

    with job_progress(quiet) as progress:
        run_or_follow(ctx, job, progress, notice=lambda line: click.echo(f"note: {line}", err=True))


@vps_group.command("create")
@click.option("--plan", required=True, help="Plan name.")
@click.option("--image", required=True, help="Image name.")
@click.option("--hostname", required=True, help="A DNS label, e.g. web1.")
@click.option("--owner", help="Owner's e-mail (default: the local operator).")
@click.option("--network", help="Network name (default: the plan's, or the NAT network).")
@click.option(
    "--ssh-key",
    "ssh_key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file of SSH public keys to install for the login user (repeatable).",
)
@click.option("--ttl", help="Delete the VPS automatically after this long (30m, 2h, 7d).")
@click.option("--host", "host", help="Place it on this host (default: the one with most room).")
@click.option(
    "--wait", is_flag=True, help="Wait until the VPS runs (building it here if no worker is alive)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or lines on stderr.")
@json_option
@pass_obj
def vps_create(
    obj: Obj,
    plan: str,
    image: str,
    hostname: str,
    owner: str | None,
    network: str | None,
    ssh_key_files: tuple[Path, ...],
    ttl: str | None,
    host: str | None,
    wait: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Order a VPS; its password is shown this once.

    Without --wait the order is queued for a worker and this returns at once
    (state "queued"); with --wait it returns when the VPS runs.
    """
    from kvmvps.services import provisioning  # lazy for speed: see above
    from kvmvps.services.runner import NoWorker  # lazy for speed: see above

    keys = [line for f in ssh_key_files for line in _read_key_file(f)]
    req = provisioning.OrderRequest(
        plan=plan,
        image=image,
        hostname=hostname,
        owner_email=owner,
        network=network,
        ssh_keys=tuple(keys),
        ttl_seconds=validation.duration(ttl) if ttl else None,
        host=host,
    )
    order = provisioning.record_order(obj.ctx, req, actor=actor())
    try:
        if wait:
            follow(obj.ctx, order.job, quiet or as_json)
    except NoWorker:  # the order stays queued: its password must not be lost
        print_with_password(
            {**vps_service.show(obj.ctx, order.uuid), "job": order.job}, order.password, as_json
        )
        raise
    view = {**vps_service.show(obj.ctx, order.uuid), "job": order.job}
    print_with_password(view, order.password, as_json)


def _read_key_file(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--ssh-key") from None
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def print_with_password(view: Mapping[str, object], password: str | None, as_json: bool) -> None:
    """A new VPS's record and its password, shown this once."""
    if as_json:
        emit_json({**view, "password": password})
        return
    record(view, SHOW_KEYS)
    if password:
        click.echo(f"{'password'.ljust(20)}  {password}")
        click.echo("(the password is shown only this once; 'vps password-reset' sets a new one)")
        click.echo(f"log in: ssh -p {view['ssh_port']} {view['username']}@{view['ssh_host']}")
        if view.get("ipv6"):
            click.echo(f"or over IPv6: ssh {view['username']}@{view['ipv6']}")


@vps_group.command("password-reset")
@click.argument("ref")
@json_option
@pass_obj
def vps_password_reset(obj: Obj, ref: str, as_json: bool) -> None:
    """Set a new random password on a running VPS and show it once."""
    from kvmvps.services import actions  # lazy for speed: see above

    req = actions.request(obj.ctx, ref, "password_reset", actor=actor())
    follow(obj.ctx, req.job, as_json)
    print_with_password(vps_service.show(obj.ctx, req.vps), req.password, as_json)


@vps_group.command("rescue")
@click.argument("ref")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or lines on stderr.")
@json_option
@pass_obj
def vps_rescue(obj: Obj, ref: str, quiet: bool, as_json: bool) -> None:
    """Boot the rescue system, the VPS's disk as /dev/vdb; a root password is shown once."""
    from kvmvps.services import actions  # lazy for speed: see above

    req = actions.request(obj.ctx, ref, "rescue", actor=actor())
    follow(obj.ctx, req.job, quiet or as_json)
    view = vps_service.show(obj.ctx, req.vps)
    if as_json:
        emit_json({**view, "password": req.password})
        return
    record(view, SHOW_KEYS)
    if req.password:
        click.echo(f"{'rescue password'.ljust(20)}  {req.password}")
        click.echo("(shown only this once; the VPS's own credentials are unchanged)")
        click.echo(f"log in: ssh -p {view['ssh_port']} root@{view['ssh_host']}")
    click.echo(f"leave rescue mode: kvmvps-admin vps unrescue {view['hostname']}")


_UNRESCUE_HELP = "Leave rescue mode: boot the VPS's own system again."


@vps_group.command("reinstall")
@click.argument("ref")
@click.option("--image", help="Reinstall from another image (default: the same one).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or lines on stderr.")
@json_option
@pass_obj
def vps_reinstall(
    obj: Obj, ref: str, image: str | None, yes: bool, quiet: bool, as_json: bool
) -> None:
    """Wipe the disk and install the image afresh; new credentials are shown once."""
    from kvmvps.services import actions  # lazy for speed: see above

    shown = vps_service.show(obj.ctx, ref)
    if not yes:
        click.confirm(f"Erase the disk of {shown['hostname']} ({shown['id'][:8]})?", abort=True)
    req = actions.request(obj.ctx, shown["id"], "reinstall", actor=actor(), image=image)
    follow(obj.ctx, req.job, quiet or as_json)
    print_with_password(vps_service.show(obj.ctx, req.vps), req.password, as_json)


@vps_group.command("list")
@click.option("--owner", help="Only this owner's (e-mail).")
@click.option("--state", help="Only VPSes in this state.")
@click.option("--host", help="Only VPSes on this host.")
@click.option("--limit", help="Show a page of at most this many (1-1000), oldest first.")
@click.option("--after", help="Start after this cursor (the next of the page before).")
@json_option
@pass_obj
def vps_list(
    obj: Obj,
    owner: str | None,
    state: str | None,
    host: str | None,
    limit: str | None,
    after: str | None,
    as_json: bool,
) -> None:
    """List VPSes: all of them, or a page with --limit (--json: {servers, next})."""
    if limit is None and after is None:
        rows = vps_service.list_vps(obj.ctx, owner=owner, state=state, host=host)
        emit_json(rows) if as_json else _table(rows)
        return
    page = vps_service.list_page(
        obj.ctx, owner=owner, state=state, host=host, limit=limit, after=after
    )
    if as_json:
        emit_json(page)
        return
    _table(page["servers"])
    if page["next"]:
        size = vps_service.list_limit(limit)
        click.echo(f"next page: --limit {size} --after {page['next']}", err=True)


def _table(rows: list[vps_service.VpsView]) -> None:
    table([{**r, "id": r["id"][:8]} for r in rows], LIST_COLUMNS)


@vps_group.command("show")
@click.argument("ref")
@json_option
@pass_obj
def vps_show(obj: Obj, ref: str, as_json: bool) -> None:
    """Show one VPS."""
    _print_one(vps_service.show(obj.ctx, ref), as_json)


@vps_group.command("transfer-reset")
@click.argument("ref")
@json_option
@pass_obj
def vps_transfer_reset(obj: Obj, ref: str, as_json: bool) -> None:
    """Count this month's transfer of a VPS from zero again."""
    from kvmvps.services import allowance  # lazy for speed: see above

    done = allowance.reset_transfer(obj.ctx, ref, actor=actor())
    emit_json(done) if as_json else record(done)


@vps_group.command("xml")
@click.argument("ref")
@pass_obj
def vps_xml(obj: Obj, ref: str) -> None:
    """Print the VPS's libvirt domain XML."""
    click.echo(vps_service.domain_xml(obj.ctx, ref), nl=False)


@vps_group.command("delete")
@click.argument("ref", required=False)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--all-expired", is_flag=True, help="Delete every VPS whose --ttl ran out.")
@click.option("--drop-backups", is_flag=True, help="Delete its backups too (default: keep them).")
@pass_obj
def vps_delete(obj: Obj, ref: str | None, yes: bool, all_expired: bool, drop_backups: bool) -> None:
    """Delete a VPS: its domain, disk, address and DHCP entry (its backups stay unless dropped)."""
    from kvmvps.services import actions, expiry, jobs  # lazy for speed: see above

    if all_expired == bool(ref):
        raise click.UsageError("name one VPS, or give --all-expired")
    if not ref:
        for job in expiry.delete_expired(obj.ctx, actor=actor()):
            follow(obj.ctx, job)
            click.echo(f"deleted expired VPS ({jobs.get_job(obj.ctx, job)['vps']})")
        return
    shown = vps_service.show(obj.ctx, ref)
    if not yes:
        click.confirm(f"Delete {shown['hostname']} ({shown['id'][:8]})?", abort=True)
    req = actions.request(obj.ctx, shown["id"], "delete", actor=actor(), drop_backups=drop_backups)
    follow(obj.ctx, req.job)
    click.echo(f"deleted {shown['hostname']} ({shown['id']})")


def _power_command(name: str, action: str, help_text: str) -> click.Command:
    @vps_group.command(name, help=help_text)
    @click.argument("ref")
    @json_option
    @pass_obj
    def command(obj: Obj, ref: str, as_json: bool) -> None:
        from kvmvps.services import actions  # lazy for speed: see above

        req = actions.request(obj.ctx, ref, action, actor=actor())
        follow(obj.ctx, req.job, as_json)
        _print_one(vps_service.show(obj.ctx, req.vps), as_json)

    return command


_power_command("start", "start", "Power a stopped VPS on.")
_power_command("destroy", "destroy", "Power a VPS off at once, like pulling the plug.")
_power_command("reboot", "reboot", "Reboot a VPS (ACPI).")
_power_command(
    "pause", "suspend", "Pause a running VPS in memory ('vps suspend' is an operator's suspension)."
)
_power_command("resume", "resume", "Resume a paused VPS.")
_power_command("unrescue", "unrescue", _UNRESCUE_HELP)


@vps_group.command("shutdown")
@click.argument("ref")
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for the guest to power off.",
)
@click.option("--force", is_flag=True, help="Destroy the VPS if it has not stopped in time.")
@json_option
@pass_obj
def vps_shutdown(obj: Obj, ref: str, timeout: float, force: bool, as_json: bool) -> None:
    """Shut a VPS down gracefully (ACPI power button)."""
    from kvmvps.services import actions  # lazy for speed: see above

    req = actions.request(obj.ctx, ref, "shutdown", actor=actor(), timeout=timeout, force=force)
    follow(obj.ctx, req.job, as_json)
    _print_one(vps_service.show(obj.ctx, req.vps), as_json)


def _print_one(view: VpsView, as_json: bool) -> None:
    if as_json:
        emit_json(view)
    else:
        record(view, SHOW_KEYS)


def register(cli: click.Group) -> None:
    cli.add_command(vps_group)
