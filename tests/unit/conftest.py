"""Fixtures on libvirt's test driver: fast, in-process, no guests really run."""

from __future__ import annotations

import os
import shutil
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
    """Each test-driver test runs on SQLite and again on PostgreSQL.

    The PostgreSQL database is a copy of the session's migrated template; a test
    marked ``empty_database`` gets an empty one and its installation migrates it.
    """
    if request.param == "sqlite":
        return ""
    if request.node.get_closest_marker("empty_database"):
        return request.getfixturevalue("postgres_url")
    return request.getfixturevalue("migrated_postgres_url")


@pytest.fixture
def td_ctx(
    tmp_path: Path, database_url: str, base_qcow2: Path, request: pytest.FixtureRequest
) -> Iterator[Context]:
    """An initialised installation on test:///default with a plan and an image."""
    env = test_env(
        tmp_path / "state",
        uri=TEST_URI,
        KVMVPS_DOMAIN_TYPE="qemu",
        KVMVPS_DATABASE_URL=database_url,
        **ROOMY_QUOTAS,
    )
    ctx = Context(load_settings(env))
    if not database_url and not request.node.get_closest_marker("empty_database"):
        # the session's migrated SQLite file; init's migration then finds nothing to do
        template: Path = request.getfixturevalue("sqlite_template")
        ctx.settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, ctx.settings.sqlite_path)
        os.chmod(ctx.settings.sqlite_path, 0o600)
    setup.init(ctx)
    base = tmp_path / "base.qcow2"
    shutil.copyfile(base_qcow2, base)
    inventory.add_plan(ctx, "small", 1, 256, 1)
    inventory.add_image(ctx, "base", base, login_user="vps", credentials=False)
    yield ctx
    _wipe(ctx)
    ctx.close()
