"""The ``kvmvps-admin`` entry point: global options and error handling."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from kvmvps.cli.context import COMMAND_KEY, Obj, actor
from kvmvps.cli.fastpath import EXIT_BROKEN_PIPE, silence_stdout
from kvmvps.cli.lazy import make_lazy
from kvmvps.cli.output import say
from kvmvps.db import schema_is_current
from kvmvps.errors import KvmvpsError
from kvmvps.services import Context, audit

log = logging.getLogger(__name__)

# -- auditing -----------------------------------------------------------------
# Every state-changing service call records its own audit entry, with the
# actor the CLI passes (os:<user>). The CLI records only what the services
# never see: a command that a service audits, refused before the call (a
# usage error, a declined confirmation).
SECRET_PARAMS = frozenset({"password", "token", "secret"})
TARGET_OPTIONS = ("hostname", "name")


def _target(cmd: click.Command, params: dict[str, Any]) -> str:
    """The first positional argument, else the --hostname or --name value."""
    names = [p.name for p in cmd.params if isinstance(p, click.Argument) and p.name][:1]
    names += [n for n in TARGET_OPTIONS if n not in names]
    for name in names:
        value = params.get(name)
        if name in SECRET_PARAMS or value in (None, "", ()):
            continue
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return ""


def record_refusal(root: click.Context, command: click.Context | None, detail: str) -> None:
    """Audit a refused command (if a service audits it); skipped before 'init' made the database."""
    command = command or root.meta.get(COMMAND_KEY)
    obj = root.find_object(Obj)
    if command is None or obj is None:
        return
    action = ".".join(command.command_path.split()[1:])
    if action not in audit.ACTIONS:
        return
    try:
        services = obj.raw_ctx
        if schema_is_current(services.db):
            target = _target(command.command, command.params)
            audit.record_refusal(services, actor(), action, target, detail)
    except KvmvpsError:
        return  # e.g. unreadable settings: the command has reported that already
    except Exception as exc:  # noqa: BLE001 - auditing must not turn one failure into another
        log.warning("could not write the audit entry: %s", audit.error_message(exc))


class AdminGroup(click.Group):
    """Turns every failure into one line on stderr and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KvmvpsError as exc:
            self._fail(ctx, str(exc), exc.exit_code)
        except BrokenPipeError:
            raise  # the work is done (and audited by its service); only its output was cut
        except click.exceptions.Exit:
            raise  # --help, or a command's own exit status
        except click.Abort:
            record_refusal(ctx, None, "aborted")
            raise
        except click.ClickException as exc:
            record_refusal(ctx, getattr(exc, "ctx", None), exc.format_message())
            raise
        except Exception as exc:  # noqa: BLE001 - never show a traceback unasked
            self._fail(ctx, f"internal error: {type(exc).__name__}: {exc}", 1)
        return None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Like click's, but usage errors are one line too: ``error: ...``."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **kwargs)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        except BrokenPipeError:
            _quiet_broken_pipe()
        except click.ClickException as exc:
            hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
            say(f"error: {exc.format_message()}{hint}", err=True)
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
        say(f"error: {message}", err=True)
        ctx.exit(code)


def _quiet_broken_pipe() -> NoReturn:
    """The reader of our output went away (``| head``): end quietly, like other tools."""
    silence_stdout()
    sys.exit(EXIT_BROKEN_PIPE)


@click.group(cls=AdminGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Manage kvmvps: VPSes, plans, images, networks, hosts, users and the audit log.

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
    # the worker's control socket hands its own, checked context (kvmvps.cli.control)
    shared = ctx.obj if isinstance(ctx.obj, Context) else None
    ctx.obj = Obj(debug=debug, _ctx=shared, _checked=shared is not None, owned=shared is None)
    ctx.call_on_close(ctx.obj.close)


# Each top-level command and the module that registers it: a command imports
# its own module only, so read-only commands start fast (kvmvps.cli.lazy).
COMMAND_MODULES = {
    **dict.fromkeys(("init", "image", "plan", "network"), "kvmvps.cli.inventory_cmds"),
    **dict.fromkeys(("user", "token", "audit", "host"), "kvmvps.cli.admin_cmds"),
    "vps": "kvmvps.cli.vps_cmds",
    **dict.fromkeys(("jobs", "worker", "reconcile"), "kvmvps.cli.ops_cmds"),
    "serve": "kvmvps.cli.serve_cmds",
    **dict.fromkeys(("service", "demo"), "kvmvps.cli.service_cmds"),
}
make_lazy(cli, COMMAND_MODULES)


def main() -> None:
    cli(prog_name="kvmvps-admin")
