"""A huge number in any numeric option of kvmvps-admin: a one-line error, nothing changed."""

from __future__ import annotations

import pytest

from kvmvps.services import Context, provisioning
from tests.badinput import assert_one_line_error, run_cli
from tests.snapshots import snapshot

HUGE = ["1" + "0" * 30, str(2**63), str(-(2**63))]
FLOATS = ["1e999", "nan", "-inf"]

# every numeric option or argument of the CLI, as a command line with N for the number
COMMANDS = [
    "token revoke N",
    "audit --limit N",
    "jobs list --limit N",
    "plan add p1 --vcpus N --memory-mib 64 --disk-gib 1",
    "plan add p1 --vcpus 1 --memory-mib N --disk-gib 1",
    "plan add p1 --vcpus 1 --memory-mib 64 --disk-gib N",
    "plan add p1 --vcpus 1 --memory-mib 64 --disk-gib 1 --price-cents N",
    "plan add p1 --vcpus 1 --memory-mib 64 --disk-gib 1 --extra-forwards N",
    "plan add p1 --vcpus 1 --memory-mib 64 --disk-gib 1 --transfer-gib N",
    "vps forward add web1 --guest-port N",
    "vps forward remove web1 N",
    "vps shutdown web1 --timeout N",
    "serve --port N",
    "serve --workers N",
    "serve --threads N",
    "worker --max-jobs -1",
]


@pytest.fixture
def with_vps(td_ctx: Context) -> Context:
    provisioning.record_order(
        td_ctx, provisioning.OrderRequest("small", "base", "web1"), actor="test"
    )
    return td_ctx


@pytest.mark.parametrize("command", COMMANDS)
def test_huge_numbers_are_one_line_errors(with_vps: Context, command: str) -> None:
    ctx = with_vps
    numbers = HUGE + (FLOATS if "--timeout" in command else [])
    before = snapshot(ctx)
    for number in numbers:
        result = run_cli(ctx, *[number if a == "N" else a for a in command.split()])
        assert result.exit_code in (1, 2), (command, number, result.stdout)
        assert_one_line_error(result, result.exit_code)
        assert "internal error" not in result.stderr, result.stderr
    assert snapshot(ctx) == before
