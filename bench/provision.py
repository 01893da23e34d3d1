"""Benchmark: where the time goes from an order to a guest with working credentials.

Runs against the real libvirtd in an installation of its own (its own pool,
NAT network and database), orders N VPSes one after another and prints, per
step and end to end, the median and the spread. Nothing here is a test; it
only measures and prints.

    .venv/bin/python bench/provision.py --runs 5 [--debian] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from kvmvps.config import load_settings
from kvmvps.services import Context, images, inventory, provisioning, setup
from kvmvps.services import vps as vps_service

BENCH_ROOT = Path("/var/lib/kvmvps-bench")


def installation() -> Context:
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(BENCH_ROOT, 0o755)
    state = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH_ROOT))
    os.chmod(state, 0o755)
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_STORAGE_POOL": "kvmvpsbench",
        "KVMVPS_NETWORK": "kvmvpsbench",
        "KVMVPS_NETWORK_BRIDGE": "kvmvpsbench0",
        "KVMVPS_NETWORK_SUBNET": "10.233.0.0/24",
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_CACHE_DIR": os.environ.get("KVMVPS_CACHE_DIR", "/var/cache/kvmvps-tests"),
        "KVMVPS_DOMAIN_TYPE": os.environ.get("KVMVPS_DOMAIN_TYPE", "auto"),
    }
    ctx = Context(load_settings(env))
    setup.init(ctx)
    return ctx


class BannerWatch(threading.Thread):
    """Polls host:22 from the moment of the order until an SSH banner answers."""

    def __init__(self, get_ip, t0: float) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.get_ip, self.t0, self.seen_at = get_ip, t0, None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            ip = self.get_ip()
            if ip and _banner(ip):
                self.seen_at = time.perf_counter() - self.t0
                return
            time.sleep(0.05)


def _banner(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=0.5) as sock:
            sock.settimeout(2)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def one_order(ctx: Context, image: str, n: int) -> dict[str, float]:
    """Order, build, measure; then delete. Returns seconds per phase."""
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    order = provisioning.record_order(
        ctx, provisioning.OrderRequest("bench", image, f"bench{n}"))
    marks["allocate"] = time.perf_counter() - t0
    ip = vps_service.show(ctx, order.uuid)["ip"]
    watch = BannerWatch(lambda: ip, t0)
    watch.start()
    timings = provisioning.build(ctx, order.uuid)
    marks["working credentials"] = time.perf_counter() - t0
    watch.join(timeout=1)
    watch.stop.set()
    marks.update({f"step {k}": v for k, v in timings.items()})
    start_done = marks["allocate"] + sum(
        timings[s] for s in ("clone", "seed", "render", "dhcp", "define", "start"))
    marks["order to started domain"] = start_done
    marks["order to SSH banner"] = watch.seen_at or float("nan")
    provisioning.delete(ctx, order.uuid)
    return marks


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def print_table(title: str, summary: dict[str, dict[str, float]], runs: int) -> None:
    print(f"\n{title} ({runs} runs)")
    print(f"  {'phase':28} {'median':>9} {'min':>9} {'max':>9}")
    for key, v in summary.items():
        print(f"  {key:28} {v['median']:8.3f}s {v['min']:8.3f}s {v['max']:8.3f}s")


def machine(ctx: Context) -> dict[str, object]:
    return {"cores": os.cpu_count(), "domain_type": ctx.domain_type,
            "python": platform.python_version(), "kernel": platform.release()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--debian", action="store_true", help="also the Debian image")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    ctx = installation()
    results: dict[str, object] = {"machine": machine(ctx)}
    print(f"machine: {results['machine']}")
    try:
        inventory.add_plan(ctx, "bench", 1, 512, 2)
        wanted = [("tiny", images.build_tiny)]
        if args.debian:
            wanted.append(("debian", images.build_debian))
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
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    for name in hv.list_domains(prefix="kvmvps-"):
        hv.undefine(name)
    hv.remove_network(ctx.settings.network)
    import subprocess

    for verb in ("pool-destroy", "pool-undefine"):
        subprocess.run(["virsh", "-q", verb, ctx.settings.storage_pool], capture_output=True,
                       check=False)
    shutil.rmtree(ctx.settings.state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
