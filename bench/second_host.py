"""Benchmark: order to working credentials on a second host (with its agent) against the first.

    KVMVPS_BENCH_POSTGRES_URL=postgresql+psycopg://... \\
        .venv/bin/python bench/second_host.py [--runs 3] [--json out.json]

A second libvirtd on this machine (scripts/second-host.sh) is host B, run by
its own agent (``kvmvps-admin worker --host B`` in B's network namespace,
reaching PostgreSQL over B's link, as from another machine); host A is the
local libvirtd with a central worker. Orders alternate between the two
(``--host``), one at a time, and each is timed from the order to its job's
end: the credentials step has logged in with the new password by then. It
prints the median of each host and B's ratio to A. PostgreSQL is needed
(the agent's only channel); ``KVMVPS_TEST_POSTGRES_URL`` works too.
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

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fair_queue import worker_env
from provision import BENCH_ROOT, _remove_installation, machine
from provision import teardown as remove_installation

from kvmvps.config import load_settings
from kvmvps.services import Context, hosts, images, inventory, jobs, provisioning, setup
from kvmvps.services.provisioning import OrderRequest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "second-host.sh"
HOST_B = "bench2"
# a directory, pool, network and subnet of its own, away from BENCH_ROOT: the benchmarks
# that share it remove any domain under it when they start, and this one runs beside them
ROOT_DIR = Path(f"{BENCH_ROOT}-hosts")
HOSTS_DIR = ROOT_DIR / "hosts"  # not under /tmp: sshd refuses keys there
NAME, SUBNET = "kvmvpshb", "10.237.0.0/24"


def _second_host(action: str) -> dict[str, str]:
    done = subprocess.run(
        ["bash", str(SCRIPT), action, HOST_B],
        capture_output=True,
        text=True,
        env={**os.environ, "KVMVPS_SECOND_HOST_DIR": str(HOSTS_DIR)},
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"second-host.sh {action}: {done.stderr.strip()}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def _database(base_url: str) -> tuple[str, str]:
    """A fresh PostgreSQL database for this run: (its URL, its name)."""
    name = f"kvmvps_bench_hosts_{os.getpid()}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False), name


def _drop_database(base_url: str, name: str) -> None:
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _installation(database_url: str) -> Context:
    """Like provision.installation(), on PostgreSQL, with its own names."""
    ROOT_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(ROOT_DIR, 0o755)  # noqa: S103 - world-readable on purpose: QEMU (libvirt-qemu) reads it
    _remove_installation("qemu:///system", f"{ROOT_DIR}/run-", NAME, NAME)  # a killed run
    state = ROOT_DIR / f"run-{os.getpid()}"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # noqa: S103 - as above
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_DATABASE_URL": database_url,
        "KVMVPS_STORAGE_POOL": NAME,
        "KVMVPS_NETWORK": NAME,
        "KVMVPS_NETWORK_BRIDGE": f"{NAME}0",
        "KVMVPS_NETWORK_SUBNET": SUBNET,
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_IMAGE_TEST_INTERVAL": "0",
        "KVMVPS_CACHE_DIR": os.environ.get("KVMVPS_CACHE_DIR", "/var/cache/kvmvps-tests"),
        "KVMVPS_DOMAIN_TYPE": os.environ.get("KVMVPS_DOMAIN_TYPE", "auto"),
    }
    ctx = Context(load_settings(env))
    setup.init(ctx)
    return ctx


def _order_to_credentials(ctx: Context, host: str, hostname: str) -> float:
    """Seconds from recording the order to its job's end (credentials proven by a login)."""
    started = time.perf_counter()
    order = provisioning.record_order(ctx, OrderRequest("bench", "tiny", hostname, host=host))
    while True:
        view = jobs.get_job(ctx, order.job)
        if view["state"] == "succeeded":
            return time.perf_counter() - started
        if view["state"] == "failed":
            raise SystemExit(f"the order on {host} failed: {view['error']}")
        if time.perf_counter() - started > 600:
            raise SystemExit(f"the order on {host} took longer than 10 minutes")
        time.sleep(0.05)


def _measure(ctx: Context, runs: int, local: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {local: [], HOST_B: []}
    for run in range(runs):
        for host in (local, HOST_B):
            # kept running: both hosts carry as many idle guests at each order
            times[host].append(_order_to_credentials(ctx, host, f"{host}-{run}"))
    return times


def _worker(ctx: Context, log: Path, agent_ns: str | None, database_url: str) -> subprocess.Popen:
    env = {**worker_env(ctx.settings, 1), "KVMVPS_DATABASE_URL": database_url}
    argv = [sys.executable, "-m", "kvmvps", "worker"]
    if agent_ns is not None:
        argv = ["ip", "netns", "exec", agent_ns, "env", *(f"{k}={v}" for k, v in env.items())]
        argv += [sys.executable, "-m", "kvmvps", "worker", "--host", HOST_B]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="orders on each host")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    base_url = os.environ.get("KVMVPS_BENCH_POSTGRES_URL") or os.environ.get(
        "KVMVPS_TEST_POSTGRES_URL", ""
    )
    if not base_url:
        raise SystemExit("set KVMVPS_BENCH_POSTGRES_URL: host B's agent talks through PostgreSQL")
    url, db = _database(base_url)
    ctx = _installation(url)
    workers: list[subprocess.Popen] = []
    try:
        access = _second_host("up")
        images.build_tiny(ctx, "tiny")
        inventory.add_plan(ctx, "bench", 1, 256, 1)
        local = hosts.list_hosts(ctx)[0]["name"]
        hosts.add_host(ctx, HOST_B, access["uri"])
        hosts.set_agent(ctx, HOST_B, True)
        agent_url = make_url(url).set(host=access["link"]).render_as_string(hide_password=False)
        log = ctx.settings.state_dir / "workers.log"
        workers = [_worker(ctx, log, None, url), _worker(ctx, log, f"kvh-{HOST_B}", agent_url)]
        _order_to_credentials(ctx, local, "warm-a")  # first boots read the image into the cache
        _order_to_credentials(ctx, HOST_B, "warm-b")
        times = _measure(ctx, args.runs, local)
        a, b = statistics.median(times[local]), statistics.median(times[HOST_B])
        print(
            f"host A ({local}, local libvirtd, central worker): {a:6.2f} s  (median of {args.runs})"
        )
        print(f"host B ({HOST_B}, qemu+ssh, its own agent):  {b:6.2f} s  (median of {args.runs})")
        print(f"ratio B / A: {b / a:.2f}")
        if args.json:
            result = {
                "machine": machine(ctx),
                "host_a_s": [round(t, 2) for t in times[local]],
                "host_b_s": [round(t, 2) for t in times[HOST_B]],
                "ratio": round(b / a, 2),
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        for proc in workers:
            proc.terminate()
            proc.wait(timeout=60)
        _second_host("down")
        remove_installation(ctx)
        _drop_database(base_url, db)


if __name__ == "__main__":
    main()
