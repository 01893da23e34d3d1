"""Images that test themselves: a throwaway VPS ordered, checked and removed.

A test is asked for (``kvmvps-admin image test NAME``, or the worker's
schedule) as an :class:`~kvmvps.models.ImageTest` row and an ``image_test``
job, in one transaction that refuses a second test of the image while one
is unfinished. The job orders a VPS of the image through the ordinary order
path (placement, build steps, credentials) for the operators' own account,
then checks what a customer would get: the checks of :mod:`~kvmvps.services.imagechecks`, each timed.

The throwaway VPS is always removed (a delete job, run here): at the end of
the test, when a resumed test finds one left by a worker that died, and by
:func:`sweep` (the worker's schedule) for tests that ended without doing it.
It is ordered with a time to live as a last resort. An image whose last test
failed is hidden from the shop and refused for orders until a test passes;
the operators are told (an audit entry, the admin home, and mail).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TypedDict

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from kvmvps.errors import Conflict, NotFound
from kvmvps.interrupt import Interrupted
from kvmvps.models import Image, ImageTest, Job, JobState, Plan, User, Vps, VpsState
from kvmvps.services import Context, audit, jobs, mail
from kvmvps.services.imagechecks import (
    ACTOR,
    HOSTNAME_PREFIX,
    CheckFailed,
    CheckResult,
    Follow,
    Progress,
    Run,
    hostname_for,
    run_checks,
)
from kvmvps.services.setup import OPERATOR_EMAIL
from kvmvps.storage import GIB

log = logging.getLogger(__name__)

INCONCLUSIVE = "inconclusive: "  # the error of a test that could not place its VPS
KEEP_TESTS = 30  # results kept per image
MAX_LISTED = 100

audit.declare("image.test", "image.test-failed", "image.test-passed")


class TestView(TypedDict):
    """The stable JSON shape of an image test."""

    id: str
    image: str
    state: str  # queued, running, passed, failed
    job: str | None
    vps: str | None
    actor: str
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    checks: list[CheckResult]
    error: str | None


@dataclass(frozen=True)
class Requested:
    """A queued image test: its id and its job."""

    test: str
    job: str


def _state(test: ImageTest) -> str:
    if test.passed is False and (test.error or "").startswith(INCONCLUSIVE):
        return "inconclusive"
    if test.passed is not None:
        return "passed" if test.passed else "failed"
    return "running" if test.started_at is not None else "queued"


def view(test: ImageTest, image: str) -> TestView:
    started, finished = jobs.aware(test.started_at), jobs.aware(test.finished_at)
    seconds = (finished - started).total_seconds() if started and finished else None
    return {
        "id": test.uuid,
        "image": image,
        "state": _state(test),
        "job": test.job_uuid,
        "vps": test.vps_uuid,
        "actor": test.actor,
        "created_at": audit.iso(test.created_at),
        "started_at": audit.iso(started),
        "finished_at": audit.iso(finished),
        "seconds": None if seconds is None else round(seconds, 2),
        "checks": json.loads(test.checks or "[]"),
        "error": test.error,
    }


# -- asking for a test ----------------------------------------------------------------
def request(ctx: Context, name: str, *, actor: str | None = None) -> Requested:
    """Queue a test of image ``name``; :class:`Conflict` while one of it is unfinished."""
    with audit.audited(ctx, actor, "image.test", (name or "")[:64]):
        requested = _request(ctx, name, actor or "", None)
    if requested is None:  # only a scheduled request may find nothing due
        raise Conflict(f"image {name!r} is being tested already")
    return requested


def _request(ctx: Context, name: str, actor: str, due_after: float | None) -> Requested | None:
    """The request's transaction; with ``due_after`` (seconds), None when not due yet."""
    with ctx.db.session() as s:
        image = s.scalars(
            select(Image).where(Image.name == (name or "").strip()).with_for_update()
        ).first()
        if image is None:
            raise NotFound(f"no image named {name!r}")
        last = _last(s, image.id)
        if last is not None and last.finished_at is None:
            if due_after is not None:
                return None
            raise Conflict(
                f"image {image.name!r} is being tested already (test {last.uuid[:8]}); wait for it"
            )
        recent = jobs.now() - timedelta(seconds=due_after or 0)
        # never tested: first due one interval after the image was added (an
        # operator tests a new image at once with `image test`)
        since = last.created_at if last is not None else image.created_at
        if due_after is not None and jobs.aware(since) > recent:
            return None
        test = ImageTest(image_id=image.id, actor=actor)
        s.add(test)
        s.flush()
        job = jobs.enqueue(s, "image_test", None, None, actor=actor, test=test.uuid)
        test.job_uuid = job.uuid
        return Requested(test=test.uuid, job=job.uuid)


