"""Shared fixtures.

Tests that touch the real libvirtd use their own storage pool, NAT network
and bridge (never libvirt's ``default`` or the production ``kvmvps`` ones),
a state dir under /var/lib/kvmvps-tests (QEMU must be able to read the
images, which /tmp/pytest-of-root does not allow), and remove everything they
made when the session ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from kvmvps.config import load_settings
from kvmvps.db import Database
from kvmvps.hypervisor import close_all
from kvmvps.services import Context, inventory, setup, users
from tests.snapshots import libvirt_snapshot
from tests.tools import check_needs

TEST_ROOT = Path(os.environ.get("KVMVPS_TEST_ROOT", "/var/lib/kvmvps-tests"))
TEST_CACHE = Path(os.environ.get("KVMVPS_TEST_CACHE", "/var/cache/kvmvps-tests"))
REAL_URI = "qemu:///system"
TEST_NET = "kvmvpstest"
TEST_SUBNET = "10.231.0.0/24"
TEST_POOL = "kvmvpstest"
# Installations on the real libvirtd get names and subnets of their own per
# pytest process, so two test runs on one machine never share a network.
_SLOT = os.getpid() % 40
REAL_NAME, REAL_SUBNET = f"kvt{os.getpid()}", f"10.{190 + _SLOT}.0.0/24"
FRESH_NAME, FRESH_SUBNET = f"kvf{os.getpid()}", f"10.{190 + _SLOT}.1.0/24"
REUSED_NAME, REUSED_SUBNET = f"kvr{os.getpid()}", f"10.{190 + _SLOT}.4.0/24"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def test_env(
    state_dir: Path,
    uri: str = REAL_URI,
    name: str = TEST_NET,
    subnet: str = TEST_SUBNET,
    **extra: str,
) -> dict[str, str]:
    """The KVMVPS_* environment of a test installation named ``name``."""
    env = {
        "KVMVPS_STATE_DIR": str(state_dir),
        "KVMVPS_LIBVIRT_URI": uri,
        "KVMVPS_DOMAIN_TYPE": os.environ.get("KVMVPS_DOMAIN_TYPE", "auto"),
        "KVMVPS_STORAGE_POOL": name,
        "KVMVPS_NETWORK": name,
        "KVMVPS_NETWORK_BRIDGE": f"{name}0"[:15],
        "KVMVPS_NETWORK_SUBNET": subnet,
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_CACHE_DIR": str(TEST_CACHE),
        "KVMVPS_IMAGE_TEST_INTERVAL": "0",  # a test that wants image self-tests asks for them
    }
    env.update(extra)
    return env


def make_state_dir(prefix: str) -> Path:
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_ROOT, 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=TEST_ROOT))
    os.chmod(path, 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    return path


def libvirtd_available() -> bool:
    try:
        from kvmvps.hypervisor import Hypervisor

        Hypervisor(REAL_URI).ping()
    except Exception:  # noqa: BLE001
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("KVMVPS_REQUIRE_LIBVIRT") == "1":
        return  # CI: a missing libvirtd must fail loudly, not skip
    if not libvirtd_available():
        skip = pytest.mark.skip(reason="no libvirtd at qemu:///system")
        for item in items:
            if "libvirt" in item.keywords or "e2e" in item.keywords:
                item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    check_needs(item)  # tests marked with tests.tools.needs: skip, or fail when required


def cleanup_installation(ctx: Context) -> None:
    """Remove every domain, volume and network a test installation made."""
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    for name in hv.list_domains(prefix="kvmvps-"):
        if name in _domains_of(ctx):
            hv.undefine(name)
    for vol in hv.list_volumes(ctx.settings.storage_pool):
        if vol.startswith("kvmvps-"):
            hv.delete_volume(ctx.settings.storage_pool, vol)
    for net in inventory.list_networks(ctx):
        hv.remove_network(net.libvirt_name)
    close_all()


def _domains_of(ctx: Context) -> set[str]:
    from sqlalchemy import select

    from kvmvps.models import Vps

    with ctx.db.session() as s:
        return set(s.scalars(select(Vps.domain_name)))


PG_URL = os.environ.get("KVMVPS_TEST_POSTGRES_URL", "")


def _require_postgres() -> None:
    if not PG_URL:
        if os.environ.get("KVMVPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("KVMVPS_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL (set KVMVPS_TEST_POSTGRES_URL)")


def _new_postgres(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (a copy of ``template``, or empty); dropped afterwards."""
    _require_postgres()
    name = f"kvt_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    close_all()
    _drop_database(admin, name)
    admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    yield from _new_postgres()


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A PostgreSQL database migrated to the newest revision once per session.

    Tests get copies of it (``CREATE DATABASE ... TEMPLATE``) instead of running
    every migration again; tests/unit/test_migrations.py migrates an empty one.
    """
    for url in _new_postgres():
        db = Database(url)
        db.migrate()
        db.dispose()  # a template must have no connections when it is copied
        yield make_url(url).database or ""


@pytest.fixture
def migrated_postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, already migrated (dropped afterwards)."""
    yield from _new_postgres(postgres_template)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the newest revision once per session; tests copy it.

    Its engine is disposed before any copy is read, so no SQLite lock of this
    process is ever on it.
    """
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.dispose()
    return path


@pytest.fixture(scope="session")
def base_qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty 64 MiB qcow2, made once; each installation gets its own copy."""
    path = tmp_path_factory.mktemp("base") / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


