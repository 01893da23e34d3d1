"""Benchmark: where the time goes from an order to a guest with working credentials.

Runs against the real libvirtd in an installation of its own (its own pool,
NAT network and database), orders N VPSes one after another and prints, per
step and end to end, the median and the spread. Nothing here is a test; it
only measures and prints. ``bench/run.py`` runs this and every other
benchmark and writes a report.

    .venv/bin/python bench/provision.py --runs 5 [--debian] [--images tiny,debian,debian-cloud-init] [--json out.json]
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kvmvps.config import load_settings
from kvmvps.errors import HypervisorError
from kvmvps.hypervisor import get_hypervisor
from kvmvps.services import Context, images, inventory, jobs, provisioning, runner, setup
from kvmvps.services import vps as vps_service
from kvmvps.services.facts import DOMAIN_PREFIX

BENCH_ROOT = Path("/var/lib/kvmvps-bench")
BENCH_NAME = "kvmvpsbench"  # pool and network; bridge kvmvpsbench0
BENCH_SUBNET = "10.233.0.0/24"


_held_locks: list[int] = []


def installation() -> Context:
    """A fresh kvmvps installation for benchmarks: own state dir, pool, network, DB.

    One benchmark at a time: the pool and network names are fixed, so this
    waits for a lock, and then removes what a killed earlier run left behind.
    """
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(BENCH_ROOT, 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    _lock()
    _remove_leftovers("qemu:///system")
    state = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH_ROOT))
    os.chmod(state, 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_STORAGE_POOL": BENCH_NAME,
        "KVMVPS_NETWORK": BENCH_NAME,
        "KVMVPS_NETWORK_BRIDGE": f"{BENCH_NAME}0",
        "KVMVPS_NETWORK_SUBNET": BENCH_SUBNET,
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_IMAGE_TEST_INTERVAL": "0",  # no image self-tests during a benchmark
        "KVMVPS_CACHE_DIR": os.environ.get("KVMVPS_CACHE_DIR", "/var/cache/kvmvps-tests"),
        "KVMVPS_DOMAIN_TYPE": os.environ.get("KVMVPS_DOMAIN_TYPE", "auto"),
    }
    if "KVMVPS_TCG_TB_CACHE_MIB" in os.environ:  # a benchmark run may vary the code cache
        env["KVMVPS_TCG_TB_CACHE_MIB"] = os.environ["KVMVPS_TCG_TB_CACHE_MIB"]
    ctx = Context(load_settings(env))
    setup.init(ctx)
    return ctx


def _lock() -> None:
    """Hold BENCH_ROOT/lock until teardown (or the process ends)."""
    fd = os.open(BENCH_ROOT / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another benchmark holds {BENCH_ROOT}/lock; waiting for it", file=sys.stderr)
        fcntl.flock(fd, fcntl.LOCK_EX)
    _held_locks.append(fd)


def _unlock() -> None:
    """Let the next benchmark run."""
    while _held_locks:
        os.close(_held_locks.pop())


def _remove_leftovers(uri: str) -> None:
    """With the lock held, any benchmark domain, network, pool or state dir is stale."""
    _remove_installation(uri, f"{BENCH_ROOT}/", BENCH_NAME, BENCH_NAME)
    for stale in BENCH_ROOT.glob("run-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _remove_installation(uri: str, state_prefix: str, network: str, pool: str) -> None:
    """Domains whose XML points under ``state_prefix``, then the network and the pool."""
    hv = get_hypervisor(uri)
    for name in hv.list_domains(prefix=DOMAIN_PREFIX):
        try:
            if state_prefix in hv.domain_xml(name):
                hv.undefine(name)
        except HypervisorError:
            continue  # it went away meanwhile
    hv.remove_network(network)
    for verb in ("pool-destroy", "pool-undefine"):
        subprocess.run(["virsh", "-q", "-c", uri, verb, pool], capture_output=True, check=False)


class BannerWatch(threading.Thread):
    """Polls host:22 from the moment of the order until an SSH banner answers."""

    def __init__(self, get_ip: Callable[[], str | None], t0: float) -> None:
        super().__init__(daemon=True)
        self.get_ip, self.t0 = get_ip, t0
        self.seen_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            ip = self.get_ip()
            if ip and _banner(ip):
                self.seen_at = time.perf_counter() - self.t0
                return
            time.sleep(0.05)


def _banner(ip: str) -> bool:
    """True when ip:22 answers with an SSH banner."""
    try:
        with socket.create_connection((ip, 22), timeout=0.5) as sock:
            sock.settimeout(2)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


class StepClock:
    """A job progress callback that notes when each build step starts."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []

    def __call__(self, step: str, _index: int, _total: int) -> None:
        self.starts.append((step, time.perf_counter()))

    def durations(self, end: float) -> dict[str, float]:
        """Seconds per step; the last step ends at ``end``."""
        ends = [t for _, t in self.starts[1:]] + [end]
        return {name: stop - start for (name, start), stop in zip(self.starts, ends, strict=True)}

    def started(self, step: str) -> float:
        return next(t for name, t in self.starts if name == step)


