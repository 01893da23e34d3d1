"""Benchmark: backup and restore time per GiB of written data, and an image's self-test.

In the benchmark's own installation on the real libvirtd: one tiny VPS on a
plan with a 2 GiB disk, ``--mib`` MiB of random data written in the guest
(over SSH, the provisioning key, the pinned host key), then a backup and a
restore of it while it runs, and again while it is stopped. Each job runs in
this process (``runner.run_inline``), timed from the request to the job's end.
"Written data" is what the VPS's overlay volume holds (qemu-img's actual
size). Then one ``image test`` of the tiny image, check by check. It
measures; it does not test.

    .venv/bin/python bench/backups.py [--mib 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from provision import installation, machine, teardown  # noqa: E402
from sqlalchemy import select  # noqa: E402

from kvmvps import guest, keys  # noqa: E402
from kvmvps.models import Vps  # noqa: E402
from kvmvps.services import (  # noqa: E402
    Context,
    actions,
    backups,
    images,
    imagetest,
    inventory,
    jobs,
    provisioning,
    runner,
)
from kvmvps.services import vps as vps_service  # noqa: E402

PLAN, DISK_GIB = "bkbench", 2


def run_job(ctx: Context, job: str) -> float:
    """Run a queued job here; its seconds. Raises when it fails."""
    t0 = time.perf_counter()
    if not runner.run_inline(ctx, job):
        raise RuntimeError(f"job {job[:8]} could not be claimed")
    state = jobs.get_job(ctx, job)
    if state["state"] != "succeeded":
        raise RuntimeError(f"job {job[:8]} {state['state']}: {state['error']}")
    return time.perf_counter() - t0


def write_data(ctx: Context, uuid: str, mib: int) -> None:
    """``mib`` MiB of random data into a file in the guest, synced."""
    shown = vps_service.show(ctx, uuid)
    with ctx.db.reading() as s:
        host_key = s.scalar(select(Vps.host_key).where(Vps.uuid == uuid))
    if not host_key:
        raise RuntimeError("the VPS has no pinned host key")
    target = guest.Target(shown["ip"], 22, host_key)
    key = keys.provisioning_key_path(ctx.settings)
    with guest.root_session(target, key, time.monotonic() + 120) as client:
        guest.run(client, f"dd if=/dev/urandom of=/fill bs=1M count={mib} 2>/dev/null; sync", [])


def written_gib(ctx: Context, uuid: str) -> float:
    """What the VPS's overlay holds: qemu-img's actual size, in GiB."""
    shown = vps_service.show(ctx, uuid)
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    path = hv.volume_path(ctx.settings.storage_pool, f"{shown['domain']}.qcow2")
    info = subprocess.run(
        ["qemu-img", "info", "--force-share", "--output=json", path],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(info.stdout)["actual-size"]) / 2**30


def backup_and_restore(ctx: Context, uuid: str, state: str) -> dict[str, float]:
    """One backup and one restore of the VPS as it is now; seconds and seconds per GiB."""
    gib = written_gib(ctx, uuid)
    made = backups.create(ctx, uuid, actor="bench")
    backup_s = run_job(ctx, made.job)
    restored = backups.restore(ctx, uuid, made.backup, actor="bench")
    restore_s = run_job(ctx, restored.job)
    backups.delete(ctx, uuid, made.backup, actor="bench")
    return {
        "state": state,
        "written GiB": gib,
        "backup s": backup_s,
        "backup s per GiB": backup_s / gib,
        "restore s": restore_s,
        "restore s per GiB": restore_s / gib,
    }


def image_self_test(ctx: Context, image: str) -> dict[str, Any]:
    """One ``image test``: its wall time and each check's."""
    req = imagetest.request(ctx, image, actor="bench")
    wall = run_job(ctx, req.job)
    shown = imagetest.get_test(ctx, req.test)
    return {
        "image": image,
        "state": shown["state"],
        "wall s": wall,
        "checks": {c["name"]: c["seconds"] for c in shown["checks"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="data written in the guest")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    ctx = installation()
    result: dict[str, Any] = {"machine": machine(ctx)}
    print(f"machine: {result['machine']}")
    try:
        images.build_tiny(ctx, "tiny")
        inventory.add_plan(ctx, PLAN, 1, 512, DISK_GIB)
        backups.set_plan_backups(ctx, PLAN, slots=2)
        order = provisioning.record_order(
            ctx, provisioning.OrderRequest(PLAN, "tiny", "bk1"), actor="bench"
        )
        run_job(ctx, order.job)
        write_data(ctx, order.uuid, args.mib)
        rows = [backup_and_restore(ctx, order.uuid, "running")]
        run_job(ctx, actions.request(ctx, order.uuid, "destroy", actor="bench").job)
        rows.append(backup_and_restore(ctx, order.uuid, "stopped"))
        provisioning.delete(ctx, order.uuid)
        result["backups"] = rows
        result["image test"] = image_self_test(ctx, "tiny")
    finally:
        teardown(ctx)
    print(
        f"\n  {'VPS':8} {'written':>9} {'backup':>8} {'per GiB':>8} {'restore':>8} {'per GiB':>8}"
    )
    for r in result["backups"]:
        print(
            f"  {r['state']:8} {r['written GiB']:7.2f}GiB {r['backup s']:7.2f}s "
            f"{r['backup s per GiB']:7.2f}s {r['restore s']:7.2f}s {r['restore s per GiB']:7.2f}s"
        )
    test = result["image test"]
    checks = ", ".join(f"{k} {v:.1f}s" for k, v in test["checks"].items())
    print(f"\n  image test {test['image']}: {test['state']} in {test['wall s']:.1f}s ({checks})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
