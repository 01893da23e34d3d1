"""The control plane at provider scale: 10,000 VPSes over 50 hosts, on libvirt's test driver.

Each host is a test-driver connection of its own (``test:///<state>/hostN.xml``:
a private, empty node per connection, so every host has only its own
domains). The VPSes are ordered through the service layer and built through
their jobs, so that none is left busy and reconciliation checks each one.
It then prints, next to its target:

- ``vps list`` (the service call behind the CLI and the admin list), <= 100 ms:
  the whole listing, and a page of 100 (``--limit 100``, the API's ``limit=100``)
  at the start and halfway down;
- a reconcile pass over every host, <= 1 s: the first pass of the process
  (which reads every domain); the median of the next ones (which read only
  what libvirt told of a change of, and each domain in its turn, one in
  ``KVMVPS_RECONCILE_RECHECK_PASSES``), as a worker's periodic passes do; and
  passes that read every domain, as ``kvmvps-admin reconcile`` does;
- job claims on PostgreSQL with 4 claimers (claim + finish), >= 500 per second.

    .venv/bin/python bench/provider_scale.py [--vps 10000] [--hosts 50]
        [--postgres URL]   # an empty database: the claims, and the list and reconcile too

Without ``--postgres`` the list and the reconcile pass use SQLite and the claims
are skipped. Setting up 10,000 VPSes takes a few minutes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import jobs as job_bench  # noqa: E402 - after the path above
from sqlalchemy import select, update  # noqa: E402

from kvmvps.config import load_settings  # noqa: E402
from kvmvps.models import Job, JobState, Vps, VpsState  # noqa: E402
from kvmvps.services import (  # noqa: E402
    Context,
    hosts,
    inventory,
    jobs,
    provisioning,
    reconcile,
    runner,
    setup,
)
from kvmvps.services import vps as vps_service  # noqa: E402
from kvmvps.services.facts import load_facts  # noqa: E402
from kvmvps.services.steps import Build  # noqa: E402

T = TypeVar("T")
PAGE = 100  # a listing page, as the CLI's --limit and the API's limit= give it
NODE = """<node>
  <cpu><mhz>2000</mhz><model>bench</model><active>256</active><nodes>1</nodes>
    <sockets>1</sockets><cores>256</cores><threads>1</threads></cpu>
  <memory>1073741824</memory>
