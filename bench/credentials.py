"""Benchmark: the credentials step on a running tiny guest, beside OpenSSH by hand.

Orders one tiny VPS (its own installation, like ``bench/provision.py``),
then, on that booted guest, alternately: kvmvps's credentials delivery
(``guest.deliver_credentials``: one root connection and one remote command,
then the password proof on a second connection) and the peer's way, what an
operator's script does with OpenSSH (``bench/peer.py``: one ``ssh`` command,
then ``sshpass ssh`` with the new password). Both set the same things: the
hostname, the login user's password and keys. Prints the medians side by
side and their ratio, with the machine's load. It measures; it does not test.

    .venv/bin/python bench/credentials.py --runs 9 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from peer import credentials_by_hand, image_row  # noqa: E402
from provision import installation, machine, teardown  # noqa: E402

from kvmvps import guest, keys  # noqa: E402
from kvmvps.services import Context, images, inventory, jobs, provisioning, runner  # noqa: E402
from kvmvps.services import vps as vps_service  # noqa: E402

TARGET_S = 0.6


def order_tiny(ctx: Context) -> tuple[str, dict[str, object]]:
    """One tiny VPS, built to working credentials; its uuid and ``vps show``."""
    order = provisioning.record_order(ctx, provisioning.OrderRequest("bench", "tiny", "cred0"))
    runner.run_inline(ctx, order.job)
    job = jobs.get_job(ctx, order.job)
    if job["state"] != "succeeded":
        raise RuntimeError(f"the tiny order failed: {job['error']}")
    return order.uuid, vps_service.show(ctx, order.uuid)


def ours(ctx: Context, shown: dict[str, object], host_key: str) -> dict[str, float]:
    """kvmvps's credentials delivery once; seconds per phase and in total."""
    target = guest.Target(host=str(shown["ip"]), port=22, host_key=host_key)
    started = time.perf_counter()
    phases = guest.deliver_credentials(
        target,
        keys.provisioning_key_path(ctx.settings),
        time.monotonic() + 60,
        hostname=str(shown["hostname"]),
        user=str(shown["username"]),
        password=guest.new_password(),
        ssh_keys=[keys.provisioning_public_key(ctx.settings)],
    )
    return {**phases, "total": time.perf_counter() - started}


def theirs(ctx: Context, shown: dict[str, object]) -> float:
    """The peer's credentials by hand with OpenSSH once; seconds."""
    work = Path(tempfile.mkdtemp(prefix="cred-", dir=ctx.settings.state_dir))
    try:
        started = time.perf_counter()
        credentials_by_hand(
            ctx, image_row(ctx, "tiny"), str(shown["ip"]), str(shown["hostname"]), work
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


def host_key_of(ctx: Context, uuid: str) -> str:
    """The VPS's pinned host key, as the credentials step uses it."""
    with ctx.db.session() as s:
        row = vps_service.resolve(s, uuid)
        return row.host_key or ""


def main() -> None:
    """Order, then alternate the two ways; print medians, ratio and load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if shutil.which("sshpass") is None:
        parser.error("sshpass is missing (Debian package sshpass)")
    ctx = installation()
    host = machine(ctx)
    try:
        inventory.add_plan(ctx, "bench", 1, 512, 2)
        images.build_tiny(ctx, "tiny")
        uuid, shown = order_tiny(ctx)
        host_key = host_key_of(ctx, uuid)
        kv: list[dict[str, float]] = []
        peer: list[float] = []
        for _ in range(args.runs):
            kv.append(ours(ctx, shown, host_key))
            peer.append(theirs(ctx, shown))
    finally:
        teardown(ctx)
    medians = {k: statistics.median(r[k] for r in kv) for k in kv[0]}
    total, by_hand = medians["total"], statistics.median(peer)
    load_after = round(os.getloadavg()[0], 2)
    print(f"machine: {host}")
    print(f"\ncredentials on a running tiny guest ({args.runs} runs each, alternating; medians)")
    for phase in ("banner", "push", "proof"):
        print(f"  kvmvps {phase:22} {medians[phase]:7.3f}s")
    print(f"  kvmvps {'total':22} {total:7.3f}s   (target <= {TARGET_S} s)")
    print(f"  OpenSSH by hand (peer)        {by_hand:7.3f}s")
    print(f"  peer / kvmvps                 {by_hand / total:7.2f}x")
    print(f"  load average (1 min): {host['load_avg_1m']} before, {load_after} after")
    result = {
        "machine": host,
        "kvmvps": medians,
        "openssh_by_hand": by_hand,
        "load_avg_1m_after": load_after,
        "runs": {"kvmvps": kv, "peer": peer},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