def one_order(ctx: Context, image: str, n: int, plan: str = "bench") -> dict[str, float]:
    """Order and build one VPS the way ``vps create --wait`` does; then delete it.

    Returns seconds per phase: ``allocate`` (the order's transaction),
    ``claim`` (the job claimed), ``step <name>`` for every build step (each
    includes the job's progress write), and the end-to-end marks.
    """
    t0 = time.perf_counter()
    order = provisioning.record_order(ctx, provisioning.OrderRequest(plan, image, f"bench{n}"))
    allocated = time.perf_counter()
    ip = vps_service.show(ctx, order.uuid)["ip"]
    watch, clock = BannerWatch(lambda: ip, t0), StepClock()
    watch.start()
    try:
        runner.run_inline(ctx, order.job, clock)
        done = time.perf_counter()
        job = jobs.get_job(ctx, order.job)
        if job["state"] != "succeeded":
            raise RuntimeError(f"order {n} on {image} failed: {job['error']}")
        watch.join(timeout=1)
    finally:
        watch.stop.set()
        provisioning.delete(ctx, order.uuid)
    marks = {"allocate": allocated - t0, "claim": clock.starts[0][1] - allocated}
    marks.update({f"step {k}": v for k, v in clock.durations(done).items()})
    marks["order to started domain"] = clock.started("dhcp-ready") - t0
    marks["order to SSH banner"] = watch.seen_at if watch.seen_at is not None else float("nan")
    marks["order to working credentials"] = done - t0
    return marks


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per key: median, min, max, stdev (0 for one run) and the number of runs."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
        }
    return out


def print_table(title: str, summary: dict[str, dict[str, float]], runs: int) -> None:
    """The summary as a plain-text table on stdout."""
    print(f"\n{title} ({runs} runs)")
    print(f"  {'phase':30} {'median':>9} {'min':>9} {'max':>9} {'stdev':>9}")
    for key, v in summary.items():
        print(
            f"  {key:30} {v['median']:8.3f}s {v['min']:8.3f}s {v['max']:8.3f}s {v['stdev']:8.3f}s"
        )


def machine(ctx: Context) -> dict[str, object]:
    """What the figures were measured on; kvm and qemu (TCG) must never be mixed up."""
    mem_kib = int(_proc_field(Path("/proc/meminfo"), "MemTotal") or 0)
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "domain_type": ctx.domain_type,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "libvirt": _first_line(["libvirtd", "--version"]),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    return _proc_field(Path("/proc/cpuinfo"), "model name") or platform.processor() or "unknown"


def _proc_field(path: Path, key: str) -> str | None:
    """The first ``key: value`` line's value (first word for sizes) of a /proc file."""
    for line in path.read_text().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            value = value.strip()
            return value.split()[0] if value.endswith(" kB") else value
    return None


def _first_line(cmd: list[str]) -> str:
    """The first line a command prints (its version), or "unknown"."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout.strip().splitlines() or ["unknown"])[0]


def main() -> None:
    """The command line: orders per image, printed as tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--debian", action="store_true", help="also the Debian image")
    parser.add_argument("--images", help="comma-separated, instead: tiny,debian,debian-cloud-init")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    ctx = installation()
    results: dict[str, object] = {"machine": machine(ctx)}
    print(f"machine: {results['machine']}")
    try:
        inventory.add_plan(ctx, "bench", 1, 512, 2)
        builders = {
            "tiny": images.build_tiny,
            "debian": images.build_debian,
            "debian-cloud-init": functools.partial(images.build_debian, cloud_init=True),
        }
        names = args.images.split(",") if args.images else ["tiny"] + ["debian"] * args.debian
        wanted = [(name, builders[name]) for name in names]
        for name, build in wanted:
            started = time.perf_counter()
            build(ctx, name)
            print(f"\nbuilt image {name} in {time.perf_counter() - started:.1f}s")
            runs = [one_order(ctx, name, i) for i in range(args.runs)]
            summary = summarise(runs)
            results[name] = summary
            print_table(f"image {name}", summary, args.runs)
    finally:
        teardown(ctx)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def teardown(ctx: Context) -> None:
    """Remove everything this installation made: its domains, network, pool and state dir.

    Only domains whose XML points into this installation's state dir are
    touched; other kvmvps installations on the same libvirtd are left alone.
    """
    s = ctx.settings
    _remove_installation(s.libvirt_uri, f"{s.state_dir}/", s.network, s.storage_pool)
    ctx.close()
    shutil.rmtree(s.state_dir, ignore_errors=True)
    _unlock()


if __name__ == "__main__":
    main()
