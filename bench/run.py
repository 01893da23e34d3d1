"""Every kvmvps benchmark in one command: a JSON file, a Markdown report and PNG plots.

    .venv/bin/python bench/run.py [--quick] [--images tiny,debian] [--out bench/results]

Writes ``latest.json``, ``latest.md``, ``steps.png``, ``latency.png`` and
``concurrency.png`` to ``--out``. It measures, against the real libvirtd, in
an installation of its own (``provision.installation()``: own state dir,
pool, network and subnet) that it removes at the end:

- provisioning, per step, and order to SSH banner / to working credentials
  for each image (``provision.one_order``, several runs one after another);
- density: QEMU RSS and CPU of idle guests (``density.idle_guests``);
- concurrency: 1, 4 and 8 orders at once (``jobs.concurrent_orders``);
- the control plane with 1,000 VPSes on the test driver (``jobs.control_plane``);
- the website under 50 clients, through ``bench/web_load.py`` when it exists
  (Flask's server and gunicorn: ``serve`` and ``serve --production``).

``--quick`` does fewer runs, as a smoke check. Needs root, libvirtd and the
``bench`` extra (matplotlib): ``.venv/bin/pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import density  # noqa: E402
import jobs as job_bench  # noqa: E402
import peer  # noqa: E402
import plots  # noqa: E402
import report  # noqa: E402
from provision import installation, machine, one_order, summarise, teardown  # noqa: E402

from kvmvps.services import Context, images, inventory  # noqa: E402

BUILDERS = {"tiny": images.build_tiny, "debian": images.build_debian}
WEB_CLIENTS = 50
WEB_SERVERS = ("werkzeug", "gunicorn")  # kvmvps-admin serve, and serve --production


@dataclass(frozen=True)
class Profile:
    """How much to measure."""

    runs: int
    concurrency: tuple[int, ...]
    control_vps: int
    control_repeats: int
    idle_guests: int
    settle_s: float
    window_s: float
    web_seconds: float


FULL = Profile(
    runs=5,
    concurrency=(1, 4, 8),
    control_vps=1000,
    control_repeats=5,
    idle_guests=3,
    settle_s=30.0,
    window_s=10.0,
    web_seconds=20.0,
)
QUICK = Profile(
    runs=2,
    concurrency=(1, 4),
    control_vps=200,
    control_repeats=2,
    idle_guests=1,
    settle_s=5.0,
    window_s=5.0,
    web_seconds=5.0,
)


def say(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def snapshot(ctx: Context, base: dict[str, Any]) -> dict[str, Any]:
    """The machine now: ``base`` plus the current load and the other guests running."""
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    others = sum(1 for state in hv.list_domains().values() if state == "running")
    return {**base, "load_avg_1m": round(os.getloadavg()[0], 2), "other_guests_running": others}


def guarded(
    name: str, ctx: Context, base: dict[str, Any], fn: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run one section; a failure becomes its ``error`` instead of ending the run."""
    say(f"section: {name}")
    started, at = time.perf_counter(), snapshot(ctx, base)
    try:
        data = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the section, the rest goes on
        traceback.print_exc()
        data = {"error": f"{type(exc).__name__}: {exc}"}
    data["machine"], data["seconds"] = at, time.perf_counter() - started
    say(f"section {name} done in {data['seconds']:.0f} s")
    return data


def build_images(ctx: Context, names: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Build each image into the installation: seconds per image, and the failures."""
    built, failed = {}, {}
    for name in names:
        say(f"building image {name}")
        t0 = time.perf_counter()
        try:
            BUILDERS[name](ctx, name)
        except Exception as exc:  # noqa: BLE001 - measure the other images
            traceback.print_exc()
            failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        built[name] = time.perf_counter() - t0
    if "tiny" not in built:
        raise RuntimeError(f"the tiny image did not build: {failed.get('tiny')}")
    return built, failed


def provisioning_runs(
    ctx: Context, names: list[str], built: dict[str, float], runs: int
) -> dict[str, Any]:
    """``runs`` orders per image, one after another; each run's marks and a summary."""
    out: dict[str, Any] = {}
    for name in names:
        done, failures, loads = [], [], []
        for i in range(runs):
            try:
                marks = one_order(ctx, name, i)
                done.append(marks)
                loads.append(round(os.getloadavg()[0], 2))
                say(
                    f"  {name} run {i + 1}/{runs}: credentials after "
                    f"{marks['order to working credentials']:.1f} s"
                )
            except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
                failures.append(f"{type(exc).__name__}: {exc}")
                say(f"  {name} run {i + 1}/{runs} failed: {exc}")
        out[name] = {
            "build_s": built.get(name),
            "runs": done,
            "failures": failures,
            "load_avg_1m_after_runs": loads,
        }
        if done:
            out[name]["summary"] = summarise(done)
    return {"images": out}


def density_runs(ctx: Context, names: list[str], p: Profile) -> dict[str, Any]:
    """Idle guests of every image."""
    out: dict[str, Any] = {}
    for name in names:
        try:
            out[name] = density.idle_guests(ctx, name, p.idle_guests, p.settle_s, p.window_s)
        except Exception as exc:  # noqa: BLE001 - reported per image
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"images": out}


