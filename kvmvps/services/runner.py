"""Running one claimed job: the work for its kind, a renewed lease, a clean end."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from kvmvps import interrupt, logs
from kvmvps.errors import HypervisorUnavailable, KvmvpsError, NotFound
from kvmvps.interrupt import Interrupted
from kvmvps.models import Host, Job, JobState, Vps, VpsState
from kvmvps.services import (
    Context,
    backup_work,
    backups,
    claims,
    credentials,
    forwards,
    hostwait,
    imagetest,
    jobs,
    migration_work,
    provisioning,
    rescue,
    snapshots,
    vps_extra,
)
from kvmvps.services import vps as vps_service
from kvmvps.services.jobs import Claimed, JobView

log = logging.getLogger(__name__)

Handler = Callable[[Context, Claimed, "JobControl"], object]
Progress = Callable[[str, int, int], None]


class JobControl:
    """What a running job may ask of its worker: stop?, report progress, time left."""

    def __init__(
        self,
        ctx: Context,
        claimed: Claimed,
        worker: str,
        should_stop: Callable[[], bool],
        on_progress: Progress | None = None,
    ) -> None:
        self.ctx, self.claimed, self.worker = ctx, claimed, worker
        self._should_stop, self._on_progress = should_stop, on_progress
        self.lost = threading.Event()
        spent = (datetime.now(UTC) - claimed.started_at).total_seconds()
        self.deadline = time.monotonic() + ctx.settings.build_timeout - max(0.0, spent)

    def should_stop(self) -> bool:
        """The worker is stopping, or another worker took the job over."""
        return self._should_stop() or self.lost.is_set()

    def checkpoint(self) -> None:
        """Between steps: stop if the worker is stopping or lost the job."""
        if self.should_stop():
            raise Interrupted("the worker is stopping")

    def progress(self, step: str, index: int, total: int) -> None:
        jobs.set_step(self.ctx, self.claimed.id, step, int(100 * index / max(total, 1)))
        if self._on_progress is not None:
            self._on_progress(step, index, total)


def _vps(c: Claimed) -> str:
    """The uuid of the job's VPS: every kind of job has one."""
    if c.vps_uuid is None:
        raise NotFound(f"job {c.uuid[:8]} names no VPS")
    return c.vps_uuid


def _create(ctx: Context, c: Claimed, jc: JobControl) -> None:
    backup = c.params.get("backup")
    provisioning.build(
        ctx,
        _vps(c),
        jc.progress,
        checkpoint=jc.checkpoint,
        deadline=jc.deadline,
        backup=str(backup) if backup else None,
    )


def _reinstall(ctx: Context, c: Claimed, jc: JobControl) -> None:
    provisioning.reinstall(
        ctx,
        _vps(c),
        c.params.get("image"),
        jc.progress,
        checkpoint=jc.checkpoint,
        deadline=jc.deadline,
    )


def _shutdown(ctx: Context, c: Claimed, jc: JobControl) -> None:
    if vps_service.sync_state(ctx, _vps(c))["state"] == VpsState.STOPPED:
        return  # a resumed job: the guest powered off after the last worker handed it back
    vps_service.shutdown(
        ctx,
        _vps(c),
        timeout=float(c.params.get("timeout", 60)),
        force=bool(c.params.get("force", False)),
    )


def _delete(ctx: Context, c: Claimed, jc: JobControl) -> None:
    with contextlib.suppress(NotFound):  # deleted already (a resumed job)
        provisioning.delete(ctx, _vps(c))
    if c.params.get("drop_backups"):
        backups.drop_all(ctx, _vps(c))


def _backup(ctx: Context, c: Claimed, jc: JobControl) -> None:
    backup_work.run_backup(ctx, _vps(c), str(c.params.get("backup", "")), jc.progress)


def _restore(ctx: Context, c: Claimed, jc: JobControl) -> None:
    backup_work.run_restore(ctx, _vps(c), str(c.params.get("backup", "")))


