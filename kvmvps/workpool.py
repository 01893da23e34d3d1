"""A small pool of job threads for one worker process.

The worker's main thread claims jobs (the database decides which may run:
never two for one VPS, at most the build limit per host) and hands each to
a thread of its own here, up to ``size`` at once. The main thread stays
free for heartbeats, lease recovery and reconcile while jobs run.

Each job thread opens its own database sessions (``Database.session()``
makes a new one per call) and shares the process's libvirt connection per
host, which libvirt allows from many threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class JobPool:
    """Up to ``size`` jobs running at once, each in its own thread."""

    def __init__(self, size: int, name: str = "job") -> None:
        if size < 1:
            raise ValueError("a job pool needs at least one thread")
        self.size, self.name = size, name
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.changed = threading.Event()  # set whenever a job ends: a slot is free

    def free(self) -> int:
        """How many more jobs may start now."""
        with self._lock:
            self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
            return self.size - len(self._threads)

    def running(self) -> list[str]:
        """The keys of the jobs still running."""
        self.free()
        with self._lock:
            return list(self._threads)

    def start(self, key: str, work: Callable[[], None]) -> None:
        """Run ``work`` in a new thread; ``key`` names the job (e.g. its uuid)."""
        thread = threading.Thread(
            target=self._run, args=(key, work), name=f"{self.name}-{key[:8]}", daemon=True
        )
        with self._lock:
            self._threads[key] = thread
        self.changed.clear()
        thread.start()

    def _run(self, key: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:
            log.exception("job %s: its thread crashed", key[:8])
        finally:
            self.changed.set()

    def wait_for_slot(self, timeout: float) -> None:
        """Sleep until a job ends or ``timeout`` passes."""
        if self.free() == 0:
            self.changed.wait(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every job to end; False if some still run after ``timeout``."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in threads)
