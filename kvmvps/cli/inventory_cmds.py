"""``init``, ``image``, ``plan`` and ``network`` commands."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from kvmvps import limits
from kvmvps.cli.context import Obj, actor, json_option, pass_obj, simple_command
from kvmvps.cli.lazy import make_lazy
from kvmvps.cli.output import emit_json, record, table
from kvmvps.services import inventory, views

# 'init', 'image build-*' and 'plan edit' import the services that reach libvirt
# inside their bodies, so the listing commands start without libvirt (speed, not cycles).
from kvmvps.services.views import ImageView

PLAN_COLUMNS = (
    "name",
    "vcpus",
    "memory_mib",
    "disk_gib",
    "network",
    "price_cents",
    "extra_forwards",
    "limits",
)
IMAGE_COLUMNS = (
    "name",
    "login_user",
    "cloud_init",
    "os_family",
    "virtual_size_gib",
    "kernel_boot",
    "rescue",
    "tcg_cache_mib",
)
TCG_CACHE_OPTION = click.option(
    "--tcg-cache-mib",
    metavar="MIB|default",
    help="Under emulation, its VPSes' translated-code cache in MiB (0: QEMU's own); "
    "'default': KVMVPS_TCG_TB_CACHE_MIB.",
)
NETWORK_COLUMNS = (
    "name",
    "kind",
    "subnet",
    "gateway",
    "bridge",
    "pool_start",
    "pool_end",
    "ipv6_prefix",
    "allow_guest_traffic",
)


@click.command("init")
@json_option
@pass_obj
def init_cmd(obj: Obj, as_json: bool) -> None:
    """Prepare this machine (idempotent): state dir, database, keys, pool, network, host."""
    from kvmvps.services import setup  # lazy for speed: see above

    report = setup.init(obj.raw_ctx, actor=actor())
    if as_json:
        emit_json(asdict(report))
    else:
        record(asdict(report))


# -- images -------------------------------------------------------------------
@click.group("image")
def image_group() -> None:
    """OS templates that VPSes are cloned from.

    \b
    Examples:
      kvmvps-admin image build-tiny tiny
      kvmvps-admin image add bookworm ./debian.qcow2 --login-user debian --cloud-init
      kvmvps-admin image list --json
    """


@image_group.command("build-tiny")
@click.argument("name")
@json_option
@pass_obj
def image_build_tiny(obj: Obj, name: str, as_json: bool) -> None:
    """Build a tiny busybox+dropbear test image from Debian packages and register it."""
    progress = None if as_json else (lambda msg: click.echo(f"  {msg}", err=True))
    from kvmvps.services import images as image_service  # lazy for speed: see above

    image = image_service.build_tiny(obj.ctx, name, progress, actor=actor())
    _print_images([views.image_view(image)], as_json, single=True)


@image_group.command("build-debian")
@click.argument("name")
@click.option(
    "--cloud-init",
    "cloud_init",
    is_flag=True,
    help="Run cloud-init at boot and give each VPS a seed (default: installed but off).",
)
@json_option
@pass_obj
def image_build_debian(obj: Obj, name: str, cloud_init: bool, as_json: bool) -> None:
    """Build a Debian 12 image (systemd, OpenSSH, cloud-init) with debootstrap."""
    progress = None if as_json else (lambda msg: click.echo(f"  {msg}", err=True))
    from kvmvps.services import images as image_service  # lazy for speed: see above

    image = image_service.build_debian(
        obj.ctx, name, progress, cloud_init=cloud_init, actor=actor()
    )
    _print_images([views.image_view(image)], as_json, single=True)


@image_group.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kernel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Kernel for direct kernel boot.",
)
@click.option(
    "--initrd",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Initrd for direct kernel boot.",
)
@click.option("--cmdline", help="Kernel command line for direct kernel boot.")
@click.option(
    "--login-user", default="root", show_default=True, help="The user customers log in as."
)
@click.option("--cloud-init", is_flag=True, help="The image reads a NoCloud seed.")
@click.option(
    "--no-credentials",
    is_flag=True,
    help="Only boot VPSes of this image; push no password or keys.",
)
@click.option("--rescue", is_flag=True, help="VPSes boot this image in rescue mode.")
@TCG_CACHE_OPTION
@json_option
@pass_obj
def image_add(
    obj: Obj,
    name: str,
    path: Path,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str | None,
    login_user: str,
    cloud_init: bool,
    no_credentials: bool,
    rescue: bool,
    tcg_cache_mib: str | None,
    as_json: bool,
) -> None:
    """Register a qcow2 base image (copied into the image store).

    The image must be qcow2 with no backing file. For kvmvps to push
    credentials, root must accept the provisioning key printed by
    'kvmvps-admin init' (/var/lib/kvmvps/keys/provisioning_ed25519.pub), and
    the guest must either use cloud-init (--cloud-init) or print its SSH host
    keys to the serial console at boot as cloud-init does.
    """
    image = inventory.add_image(
        obj.ctx,
        name,
        path,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        login_user=login_user,
        cloud_init=cloud_init,
        credentials=not no_credentials,
        rescue=rescue,
        tcg_cache_mib=tcg_cache_mib,
        actor=actor(),
    )
    _print_images([views.image_view(image)], as_json, single=True)


@image_group.command("edit")
@click.argument("name")
@click.option(
    "--rescue/--no-rescue",
    default=None,
    help="Whether VPSes boot this image in rescue mode (the newest rescue image is used).",
)
@TCG_CACHE_OPTION
@json_option
@pass_obj
def image_edit(
    obj: Obj, name: str, rescue: bool | None, tcg_cache_mib: str | None, as_json: bool
) -> None:
    """Change an image's settings (a new code-cache size applies as each VPS is next defined)."""
    image = inventory.edit_image(
        obj.ctx, name, rescue=rescue, tcg_cache_mib=tcg_cache_mib, actor=actor()
    )
    _print_images([views.image_view(image)], as_json, single=True)