def _snapshot_job(action: Callable[[Context, str, str], None]) -> Handler:
    return lambda ctx, c, jc: action(ctx, _vps(c), str(c.params.get("snapshot", "")))


def _suspend(ctx: Context, c: Claimed, jc: JobControl) -> None:
    """Pause the guest; for an operator's suspension (``hold``), only if it runs."""
    if c.params.get("hold"):
        vps_service.settle(ctx, _vps(c))
    else:
        vps_service.suspend(ctx, _vps(c))


def _resume(ctx: Context, c: Claimed, jc: JobControl) -> None:
    """Resume the guest; after a suspension is lifted (``hold``), only if it is paused."""
    if c.params.get("hold"):
        vps_service.unsettle(ctx, _vps(c))
    else:
        vps_service.resume(ctx, _vps(c))


def _edge(ctx: Context, c: Claimed, jc: JobControl) -> None:
    """Rewrite the host's iptables rules and proxy from the database (its agent runs this)."""
    with ctx.db.session() as s:
        host = s.get(Host, c.host_id) if c.host_id is not None else None
    if host is None:
        raise NotFound(f"job {c.uuid[:8]} names no host")
    forwards.sync(ctx, host)


def _rescue(ctx: Context, c: Claimed, jc: JobControl) -> None:
    image = c.params.get("image")
    if not isinstance(image, str):
        raise NotFound(f"job {c.uuid[:8]} names no rescue image")
    rescue.enter(ctx, _vps(c), image, checkpoint=jc.checkpoint, progress=jc.progress)


def _image_test(ctx: Context, c: Claimed, jc: JobControl) -> None:
    test = c.params.get("test")
    if not isinstance(test, str):
        raise NotFound(f"job {c.uuid[:8]} names no image test")
    imagetest.run(ctx, test, lambda job: follow_here(ctx, job), jc.progress)


def follow_here(ctx: Context, job_uuid: str) -> None:
    """Run a job in this thread (or, if another holds it, wait for it); raise if it fails.

    For a job that runs others (an image test): no worker slot is needed.
    """
    if not run_inline(ctx, job_uuid):
        run_or_follow(ctx, job_uuid, timeout=ctx.settings.build_timeout)
        return
    view = jobs.get_job(ctx, job_uuid)
    if view["state"] == JobState.FAILED:
        raise JobFailed(view["error"] or "the job failed")


def _resize(ctx: Context, c: Claimed, jc: JobControl) -> None:
    plan = c.params.get("plan")
    if not isinstance(plan, str):
        raise NotFound(f"job {c.uuid[:8]} names no plan")
    vps_extra.resize(ctx, _vps(c), plan, job=c.uuid)


def _migrate(ctx: Context, c: Claimed, jc: JobControl) -> None:
    to = c.params.get("to")
    if not isinstance(to, str):
        raise NotFound(f"job {c.uuid[:8]} names no target host")
    live = bool(c.params.get("live"))
    migration_work.run(ctx, _vps(c), to, live, checkpoint=jc.checkpoint, progress=jc.progress)


def _simple(action: Callable[[Context, str], object]) -> Handler:
    return lambda ctx, c, jc: action(ctx, _vps(c))


HANDLERS: dict[str, Handler] = {
    "create": _create,
    "reinstall": _reinstall,
    "shutdown": _shutdown,
    "delete": _delete,
    "start": _simple(vps_service.start),
    "destroy": _simple(vps_service.destroy),
    "reboot": _simple(vps_service.reboot),
    "suspend": _suspend,
    "resume": _resume,
    "password_reset": _simple(credentials.apply_password_reset),
    "edge": _edge,
    "rescue": _rescue,
    "unrescue": _simple(rescue.leave),
    "backup": _backup,
    "restore": _restore,
    "image_test": _image_test,
    "snapshot": _snapshot_job(snapshots.run_create),
    "snapshot_revert": _snapshot_job(snapshots.run_revert),
    "snapshot_delete": _snapshot_job(snapshots.run_delete),
    "resize": _resize,
    "migrate": _migrate,
}


