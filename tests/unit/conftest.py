"""Fixtures on libvirt's test driver: fast, in-process, no guests really run."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmvps.config import load_settings
from kvmvps.services import Context, inventory, setup
from tests.conftest import test_env

TEST_URI = "test:///default"
# tests order many VPSes for one customer; quota tests set their own limits
ROOMY_QUOTAS = {
    "KVMVPS_QUOTA_VPS": "100000",
    "KVMVPS_QUOTA_VCPUS": "100000",
    "KVMVPS_QUOTA_MEMORY_MIB": "1000000",
    "KVMVPS_QUOTA_DISK_GIB": "1000000",
}


def _wipe(ctx: Context) -> None:
    hv = ctx.hypervisor(TEST_URI)
    for name in hv.list_domains(prefix="kvmvps-"):
        hv.undefine(name)
    for vol in hv.list_volumes(ctx.settings.storage_pool):
        hv.delete_volume(ctx.settings.storage_pool, vol)
    for net in inventory.list_networks(ctx):
        hv.remove_network(net.libvirt_name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test-driver test runs on SQLite and again on PostgreSQL."""
    if request.param == "sqlite":
        return ""
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def td_ctx(tmp_path: Path, database_url: str) -> Iterator[Context]:
    """An initialised installation on test:///default with a plan and an image."""
    env = test_env(
        tmp_path / "state",
        uri=TEST_URI,
        KVMVPS_DOMAIN_TYPE="qemu",
        KVMVPS_DATABASE_URL=database_url,
        **ROOMY_QUOTAS,
    )
    ctx = Context(load_settings(env))
    setup.init(ctx)
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    inventory.add_plan(ctx, "small", 1, 256, 1)
    inventory.add_image(ctx, "base", base, login_user="vps", credentials=False)
    yield ctx
    _wipe(ctx)
    ctx.close()
