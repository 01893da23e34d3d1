"""The object click passes to every command: lazily built services context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import click

from kvmvps.db import schema_is_current
from kvmvps.errors import KvmvpsError
from kvmvps.services import Context


@dataclass
class Obj:
    debug: bool = False
    _ctx: Context | None = field(default=None, repr=False)
    _checked: bool = field(default=False, repr=False)

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
        if self._ctx is not None:
            self._ctx.close()


pass_obj = click.make_pass_decorator(Obj)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")


def simple_command(
    group: click.Group,
    name: str,
    action: Callable[[Context, str], object],
    done: str,
    help_text: str,
    argument: str = "name",
) -> click.Command:
    """A command that takes one name, calls ``action(ctx, name)`` and says ``done``."""

    @group.command(name, help=help_text)
    @click.argument(argument)
    @pass_obj
    def command(obj: Obj, **kwargs: str) -> None:
        value = kwargs[argument]
        action(obj.ctx, value)
        click.echo(done.format(value))

    return command