</node>
"""
TARGETS = {"list_ms": 100.0, "reconcile_ms": 1000.0, "claims_per_s": 500.0}


def install(state: Path, vps: int, host_count: int, url: str) -> tuple[Context, float]:
    """An installation with ``host_count`` hosts and ``vps`` built VPSes; the seconds it took."""
    uris = []
    for i in range(host_count):
        node = state / f"host{i}.xml"
        node.write_text(NODE)
        uris.append(f"test://{node}")
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_LIBVIRT_URI": uris[0],
        "KVMVPS_DOMAIN_TYPE": "qemu",
        "KVMVPS_NETWORK_SUBNET": "10.64.0.0/16",
        "KVMVPS_CPU_OVERCOMMIT": "100",
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_QUOTA_VPS": str(vps),
        "KVMVPS_QUOTA_VCPUS": str(vps),
        "KVMVPS_QUOTA_MEMORY_MIB": str(vps * 16),
        "KVMVPS_QUOTA_DISK_GIB": str(vps),
        "KVMVPS_DATABASE_URL": url,
    }
    ctx = Context(load_settings(env))
    t0 = time.perf_counter()
    setup.init(ctx)
    for i, uri in enumerate(uris[1:], start=1):
        hosts.add_host(ctx, f"h{i}", uri)
    base = state / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    inventory.add_image(ctx, "base", base, credentials=False)
    inventory.add_plan(ctx, "nano", 1, 1, 1)
    for i in range(vps):
        order = provisioning.record_order(ctx, provisioning.OrderRequest("nano", "base", f"p{i}"))
        if i < host_count:  # the whole build, through its job, on each host once
            runner.run_inline(ctx, order.job)
        else:
            define_and_start(ctx, order)
        if i and i % 1000 == 0:
            print(f"  {i} VPSes built ({time.perf_counter() - t0:.0f} s)", flush=True)
    return ctx, time.perf_counter() - t0


def define_and_start(ctx: Context, order: provisioning.Order) -> None:
    """The build's outcome, quickly: the rendered domain defined and started, the job done.

    Volumes and DHCP entries are left out (a test-driver host has no disks to
    write); reconciliation reports only what exists without an owner.
    """
    with ctx.db.session() as s:
        vps = s.scalars(select(Vps).where(Vps.uuid == order.uuid)).one()
        facts = load_facts(s, vps.id, ctx.settings)
    b = Build(ctx=ctx, facts=facts)
    provisioning.render_domain(b)
    b.hv.define_domain(b.xml)
    b.hv.start(facts.domain)
    with ctx.db.session() as s:
        s.execute(update(Vps).where(Vps.uuid == order.uuid).values(state=VpsState.RUNNING))
        s.execute(
            update(Job)
            .where(Job.uuid == order.job)
            .values(state=JobState.SUCCEEDED, finished_at=jobs.now(), progress=100)
        )


def halfway(ctx: Context, count: int) -> str | None:
    """The cursor halfway down the listing, walked to in the largest pages."""
    after = None
    for _ in range(count // 2 // vps_service.MAX_LIST_PAGE):
        after = vps_service.list_page(ctx, limit=vps_service.MAX_LIST_PAGE, after=after)["next"]
    return after


def timed(repeats: int, fn: Callable[[], T]) -> tuple[T, list[float]]:
    seconds, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    assert result is not None
    return result, seconds


def line(what: str, value: float, unit: str, target: float, higher_better: bool = False) -> str:
    ok = value >= target if higher_better else value <= target
    sign = ">=" if higher_better else "<="
    return f"{what:44} {value:9.0f} {unit:5} target {sign} {target:.0f}  {'ok' if ok else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vps", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default="", help="an empty PostgreSQL database's URL")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="kvmvps-scale-"))
    try:
        ctx, built = install(state, args.vps, args.hosts, args.postgres)
        db = "PostgreSQL" if args.postgres else "SQLite"
        print(f"{args.vps} VPSes over {args.hosts} hosts on the test driver ({db}): {built:.0f} s")
        listed, list_s = timed(args.repeats, lambda: vps_service.list_vps(ctx))
        page, first_s = timed(args.repeats, lambda: vps_service.list_page(ctx, limit=PAGE))
        middle = halfway(ctx, args.vps)
        _, deep_s = timed(
            args.repeats, lambda: vps_service.list_page(ctx, limit=PAGE, after=middle)
        )
        report, rec_s = timed(args.repeats, lambda: reconcile.run(ctx, incremental=True))
        # every domain read, as `kvmvps-admin reconcile` does
        _, full_s = timed(args.repeats, lambda: reconcile.run(ctx))
        assert len(listed) == args.vps, len(listed)
        assert report.clean and not report.drift and not report.errors, report
        assert len(page["servers"]) == PAGE and page["next"] is not None
        print(line("vps list (service call, median)", statistics.median(list_s) * 1000, "ms", 100))
        for what, times in (("the first", first_s), ("one halfway down", deep_s)):
            ms = statistics.median(times) * 1000
            print(line(f"vps list, {what} page of {PAGE} (median)", ms, "ms", 100))
        # the first pass knows nothing; the next ones skip what the pass before found clean
        cold_ms, warm_ms = rec_s[0] * 1000, statistics.median(rec_s[1:]) * 1000
        print(line(f"reconcile pass, {args.hosts} hosts, the first", cold_ms, "ms", 1000))
        print(line(f"reconcile pass, {args.hosts} hosts (median of the next)", warm_ms, "ms", 1000))
        full_ms = statistics.median(full_s) * 1000
        print(line(f"reconcile pass, {args.hosts} hosts, every domain read", full_ms, "ms", 1000))
        ctx.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    if args.postgres:
        for processes, how in ((True, "4 claimer processes"), (False, "4 threads, one process")):
            claims = job_bench.claim_throughput(args.postgres, 4000, 4, processes)
            rate = float(claims["claims_per_second"])
            print(line(f"job claims, PostgreSQL, {how}", rate, "/s", 500, higher_better=True))
    else:
        print("job claims: give --postgres URL")


if __name__ == "__main__":
    main()