# jobs that are simply run again once their host answers (a build waits step by step)
WAITS_FOR_HOST = frozenset(
    ("start", "destroy", "reboot", "shutdown", "suspend", "resume", "edge", "unrescue")
)


def _handle(ctx: Context, claimed: Claimed, jc: JobControl) -> None:
    """Run the job's handler; while its host does not answer, wait (KVMVPS_HOST_WAIT)."""
    handler = HANDLERS[claimed.kind]
    if claimed.kind not in WAITS_FOR_HOST or claimed.host_id is None:
        handler(ctx, claimed, jc)
        return
    until = hostwait.limit(ctx, jc.deadline)
    while True:
        try:
            handler(ctx, claimed, jc)
            return
        except HypervisorUnavailable as exc:
            with ctx.db.reading() as s:
                host = s.get(Host, claimed.host_id)
                name, uri = (host.name, host.uri) if host is not None else ("?", "")
            if not uri or not hostwait.wait_for(ctx.hypervisor(uri), until):
                raise HypervisorUnavailable(
                    f"host {name} did not answer for {ctx.settings.host_wait:g} s: {exc}"
                ) from None


def _keep_lease(ctx: Context, jc: JobControl, done: threading.Event) -> None:
    interval = max(0.5, ctx.settings.job_lease_seconds / 3)
    while not done.wait(interval):
        try:
            if not jobs.renew_lease(ctx, jc.claimed.id, jc.worker):
                jc.lost.set()
                return
        except Exception as exc:  # noqa: BLE001 - a DB blip: try again next round
            log.warning("renewing the lease of job %s failed: %s", jc.claimed.uuid, exc)


def run_claimed(
    ctx: Context,
    claimed: Claimed,
    worker: str,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Progress | None = None,
) -> None:
    """Run a job this worker claimed; finish, fail or hand it back (one log line each)."""
    with logs.job_context(job_tag(ctx, claimed)):
        logs.event(log, "claimed", f"claimed by {worker}", worker=worker, attempt=claimed.attempts)
        started = time.monotonic()
        error = _run_handler(ctx, claimed, worker, should_stop, on_progress)
        seconds = round(time.monotonic() - started, 3)
        if error is None:
            logs.event(log, "finished", f"finished in {seconds:.1f} s", seconds=seconds)
        elif error:
            logs.event(
                log,
                "failed",
                f"failed after {seconds:.1f} s: {error}",
                logging.ERROR,
                seconds=seconds,
                error=error,
            )


def job_tag(ctx: Context, claimed: Claimed) -> logs.JobTag:
    """The job's id, kind and its VPS's hostname, for the log."""
    hostname = None
    if claimed.vps_uuid:
        with ctx.db.session() as s:
            hostname = s.scalar(select(Vps.hostname).where(Vps.uuid == claimed.vps_uuid))
    return logs.JobTag(job=claimed.uuid, kind=claimed.kind, hostname=hostname)


def _run_handler(
    ctx: Context,
    claimed: Claimed,
    worker: str,
    should_stop: Callable[[], bool],
    on_progress: Progress | None,
) -> str | None:
    """Run the job's handler and record its end: None (done), its error, or "" (handed back)."""
    jc = JobControl(ctx, claimed, worker, should_stop, on_progress)
    done = threading.Event()
    keeper = threading.Thread(target=_keep_lease, args=(ctx, jc, done), daemon=True)
    keeper.start()
    error: str | None = None
    try:
        with interrupt.stoppable(jc.should_stop):
            _handle(ctx, claimed, jc)
    except Interrupted:
        if not jc.lost.is_set():
            jobs.release(ctx, claimed.id, worker)
        logs.event(log, "released", "handed back to the queue (the worker is stopping)")
        error = ""
    except KvmvpsError as exc:
        error = str(exc)
    except Exception as exc:
        log.exception("job %s crashed", claimed.uuid)
        error = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        done.set()
        keeper.join()
    if error != "":
        claims.finish(ctx, claimed.id, worker, error=error)
    return error


