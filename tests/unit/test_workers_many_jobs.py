"""Four workers, two hundred jobs: every job runs exactly once (SQLite and PostgreSQL).

40 orders are built first; then 160 reboots (four per VPS, queued at once, so
jobs of one VPS must also run one after another, never together).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

from sqlalchemy import select

from kvmvps.models import Job
from kvmvps.services import Context, actions, jobs, provisioning
from kvmvps.services import vps as vps_service
from kvmvps.services.provisioning import OrderRequest
from kvmvps.worker import Worker

VPSES = 40
REBOOTS_EACH = 4
JOBS = VPSES * (1 + REBOOTS_EACH)
WORKERS = 4


def test_four_workers_two_hundred_jobs(td_ctx: Context) -> None:
    settings = dataclasses.replace(
        td_ctx.settings,
        cpu_overcommit=50,
        build_limit=JOBS,
        reconcile_interval=0,
        worker_poll_seconds=0.05,
    )
    td_ctx.settings = settings
    from kvmvps.services import inventory

    inventory.add_plan(td_ctx, "nano", 1, 1, 1)
    orders = [
        provisioning.record_order(td_ctx, OrderRequest("nano", "base", f"n{i}"))
        for i in range(VPSES)
    ]
    contexts = [Context(settings) for _ in range(WORKERS)]
    workers = [Worker(c, name=f"w{i}") for i, c in enumerate(contexts)]
    _run_all(workers)
    for o in orders:
        for _ in range(REBOOTS_EACH):
            actions.request(td_ctx, o.uuid, "reboot")
    _run_all(workers)
    for c in contexts:
        c.close()

    with td_ctx.db.session() as s:
        rows = list(s.scalars(select(Job)))
    assert len(rows) == JOBS
    assert {r.state for r in rows} == {"succeeded"}, {r.error for r in rows if r.error}
    assert all(r.attempts == 1 for r in rows), "a job was claimed twice"
    per_worker = Counter(r.worker for r in rows)
    assert sum(per_worker.values()) == JOBS and len(per_worker) > 1
    views = [vps_service.show(td_ctx, o.uuid) for o in orders]
    assert {v["state"] for v in views} == {"running"}
    assert len({v["ip"] for v in views}) == VPSES
    hv = td_ctx.hypervisor(td_ctx.settings.libvirt_uri)
    assert len(hv.list_domains(prefix="kvmvps-")) == VPSES
    _assert_never_together(rows)


def _assert_never_together(rows: list[Job]) -> None:
    """Jobs of one VPS ran in the order they were queued, one after another."""
    by_vps: dict[str, list[Job]] = {}
    for job in sorted(rows, key=lambda j: j.id):
        by_vps.setdefault(job.vps_uuid, []).append(job)
    for chain in by_vps.values():
        assert len(chain) == 1 + REBOOTS_EACH
        for earlier, later in zip(chain, chain[1:], strict=False):
            assert earlier.finished_at <= later.started_at


def _run_all(workers: list[Worker]) -> None:
    def drain(w: Worker) -> None:
        while w.tick() or _queued(w.ctx):
            pass

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)


def _queued(ctx: Context) -> bool:
    return bool(jobs.list_jobs(ctx, state="queued", limit=1)) or bool(
        jobs.list_jobs(ctx, state="running", limit=1)
    )
