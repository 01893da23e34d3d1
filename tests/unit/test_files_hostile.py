"""Files: a database made anywhere is private; image add takes regular files only."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from kvmvps.config import load_settings
from kvmvps.errors import InvalidInput
from kvmvps.services import Context, inventory, setup, users
from tests import conftest as shared
from tests.badinput import assert_one_line_error, run_cli
from tests.snapshots import snapshot
from tests.unit.conftest import TEST_URI


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("where", ["state dir", "elsewhere"])
def test_a_new_sqlite_database_is_private(tmp_path: Path, where: str) -> None:
    old_umask = os.umask(0o022)  # what a root shell usually has: new files 0644
    other = tmp_path / "db" / "kvmvps.sqlite3"
    url = f"sqlite:///{other}" if where == "elsewhere" else ""
    env = shared.test_env(tmp_path / "state", uri=TEST_URI, KVMVPS_DATABASE_URL=url)
    ctx = Context(load_settings(env))
    try:
        setup.init(ctx)
        users.add_user(ctx, "someone@example.com", "long enough password")  # writes the WAL
        db = other if url else ctx.settings.sqlite_path
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert path.exists(), path
            assert mode(path) == 0o600, (path, oct(mode(path)))
    finally:
        os.umask(old_umask)
        ctx.close()


def test_an_existing_database_loses_group_and_other_bits(tmp_path: Path) -> None:
    db = tmp_path / "db" / "kvmvps.sqlite3"
    db.parent.mkdir()
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    env = shared.test_env(tmp_path / "state", uri=TEST_URI, KVMVPS_DATABASE_URL=f"sqlite:///{db}")
    ctx = Context(load_settings(env))
    try:
        setup.init(ctx)
    finally:
        ctx.close()
    assert mode(db) == 0o600


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    os.chmod(kernel, 0o600)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "adir"
    directory.mkdir()
    link_to_fifo = tmp_path / "link-to-fifo"
    link_to_fifo.symlink_to(fifo)
    link_to_dev = tmp_path / "link-to-null"
    link_to_dev.symlink_to("/dev/null")
    return {
        "kernel": kernel,
        "fifo": fifo,
        "dir": directory,
        "device": Path("/dev/null"),
        "link to a fifo": link_to_fifo,
        "link to a device": link_to_dev,
    }


def base_image(tmp_path: Path) -> Path:
    base = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    return base


@pytest.mark.parametrize("bad", ["fifo", "dir", "device", "link to a fifo", "link to a device"])
@pytest.mark.parametrize("option", ["--kernel", "--initrd"])
def test_image_add_refuses_what_is_not_a_regular_file(
    td_ctx: Context, tmp_path: Path, files: dict[str, Path], bad: str, option: str
) -> None:
    if td_ctx.settings.database_url:
        pytest.skip("files, not the database: one database is enough")
    base = base_image(tmp_path)
    before = snapshot(td_ctx)
    args = ["image", "add", "img1", str(base), option, str(files[bad])]
    if option == "--initrd":
        args += ["--kernel", str(files["kernel"])]
    result = run_cli(td_ctx, *args)  # returns at once: a FIFO is never waited on
    assert_one_line_error(result, 2)
    assert "regular file" in result.stderr or "directory" in result.stderr, result.stderr
    assert snapshot(td_ctx) == before
    assert not (td_ctx.settings.images_dir / "img1").exists() or not any(
        (td_ctx.settings.images_dir / "img1").iterdir()
    )


def test_image_add_never_widens_a_files_permissions(
    td_ctx: Context, tmp_path: Path, files: dict[str, Path]
) -> None:
    if td_ctx.settings.database_url:
        pytest.skip("files, not the database: one database is enough")
    base = base_image(tmp_path)
    os.chmod(base, 0o600)
    image = inventory.add_image(td_ctx, "img2", base, kernel=files["kernel"], cmdline="quiet")
    assert mode(base) == 0o600 and mode(files["kernel"]) == 0o600  # the originals as they were
    assert mode(Path(image.kernel_path)) == 0o644  # the store's copy, for QEMU to read
    assert Path(image.kernel_path).read_bytes() == b"kernel"
    # registering a file that is already the store's copy leaves its mode alone
    stored = Path(image.kernel_path)
    os.chmod(stored, 0o640)
    again = inventory.add_image(td_ctx, "img3", base, kernel=stored)
    assert mode(stored) == 0o640 and again.kernel_path != str(stored)


def test_the_service_refuses_a_fifo_base_image(td_ctx: Context, files: dict[str, Path]) -> None:
    if td_ctx.settings.database_url:
        pytest.skip("files, not the database: one database is enough")
    with pytest.raises(InvalidInput, match="is not a regular file"):
        inventory.add_image(td_ctx, "img4", files["fifo"])
