"""Benchmark: QEMU's memory per idle guest under TCG, with and without a capped code cache.

Boots a few idle guests of one image for each translated-code cache size
(the image's own, ``image edit --tcg-cache-mib``; 0 is QEMU's own default of
1 GiB), reads each
QEMU process's resident memory and its code cache from /proc, and prints how
many such idle guests this machine's memory holds. It also times each order
to working credentials, since a cache that is too small makes QEMU translate
the same code again. It measures; it does not test.

    .venv/bin/python bench/guest_memory.py [--image tiny] [--guests 3] [--caches 0,32,64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import density
import provision

from kvmvps.services import Context, inventory, orders, provisioning
from kvmvps.services import images as image_service
from kvmvps.services import vps as vps_service


def mem_total_mib() -> int:
    """This machine's memory (``MemTotal``), in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def with_cache(ctx: Context, image: str, count: int, settle: float, cache_mib: int) -> dict:
    """Idle guests of ``image`` ordered with a TCG code cache of ``cache_mib``.

    The size is set as the image's own (the tiny image's builder gives it one,
    which would win over the setting) and as the setting.
    """
    ctx.settings = dataclasses.replace(ctx.settings, tcg_tb_cache_mib=cache_mib)
    inventory.edit_image(ctx, image, tcg_cache_mib=cache_mib)
    uuids: list[str] = []
    order_s: list[float] = []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            req = provisioning.OrderRequest("bench", image, f"mem-{cache_mib}-{i}")
            uuids.append(orders.create(ctx, req).uuid)
            order_s.append(time.perf_counter() - t0)
        time.sleep(settle)
        pids = [density.qemu_pid(vps_service.show(ctx, u)["domain"]) for u in uuids]
        rss = [density.rss_kib(p) / 1024 for p in pids]
        code = [density.code_cache_kib(p) / 1024 for p in pids]
    finally:
        for uuid in uuids:
            provisioning.delete(ctx, uuid)
    return {
        "tb_cache_mib": cache_mib,
        "guests": count,
        "rss_mib": rss,
        "code_cache_mib": code,
        "rss_mib_median": statistics.median(rss),
        "code_cache_mib_median": statistics.median(code),
        "order_to_credentials_s_median": statistics.median(order_s),
    }


def fits(total_mib: int, reserve_mib: int, rss_mib: float) -> int:
    """How many idle guests of ``rss_mib`` the memory left after ``reserve_mib`` holds."""
    return int((total_mib - reserve_mib) // rss_mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="tiny", choices=("tiny", "debian"))
    parser.add_argument("--guests", type=int, default=3)
    parser.add_argument("--settle", type=float, default=15.0, help="idle seconds before reading")
    parser.add_argument("--caches", default="0,32,64", help="cache sizes in MiB; 0: QEMU's")
    parser.add_argument("--memory-mib", type=int, default=512, help="each guest's memory")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ctx = provision.installation()
    total, reserve = mem_total_mib(), 512
    results: dict[str, object] = {"machine": provision.machine(ctx), "mem_total_mib": total}
    rows = []
    try:
        inventory.add_plan(ctx, "bench", 1, args.memory_mib, 2)
        build = image_service.build_tiny if args.image == "tiny" else image_service.build_debian
        build(ctx, args.image)
        for cache in (int(c) for c in args.caches.split(",")):
            rows.append(with_cache(ctx, args.image, args.guests, args.settle, cache))
            print(f"measured tb-cache {cache}: {rows[-1]}", flush=True)
    finally:
        provision.teardown(ctx)
    results["runs"] = rows
    print(f"\nidle {args.image} guests, {args.memory_mib} MiB each, domain type {ctx.domain_type}")
    print(f"machine memory {total} MiB, {reserve} MiB kept for the host")
    print(f"  {'tb-cache':>10} {'QEMU RSS':>10} {'code cache':>11} {'credentials':>12} {'fit':>6}")
    for r in rows:
        label = "default" if r["tb_cache_mib"] == 0 else f"{r['tb_cache_mib']} MiB"
        print(
            f"  {label:>10} {r['rss_mib_median']:7.0f}MiB {r['code_cache_mib_median']:8.0f}MiB"
            f" {r['order_to_credentials_s_median']:11.2f}s"
            f" {fits(total, reserve, r['rss_mib_median']):6d}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
