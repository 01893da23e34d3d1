"""The worker process: claims jobs and runs them until told to stop.

SIGTERM (or SIGINT) lets the current step finish, hands the job back to the
queue, and exits. A worker that dies without that (SIGKILL, a crash, a lost
machine) stops renewing its lease; any other worker then takes the job over:
it resumes it (every provisioning step is idempotent) or, once its attempts
are used up, rolls it back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid as uuidlib
from functools import partial
from types import FrameType

from sqlalchemy.exc import DBAPIError, OperationalError

from kvmvps.errors import KvmvpsError
from kvmvps.hypervisor import LifecycleWatch
from kvmvps.services import Context, expiry, inventory, jobs, provisioning, reconcile
from kvmvps.services import vps as vps_service
from kvmvps.services.jobs import MAX_ATTEMPTS, Claimed
from kvmvps.services.runner import run_claimed

log = logging.getLogger(__name__)


class Worker:
    """One worker loop over a services :class:`Context`."""

    def __init__(self, ctx: Context, name: str | None = None) -> None:
        self.ctx = ctx
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuidlib.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self._last_beat = 0.0
        self._last_reconcile = 0.0
        self._watches: list[LifecycleWatch] = []

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("worker %s: signal %d, stopping after the current step", self.name, signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def watch_events(self) -> None:
        """Follow libvirt's lifecycle events on every host, so drift shows at once."""
        for host in (h for h in inventory.list_hosts(self.ctx) if h.enabled):
            try:
                self._watches.append(LifecycleWatch(host.uri, partial(self._on_event, host.uri)))
            except KvmvpsError as exc:
                log.warning("no lifecycle events from %s: %s", host.name, exc)

    def _on_event(self, uri: str, domain: str) -> None:
        try:
            state = vps_service.sync_domain(self.ctx, uri, domain)
            if state:
                log.info("event: %s is now %s", domain, state)
        except Exception as exc:  # noqa: BLE001 - never kill the event thread
            log.warning("handling an event for %s failed: %s", domain, exc)

    def run(self, max_jobs: int | None = None) -> int:
        """Work until stopped (or ``max_jobs`` jobs ran); return how many ran."""
        ran, backoff = 0, 1.0
        log.info("worker %s started", self.name)
        while not self.stopping.is_set() and (max_jobs is None or ran < max_jobs):
            try:
                ran += self.tick()
                backoff = 1.0
            except (OperationalError, DBAPIError) as exc:
                log.warning(
                    "worker %s: database unavailable (%s); retrying in %.0f s",
                    self.name,
                    str(exc).splitlines()[0],
                    backoff,
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        self._goodbye()
        return ran

    def tick(self) -> int:
        """One round: heartbeat, recover dead workers' jobs, run one job. Jobs run: 0 or 1."""
        self._heartbeat()
        self.recover_expired()
        self._maybe_reconcile()
        claimed = jobs.claim(self.ctx, self.name)
        if claimed is None:
            self.stopping.wait(self.ctx.settings.worker_poll_seconds)
            return 0
        run_claimed(self.ctx, claimed, self.name, self.stopping.is_set)
        return 1

    def _heartbeat(self) -> None:
        """Show a sign of life; also queue deletes of VPSes whose time ran out."""
        if time.monotonic() - self._last_beat >= self.ctx.settings.worker_heartbeat_seconds:
            jobs.worker_heartbeat(self.ctx, self.name)
            for job in expiry.delete_expired(self.ctx):
                log.info("worker %s: queued delete %s of an expired VPS", self.name, job[:8])
            self._last_beat = time.monotonic()

    def _maybe_reconcile(self) -> None:
        interval = self.ctx.settings.reconcile_interval
        if interval <= 0 or time.monotonic() - self._last_reconcile < interval:
            return
        self._last_reconcile = time.monotonic()
        try:
            reconcile.run(self.ctx, fix=False, holder=self.name, wait=False)
        except KvmvpsError as exc:
            log.info("periodic reconcile skipped: %s", exc)

    def recover_expired(self) -> None:
        """Queue again, or roll back, the jobs of workers that stopped renewing leases."""
        for job in jobs.expired(self.ctx):
            if job.attempts < MAX_ATTEMPTS:
                if jobs.requeue_expired(self.ctx, job.id):
                    log.warning("job %s lost its worker; queued again", job.uuid[:8])
            elif jobs.take_over_expired(self.ctx, job.id, self.name):
                self._give_up(job)

    def _give_up(self, job: Claimed) -> None:
        log.error("job %s lost its worker %d times; rolling it back", job.uuid[:8], job.attempts)
        error = f"abandoned after {job.attempts} attempts whose workers died"
        if job.kind in jobs.BUILD_KINDS and job.vps_uuid:
            provisioning.abandon(self.ctx, job.vps_uuid, error)
        jobs.finish(self.ctx, job.id, self.name, error=error)

    def _goodbye(self) -> None:
        for watch in self._watches:
            watch.close()
        with contextlib.suppress(OperationalError, DBAPIError):
            jobs.worker_gone(self.ctx, self.name)
        log.info("worker %s stopped", self.name)