def inline_worker_name() -> str:
    return f"{INLINE_PREFIX}{socket.gethostname()}:{os.getpid()}"


INLINE_PREFIX = "inline:"
STALL_SECONDS = 3.0  # a command waiting on nothing says so within this long


def run_inline(ctx: Context, job_uuid: str, progress: Progress | None = None) -> bool:
    """Run one queued job in this process; False if it cannot be claimed now."""
    with ctx.db.session() as s:
        job_id = s.scalar(select(Job.id).where(Job.uuid == job_uuid))
    claimed = claims.claim(ctx, inline_worker_name(), only_id=job_id)
    if claimed is None:
        return False
    run_claimed(ctx, claimed, inline_worker_name(), on_progress=progress)
    return True


# -- jobs whose worker died --------------------------------------------------
def recover_expired(ctx: Context, holder: str) -> None:
    """Queue again, or roll back, the jobs of workers that stopped renewing leases."""
    for job in jobs.expired(ctx):
        if job.attempts < jobs.MAX_ATTEMPTS:
            if jobs.requeue_expired(ctx, job.id):
                log.warning("job %s lost its worker; queued again", job.uuid[:8])
        elif jobs.take_over_expired(ctx, job.id, holder):
            _give_up(ctx, job, holder)


def _give_up(ctx: Context, job: Claimed, holder: str) -> None:
    log.error("job %s lost its worker %d times; rolling it back", job.uuid[:8], job.attempts)
    error = f"abandoned after {job.attempts} attempts whose workers died"
    if job.kind in jobs.BUILD_KINDS and job.vps_uuid:
        provisioning.abandon(ctx, job.vps_uuid, error)
    if job.kind == "image_test" and isinstance(job.params.get("test"), str):
        imagetest.abandon(ctx, job.params["test"], error)
    claims.finish(ctx, job.id, holder, error=error)


# -- waiting for a job -------------------------------------------------------
class JobFailed(KvmvpsError):
    """A job ended in failure; the message is the job's error."""


class NoWorker(KvmvpsError):
    """Nothing moves the job: no worker runs, and this command cannot run it either."""


@dataclass(frozen=True)
class _Head:
    """The oldest unfinished job of a VPS: the one that must run next."""

    id: int
    uuid: str
    kind: str
    state: str
    worker: str | None
    lease_expires_at: datetime | None

    @property
    def label(self) -> str:
        return f"job {self.uuid[:8]} ({self.kind.replace('_', ' ')})"


def _head_of(ctx: Context, job_uuid: str) -> _Head | None:
    """The first unfinished job of ``job_uuid``'s VPS (itself when none is ahead)."""
    with ctx.db.reading() as s:
        job = s.scalar(select(Job).where(Job.uuid == job_uuid))
        if job is None or job.state not in JobState.UNFINISHED:
            return None
        head = job
        if job.vps_uuid is not None:
            head = s.scalars(
                select(Job)
                .where(Job.vps_uuid == job.vps_uuid, Job.state.in_(JobState.UNFINISHED))
                .order_by(Job.id)
                .limit(1)
            ).one()
        lease = jobs.aware(head.lease_expires_at)
        return _Head(head.id, head.uuid, head.kind, head.state, head.worker, lease)


def _holder_alive(ctx: Context, holder: str | None) -> bool:
    """Whether the worker (or waiting command) holding a job still runs."""
    if holder is None:
        return False
    if holder.startswith(INLINE_PREFIX):
        host, _, pid = holder.removeprefix(INLINE_PREFIX).rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return True  # another machine's command: trust its lease
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return holder in jobs.live_workers(ctx)