@image_group.command("list")
@json_option
@pass_obj
def image_list(obj: Obj, as_json: bool) -> None:
    """List the registered images."""
    _print_images([views.image_view(i) for i in inventory.list_images(obj.ctx)], as_json)


make_lazy(image_group, dict.fromkeys(("test", "tests", "show"), "kvmvps.cli.imagetest_cmds"))

simple_command(
    image_group,
    "remove",
    inventory.remove_image,
    "image {} removed",
    "Remove an image that no VPS uses.",
)


def _print_images(views: list[ImageView], as_json: bool, single: bool = False) -> None:
    if as_json:
        emit_json(views[0] if single else views)
    elif single:
        record(views[0])
    else:
        table(views, IMAGE_COLUMNS)


# -- plans --------------------------------------------------------------------
@click.group("plan")
def plan_group() -> None:
    """Sizes customers can order: vCPUs, memory, disk, and resource limits.

    Limits are unlimited unless given; 'unlimited' lifts one again (plan edit).

    \b
    Examples:
      kvmvps-admin plan add small --vcpus 1 --memory-mib 512 --disk-gib 10
      kvmvps-admin plan add capped --vcpus 1 --memory-mib 512 --disk-gib 10 \\
          --cpu-quota-pct 50 --disk-bytes-sec 10485760 --net-out-kibps 2048
      kvmvps-admin plan edit capped --net-out-kibps unlimited
      kvmvps-admin plan list
    """


def limit_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One option per resource limit (kvmvps.limits.LIMIT_FIELDS), as text."""
    for field in reversed(limits.LIMIT_FIELDS):
        fn = click.option(
            field.option,
            field.name,
            metavar="N|unlimited",
            help=f"{field.help} ({field.unit})",
        )(fn)
    return fn


def _limits_given(options: dict[str, str | None]) -> dict[str, int | None]:
    return {
        name: limits.parse_value(text, name)
        for name, text in options.items()
        if name in limits.FIELDS_BY_NAME and text is not None
    }


def _plan_row(view: Mapping[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in view.items() if k not in ("limits", "limits_summary")}
    return {**flat, "limits": "; ".join(view["limits_summary"]) or "none"}


@plan_group.command("add")
@click.argument("name")
@click.option("--vcpus", type=int, required=True, help="Virtual CPUs.")
@click.option("--memory-mib", type=int, required=True, help="Memory in MiB.")
@click.option("--disk-gib", type=int, required=True, help="Disk size in GiB.")
@click.option("--network", help="Network for VPSes of this plan (default: the NAT network).")
@click.option("--price-cents", type=int, default=0, show_default=True, help="Monthly price.")
@click.option(
    "--extra-forwards",
    type=int,
    default=0,
    show_default=True,
    help="Port forwards a VPS may add beyond its SSH forward.",
)
@click.option(
    "--transfer-gib", type=int, help="Monthly transfer (in + out) in GiB (default: unmetered)."
)
@click.option(
    "--over-limit",
    type=click.Choice(["throttle", "suspend"]),
    default="throttle",
    show_default=True,
    help="Over the monthly transfer: hold the network to --over-limit-kibps, or suspend.",
)
@click.option(
    "--over-limit-kibps",
    type=int,
    default=128,
    show_default=True,
    help="Network speed (in and out, KiB/s) while throttled over the monthly transfer.",
)
@limit_options
@json_option
@pass_obj
def plan_add(
    obj: Obj,
    name: str,
    vcpus: int,
    memory_mib: int,
    disk_gib: int,
    network: str | None,
    price_cents: int,
    extra_forwards: int,
    transfer_gib: int | None,
    over_limit: str,
    over_limit_kibps: int,
    as_json: bool,
    **limit_texts: str | None,
) -> None:
    """Add a plan."""
    plan = inventory.add_plan(
        obj.ctx,
        name,
        vcpus,
        memory_mib,
        disk_gib,
        network,
        price_cents,
        extra_forwards,
        resource_limits=_limits_given(limit_texts),
        transfer_gib=transfer_gib,
        over_limit=over_limit,
        over_limit_kibps=over_limit_kibps,
        actor=actor(),
    )
    view = views.plan_admin_view(plan, network)
    emit_json(view) if as_json else record(_plan_row(view))


@plan_group.command("edit")
@click.argument("name")
@limit_options
@json_option
@pass_obj
def plan_edit(obj: Obj, name: str, as_json: bool, **limit_texts: str | None) -> None:
    """Change a plan's resource limits; its VPSes take them at once (live if running)."""
    from kvmvps.services import tuning  # lazy for speed: see above

    view = tuning.edit_plan(obj.ctx, name, _limits_given(limit_texts), actor=actor())
    emit_json(view) if as_json else record(_plan_row(view))