def _last(session: Session, image_id: int) -> ImageTest | None:
    return session.scalar(
        select(ImageTest)
        .where(ImageTest.image_id == image_id)
        .order_by(ImageTest.id.desc())
        .limit(1)
    )


def schedule(ctx: Context) -> list[str]:
    """The worker's round: clean up after dead tests, queue a test of every image due one."""
    interval = ctx.settings.image_test_interval
    sweep(ctx)
    if interval <= 0:
        return []
    with ctx.db.reading() as s:
        names = list(s.scalars(select(Image.name).order_by(Image.name)))
    queued = []
    for name in names:
        try:
            requested = _request(ctx, name, ACTOR, interval)
        except NotFound:
            continue  # removed meanwhile
        if requested is not None:
            audit.record(ctx, ACTOR, "image.test", name, audit.OK, "scheduled")
            queued.append(requested.job)
    return queued


# -- running a test -------------------------------------------------------------------
def run(ctx: Context, test_uuid: str, follow: Follow, progress: Progress | None = None) -> TestView:
    """Run a queued test (its job's handler); record and return its result.

    A failing check is the test's result, not an error. The worker stopping
    (:class:`Interrupted`) hands the job back: the resumed run removes the
    VPS this one ordered and starts over.
    """
    r = _begin(ctx, test_uuid, follow)
    if r is None:
        return get_test(ctx, test_uuid)  # a job run again after its test ended
    try:
        run_checks(r, follow, progress)
    except Interrupted:
        raise
    except CheckFailed:
        pass
    except Exception as exc:  # any surprise fails the test, with its reason
        log.exception("image test %s crashed", test_uuid[:8])
        r.record("internal", False, 0.0, audit.error_message(exc))
    finally:
        if r.banner is not None:
            r.banner.stop()
    error = _cleanup(r, follow)
    return _finish(ctx, r, error)


def _begin(ctx: Context, test_uuid: str, follow: Follow) -> Run | None:
    """Mark the test started (removing a VPS a dead run left) and gather what it needs.

    None when the test has ended already.
    """
    with ctx.db.session() as s:
        test = s.scalar(select(ImageTest).where(ImageTest.uuid == test_uuid))
        if test is None:
            raise NotFound(f"image test {test_uuid} no longer exists")
        if test.finished_at is not None:
            return None
        image = s.get(Image, test.image_id)
        if image is None:
            raise NotFound(f"the image of test {test_uuid[:8]} no longer exists")
        leftover = test.vps_uuid or _named_after(s, [test.uuid]).get(test.uuid)
        test.started_at = jobs.now()
        plan = _plan_for(ctx, s, image)
        r = Run(ctx, test.uuid, image.name, plan, bool(image.credentials))
    if leftover is not None:
        _remove_vps(ctx, test_uuid, leftover, follow)
    return r


def _named_after(session: Session, test_uuids: list[str]) -> dict[str, str]:
    """The operators' VPSes named after these tests (one whose run died before it noted
    its VPS), by test uuid."""
    names = {hostname_for(t): t for t in test_uuids}
    if not names:
        return {}
    rows = session.execute(
        select(Vps.hostname, Vps.uuid)
        .join(User, User.id == Vps.owner_id)
        .where(Vps.hostname.in_(names), User.email == OPERATOR_EMAIL)
    )
    return {names[hostname]: uuid for hostname, uuid in rows}


def _plan_for(ctx: Context, session: Session, image: Image) -> str:
    """KVMVPS_IMAGE_TEST_PLAN, or the smallest plan whose disk holds the image."""
    if ctx.settings.image_test_plan:
        return ctx.settings.image_test_plan
    plans = session.scalars(
        select(Plan).order_by(Plan.disk_gib, Plan.memory_mib, Plan.vcpus, Plan.id)
    )
    for plan in plans:
        if plan.disk_gib * GIB >= image.virtual_size:
            return plan.name
    raise NotFound(f"no plan has a disk big enough for image {image.name!r}")


