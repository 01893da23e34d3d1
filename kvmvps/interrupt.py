"""Stopping long waits at a safe point.

A job runs in a thread of its worker. When the worker is told to stop, the
job must not sit out a five-minute guest shutdown or SSH wait: every such
wait sleeps through :func:`sleep`, which wakes early and raises
:class:`Interrupted` once the thread's stop condition (set with
:func:`stoppable`) holds. The job is then handed back to the queue and
resumed by the next worker; every step it may be in is idempotent.

Code that is not running a job (the CLI's own waits) has no stop condition
and sleeps as ``time.sleep`` would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

SLICE = 0.1  # seconds between looks at the stop condition

_should_stop: ContextVar[Callable[[], bool] | None] = ContextVar("kvmvps_should_stop", default=None)


class Interrupted(Exception):
    """Stop here and undo nothing: the worker is stopping (or lost the job)."""


@contextmanager
def stoppable(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Within this block, :func:`sleep` and :func:`check` obey ``should_stop``."""
    token = _should_stop.set(should_stop)
    try:
        yield
    finally:
        _should_stop.reset(token)


def check() -> None:
    """Raise :class:`Interrupted` if this thread's job should stop now."""
    should_stop = _should_stop.get()
    if should_stop is not None and should_stop():
        raise Interrupted("the worker is stopping")


def sleep(seconds: float) -> None:
    """``time.sleep``, cut short by :class:`Interrupted` when the job should stop."""
    end = time.monotonic() + max(0.0, seconds)
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(SLICE, left))
