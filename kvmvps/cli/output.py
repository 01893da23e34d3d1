"""Printing for people (aligned tables, progress bars) and for programs (JSON).

Text that came from customers or guests (names, e-mails, audit entries, job
errors, console logs) may hold terminal control sequences; :func:`escape` is
the one place that turns them into visible escapes before they are printed.
JSON needs nothing: ``json.dumps`` writes control characters as ``\\uXXXX``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import click

from kvmvps import validation

Progress = Callable[[str, int, int], None]


def escape(text: str, keep: str = "") -> str:
    """``text`` safe for a terminal: control characters (but those in ``keep``) escaped."""
    return validation.printable(text, keep)


def say(text: str, err: bool = False) -> None:
    """Print one message line, escaped."""
    click.echo(escape(text), err=err)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
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


def record(data: Mapping[str, Any], keys: Sequence[str] | None = None) -> None:
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


# -- following a job ---------------------------------------------------------
BAR_WIDTH = 24


class StepProgress:
    """Shows a job's steps on stderr: a bar on a terminal, else one plain line per step.

    Called as the services' progress callback ``(step, index, total)``: a job
    run here reports step ``index`` of ``total``; a job followed from another
    worker reports its percentage with ``total`` 100.
    """

    def __init__(self, stream: TextIO | None = None, bar: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.steps: list[str] = []
        self._drawn = False

    def __call__(self, step: str, index: int, total: int) -> None:
        if self.steps and self.steps[-1] == step:
            return
        self.steps.append(step)
        percent = int(100 * index / max(total, 1))
        if not self.bar:
            self.stream.write(f"  step {step} ({percent}%)\n")
        else:
            self._draw(percent, step)
        self.stream.flush()

    def _draw(self, percent: int, label: str) -> None:
        filled = BAR_WIDTH * percent // 100
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r\x1b[K  [{bar}] {percent:3d}%  {label}")
        self._drawn = True

    def close(self, ok: bool) -> None:
        """End the bar: full and 'done' on success, left where it stopped otherwise."""
        if not self._drawn:
            return
        if ok:
            self._draw(100, "done")
        self.stream.write("\n")
        self.stream.flush()


@contextmanager
def job_progress(quiet: bool = False) -> Iterator[Progress | None]:
    """The progress callback for a command that follows a job (None when quiet, e.g. --json)."""
    if quiet:
        yield None
        return
    shown = StepProgress()
    ok = False
    try:
        yield shown
        ok = True
    finally:
        shown.close(ok)