# -- removing the throwaway VPS -------------------------------------------------------
def _remove_vps(ctx: Context, test_uuid: str, vps_uuid: str, follow: Follow) -> None:
    """Delete the test's VPS (a delete job, followed here) and forget it."""
    with ctx.db.session() as s:
        job = _queue_delete(s, vps_uuid)
    if job is not None:
        follow(job)
    with ctx.db.session() as s:
        s.execute(update(ImageTest).where(ImageTest.uuid == test_uuid).values(vps_uuid=None))


def _queue_delete(session: Session, vps_uuid: str) -> str | None:
    """The delete job of a throwaway VPS (a pending one, or a new one); None when it is gone."""
    vps = session.scalars(select(Vps).where(Vps.uuid == vps_uuid).with_for_update()).first()
    if vps is None:
        return None
    pending = session.scalar(
        select(Job.uuid).where(
            Job.vps_uuid == vps_uuid, Job.kind == "delete", Job.state.in_(JobState.UNFINISHED)
        )
    )
    if pending is not None:
        return pending
    vps.state, vps.pending_password = VpsState.DELETING, None
    return jobs.enqueue(session, "delete", vps_uuid, vps.host_id, actor=ACTOR, force=True).uuid


def _cleanup(r: Run, follow: Follow) -> str | None:
    """Remove the VPS; None, or why it could not be removed (the sweep retries)."""
    if r.vps is None:
        return None
    try:
        _remove_vps(r.ctx, r.test, r.vps, follow)
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded; the worker's sweep tries again
        log.warning("removing the VPS of image test %s failed: %s", r.test[:8], exc)
        return f"removing the throwaway VPS failed: {audit.error_message(exc)}"
    return None


def sweep(ctx: Context) -> list[str]:
    """Fail tests whose job ended without a result; delete VPSes finished tests left.

    Returns the delete jobs queued (a worker runs them).
    """
    with ctx.db.session() as s:
        ended = select(Job.uuid).where(
            Job.kind == "image_test", Job.state.not_in(JobState.UNFINISHED)
        )
        s.execute(
            update(ImageTest)
            .where(ImageTest.finished_at.is_(None), ImageTest.job_uuid.in_(ended))
            .values(finished_at=jobs.now(), passed=False, error="the test's job ended early")
            .execution_options(synchronize_session=False)
        )
        finished = s.execute(
            select(ImageTest.uuid, ImageTest.vps_uuid).where(ImageTest.finished_at.is_not(None))
        ).all()
        orphans = {v for _t, v in finished if v} | set(
            _named_after(s, [t for t, _v in finished]).values()
        )
    queued = []
    for vps_uuid in sorted(orphans):
        with ctx.db.session() as s:
            if s.scalar(select(Vps.state).where(Vps.uuid == vps_uuid)) == VpsState.DELETING:
                continue  # its delete is under way
            job = _queue_delete(s, vps_uuid)
            if job is None:
                s.execute(
                    update(ImageTest).where(ImageTest.vps_uuid == vps_uuid).values(vps_uuid=None)
                )
            else:
                queued.append(job)
    return queued


def abandon(ctx: Context, test_uuid: str, reason: str) -> None:
    """A test whose workers kept dying: fail it; :func:`sweep` removes its VPS."""
    with ctx.db.session() as s:
        s.execute(
            update(ImageTest)
            .where(ImageTest.uuid == test_uuid, ImageTest.finished_at.is_(None))
            .values(finished_at=jobs.now(), passed=False, error=reason[:1000])
        )
    sweep(ctx)


