"""One worker process, several jobs at once (test driver, SQLite and PostgreSQL).

The jobs here really wait: an image with credentials makes a build wait for
the guest's host key on its serial console, which a test-driver domain never
prints, until the build's SSH deadline. That gives jobs that take seconds
without any fake in the code under test.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from kvmvps.models import Job, JobState
from kvmvps.services import Context, actions, inventory, jobs, provisioning
from kvmvps.services import vps as vps_service
from kvmvps.services.provisioning import OrderRequest
from kvmvps.worker import Worker

WAIT = 3.0  # seconds a build waits for a host key that never comes
Running = tuple[Worker, threading.Thread]


@pytest.fixture
def slow_ctx(td_ctx: Context, tmp_path: Path) -> Context:
    """An image whose builds wait ``WAIT`` seconds (then fail) and a tiny plan."""
    base = tmp_path / "base.qcow2"
    inventory.add_image(td_ctx, "slow", base, login_user="root", credentials=True)
    inventory.add_plan(td_ctx, "nano", 1, 1, 1)
    td_ctx.settings = dataclasses.replace(
        td_ctx.settings,
        ssh_timeout=WAIT,
        build_limit=10,
        reconcile_interval=0,
        worker_poll_seconds=0.05,
        worker_concurrency=4,
    )
    return td_ctx


class Sampler:
    """Samples the running jobs every 50 ms in its own thread."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self._stop = ctx, threading.Event()
        self.samples: list[list[tuple[str | None, str, int | None]]] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            with self.ctx.db.session() as s:
                rows = s.execute(
                    select(Job.vps_uuid, Job.kind, Job.host_id).where(Job.state == JobState.RUNNING)
                ).all()
            self.samples.append([(r[0], r[1], r[2]) for r in rows])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def most_at_once(self) -> int:
        return max((len(s) for s in self.samples), default=0)


@pytest.fixture
def worker(slow_ctx: Context) -> Iterator[Running]:
    w = Worker(slow_ctx, name="pool")
    thread = threading.Thread(target=w.run, daemon=True)
    yield w, thread
    w.stopping.set()
    if thread.is_alive():
        thread.join(timeout=30)


def _wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _states(ctx: Context) -> Counter:
    with ctx.db.session() as s:
        return Counter(s.scalars(select(Job.state)))


def test_one_worker_runs_four_builds_at_once(slow_ctx: Context, worker: Running) -> None:
    w, thread = worker
    for i in range(4):
        provisioning.record_order(slow_ctx, OrderRequest("nano", "slow", f"s{i}"))
    started = time.monotonic()
    with Sampler(slow_ctx) as sampler:
        thread.start()
        _wait_until(lambda: _states(slow_ctx) == Counter({JobState.FAILED: 4}))
    elapsed = time.monotonic() - started
    assert sampler.most_at_once == 4
    assert elapsed < 3 * WAIT, f"four {WAIT:g} s builds took {elapsed:.1f} s: not concurrent"
    assert jobs.live_workers(slow_ctx) == ["pool"]  # the heartbeat went on meanwhile


def test_never_two_jobs_for_one_vps_and_the_build_limit_holds(
    slow_ctx: Context, worker: Running
) -> None:
    slow_ctx.settings = dataclasses.replace(slow_ctx.settings, build_limit=2)
    w, thread = worker
    w.ctx.settings = slow_ctx.settings
    orders = [
        provisioning.record_order(slow_ctx, OrderRequest("nano", "slow", f"v{i}")) for i in range(4)
    ]
    for o in orders[:2]:  # a delete queued behind each of two builds, by the operator
        actions.request(slow_ctx, o.uuid, "delete")
    with Sampler(slow_ctx) as sampler:
        thread.start()
        _wait_until(lambda: not ({JobState.QUEUED, JobState.RUNNING} & set(_states(slow_ctx))))
    for sample in sampler.samples:
        vpses = [vps for vps, _kind, _host in sample]
        assert len(vpses) == len(set(vpses)), f"two jobs of one VPS ran together: {sample}"
        builds = [kind for _vps, kind, _host in sample if kind in jobs.BUILD_KINDS]
        assert len(builds) <= 2, f"build limit 2 exceeded: {sample}"
    assert sampler.most_at_once >= 2
    assert _states(slow_ctx) == Counter({JobState.FAILED: 4, JobState.SUCCEEDED: 2})


def test_stopping_hands_every_running_job_back_at_once(slow_ctx: Context, worker: Running) -> None:
    """SIGTERM's event: the jobs stop inside their wait, not at its end, and are queued again."""
    slow_ctx.settings = dataclasses.replace(slow_ctx.settings, ssh_timeout=600)
    w, thread = worker
    w.ctx.settings = slow_ctx.settings
    orders = [
        provisioning.record_order(slow_ctx, OrderRequest("nano", "slow", f"t{i}")) for i in range(3)
    ]
    thread.start()
    _wait_until(lambda: all(jobs.get_job(slow_ctx, o.job)["step"] == "host-key" for o in orders))
    asked = time.monotonic()
    w.stopping.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert time.monotonic() - asked < 5, "the worker sat out the host-key wait"
    for o in orders:
        job = jobs.get_job(slow_ctx, o.job)
        assert job["state"] == "queued" and job["worker"] is None and job["attempts"] == 0
        assert vps_service.show(slow_ctx, o.uuid)["state"] == "building"  # not rolled back
    assert jobs.live_workers(slow_ctx) == []
    hv = slow_ctx.hypervisor(slow_ctx.settings.libvirt_uri)
    assert len(hv.list_domains(prefix="kvmvps-")) == 3  # the next worker resumes them


def test_a_crashing_job_thread_does_not_end_the_worker(slow_ctx: Context, worker: Running) -> None:
    """A job whose handler raises a non-kvmvps error fails alone; the next job still runs."""
    w, thread = worker
    first = provisioning.record_order(slow_ctx, OrderRequest("nano", "base", "c1"))
    bad = jobs.enqueue
    with slow_ctx.db.session() as s:
        host = s.scalar(select(Job.host_id).where(Job.uuid == first.job))
        broken = bad(s, "reboot", "no-such-vps", host, actor="hostile").uuid
    second = provisioning.record_order(slow_ctx, OrderRequest("nano", "base", "c2"))
    thread.start()
    ended = (JobState.SUCCEEDED, JobState.FAILED)
    # the three run side by side: the broken one may record its failure after the others
    _wait_until(
        lambda: all(
            jobs.get_job(slow_ctx, j)["state"] in ended for j in (first.job, second.job, broken)
        )
    )
    assert {jobs.get_job(slow_ctx, o.job)["state"] for o in (first, second)} == {"succeeded"}
    assert jobs.get_job(slow_ctx, broken)["state"] == "failed"
    assert thread.is_alive()
