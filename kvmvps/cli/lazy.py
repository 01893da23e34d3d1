"""Command groups that import a command's module only when that command runs.

``kvmvps-admin vps list`` needs the database and the VPS queries, not
Alembic, paramiko, libvirt, Jinja2 or the website's modules that other
commands use. A group's commands live in a :class:`LazyCommands` mapping:
click looks a command up with ``get(name)``, which imports only the module
that registers that name (``name in`` imports nothing); anything that walks all commands (``--help``,
shell completion, the tests' walk over every command) imports every module.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping

import click


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's commands; names in ``sources`` are added by importing their module.

    ``sources`` maps a command name to the module whose ``register(group)``
    adds it (one module may add several names).
    """

    def __init__(self, group: click.Group, sources: dict[str, str]) -> None:
        self._group = group
        self._sources = dict(sources)
        self._loaded: dict[str, click.Command] = {}

    def _load(self, module: str) -> None:
        for name in [n for n, m in self._sources.items() if m == module]:
            del self._sources[name]
        importlib.import_module(module).register(self._group)

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded and name in self._sources:
            self._load(self._sources[name])
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._sources.pop(name, None)
        del self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in self._sources

    def __iter__(self) -> Iterator[str]:
        while self._sources:  # every command is wanted: import every module
            self._load(next(iter(self._sources.values())))
        return iter(dict(self._loaded))

    def __len__(self) -> int:
        return len(set(self._loaded) | set(self._sources))


def make_lazy(group: click.Group, sources: dict[str, str]) -> click.Group:
    """Give ``group`` lazily loaded commands (keeping those it has); returns the group."""
    commands = LazyCommands(group, sources)
    commands.update(group.commands)
    group.commands = commands
    return group
