"""The VPS list's eager loading: ``selectinload`` against ``joinedload``, measured.

``vps.list_vps`` builds ``vps.view`` for every row, which reads the plan,
image, host, network, owner, pinned CPUs and forwards of each VPS. This
records ``count`` orders on libvirt's test driver (SQLite, or PostgreSQL with
``--postgres URL`` naming an empty database) and times both loading
strategies, interleaved: statements issued, CPU time of this process and
wall time.

    .venv/bin/python bench/vps_list_loading.py [--count 1000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Select, event, select
from sqlalchemy.orm import joinedload, selectinload

from kvmvps.config import load_settings
from kvmvps.models import Vps
from kvmvps.services import Context, inventory, provisioning, setup
from kvmvps.services.vps import view

ONE = ("plan", "image", "host", "network", "owner")
MANY = ("pins", "forwards")


def selectin() -> Select[Any]:
    return select(Vps).options(*(selectinload(getattr(Vps, r)) for r in ONE + MANY))


def joined() -> Select[Any]:
    return select(Vps).options(
        *(joinedload(getattr(Vps, r)) for r in ONE),
        *(selectinload(getattr(Vps, r)) for r in MANY),
    )


def measure(count: int, url: str, repeats: int) -> dict[str, dict[str, float]]:
    state = Path(tempfile.mkdtemp(prefix="kvmvps-loading-"))
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_LIBVIRT_URI": "test:///default",
        "KVMVPS_DOMAIN_TYPE": "qemu",
        "KVMVPS_NETWORK_SUBNET": "10.100.0.0/20",
        "KVMVPS_CPU_OVERCOMMIT": "1000",
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_DATABASE_URL": url,
    }
    ctx = Context(load_settings(env))
    try:
        setup.init(ctx)
        base = state / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
        inventory.add_image(ctx, "base", base, credentials=False)
        inventory.add_plan(ctx, "nano", 1, 1, 1)
        for i in range(count):
            provisioning.record_order(ctx, provisioning.OrderRequest("nano", "base", f"l{i}"))
        return _time(ctx, count, repeats)
    finally:
        ctx.close()
        shutil.rmtree(state, ignore_errors=True)


def _time(ctx: Context, count: int, repeats: int) -> dict[str, dict[str, float]]:
    issued = [0]

    def note(*_args: object) -> None:
        issued[0] += 1

    event.listen(ctx.db._read_engine, "before_cursor_execute", note)
    queries: dict[str, Callable[[], Select[Any]]] = {"selectinload": selectin, "joinedload": joined}
    samples: dict[str, dict[str, list[float]]] = {n: {"cpu": [], "wall": []} for n in queries}
    statements: dict[str, float] = {}
    for _ in range(repeats):
        for name, query in queries.items():
            issued[0] = 0
            wall, cpu = time.perf_counter(), time.process_time()
            with ctx.db.reading() as s:
                rows = [view(v) for v in s.scalars(query().order_by(Vps.created_at, Vps.id))]
            samples[name]["wall"].append(time.perf_counter() - wall)
            samples[name]["cpu"].append(time.process_time() - cpu)
            statements[name] = issued[0]
            assert len(rows) == count
    return {
        name: {
            "statements": statements[name],
            "cpu_median_s": statistics.median(s["cpu"]),
            "wall_median_s": statistics.median(s["wall"]),
            "wall_min_s": min(s["wall"]),
        }
        for name, s in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--postgres", default="", help="an empty PostgreSQL database's URL")
    args = parser.parse_args()
    for name, r in measure(args.count, args.postgres, args.repeats).items():
        print(
            f"{name:13} {r['statements']:.0f} statements, CPU {r['cpu_median_s'] * 1000:.0f} ms, "
            f"wall {r['wall_median_s'] * 1000:.0f} ms (min {r['wall_min_s'] * 1000:.0f} ms)"
        )


if __name__ == "__main__":
    main()
