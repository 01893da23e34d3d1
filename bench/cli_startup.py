"""Benchmark: how long a read-only CLI command takes, beside its peers.

Times whole processes, the median of N runs each: a bare ``python3 -c pass``
(the floor every Python CLI pays), ``virsh list`` (libvirt's own CLI) and
``kvmvps-admin vps list`` / ``plan list`` against an initialised installation
on libvirt's test driver. It prints each median and the ratio to the bare
interpreter. It measures; it does not test.

    .venv/bin/python bench/cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvmvps.config import load_settings
from kvmvps.services import Context, inventory, provisioning, setup


def median_seconds(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """The median wall and CPU (user + system) time of ``cmd`` over ``runs`` runs.

    One warm-up run comes first. The CPU time is what the command itself
    costs; on a busy machine the wall time mostly measures the wait for a core.
    """
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        wall.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(wall), statistics.median(cpu)


def installation(state: Path, vpses: int) -> dict[str, str]:
    """An installation on the test driver holding ``vpses`` VPSes; its environment."""
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_LIBVIRT_URI": "test:///default",
        "KVMVPS_DOMAIN_TYPE": "qemu",
        "KVMVPS_STORAGE_POOL": "clibench",
        "KVMVPS_NETWORK": "clibench",
        "KVMVPS_NETWORK_BRIDGE": "clibench0",
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_QUOTA_VPS": "100000",
    }
    ctx = Context(load_settings(env))
    setup.init(ctx)
    base = state / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    inventory.add_plan(ctx, "small", 1, 64, 1)
    inventory.add_image(ctx, "base", base, login_user="vps", credentials=False)
    for i in range(vpses):
        provisioning.record_order(ctx, provisioning.OrderRequest("small", "base", f"web{i}"))
    ctx.close()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--vpses", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvmvps-clibench-") as tmp:
        env = {**os.environ, **installation(Path(tmp), args.vpses)}
        admin = [sys.executable, "-m", "kvmvps.cli.main"]
        rows = {
            "python3 -c pass": [sys.executable, "-c", "pass"],
            "virsh list": ["virsh", "-c", "qemu:///system", "list"],
            "kvmvps-admin vps list": [*admin, "vps", "list"],
            "kvmvps-admin vps list --json": [*admin, "vps", "list", "--json"],
            "kvmvps-admin plan list": [*admin, "plan", "list"],
            "kvmvps-admin --help": [*admin, "--help"],
        }
        times = {name: median_seconds(cmd, env, args.runs) for name, cmd in rows.items()}
    floor_wall, floor_cpu = times["python3 -c pass"]
    print(f"median of {args.runs} runs, load average {os.getloadavg()[0]:.1f}")
    print(
        f"  {'command':30} {'wall':>8} {'ratio':>6} {'CPU':>8} {'ratio':>6}  (ratio: to python3 -c pass)"
    )
    for name, (wall, cpu) in times.items():
        print(
            f"  {name:30} {wall * 1000:6.0f}ms {wall / floor_wall:5.1f}x"
            f" {cpu * 1000:6.0f}ms {cpu / floor_cpu:5.1f}x"
        )


if __name__ == "__main__":
    main()
