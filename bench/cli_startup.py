"""Benchmark: how long a read-only CLI command takes, beside its peers.

Times whole processes, the median of N runs each: a bare ``python3 -c pass``
(the floor every Python CLI pays), ``virsh list`` (libvirt's own CLI) and
``kvmvps-admin vps list`` / ``plan list`` against an initialised installation
on libvirt's test driver, each run in-process (``KVMVPS_CLI_DIRECT=1``) and
answered by a running worker (its control socket, ``kvmvps.cli.fastpath``),
with the worker's own CPU per answer. It prints each median and the ratio to
the bare interpreter. It measures; it does not test.

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


def worker_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker serving the installation's control socket; returns once it answers."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "kvmvps", "worker"], env=env, stderr=subprocess.DEVNULL
    )
    sock = Path(env["KVMVPS_STATE_DIR"]) / "control.sock"
    deadline = time.monotonic() + 120
    while not sock.exists():
        if time.monotonic() > deadline or worker.poll() is not None:
            raise RuntimeError("the worker did not open its control socket")
        time.sleep(0.1)
    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--vpses", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvmvps-clibench-") as tmp:
        env = {**os.environ, **installation(Path(tmp), args.vpses)}
        direct = {**env, "KVMVPS_CLI_DIRECT": "1"}
        admin = [sys.executable, "-m", "kvmvps"]
        times = {
            "python3 -c pass": median_seconds([sys.executable, "-c", "pass"], env, args.runs),
            "virsh list": median_seconds(["virsh", "-c", "qemu:///system", "list"], env, args.runs),
        }
        for label, argv in (
            ("vps list", ["vps", "list"]),
            ("vps list --json", ["vps", "list", "--json"]),
            ("plan list", ["plan", "list"]),
        ):
            times[f"{label} (in-process)"] = median_seconds([*admin, *argv], direct, args.runs)
        times["--help (in-process)"] = median_seconds([*admin, "--help"], direct, args.runs)
        worker = start_worker(env)
        try:
            for label, argv in (
                ("vps list", ["vps", "list"]),
                ("vps list --json", ["vps", "list", "--json"]),
                ("plan list", ["plan", "list"]),
            ):
                before = worker_cpu(worker.pid)
                times[f"{label} (worker answers)"] = median_seconds([*admin, *argv], env, args.runs)
                served = (worker_cpu(worker.pid) - before) / (args.runs + 1)
                print(f"  worker CPU per answer to {label}: {served * 1000:.0f} ms")
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    floor_wall, floor_cpu = times["python3 -c pass"]
    print(f"median of {args.runs} runs, load average {os.getloadavg()[0]:.1f}")
    print(
        f"  {'command':34} {'wall':>8} {'ratio':>6} {'CPU':>8} {'ratio':>6}"
        "  (ratio: to python3 -c pass)"
    )
    for name, (wall, cpu) in times.items():
        print(
            f"  {name:34} {wall * 1000:6.0f}ms {wall / floor_wall:5.1f}x"
            f" {cpu * 1000:6.0f}ms {cpu / floor_cpu:5.1f}x"
        )


if __name__ == "__main__":
    main()
