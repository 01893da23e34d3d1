"""Benchmark: what an idle guest costs the host, in memory and in CPU.

Boots a few guests of one image, lets them settle, then reads each QEMU
process (found through libvirt's pid file) from /proc: resident memory
(``VmRSS``) and the CPU time it uses over a sampling window (utime + stime).
Used by ``bench/run.py``; it measures, it does not test.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from kvmvps.services import Context, orders, provisioning
from kvmvps.services import vps as vps_service

PID_DIR = Path("/run/libvirt/qemu")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def qemu_pid(domain: str) -> int:
    """The QEMU process of a running domain, from libvirt's pid file."""
    return int((PID_DIR / f"{domain}.pid").read_text().strip())


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (``VmRSS`` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS")


def code_cache_kib(pid: int) -> int:
    """Resident KiB of the process's anonymous read-write-execute mappings.

    Under TCG that is QEMU's translated-code cache (a 1 GiB mapping that fills
    as the guest runs new code); under KVM there is none.
    """
    total, in_rwx = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            in_rwx = head[1] == "rwxp" and len(head) < 6  # no backing file
        elif in_rwx and line.startswith("Rss:"):
            total += int(head[1])
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / CLOCK_TICKS


def sample_cpu(pids: list[int], seconds: float) -> list[float]:
    """Each process's CPU use over the same window, as a percentage of one core."""
    before = [cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    time.sleep(seconds)
    after = [cpu_seconds(p) for p in pids]
    elapsed = time.monotonic() - t0
    return [100.0 * (a - b) / elapsed for a, b in zip(after, before, strict=True)]


def idle_guests(
    ctx: Context, image: str, count: int, settle: float, window: float = 10.0, plan: str = "bench"
) -> dict[str, object]:
    """Boot ``count`` guests of ``image``, wait ``settle`` s, then measure each one."""
    uuids: list[str] = []
    try:
        for i in range(count):
            order = orders.create(ctx, provisioning.OrderRequest(plan, image, f"idle-{image}-{i}"))
            uuids.append(order.uuid)
        time.sleep(settle)
        domains = [vps_service.show(ctx, u)["domain"] for u in uuids]
        pids = [qemu_pid(d) for d in domains]
        rss = [rss_kib(p) / 1024 for p in pids]
        code = [code_cache_kib(p) / 1024 for p in pids]
        cpu = sample_cpu(pids, window)
        memory_mib = vps_service.show(ctx, uuids[0])["memory_mib"]
    finally:
        for uuid in uuids:
            provisioning.delete(ctx, uuid)
    return {
        "image": image,
        "guests": count,
        "guest_memory_mib": memory_mib,
        "settle_s": settle,
        "window_s": window,
        "rss_mib": rss,
        "code_cache_mib": code,
        "cpu_percent": cpu,
        "rss_mib_median": statistics.median(rss),
        "code_cache_mib_median": statistics.median(code),
        "cpu_percent_median": statistics.median(cpu),
    }
