"""The object click passes to every command: lazily built services context."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import click

from kvmvps.db import schema_is_current
from kvmvps.errors import KvmvpsError
from kvmvps.services import Context
from kvmvps.services.audit import os_actor


@dataclass
class Obj:
    """What a command gets: its services context, built when first needed.

    A command the worker answers on its control socket runs on the worker's
    own context (already checked, and not ``owned``: it outlives the command).
    """

    debug: bool = False
    _ctx: Context | None = field(default=None, repr=False)
    _checked: bool = field(default=False, repr=False)
    owned: bool = True

    @property
    def ctx(self) -> Context:
        """The services context, for a machine where ``init`` has run."""
        ctx = self.raw_ctx
        if not self._checked and not schema_is_current(ctx.db):
            raise KvmvpsError(
                f"kvmvps is not initialised for {ctx.settings.effective_database_url} "
                "(or its schema is old); run 'kvmvps-admin init'"
            )
        self._checked = True
        return ctx

    @property
    def raw_ctx(self) -> Context:
        """The services context, without checking the database."""
        if self._ctx is None:
            self._ctx = Context.from_env()
        return self._ctx

    def close(self) -> None:
        if self._ctx is not None and self.owned:
            self._ctx.close()


COMMAND_KEY = "kvmvps.command"
_pass_obj = click.make_pass_decorator(Obj)
R = TypeVar("R")


def pass_obj(f: Callable[..., R]) -> Callable[..., R]:
    """click's pass decorator for :class:`Obj`; it also notes the command being run.

    The note (the command's click context, in ``ctx.meta``) lets the entry
    point name the command when it refuses it after parsing (a declined
    confirmation, a usage error raised by the command itself).
    """

    def noting(*args: object, **kwargs: object) -> R:
        current = click.get_current_context()
        current.meta[COMMAND_KEY] = current
        return f(*args, **kwargs)

    return _pass_obj(functools.update_wrapper(noting, f))


def actor() -> str:
    """Who runs the CLI, for the audit log and jobs: ``os:<user>``."""
    return os_actor()


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")


def simple_command(
    group: click.Group,
    name: str,
    action: Callable[..., object],
    done: str,
    help_text: str,
    argument: str = "name",
) -> click.Command:
    """A command that takes one name, calls ``action(ctx, name, actor=...)`` and says ``done``."""

    @group.command(name, help=help_text)
    @click.argument(argument)
    @pass_obj
    def command(obj: Obj, **kwargs: str) -> None:
        value = kwargs[argument]
        action(obj.ctx, value, actor=actor())
        click.echo(done.format(value))

    return command
