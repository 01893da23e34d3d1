"""The worker process: claims jobs and runs them until told to stop.

It runs up to ``KVMVPS_WORKER_CONCURRENCY`` jobs at once, each in a thread of
its own (:mod:`kvmvps.workpool`); the claim query keeps two jobs of one VPS
apart and holds the per-host build limit. The main thread keeps the
heartbeat, lease recovery and reconcile going meanwhile.

SIGTERM (or SIGINT) stops every running job at its next safe point (between
steps, or inside a long wait such as a guest shutdown or an SSH wait), hands
each back to the queue, and exits. A worker that dies without that (SIGKILL,
a crash, a lost machine) stops renewing its leases; any other worker then
takes its jobs over: it resumes each (every provisioning step is idempotent)
or, once its attempts are used up, rolls it back.
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
from kvmvps.services import (
    Context,
    allowance,
    backups,
    claims,
    expiry,
    imagetest,
    inventory,
    jobs,
    metering,
    reconcile,
)
from kvmvps.services import vps as vps_service
from kvmvps.services.jobs import Claimed
from kvmvps.services.runner import recover_expired, run_claimed
from kvmvps.workpool import JobPool

log = logging.getLogger(__name__)


class Worker:
    """One worker loop over a services :class:`Context`."""

    def __init__(self, ctx: Context, name: str | None = None) -> None:
        self.ctx = ctx
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuidlib.uuid4().hex[:6]}"
        if ctx.settings.agent_host:
            self.name = jobs.agent_worker_name(ctx.settings.agent_host, self.name)
        self.stopping = threading.Event()
        self._last_beat = 0.0
        self._last_reconcile = 0.0
        self._last_sample = 0.0
        self._last_image_round = 0.0
        self._watches: list[LifecycleWatch] = []
        self.pool = JobPool(max(1, ctx.settings.worker_concurrency))

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("worker %s: signal %d, handing its jobs back", self.name, signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def watch_events(self) -> None:
        """Follow libvirt's lifecycle events on every host (an agent: its own), so drift shows."""
        agent = self.ctx.settings.agent_host
        for host in inventory.list_hosts(self.ctx):
            if not host.enabled or (agent and host.name != agent):
                continue
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
                ran += self.round(None if max_jobs is None else max_jobs - ran)
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
        self._finish_running()
        self._goodbye()
        return ran

    def tick(self) -> int:
        """One round, and wait for the jobs it started to end; return how many ran."""
        started = self.round()
        self.pool.join()
        return started

    def round(self, limit: int | None = None) -> int:
        """Heartbeat, recover dead workers' jobs, start jobs in the free slots.

        Returns how many jobs it started (at most ``limit``) without waiting
        for them; waits a little when it started none.
        """
        self._heartbeat()
        self.recover_expired()
        self._maybe_reconcile()
        self._maybe_sample()
        self._heartbeat()  # a pass over a slow remote host must not make the worker look dead
        started = 0
        while self.pool.free() > 0 and (limit is None or started < limit):
            if self.stopping.is_set():
                break
            claimed = claims.claim(self.ctx, self.name)
            if claimed is None:
                break
            self.pool.start(claimed.uuid, partial(self._run_job, claimed))
            started += 1
        if started == 0:
            poll = self.ctx.settings.worker_poll_seconds
            if self.pool.free() == 0:
                self.pool.wait_for_slot(poll)
            else:
                self.stopping.wait(poll)
        return started

    def _run_job(self, claimed: Claimed) -> None:
        run_claimed(self.ctx, claimed, self.name, self.stopping.is_set)

    def _finish_running(self) -> None:
        """Wait for the running jobs: they end, or (stopping) hand themselves back."""
        while not self.pool.join(timeout=self.ctx.settings.worker_heartbeat_seconds):
            with contextlib.suppress(OperationalError, DBAPIError):
                jobs.worker_heartbeat(self.ctx, self.name)  # still alive while they wind down

    def _heartbeat(self) -> None:
        """Show a sign of life; also queue deletes of VPSes whose time ran out, and backups due."""
        if time.monotonic() - self._last_beat >= self.ctx.settings.worker_heartbeat_seconds:
            jobs.worker_heartbeat(self.ctx, self.name)
            for job in expiry.delete_expired(self.ctx):
                log.info("worker %s: queued delete %s of an expired VPS", self.name, job[:8])
            for job in backups.run_schedule(self.ctx):
                log.info("worker %s: queued scheduled backup %s", self.name, job[:8])
            self._maybe_test_images()
            self._last_beat = time.monotonic()

    def _maybe_test_images(self) -> None:
        """Each minute: clean up after dead image tests, queue the tests that are due."""
        if self.ctx.settings.agent_host or time.monotonic() - self._last_image_round < 60:
            return
        self._last_image_round = time.monotonic()
        try:
            for job in imagetest.schedule(self.ctx):
                log.info("worker %s: queued image test %s", self.name, job[:8])
        except KvmvpsError as exc:
            log.info("image tests not scheduled: %s", exc)

    def _maybe_reconcile(self) -> None:
        interval = self.ctx.settings.reconcile_interval
        if interval <= 0 or time.monotonic() - self._last_reconcile < interval:
            return
        self._last_reconcile = time.monotonic()
        try:
            report = reconcile.run(
                self.ctx, fix=False, holder=self.name, wait=False, incremental=True
            )
        except KvmvpsError as exc:
            log.info("periodic reconcile skipped: %s", exc)
            return
        metering.set_gauges(self.ctx, reconcile.drift_counts(report))

    def _maybe_sample(self) -> None:
        """Usage samples of every running VPS, then the monthly transfer's consequences."""
        interval = self.ctx.settings.metrics_interval
        if interval <= 0 or time.monotonic() - self._last_sample < interval:
            return
        self._last_sample = time.monotonic()
        try:
            report = metering.sample(self.ctx)
            metering.prune(self.ctx)
        except KvmvpsError as exc:
            log.info("usage sampling skipped: %s", exc)
            return
        log.debug("sampled %d VPSes in %.2f s", report.vps, report.seconds)
        try:
            held = allowance.enforce(self.ctx)
        except KvmvpsError as exc:
            log.warning("transfer allowance round failed: %s", exc)
            return
        for problem in held.errors:
            log.warning("transfer allowance: %s", problem)

    def recover_expired(self) -> None:
        """Queue again, or roll back, the jobs of workers that stopped renewing leases."""
        recover_expired(self.ctx, self.name)

    def _goodbye(self) -> None:
        for watch in self._watches:
            watch.close()
        with contextlib.suppress(OperationalError, DBAPIError):
            jobs.worker_gone(self.ctx, self.name)
        log.info("worker %s stopped", self.name)
