"""Benchmark: migration time of an idle tiny guest between two hosts, and virsh beside it.

In the benchmark's own installation: this machine's libvirtd (A) and a second
host (B, scripts/second-host.sh; its own pool directory, as on another
machine). One tiny VPS (1 vCPU, 256 MiB, 1 GiB disk) is ordered on A and
left idle, then moved with ``vps migrate``'s service and job, each run in
this process (``runner.run_inline``) and timed from the request to the job's
end: live A->B and B->A ``--rounds`` times, then stopped, cold A->B and
B->A. The peer is ``virsh migrate --live --persistent --undefinesource
--copy-storage-all`` of the same domain, with the target volume made first
(what an operator does by hand; virsh cannot make a shallow copy of a pool
volume). It measures; it does not test.

    .venv/bin/python bench/migrate.py [--rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from provision import BENCH_ROOT, installation, machine, teardown  # noqa: E402

from kvmvps import xmlrender  # noqa: E402
from kvmvps.services import (  # noqa: E402
    Context,
    actions,
    hosts,
    images,
    inventory,
    migration,
    orders,
    runner,
)
from kvmvps.services import vps as vps_service  # noqa: E402
from kvmvps.services.facts import overlay_spec  # noqa: E402
from kvmvps.services.migration_work import load, retarget  # noqa: E402
from kvmvps.services.provisioning import OrderRequest  # noqa: E402

HOST_B = "mgbench"
SCRIPT = ROOT / "scripts" / "second-host.sh"


def second_host(action: str) -> dict[str, str]:
    env = {**os.environ, "KVMVPS_SECOND_HOST_DIR": str(BENCH_ROOT / "hosts")}
    done = subprocess.run(
        ["bash", str(SCRIPT), action, HOST_B], capture_output=True, text=True, env=env, check=True
    )
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def move(ctx: Context, to: str, live: bool) -> float:
    """One move through the service and its job; its seconds."""
    t0 = time.perf_counter()
    req = migration.request(ctx, "mig", to, live=live, actor="bench")
    if not runner.run_inline(ctx, req.job):
        raise RuntimeError(f"job {req.job[:8]} could not be claimed")
    view = vps_service.show(ctx, "mig")
    if view["host"] != to:
        raise RuntimeError(f"the move to {to} failed: {view['error']}")
    return time.perf_counter() - t0


def virsh_round(ctx: Context, b_uri: str, b_address: str, a_address: str) -> list[float]:
    """virsh migrate there and back (full copy into a volume made first); seconds each.

    ``--xml`` names the target's file for the disk: the second host shares this
    machine's file system, so the source's path would exist there too (and be
    the source's own file, locked by its QEMU).
    """
    m = load(ctx, vps_service.show(ctx, "mig")["id"], HOST_B, True)
    pool, volume = m.facts.pool, m.facts.overlay_volume
    a, b = ctx.hypervisor(ctx.settings.libvirt_uri), ctx.hypervisor(b_uri)
    capacity = a.volume_capacity(pool, volume)
    b.create_volume(pool, volume, xmlrender.overlay_volume_xml(overlay_spec(m.facts, capacity)))
    times = []
    legs = ((a, b, b_uri, b_address), (b, a, ctx.settings.libvirt_uri, a_address))
    for src, dst, dst_uri, address in legs:
        xml = retarget(
            src.migratable_xml(m.facts.domain),
            m.facts,
            {volume: dst.volume_path(pool, volume)},
            None,
            m.facts.pinned_cpus,
        )
        path = ctx.settings.state_dir / "virsh-dest.xml"
        path.write_text(xml)
        t0 = time.perf_counter()
        done = subprocess.run(
            ["virsh", "-q", "-c", src.uri, "migrate", "--live", "--persistent",
             "--undefinesource", "--copy-storage-all", "--xml", str(path), m.facts.domain,
             dst_uri, f"tcp://{address}"],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"virsh migrate: {done.stderr.strip()}")
        times.append(time.perf_counter() - t0)
    b.delete_volume(pool, volume)
    return times


def setup_hosts(ctx: Context, far: dict[str, str]) -> str:
    """Host B in kvmvps (its pool in a directory of its own); A's name."""
    local = hosts.list_hosts(ctx)[0]["name"]
    pool_dir = ctx.settings.state_dir / "pool-b"
    pool_dir.mkdir(mode=0o755)
    subprocess.run(
        ["virsh", "-q", "-c", far["uri"], "pool-define-as", ctx.settings.storage_pool, "dir",
         "--target", str(pool_dir)],
        check=True, capture_output=True,
    )  # fmt: skip
    hosts.add_host(ctx, HOST_B, far["uri"], actor="bench")
    hosts.set_public_address(ctx, HOST_B, far["address"], actor="bench")
    hosts.set_public_address(ctx, local, far["link"], actor="bench")
    return local


def run(ctx: Context, rounds: int, far: dict[str, str]) -> dict[str, Any]:
    local = setup_hosts(ctx, far)
    images.build_tiny(ctx, "tiny")
    inventory.add_plan(ctx, "migbench", 1, 256, 1)
    orders.create(ctx, OrderRequest(plan="migbench", image="tiny", hostname="mig", host=local))
    time.sleep(5)  # idle: its boot is over
    live = {"A->B": [], "B->A": []}
    for _ in range(rounds):
        live["A->B"].append(move(ctx, HOST_B, True))
        live["B->A"].append(move(ctx, local, True))
    try:
        peer: list[float | str] = list(virsh_round(ctx, far["uri"], far["address"], far["link"]))
    except RuntimeError as exc:
        peer = [str(exc)] * 2
    runner.run_or_follow(ctx, actions.request(ctx, "mig", "destroy", actor="bench").job)
    cold = {"A->B": move(ctx, HOST_B, False), "B->A": move(ctx, local, False)}
    return {
        "live s": live,
        "cold stopped s": cold,
        "virsh live s": dict(zip(live, peer, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="live moves there and back")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    far = second_host("up")
    ctx = installation()
    try:
        result = {"machine": machine(ctx), **run(ctx, args.rounds, far)}
    finally:
        far_hv = ctx.hypervisor(far["uri"])
        for domain in far_hv.list_domains(prefix="kvmvps-"):
            far_hv.undefine(domain)
        teardown(ctx)
        second_host("down")
    print(f"machine: {result['machine']}")
    print("idle tiny guest (1 vCPU, 256 MiB, 1 GiB disk), A = this libvirtd, B = second host")
    for way, times in result["live s"].items():
        shown = ", ".join(f"{t:.1f}" for t in times)
        print(f"  kvmvps live {way}: median {statistics.median(times):.1f} s  ({shown})")
    for way, seconds in result["virsh live s"].items():
        shown = f"{seconds:.1f} s" if isinstance(seconds, float) else seconds
        print(f"  virsh migrate --live --copy-storage-all {way}: {shown}")
    for way, seconds in result["cold stopped s"].items():
        print(f"  kvmvps cold (stopped) {way}: {seconds:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
