"""The ``kvmvps-admin`` entry point: global options and error handling."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from kvmvps.cli import (
    admin_cmds,
    forward_cmds,
    inventory_cmds,
    ops_cmds,
    serve_cmds,
    service_cmds,
    tenant_cmds,
    vps_cmds,
    vps_extra_cmds,
)
from kvmvps.cli.context import Obj
from kvmvps.cli.output import say
from kvmvps.db import schema_is_current
from kvmvps.errors import KvmvpsError
from kvmvps.services import audit

log = logging.getLogger(__name__)

# -- auditing -----------------------------------------------------------------
# Every command is audited except these read-only ones (dotted command paths).
READ_ONLY = frozenset(
    {
        "audit",
        "host.list",
        "host.show",
        "image.list",
        "jobs.list",
        "jobs.show",
        "network.list",
        "plan.list",
        "token.list",
        "user.list",
        "vps.console",
        "vps.list",
        "vps.show",
        "vps.xml",
        "vps.forward.list",
        "vps.http.list",
        "worker",  # a long-running process, not a change; its jobs carry their own actors
        "serve",  # likewise: the website audits its own actions
        "service.status",
        "service.supervise",  # the process a service runs, not a change
    }
)
# ...and these, unless the named flag is given.
READ_ONLY_UNLESS = {"reconcile": "fix"}
# Parameters never recorded, whatever they hold.
SECRET_PARAMS = frozenset({"password", "token", "secret"})
TARGET_OPTIONS = ("hostname", "name")
HELP_OPTIONS = ("-h", "--help")
_ARGS_KEY = "kvmvps.argv"
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command killed by SIGPIPE


@dataclass(frozen=True)
class Invocation:
    action: str
    target: str


def describe(root: click.Group, ctx: click.Context, args: list[str]) -> Invocation | None:
    """What a command line does, for the audit log; None when it changes nothing."""
    path: list[str] = []
    cmd: click.Command = root
    rest = list(args)
    while isinstance(cmd, click.Group):
        sub = cmd.get_command(ctx, rest[0]) if rest and not rest[0].startswith("-") else None
        if sub is None:
            return None  # no command, or a usage error click reports itself
        path.append(rest.pop(0))
        cmd = sub
    own_args = rest[: rest.index("--")] if "--" in rest else rest
    action = ".".join(path)
    if action in READ_ONLY or any(a in HELP_OPTIONS for a in own_args):
        return None
    params = _parse_quietly(cmd, path[-1], rest, ctx)
    flag = READ_ONLY_UNLESS.get(action)
    if flag is not None and not params.get(flag):
        return None
    return Invocation(action=action, target=_target(cmd, params))


def _parse_quietly(cmd: click.Command, name: str, args: list[str], parent: click.Context) -> dict:
    """The command's parameters, parsed without prompts, callbacks or errors."""
    try:
        with cmd.make_context(name, list(args), parent=parent, resilient_parsing=True) as sub:
            return dict(sub.params)
    except Exception:  # noqa: BLE001 - the real invocation reports bad usage
        return {}


def _target(cmd: click.Command, params: dict) -> str:
    """The first positional argument, else the --hostname or --name value."""
    names = [p.name for p in cmd.params if isinstance(p, click.Argument)][:1]
    names += [n for n in TARGET_OPTIONS if n not in names]
    for name in names:
        value = params.get(name)
        if name in SECRET_PARAMS or value in (None, "", ()):
            continue
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return ""


def record_invocation(
    root: click.Group, ctx: click.Context, result: str, detail: str | None = None
) -> None:
    """Audit the command that just ran; skipped silently before 'init' made the database."""
    args = ctx.meta.pop(_ARGS_KEY, None)
    obj = ctx.find_object(Obj)
    if args is None or obj is None:
        return
    try:
        invocation = describe(root, ctx, args)
        if invocation is None:
            return
        services = obj.raw_ctx
        if not schema_is_current(services.db):
            return
        audit.record(
            services, audit.os_actor(), invocation.action, invocation.target, result, detail
        )
    except KvmvpsError:
        return  # e.g. unreadable settings: the command has reported that already
    except Exception as exc:  # noqa: BLE001 - auditing must not turn success into failure
        log.warning("could not write the audit entry: %s", audit.error_message(exc))


class AdminGroup(click.Group):
    """Turns every failure into one line on stderr and a meaningful exit code.

    It also writes the audit entry of every command that may change state.
    """

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        ctx.meta[_ARGS_KEY] = list(args)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            value = super().invoke(ctx)
        except KvmvpsError as exc:
            record_invocation(self, ctx, audit.FAILED, str(exc))
            self._fail(ctx, str(exc), exc.exit_code)
        except BrokenPipeError:
            record_invocation(self, ctx, audit.OK)  # the work is done; only its output was cut
            raise
        except click.exceptions.Exit as exc:
            ok = exc.exit_code == 0
            record_invocation(
                self,
                ctx,
                audit.OK if ok else audit.FAILED,
                None if ok else f"exit status {exc.exit_code}",
            )
            raise
        except click.Abort:
            record_invocation(self, ctx, audit.FAILED, "aborted")
            raise
        except click.ClickException as exc:
            record_invocation(self, ctx, audit.FAILED, exc.format_message())
            raise
        except Exception as exc:  # noqa: BLE001 - never show a traceback unasked
            message = f"internal error: {type(exc).__name__}: {exc}"
            record_invocation(self, ctx, audit.FAILED, message)
            self._fail(ctx, message, 1)
        else:
            record_invocation(self, ctx, audit.OK)
            return value

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
    """The reader of our output went away (``| head``): end quietly, like other tools.

    stdout is pointed at /dev/null so Python's final flush has nowhere to fail.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
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
    ctx.obj = Obj(debug=debug)
    ctx.call_on_close(ctx.obj.close)


inventory_cmds.register(cli)
admin_cmds.register(cli)
vps_cmds.register(cli)
vps_extra_cmds.register(cli)
forward_cmds.register(cli)
ops_cmds.register(cli)
serve_cmds.register(cli)
tenant_cmds.register(cli)
service_cmds.register(cli)


def main() -> None:
    cli(prog_name="kvmvps-admin")
