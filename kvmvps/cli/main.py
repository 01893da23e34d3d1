"""The ``kvmvps-admin`` entry point: global options and error handling."""

from __future__ import annotations

import logging
import sys
import traceback

import click

from kvmvps.cli import inventory_cmds, ops_cmds, vps_cmds
from kvmvps.cli.context import Obj
from kvmvps.errors import KvmvpsError


class AdminGroup(click.Group):
    """Turns every failure into one line on stderr and a meaningful exit code."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        try:
            return super().invoke(ctx)
        except KvmvpsError as exc:
            self._fail(ctx, str(exc), exc.exit_code)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - never show a traceback unasked
            self._fail(ctx, f"internal error: {type(exc).__name__}: {exc}", 1)

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # noqa: ANN002, ANN003, ANN201
        """Like click's, but usage errors are one line too: ``error: ...``."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        obj = ctx.find_object(Obj)
        if obj is not None and obj.debug:
            traceback.print_exc()
        click.echo(f"error: {message}", err=True)
        ctx.exit(code)


@click.group(cls=AdminGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Manage kvmvps: VPSes, plans, images, networks and hosts.

    \b
    First steps on a fresh host:
      kvmvps-admin init
      kvmvps-admin image build-tiny tiny
      kvmvps-admin plan add small --vcpus 1 --memory-mib 256 --disk-gib 1
      kvmvps-admin vps create --plan small --image tiny --hostname web1 --json

    Settings come from KVMVPS_* environment variables or the TOML file named
    by KVMVPS_CONFIG (see the README).
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = Obj(debug=debug)
    ctx.call_on_close(ctx.obj.close)


inventory_cmds.register(cli)
vps_cmds.register(cli)
ops_cmds.register(cli)


def main() -> None:
    cli(prog_name="kvmvps-admin")
