"""Printing for people (aligned tables) and for programs (JSON).

Text that came from customers or guests (names, e-mails, audit entries, job
errors, console logs) may hold terminal control sequences; :func:`escape` is
the one place that turns them into visible escapes before they are printed.
JSON needs nothing: ``json.dumps`` writes control characters as ``\\uXXXX``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import click

from kvmvps import validation


def escape(text: str, keep: str = "") -> str:
    """``text`` safe for a terminal: control characters (but those in ``keep``) escaped."""
    return validation.printable(text, keep)


def say(text: str, err: bool = False) -> None:
    """Print one message line, escaped."""
    click.echo(escape(text), err=err)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as an aligned table with ``columns`` as headers."""
    rows = list(rows)
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    click.echo(
        "  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True)).rstrip()
    )
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def record(data: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """Print one object as ``key: value`` lines."""
    keys = keys or list(data)
    width = max(len(k) for k in keys)
    for key in keys:
        click.echo(f"{key.ljust(width)}  {_cell(data.get(key))}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return escape(",".join(str(v) for v in value)) or "-"
    return escape(str(value))
