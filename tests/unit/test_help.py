"""Every ``--help`` reads cleanly: no literal ``\\b`` (click's no-rewrap marker)."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from kvmvps.cli.main import cli


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every command and group under ``group``, the group itself first."""
    yield prefix
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if isinstance(sub, click.Group):
            yield from command_paths(sub, (*prefix, name))
        elif sub is not None:
            yield (*prefix, name)


PATHS = list(command_paths(cli))


def test_the_walk_sees_every_command() -> None:
    assert ("jobs",) in PATHS and ("jobs", "list") in PATHS and ("vps", "create") in PATHS
    assert len(PATHS) > 50


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "kvmvps-admin")
def test_help_has_no_literal_escape(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert "\\b" not in result.stdout and "\b" not in result.stdout, result.stdout
