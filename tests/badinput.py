"""Bad input through the CLI: one line on stderr, non-zero exit, nothing changed.

Shared by the test-driver unit tests and the real-libvirtd integration tests.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import update

from kvmvps.cli.main import cli
from kvmvps.models import Host, Image
from kvmvps.services import Context, inventory
from tests.snapshots import snapshot


def run_cli(ctx: Context, *args: str, extra_env: dict[str, str] | None = None):
    """Run kvmvps-admin in-process against ``ctx``'s installation; click's Result."""
    env = {**_env_of(ctx), **(extra_env or {})}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _env_of(ctx: Context) -> dict[str, str]:
    s = ctx.settings
    return {
        "KVMVPS_STATE_DIR": str(s.state_dir),
        "KVMVPS_DATABASE_URL": s.database_url,
        "KVMVPS_LIBVIRT_URI": s.libvirt_uri,
        "KVMVPS_DOMAIN_TYPE": s.domain_type,
        "KVMVPS_STORAGE_POOL": s.storage_pool,
        "KVMVPS_NETWORK": s.network,
        "KVMVPS_NETWORK_BRIDGE": s.network_bridge,
        "KVMVPS_NETWORK_SUBNET": s.network_subnet,
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": str(s.host_memory_reserve_mib),
        "KVMVPS_CACHE_DIR": s.cache_dir,
        "KVMVPS_SSH_TIMEOUT": str(s.ssh_timeout),
        "KVMVPS_IMAGE_TEST_INTERVAL": str(s.image_test_interval),
        "KVMVPS_CONFIG": "",
    }


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    err = result.stderr
    assert result.exit_code == code, (result.exit_code, result.stdout, err)
    assert "Traceback" not in err and "Traceback" not in result.stdout
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def create_args(
    plan: str = "small", image: str = "base", hostname: str = "web1", *extra: str
) -> list[str]:
    return [
        "vps",
        "create",
        "--plan",
        plan,
        "--image",
        image,
        "--hostname",
        hostname,
        "--wait",
        "--json",
        *extra,
    ]


# Each case: (name, setup(ctx, tmp) -> cli args, exit code, message fragment)
Case = tuple[str, Callable[[Context, Path], list[str]], int, str]


def _pool_full(ctx: Context, tmp: Path) -> list[str]:
    base = ctx.settings.network_subnet.rsplit(".", 2)[0]  # e.g. "10.231"
    name = f"tiny{os.getpid()}"  # libvirt network names are machine-wide
    inventory.add_network(
        ctx,
        name,
        "nat",
        f"{base}.250.0/29",
        bridge=f"{name}0"[:15],
        pool_start=f"{base}.250.2",
        pool_end=f"{base}.250.2",
    )
    first = run_cli(ctx, *create_args("small", "base", "fill", "--network", name))
    assert first.exit_code == 0, first.stderr
    return create_args("small", "base", "web1", "--network", name)


def _no_memory(ctx: Context, tmp: Path) -> list[str]:
    inventory.add_plan(ctx, "huge", 1, 1_000_000, 1)
    return create_args("huge")


def _no_cpus(ctx: Context, tmp: Path) -> list[str]:
    inventory.add_plan(ctx, "wide", 64, 128, 1)
    return create_args("wide")


def _missing_base(ctx: Context, tmp: Path) -> list[str]:
    image = _image_path(ctx)
    image.rename(image.with_suffix(".moved"))
    return create_args()


def _raw_base(ctx: Context, tmp: Path) -> list[str]:
    image = _image_path(ctx)
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(image) + ".raw"],
        check=True,
    )
    os.replace(str(image) + ".raw", image)
    return create_args()


def _libvirt_down(ctx: Context, tmp: Path) -> list[str]:
    with ctx.db.session() as s:
        s.execute(update(Host).values(uri=f"qemu:///system?socket={tmp}/no-libvirt-sock"))
    return create_args()


def _image_path(ctx: Context) -> Path:
    with ctx.db.session() as s:
        return Path(inventory.get_by_name(s, Image, "base", "image").base_path)


CASES: list[Case] = [
    ("unknown plan", lambda c, t: create_args(plan="nope"), 2, "no plan named 'nope'"),
    ("unknown image", lambda c, t: create_args(image="nope"), 2, "no image named 'nope'"),
    (
        "unknown network",
        lambda c, t: create_args("small", "base", "web1", "--network", "nope"),
        2,
        "no network named 'nope'",
    ),
    ("bad hostname", lambda c, t: create_args(hostname="web_1;reboot"), 2, "not a valid DNS label"),
    ("long hostname", lambda c, t: create_args(hostname="a" * 64), 2, "not a valid DNS label"),
    ("address pool full", _pool_full, 1, "no free addresses"),
    ("no memory left", _no_memory, 1, "no host has"),
    ("no CPUs left", _no_cpus, 1, "vCPU"),
    ("missing base image", _missing_base, 1, "does not exist"),
    ("non-qcow2 base image", _raw_base, 1, "is not a qcow2 file"),
    ("libvirtd down", _libvirt_down, 1, "libvirt"),
]


def check_case(ctx: Context, tmp: Path, case: Case) -> None:
    _name, prepare, code, fragment = case
    args = prepare(ctx, tmp)
    before = snapshot(ctx)
    result = run_cli(ctx, *args)
    assert_one_line_error(result, code, fragment)
    assert snapshot(ctx) == before