@plan_group.command("list")
@json_option
@pass_obj
def plan_list(obj: Obj, as_json: bool) -> None:
    """List plans."""
    rows = views.plan_views(obj.ctx, admin=True)
    emit_json(rows) if as_json else table([_plan_row(r) for r in rows], PLAN_COLUMNS)


# 'plan backups' comes from backup_cmds, imported when it runs
make_lazy(
    plan_group,
    {"backups": "kvmvps.cli.backup_cmds", "snapshots": "kvmvps.cli.snapshot_cmds"},
)

simple_command(
    plan_group,
    "remove",
    inventory.remove_plan,
    "plan {} removed",
    "Remove a plan that no VPS uses.",
)


# -- networks -----------------------------------------------------------------
@click.group("network")
def network_group() -> None:
    """Guest networks: NAT with private addresses, or a bridge with public ones.

    \b
    Examples:
      kvmvps-admin network add lan2 --kind nat --subnet 10.214.0.0/24
      kvmvps-admin network add public --kind bridge --bridge br0 \\
          --subnet 203.0.113.0/24 --gateway 203.0.113.1 \\
          --pool-start 203.0.113.10 --pool-end 203.0.113.50
    """


@network_group.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(["nat", "bridge"]), default="nat", show_default=True)
@click.option("--subnet", required=True, help="IPv4 subnet, e.g. 10.214.0.0/24.")
@click.option("--bridge", help="Host bridge (required for --kind bridge).")
@click.option("--gateway", help="Gateway address (default: first host address).")
@click.option("--pool-start", help="First address handed to guests.")
@click.option("--pool-end", help="Last address handed to guests.")
@click.option(
    "--allow-guest-traffic",
    is_flag=True,
    help="Let guests on this network reach each other directly (default: isolated).",
)
@click.option(
    "--ipv6",
    metavar="PREFIX/64|auto|none",
    help="NAT networks: the guests' routed IPv6 /64 (default auto: a unique local one).",
)
@json_option
@pass_obj
def network_add(
    obj: Obj,
    name: str,
    kind: str,
    subnet: str,
    bridge: str | None,
    gateway: str | None,
    pool_start: str | None,
    pool_end: str | None,
    allow_guest_traffic: bool,
    ipv6: str | None,
    as_json: bool,
) -> None:
    """Add a network and create it on every host.

    Every guest's NIC carries libvirt's clean-traffic filter (it can send
    only with its own MAC and address). Guests' bridge ports are isolated
    from each other unless --allow-guest-traffic is given; a guest still
    reaches its neighbours' public port forwards through the host.
    """
    net = inventory.add_network(
        obj.ctx,
        name,
        kind,
        subnet,
        bridge=bridge,
        gateway=gateway,
        pool_start=pool_start,
        pool_end=pool_end,
        allow_guest_traffic=allow_guest_traffic,
        ipv6=ipv6,
        actor=actor(),
    )
    view = views.network_view(net)
    emit_json(view) if as_json else record(view)


@network_group.command("list")
@json_option
@pass_obj
def network_list(obj: Obj, as_json: bool) -> None:
    """List networks."""
    rows = [views.network_view(n) for n in inventory.list_networks(obj.ctx)]
    emit_json(rows) if as_json else table(rows, NETWORK_COLUMNS)


simple_command(
    network_group,
    "remove",
    inventory.remove_network,
    "network {} removed",
    "Remove a network that no VPS or plan uses.",
)


def register(cli: click.Group) -> None:
    for command in (init_cmd, image_group, plan_group, network_group):
        cli.add_command(command)