# werkzeug's default scrypt cost (n=2**15, 32 MiB) takes 0.1 s to seconds a hash on a busy
# 2-core machine, and the web fixtures hash three passwords a test. Tests in this process
# hash with a small n instead (still scrypt, same code path); tests marked
# ``production_hashing`` keep the production method and check its parameters.
TEST_HASH_METHOD = "scrypt:1024:8:1"


@pytest.fixture(autouse=True)
def _cheap_password_hashing(request: pytest.FixtureRequest) -> Iterator[None]:
    # set by hand, not with the monkeypatch fixture: an autouse fixture that took it would
    # keep a test's own monkeypatches in force until its other fixtures were torn down
    if request.node.get_closest_marker("production_hashing") is not None:
        yield
        return
    production = users.HASH_METHOD
    users.HASH_METHOD = TEST_HASH_METHOD
    yield
    users.HASH_METHOD = production


def _drop_database(admin: Engine, name: str) -> None:
    """Drop a test database; autovacuum may hold it a moment, so retry, then leave it."""
    for attempt in range(5):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError:
            time.sleep(0.5 * (attempt + 1))


@pytest.fixture(scope="session")
def real_state_dir() -> Iterator[Path]:
    path = make_state_dir("session-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def real_ctx(real_state_dir: Path) -> Iterator[Context]:
    """An initialised installation on the real libvirtd, shared by the session."""
    ctx = Context(load_settings(test_env(real_state_dir, name=REAL_NAME, subnet=REAL_SUBNET)))
    setup.init(ctx)
    yield ctx
    cleanup_installation(ctx)
    _remove_pool(ctx.settings.storage_pool)
    ctx.close()


def _remove_pool(name: str) -> None:
    for args in (["pool-destroy", name], ["pool-delete", name], ["pool-undefine", name]):
        subprocess.run(["virsh", "-q", "-c", REAL_URI, *args], capture_output=True, check=False)


def add_tiny_as_base(real_ctx: Context, ctx: Context, tiny_image: str) -> None:
    """Register the session's tiny image in another installation ``ctx`` as image 'base'."""
    from kvmvps.models import Image

    with real_ctx.db.session() as s:
        tiny = inventory.get_by_name(s, Image, tiny_image, "image")
    inventory.add_image(
        ctx,
        "base",
        tiny.base_path,
        kernel=tiny.kernel_path,
        initrd=tiny.initrd_path,
        cmdline=tiny.cmdline,
        login_user=tiny.login_user,
        os_family=tiny.os_family,
    )


def _installation(real_ctx: Context, tiny_image: str, name: str, subnet: str) -> Iterator[Context]:
    """A separate installation on the real libvirtd with plan 'small' and image 'base'."""
    state = make_state_dir("fresh-")
    shutil.copytree(real_ctx.settings.keys_dir, state / "keys")  # the key the image carries
    ctx = Context(load_settings(test_env(state, name=name, subnet=subnet)))
    setup.init(ctx)
    add_tiny_as_base(real_ctx, ctx, tiny_image)
    inventory.add_plan(ctx, "small", 1, 256, 1)
    yield ctx
    cleanup_installation(ctx)
    _remove_pool(ctx.settings.storage_pool)
    ctx.close()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def fresh_ctx(tiny_image: str, real_ctx: Context) -> Iterator[Context]:
    """A separate installation on the real libvirtd with plan 'small' and image 'base'.

    It has its own pool, network and database, so a test may break it freely.
    """
    yield from _installation(real_ctx, tiny_image, FRESH_NAME, FRESH_SUBNET)


@pytest.fixture(scope="module")
def module_installation(tiny_image: str, real_ctx: Context) -> Iterator[Context]:
    """Like ``fresh_ctx``, but one for all the tests of a module that use ``reused_ctx``."""
    yield from _installation(real_ctx, tiny_image, REUSED_NAME, REUSED_SUBNET)


@pytest.fixture
def reused_ctx(module_installation: Context) -> Iterator[Context]:
    """The module's separate installation, for tests that leave it as they found it.

    Making and removing an installation (pool, network, dnsmasq) costs seconds;
    parametrised cases that each clean up after themselves share one. Each test
    must leave the installation's libvirt objects as it found them (checked
    after the test) and use its own VPS names.
    """
    before = libvirt_snapshot(module_installation)
    yield module_installation
    assert libvirt_snapshot(module_installation) == before, "a test left libvirt objects behind"


@pytest.fixture(scope="session")
def tiny_image(real_ctx: Context) -> str:
    """The tiny image, built once per session (the .deb cache survives sessions)."""
    from kvmvps.services import images

    images.build_tiny(real_ctx, "tiny")
    return "tiny"


SECOND_HOST_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "second-host.sh"
SECOND_HOST = f"t{os.getpid() % 10_000}"


def second_host_script(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run scripts/second-host.sh."""
    return subprocess.run(
        ["bash", str(SECOND_HOST_SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def script_fields(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def second_host() -> Iterator[dict[str, str]]:
    """A second, independent libvirtd of this session (scripts/second-host.sh), torn down after.

    Its keys live below TEST_ROOT, not /tmp: sshd refuses keys below a
    world-writable directory.
    """
    env = {"KVMVPS_SECOND_HOST_DIR": str(make_state_dir("hosts-"))}
    up = second_host_script("up", SECOND_HOST, env=env)
    assert up.returncode == 0, up.stderr
    yield {**script_fields(up.stdout), **env, "name": SECOND_HOST}
    down = second_host_script("down", SECOND_HOST, env=env)
    assert down.returncode == 0, down.stderr
    netns = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert f"kvh-{SECOND_HOST}" not in netns
    assert subprocess.run(
        ["ip", "link", "show", f"kvh{SECOND_HOST}h"], capture_output=True
    ).returncode
    assert not (Path(env["KVMVPS_SECOND_HOST_DIR"]) / SECOND_HOST).exists()
    Path(env["KVMVPS_SECOND_HOST_DIR"]).rmdir()


@pytest.fixture(scope="session")
def debian_image(real_ctx: Context) -> str:
    """The Debian 12 image, built once per session with ``image build-debian``'s service
    (the e2e VPS boots it; tests/integration/test_debian_image.py inspects its files)."""
    from kvmvps.services import images

    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing (scripts/setup-host.sh installs it)")
    if "bookworm" not in [i.name for i in inventory.list_images(real_ctx)]:
        images.build_debian(real_ctx, "bookworm")
    return "bookworm"