def concurrency_runs(ctx: Context, counts: tuple[int, ...]) -> dict[str, Any]:
    """A batch of ``n`` orders at once for every ``n`` in ``counts``."""
    batches = []
    for n in counts:
        say(f"  {n} order(s) at once")
        batches.append(job_bench.concurrent_orders(ctx, n, "tiny"))
    return {"image": "tiny", "batches": batches}


def web_runs(p: Profile) -> dict[str, Any]:
    """The website under ``WEB_CLIENTS`` clients: bench/web_load.py, once per server kind.

    It runs as its own process (it starts the server and the load generator
    processes itself) and hands its figures back through ``--json``.
    """
    script = BENCH_DIR / "web_load.py"
    if not script.exists():
        return {
            "measured": False,
            "reason": "bench/web_load.py (the web load generator) does not exist yet.",
        }
    runs = []
    for server in WEB_SERVERS:
        say(f"  web: {WEB_CLIENTS} clients, {server}")
        with tempfile.TemporaryDirectory(prefix="kvmvps-bench-web-") as tmp:
            out = Path(tmp) / "web.json"
            subprocess.run(
                [
                    sys.executable,
                    str(script),
                    "--server",
                    server,
                    "--clients",
                    str(WEB_CLIENTS),
                    "--duration",
                    str(p.web_seconds),
                    "--json",
                    str(out),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=600,
            )
            runs.append(json.loads(out.read_text()))
    return {"measured": True, "clients": WEB_CLIENTS, "runs": runs}


def measure(args: argparse.Namespace, p: Profile) -> dict[str, Any]:
    """Every section; the real-libvirt ones in the benchmark's own installation."""
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "profile": asdict(p),
    }
    ctx = installation()
    base = machine(ctx)
    results["machine"] = base
    say(f"machine: {base}")
    try:
        inventory.add_plan(ctx, "bench", 1, 512, 2)
        built, results["image_build_errors"] = build_images(ctx, args.images)
        names = [n for n in args.images if n in built]
        results["provisioning"] = guarded(
            "provisioning",
            ctx,
            base,
            lambda: provisioning_runs(ctx, names, built, args.runs or p.runs),
        )
        results["peer"] = guarded(
            "beside virt-install", ctx, base, lambda: peer.compare(ctx, names, args.runs or p.runs)
        )
        results["density"] = guarded("density", ctx, base, lambda: density_runs(ctx, names, p))
        results["concurrency"] = guarded(
            "concurrency", ctx, base, lambda: concurrency_runs(ctx, p.concurrency)
        )
        results["control_plane"] = guarded(
            "control plane",
            ctx,
            base,
            lambda: job_bench.control_plane(p.control_vps, p.control_repeats),
        )
        results["web"] = guarded("web", ctx, base, lambda: web_runs(p))
        if args.postgres:
            results["claims"] = guarded(
                "job claims", ctx, base, lambda: job_bench.claim_throughput(args.postgres)
            )
    finally:
        say("removing the benchmark's installation")
        teardown(ctx)
    return results


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """latest.json, latest.md and the plots in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(_plain(results), indent=2) + "\n")
    (out / "latest.md").write_text(report.markdown(results))
    return [out / "latest.json", out / "latest.md", *plots.all_charts(results, out)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--images`` becomes a list."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs: a smoke check")
    parser.add_argument(
        "--images",
        default="tiny,debian",
        help="comma-separated images to measure (default: tiny,debian)",
    )
    parser.add_argument("--runs", type=int, help="orders per image (default 5, quick 2)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--postgres", help="also measure job claims on this PostgreSQL URL")
    args = parser.parse_args(argv)
    args.images = [i for i in args.images.split(",") if i]
    unknown = set(args.images) - set(BUILDERS)
    if unknown or "tiny" not in args.images:
        parser.error(
            f"--images: choose from {', '.join(BUILDERS)}, with tiny "
            f"(concurrency uses it); not {', '.join(sorted(unknown)) or 'without tiny'}"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure everything, then write the results."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on SIGTERM too
    t0 = time.perf_counter()
    results = measure(args, QUICK if args.quick else FULL)
    results["seconds"] = time.perf_counter() - t0
    for path in write(results, args.out):
        say(f"wrote {path}")


if __name__ == "__main__":
    main()
