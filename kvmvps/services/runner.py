"""Running one claimed job: the work for its kind, a renewed lease, a clean end."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select

from kvmvps.errors import KvmvpsError, NotFound
from kvmvps.models import Job, JobState
from kvmvps.services import Context, credentials, jobs, provisioning
from kvmvps.services import vps as vps_service
from kvmvps.services.jobs import Claimed, JobView
from kvmvps.services.steps import Interrupted

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

    def checkpoint(self) -> None:
        """Between steps: stop if the worker is stopping or lost the job."""
        if self._should_stop() or self.lost.is_set():
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
    provisioning.build(ctx, _vps(c), jc.progress, checkpoint=jc.checkpoint, deadline=jc.deadline)


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
    vps_service.shutdown(
        ctx,
        _vps(c),
        timeout=float(c.params.get("timeout", 60)),
        force=bool(c.params.get("force", False)),
    )


def _delete(ctx: Context, c: Claimed, jc: JobControl) -> None:
    with contextlib.suppress(NotFound):  # deleted already (a resumed job)
        provisioning.delete(ctx, _vps(c))


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
    "suspend": _simple(vps_service.suspend),
    "resume": _simple(vps_service.resume),
    "password_reset": _simple(credentials.apply_password_reset),
}


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
    """Run a job this worker claimed; finish, fail or hand it back."""
    jc = JobControl(ctx, claimed, worker, should_stop, on_progress)
    done = threading.Event()
    keeper = threading.Thread(target=_keep_lease, args=(ctx, jc, done), daemon=True)
    keeper.start()
    try:
        HANDLERS[claimed.kind](ctx, claimed, jc)
    except Interrupted:
        if not jc.lost.is_set():
            jobs.release(ctx, claimed.id, worker)
        log.info("job %s handed back to the queue", claimed.uuid)
    except KvmvpsError as exc:
        jobs.finish(ctx, claimed.id, worker, error=str(exc))
    except Exception as exc:
        log.exception("job %s crashed", claimed.uuid)
        jobs.finish(ctx, claimed.id, worker, error=f"internal error: {type(exc).__name__}: {exc}")
    else:
        jobs.finish(ctx, claimed.id, worker)
    finally:
        done.set()
        keeper.join()


def inline_worker_name() -> str:
    return f"inline:{socket.gethostname()}:{os.getpid()}"


def run_inline(ctx: Context, job_uuid: str, progress: Progress | None = None) -> bool:
    """Run one queued job in this process; False if another worker already has it."""
    with ctx.db.session() as s:
        job_id = s.scalar(select(Job.id).where(Job.uuid == job_uuid))
    claimed = jobs.claim(ctx, inline_worker_name(), only_id=job_id)
    if claimed is None:
        return False
    run_claimed(ctx, claimed, inline_worker_name(), on_progress=progress)
    return True


class JobFailed(KvmvpsError):
    """A job ended in failure; the message is the job's error."""


def run_or_follow(
    ctx: Context, job_uuid: str, progress: Progress | None = None, timeout: float | None = None
) -> JobView:
    """Wait for a job: follow a live worker, or run it here when none is alive.

    Returns the finished job's view; raises :class:`JobFailed` if it failed.
    """
    if not jobs.live_workers(ctx):
        run_inline(ctx, job_uuid, progress)
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
        if view["state"] == JobState.QUEUED and not jobs.live_workers(ctx):
            run_inline(ctx, job_uuid, progress)  # the worker went away meanwhile
        time.sleep(0.2)
    if view["state"] == JobState.FAILED:
        raise JobFailed(view["error"] or "the job failed")
    return view
