"""Every bad order against the real libvirtd: a one-line error and nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmvps.services import Context
from tests.badinput import CASES, Case, assert_one_line_error, check_case, create_args, run_cli
from tests.snapshots import snapshot

pytestmark = pytest.mark.libvirt


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_order(fresh_ctx: Context, tmp_path: Path, case: Case) -> None:
    check_case(fresh_ctx, tmp_path, case)


def test_malformed_ssh_key_is_refused_before_anything(fresh_ctx: Context, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI-broken me@laptop\n")
    before = snapshot(fresh_ctx)
    result = run_cli(fresh_ctx, *create_args("small", "base", "web1", "--ssh-key", str(bad)))
    assert_one_line_error(result, 2, "SSH public key")
    assert snapshot(fresh_ctx) == before


def test_missing_ssh_key_file(fresh_ctx: Context, tmp_path: Path) -> None:
    before = snapshot(fresh_ctx)
    missing = str(tmp_path / "nope.pub")
    result = run_cli(fresh_ctx, *create_args("small", "base", "web1", "--ssh-key", missing))
    assert_one_line_error(result, 2, "does not exist")
    assert snapshot(fresh_ctx) == before


def test_duplicate_hostname_for_the_same_owner(fresh_ctx: Context) -> None:
    assert run_cli(fresh_ctx, *create_args()).exit_code == 0
    before = snapshot(fresh_ctx)
    assert_one_line_error(run_cli(fresh_ctx, *create_args()), 1, "already has a VPS named 'web1'")
    assert snapshot(fresh_ctx) == before
