"""Benchmark: concurrent orders, job claiming, and the control plane at 1,000 VPSes.

    .venv/bin/python bench/jobs.py [--postgres URL] [--json out.json]

1. Wall time of 1 order against 8 orders at once (tiny image, real libvirtd,
   one in-process worker per order), with each order's latency.
2. Job claims per second with 4 claimers on PostgreSQL (claim + finish,
   no work), when --postgres is given.
3. ``vps list`` and a reconcile pass with 1,000 VPSes on libvirt's test driver.

``bench/run.py`` runs these with the other benchmarks and writes a report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from provision import installation, machine, teardown
from sqlalchemy import delete, func, select

from kvmvps.config import Settings, load_settings
from kvmvps.models import Job
from kvmvps.services import (
    Context,
    claims,
    images,
    inventory,
    jobs,
    provisioning,
    reconcile,
    runner,
    setup,
)
from kvmvps.services import vps as vps_service
from kvmvps.services.provisioning import OrderRequest
from kvmvps.worker import Worker

T = TypeVar("T")


def concurrent_orders(ctx: Context, count: int, image: str = "tiny") -> dict[str, object]:
    """``count`` orders at once, ``count`` workers; wall time and per-order latency.

    A failed order is counted and its error kept; it does not stop the run.
    """
    settings = dataclasses.replace(ctx.settings, worker_poll_seconds=0.02, reconcile_interval=0)
    contexts = [Context(settings) for _ in range(count)]
    workers = [Worker(c, name=f"bench{i}") for i, c in enumerate(contexts)]
    t0 = time.perf_counter()
    orders = [
        provisioning.record_order(ctx, OrderRequest("bench", image, f"c{count}x{i}"))
        for i in range(count)
    ]
    threads = [threading.Thread(target=w.run, kwargs={"max_jobs": 1}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies, waits, errors = [], [], []
    for o in orders:
        job = jobs.get_job(ctx, o.job)
        if job["state"] == "succeeded":
            latencies.append(_seconds(job["created_at"], job["finished_at"]))
            waits.append(_seconds(job["created_at"], job["started_at"]))
        else:
            errors.append(job["error"] or job["state"])
    for o in orders:
        provisioning.delete(ctx, o.uuid)
    for c in contexts:
        c.close()
    return {
        "orders": count,
        "wall_s": wall,
        "latency_median_s": statistics.median(latencies) if latencies else float("nan"),
        "latency_max_s": max(latencies, default=float("nan")),
        "latencies_s": latencies,
        "queue_wait_s": waits,
        "failed": len(errors),
        "errors": errors,
    }


def _seconds(start: str, end: str) -> float:
    """Seconds between two ISO timestamps."""
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _claim_until_empty(settings: Settings, name: str, done: Any) -> None:
    """One claimer: claim and finish jobs until none is left; count them in ``done``."""
    own = Context(settings)
    count = 0
    while (c := claims.claim(own, name)) is not None:
        claims.finish(own, c.id, name)
        count += 1
    own.close()
    with done.get_lock():
        done.value += count


def claim_throughput(
    url: str, total: int = 2000, claimers: int = 4, processes: bool = True
) -> dict[str, float]:
    """Job claims per second on PostgreSQL: ``claimers`` claim and finish ``total`` jobs.

    Each claimer is a process of its own, as worker services and host agents
    are; ``processes=False`` runs them as threads of one process instead (one
    worker service's job threads, sharing one interpreter lock).
    Give it a database of its own: the claimers take any queued job in it.
    The jobs it made are deleted afterwards, and its state dir removed.
    """
    state = Path(tempfile.mkdtemp(prefix="kvmvps-claims-"))
    ctx = Context(load_settings({"KVMVPS_STATE_DIR": str(state), "KVMVPS_DATABASE_URL": url}))
    forking = multiprocessing.get_context("fork")
    done = forking.Value("i", 0)
    try:
        ctx.db.migrate()
        with ctx.db.session() as s:
            before = s.scalar(select(func.max(Job.id))) or 0
            for _ in range(total):
                jobs.enqueue(s, "start", None, None)
        ctx.db.dispose()  # no pooled connection crosses a fork
        runner: Callable[..., Any] = forking.Process if processes else threading.Thread
        t0 = time.perf_counter()
        workers = [
            runner(target=_claim_until_empty, args=(ctx.settings, f"c{i}", done))
            for i in range(claimers)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        assert done.value >= total, (done.value, total)
        with ctx.db.session() as s:
            s.execute(delete(Job).where(Job.id > before))
    finally:
        ctx.close()
        shutil.rmtree(state, ignore_errors=True)
    return {
        "jobs": total,
        "claimers": claimers,
        "processes": processes,
        "seconds": elapsed,
        "claims_per_second": total / elapsed,
    }


def control_plane(count: int = 1000, repeats: int = 5) -> dict[str, object]:
    """``vps list`` and a reconcile pass with ``count`` VPSes (test driver + SQLite).

    The VPSes are built through their jobs, so that none is left busy and the
    reconcile pass checks every one of them. Its state dir is removed after.
    """
    state = Path(tempfile.mkdtemp(prefix="kvmvps-cp-"))
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_LIBVIRT_URI": "test:///default",
        "KVMVPS_DOMAIN_TYPE": "qemu",
        "KVMVPS_NETWORK_SUBNET": "10.100.0.0/20",
        "KVMVPS_CPU_OVERCOMMIT": "100",
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_IMAGE_TEST_INTERVAL": "0",  # no image self-tests during a benchmark
    }
    ctx = Context(load_settings(env))
    try:
        setup.init(ctx)
        base = state / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
        inventory.add_image(ctx, "base", base, credentials=False)
        inventory.add_plan(ctx, "nano", 1, 1, 1)
        t0 = time.perf_counter()
        for i in range(count):
            o = provisioning.record_order(ctx, OrderRequest("nano", "base", f"cp{i}"))
            runner.run_inline(ctx, o.job)
        built = time.perf_counter() - t0
        listed, list_s = _timed(repeats, lambda: vps_service.list_vps(ctx))
        shown, cli_s = _timed(repeats, lambda: _cli_list(env))
        report, reconcile_s = _timed(repeats, lambda: reconcile.run(ctx))
        assert len(listed) == count == shown and report.clean and not report.drift
        return {
            "vps": count,
            "build_all_s": built,
            "list_s": list_s,
            "cli_list_s": cli_s,
            "reconcile_s": reconcile_s,
        }
    finally:
        ctx.close()
        shutil.rmtree(state, ignore_errors=True)


def _cli_list(env: dict[str, str]) -> int:
    """``kvmvps-admin vps list --json`` in a new process; how many VPSes it listed."""
    cli = Path(sys.executable).with_name("kvmvps-admin")
    out = subprocess.run(
        [str(cli), "vps", "list", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return len(json.loads(out.stdout))


def _timed(repeats: int, fn: Callable[[], T]) -> tuple[T, list[float]]:
    """Call ``fn`` ``repeats`` times; its last result and every duration in seconds."""
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return result, seconds


def main() -> None:
    """The command line: concurrency, claims (with --postgres) and the control plane."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("KVMVPS_TEST_POSTGRES_URL"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ctx = installation()
    out: dict[str, object] = {"machine": machine(ctx)}
    print(f"machine: {out['machine']}")
    try:
        inventory.add_plan(ctx, "bench", 1, 256, 1)
        images.build_tiny(ctx, "tiny")
        for n in (1, 8):
            r = concurrent_orders(ctx, n)
            out[f"orders_{n}"] = r
            print(
                f"{n} order(s) at once: wall {r['wall_s']:.2f}s, latency median "
                f"{r['latency_median_s']:.2f}s, max {r['latency_max_s']:.2f}s"
            )
    finally:
        teardown(ctx)
    if args.postgres:
        r = claim_throughput(args.postgres)
        out["claims"] = r
        print(
            f"job claims on PostgreSQL: {r['claims_per_second']:.0f}/s "
            f"({r['jobs']} jobs, {r['claimers']} claimers, {r['seconds']:.2f}s)"
        )
    r = control_plane()
    out["control_plane"] = r
    print(
        f"control plane, {r['vps']} VPSes on the test driver: list "
        f"{statistics.median(r['list_s']) * 1000:.0f} ms, "
        f"reconcile {statistics.median(r['reconcile_s']) * 1000:.0f} ms (medians)"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
