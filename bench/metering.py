"""Usage sampling at scale: one round over ``count`` running VPSes on libvirt's test driver.

Records ``count`` orders, defines and starts a test-driver domain for each,
then times :func:`kvmvps.services.metering.sample` (the bulk libvirt call and
the database writes of samples, hourly rollups, totals and monthly transfer)
over several rounds, one simulated minute apart. The figure to beat is the
sampling interval (KVMVPS_METRICS_INTERVAL, 60 s).

    .venv/bin/python bench/metering.py [--count 1000] [--rounds 5] [--postgres URL]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from kvmvps.config import load_settings
from kvmvps.models import Vps
from kvmvps.services import Context, inventory, metering, provisioning, setup

DOMAIN = (
    "<domain type='test'><name>{name}</name><memory>65536</memory>"
    "<os><type>hvm</type></os></domain>"
)


def prepare(ctx: Context, count: int, state: Path) -> None:
    setup.init(ctx)
    base = state / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    inventory.add_image(ctx, "base", base, credentials=False)
    inventory.add_plan(ctx, "nano", 1, 1, 1)
    for i in range(count):
        provisioning.record_order(ctx, provisioning.OrderRequest("nano", "base", f"m{i}"))
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    with ctx.db.reading() as s:
        names = list(s.scalars(select(Vps.domain_name)))
    for name in names:
        hv.define_domain(DOMAIN.format(name=name))
        hv.start(name)


def measure(count: int, rounds: int, url: str) -> list[tuple[int, float]]:
    state = Path(tempfile.mkdtemp(prefix="kvmvps-metering-"))
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_LIBVIRT_URI": "test:///default",
        "KVMVPS_DOMAIN_TYPE": "qemu",
        "KVMVPS_NETWORK_SUBNET": "10.96.0.0/16",
        "KVMVPS_CPU_OVERCOMMIT": "100000",
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_QUOTA_VPS": "1000000",
        "KVMVPS_QUOTA_VCPUS": "1000000",
        "KVMVPS_QUOTA_MEMORY_MIB": "1000000",
        "KVMVPS_QUOTA_DISK_GIB": "1000000",
        "KVMVPS_DATABASE_URL": url,
    }
    ctx = Context(load_settings(env))
    try:
        prepare(ctx, count, state)
        start = datetime.now(UTC)
        out = []
        for i in range(rounds):
            wall = time.perf_counter()
            report = metering.sample(ctx, start + timedelta(minutes=i))
            out.append((report.vps, time.perf_counter() - wall))
        return out
    finally:
        ctx.close()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default="", help="an empty PostgreSQL database's URL")
    args = parser.parse_args()
    results = measure(args.count, args.rounds, args.postgres)
    times = [t for _n, t in results]
    print(
        f"sampled {results[0][0]} running VPSes per round: first round {times[0] * 1000:.0f} ms, "
        f"later rounds median {statistics.median(times[1:] or times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms (interval 60 s)"
    )


if __name__ == "__main__":
    main()
