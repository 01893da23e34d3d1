"""Benchmark: 8 tiny orders at once against one, with one worker process.

    .venv/bin/python bench/concurrent_orders.py [--count 8] [--json out.json]

One worker service (``kvmvps-admin worker``, ``KVMVPS_WORKER_CONCURRENCY``
set to the order count) builds the orders; the figure is the wall time from
the first order to the last one running with working credentials, and its
ratio to a single order's. Real libvirtd and the tiny image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fair_queue import worker_env
from provision import installation, machine, teardown

from kvmvps.services import Context, images, inventory, jobs, provisioning
from kvmvps.services.provisioning import OrderRequest


def orders_at_once(ctx: Context, count: int, tag: str) -> float:
    """Record ``count`` orders at once; seconds until every one has been built."""
    started = time.perf_counter()
    placed = [
        provisioning.record_order(ctx, OrderRequest("bench", "tiny", f"{tag}{i}"))
        for i in range(count)
    ]
    pending = {o.job for o in placed}
    while pending:
        for job in list(pending):
            view = jobs.get_job(ctx, job)
            if view["state"] == "failed":
                raise SystemExit(f"an order failed: {view['error']}")
            if view["state"] == "succeeded":
                pending.discard(job)
        if time.perf_counter() - started > 900:
            raise SystemExit("the orders took longer than 15 minutes")
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=8, help="orders at once")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    ctx = installation()
    # 1 + count guests of 1 vCPU on a 2-core machine: allow the overcommit
    ctx.settings = dataclasses.replace(ctx.settings, cpu_overcommit=16.0, ssh_timeout=300.0)
    log = open(ctx.settings.state_dir / "worker.log", "wb")  # noqa: SIM115 - the worker writes it
    worker = None
    try:
        images.build_tiny(ctx, "tiny")
        inventory.add_plan(ctx, "bench", 1, 256, 1)
        worker = subprocess.Popen(
            [sys.executable, "-m", "kvmvps", "worker"],
            env=worker_env(ctx.settings, args.count),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        one = orders_at_once(ctx, 1, "one")
        many = orders_at_once(ctx, args.count, "many")
        ratio = many / one
        print(f"1 order:          {one:6.2f} s")
        print(
            f"{args.count} orders at once: {many:6.2f} s  ({ratio:.2f}x one order; target <= 2.5x)"
        )
        if args.json:
            result = {
                "machine": machine(ctx),
                "one_s": round(one, 2),
                "many_s": round(many, 2),
                "count": args.count,
                "ratio": round(ratio, 2),
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=120)
        log.close()
        teardown(ctx)


if __name__ == "__main__":
    main()