# -- the result -----------------------------------------------------------------------
def _finish(ctx: Context, r: Run, cleanup_error: str | None) -> TestView:
    failed = [c for c in r.checks if c["ok"] is False]
    passed = not failed and cleanup_error is None
    error = f"{failed[0]['name']}: {failed[0]['detail']}" if failed else cleanup_error
    if r.inconclusive:
        error = f"{INCONCLUSIVE}{error}"
    with ctx.db.session() as s:
        test = s.scalars(select(ImageTest).where(ImageTest.uuid == r.test)).one()
        image = s.get(Image, test.image_id)
        test.finished_at, test.passed, test.error = jobs.now(), passed, error
        test.checks = json.dumps(r.checks)
        was_failed = bool(image and image.test_failed)
        if image is not None and not r.inconclusive:
            image.test_failed = not passed
        shown = view(test, r.image)
        _prune(s, test.image_id)
    if r.inconclusive:
        log.warning("image test %s of %s was inconclusive: %s", r.test[:8], r.image, error)
    elif not passed and not was_failed:
        _tell_operators(ctx, r.image, error or "failed")
    elif passed and was_failed:
        audit.record(ctx, ACTOR, "image.test-passed", r.image, audit.OK, "back in the shop")
    return shown


def _prune(session: Session, image_id: int) -> None:
    old = session.scalars(
        select(ImageTest.id)
        .where(ImageTest.image_id == image_id, ImageTest.vps_uuid.is_(None))
        .order_by(ImageTest.id.desc())
        .offset(KEEP_TESTS)
    )
    ids = list(old)
    if ids:
        session.execute(delete(ImageTest).where(ImageTest.id.in_(ids)))


def _tell_operators(ctx: Context, image: str, error: str) -> None:
    """An image just failed its test: an audit entry, and mail to every operator."""
    detail = f"hidden from the shop until a test passes: {error}"
    audit.record(ctx, ACTOR, "image.test-failed", image, audit.FAILED, detail)
    if not mail.configured(ctx):
        return
    with ctx.db.reading() as s:
        admins = list(
            s.scalars(select(User.email).where(User.is_admin.is_(True), User.is_active.is_(True)))
        )
    body = (
        f"Image {image} failed its self-test and is hidden from the shop until a test passes.\n\n"
        f"{error}\n\nSee: kvmvps-admin image tests {image}\n"
    )
    for email in admins:
        if "@" in email and not email.endswith("@localhost"):
            mail.send_later(ctx, email, f"kvmvps: image {image} failed its self-test", body)


# -- reading --------------------------------------------------------------------------
def list_tests(ctx: Context, name: str, limit: int = 10) -> list[TestView]:
    """The newest ``limit`` tests of image ``name``, newest first."""
    limit = max(1, min(int(limit), MAX_LISTED))
    with ctx.db.reading() as s:
        image = s.scalar(select(Image).where(Image.name == (name or "").strip()))
        if image is None:
            raise NotFound(f"no image named {name!r}")
        rows = s.scalars(
            select(ImageTest)
            .where(ImageTest.image_id == image.id)
            .order_by(ImageTest.id.desc())
            .limit(limit)
        )
        return [view(t, image.name) for t in rows]


def latest(ctx: Context) -> dict[str, TestView]:
    """The newest test of every image that has one, by image name."""
    with ctx.db.reading() as s:
        newest = select(ImageTest.image_id, ImageTest.id).order_by(ImageTest.id)
        last: dict[int, int] = {image_id: test_id for image_id, test_id in s.execute(newest)}
        if not last:
            return {}
        rows = s.execute(
            select(ImageTest, Image.name)
            .join(Image, Image.id == ImageTest.image_id)
            .where(ImageTest.id.in_(last.values()))
        )
        return {name: view(test, name) for test, name in rows}


def failing_images(ctx: Context) -> list[str]:
    """Images hidden because their last test failed."""
    with ctx.db.reading() as s:
        return list(
            s.scalars(select(Image.name).where(Image.test_failed.is_(True)).order_by(Image.name))
        )


def get_test(ctx: Context, test_uuid: str) -> TestView:
    with ctx.db.reading() as s:
        row = s.execute(
            select(ImageTest, Image.name)
            .join(Image, Image.id == ImageTest.image_id)
            .where(ImageTest.uuid == test_uuid)
        ).first()
        if row is None:
            raise NotFound(f"no image test {test_uuid!r}")
        return view(row[0], row[1])


def is_throwaway(hostname: str) -> bool:
    """Whether a VPS name is an image test's."""
    return hostname.startswith(HOSTNAME_PREFIX)