class _Driver:
    """With no worker alive: run the jobs of the VPS in order here, or say what blocks them."""

    def __init__(
        self, ctx: Context, job_uuid: str, say: Callable[[str], None], agent: str | None = None
    ) -> None:
        self.ctx, self.job_uuid, self.say, self.agent = ctx, job_uuid, say, agent
        self.name = inline_worker_name()
        self._said: set[str] = set()
        self._stuck_since: float | None = None

    def step(self, progress: Progress | None) -> bool:
        """Run the next job of the chain here; True if one ran (or nothing is left)."""
        recover_expired(self.ctx, self.name)
        head = _head_of(self.ctx, self.job_uuid)
        if head is None:
            return True
        if head.state == JobState.QUEUED:
            claimed = claims.claim(self.ctx, self.name, only_id=head.id)
            if claimed is not None:
                mine = head.uuid == self.job_uuid
                if not mine:
                    self._once(
                        f"run {head.uuid}",
                        f"no worker is running: running {head.label}, queued first, here",
                    )
                run_claimed(self.ctx, claimed, self.name, on_progress=progress if mine else None)
                self._stuck_since = None
                return True
        self._blocked(head)
        return False

    def _blocked(self, head: _Head) -> None:
        if head.state == JobState.RUNNING and _holder_alive(self.ctx, head.worker):
            self._stuck_since = None  # another command runs it and renews its lease
            return
        now = time.monotonic()
        self._stuck_since = self._stuck_since or now
        if head.state == JobState.RUNNING and head.lease_expires_at is not None:
            left = max(0.0, (head.lease_expires_at - jobs.now()).total_seconds())
            self._once(
                f"take over {head.uuid}",
                f"no worker is running and {head.worker}, which held {head.label}, has stopped: "
                f"taking it over here when its lease runs out in {left:.0f} s "
                "(or start a worker: kvmvps-admin worker)",
            )
            limit = self.ctx.settings.job_lease_seconds + STALL_SECONDS
            why = f"is still held by {head.worker}"
        elif self.agent:
            limit = STALL_SECONDS
            why = f"runs on host {self.agent}'s own agent"
        else:
            limit = STALL_SECONDS
            why = "cannot run here now (its host's build slots are taken)"
        if now - self._stuck_since > limit and self.agent:
            raise NoWorker(
                f"{head.label} {why} and none is running: start it on that host with "
                f"'kvmvps-admin worker --host {self.agent}'"
            )
        if now - self._stuck_since > limit:
            raise NoWorker(
                f"{head.label} {why} and no worker is running: start one with "
                "'kvmvps-admin worker' (or 'systemctl start kvmvps-worker')"
            )

    def _once(self, key: str, message: str) -> None:
        """Say ``message`` unless something under ``key`` was said already."""
        if key not in self._said:
            self._said.add(key)
            self.say(message)


def run_or_follow(
    ctx: Context,
    job_uuid: str,
    progress: Progress | None = None,
    timeout: float | None = None,
    notice: Callable[[str], None] | None = None,
) -> JobView:
    """Wait for a job: follow a live worker, or, with none alive, run it here.

    Jobs of the same VPS queued before it run first, here, in order; a job
    whose worker died is taken over once its lease runs out. ``notice`` gets
    one line whenever the wait is not simply this job running (default: the
    log). When nothing can move the job, :class:`NoWorker` says what to start.
    Returns the finished job's view; raises :class:`JobFailed` if it failed.
    """
    say = notice or (lambda message: log.warning("%s", message))
    agent = jobs.agent_of(ctx, job_uuid)
    driver = _Driver(ctx, job_uuid, say, agent)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = None
    while True:
        view = jobs.get_job(ctx, job_uuid)
        if progress is not None and view["step"] and view["step"] != seen:
            seen = view["step"]
            progress(seen, view["progress"], 100)
        if view["state"] in (JobState.SUCCEEDED, JobState.FAILED):
            break
        if deadline is not None and time.monotonic() > deadline:
            raise JobFailed(f"job {job_uuid[:8]} is still {view['state']} after {timeout:g} s")
        alive = jobs.live_agents(ctx, agent) if agent else jobs.live_workers(ctx)
        if not alive and driver.step(progress):
            continue
        time.sleep(0.2)
    if view["state"] == JobState.FAILED:
        raise JobFailed(view["error"] or "the job failed")
    return view
