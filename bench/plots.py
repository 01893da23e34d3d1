"""PNG plots of a benchmark result (``bench/run.py``): steps, latencies, concurrency.

Every plot carries the machine it was measured on, so that figures under
TCG emulation and under KVM are never compared by accident.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

COLOURS = {"tiny": "#4C72B0", "debian": "#DD8452"}


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine, its CPU and the domain type."""
    kind = "KVM" if m.get("domain_type") == "kvm" else "TCG emulation, no KVM"
    return (
        f"{m.get('cores')} cores, {m.get('cpu_model')}, {m.get('memory_gib')} GiB; "
        f"domain type {m.get('domain_type')} ({kind})"
    )


def _finish(fig: Figure, machine: dict[str, Any], path: Path) -> Path:
    """Add the machine line, save the figure as PNG and close it."""
    fig.text(0.01, 0.01, "measured on: " + machine_line(machine), fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def steps_chart(
    provisioning: dict[str, dict[str, Any]], machine: dict[str, Any], path: Path
) -> Path:
    """Horizontal bars: median seconds per provisioning step, min-max as error bars."""
    images = [i for i, v in provisioning.items() if "summary" in v]
    steps = [k for k in provisioning[images[0]]["summary"] if not k.startswith("order to")]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(steps) * len(images) + 1.8))
    height = 0.8 / len(images)
    for n, image in enumerate(images):
        summary = provisioning[image]["summary"]
        ys = [i + n * height for i in range(len(steps))]
        med = [summary[s]["median"] for s in steps]
        err = [
            [m - summary[s]["min"] for s, m in zip(steps, med, strict=True)],
            [summary[s]["max"] - m for s, m in zip(steps, med, strict=True)],
        ]
        ax.barh(ys, med, height, xerr=err, label=image, color=COLOURS.get(image), capsize=2)
        for y, s, m in zip(ys, steps, med, strict=True):
            ax.text(summary[s]["max"] * 1.2, y, _seconds(m), va="center", fontsize=7)
    ax.set_yticks(
        [i + height * (len(images) - 1) / 2 for i in range(len(steps))],
        [_step_label(s) for s in steps],
    )

    ax.invert_yaxis()
    ax.set_xscale("log")
    spread = [
        provisioning[i]["summary"][s][k] for i in images for s in steps for k in ("min", "max")
    ]
    ax.set_xlim(max(min(spread), 1e-4) / 2, max(spread) * 6)
    ax.set_xlabel("seconds (log scale); bar = median, whisker = min to max")
    ax.set_title("Provisioning: time per step of an order")
    ax.legend(title="image")
    return _finish(fig, machine, path)


def _step_label(step: str) -> str:
    name = step.removeprefix("step ")
    return "render + validate" if name == "render" else name


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def latency_chart(
    provisioning: dict[str, dict[str, Any]], machine: dict[str, Any], path: Path
) -> Path:
    """Every run's order-to-banner and order-to-credentials time, per image."""
    metrics = ("order to SSH banner", "order to working credentials")
    images = [i for i, v in provisioning.items() if v.get("runs")]
    fig, axes = plt.subplots(
        1, len(images), figsize=(max(9.0, 4.5 * len(images)), 4.2), squeeze=False
    )
    for ax, image in zip(axes[0], images, strict=True):
        runs = provisioning[image]["runs"]
        data = [[r[m] for r in runs if not math.isnan(r[m])] for m in metrics]
        ax.boxplot(data, widths=0.5, showfliers=False, medianprops={"color": "black"})
        for x, values in enumerate(data, start=1):
            jitter = [x + 0.08 * ((i % 5) - 2) for i in range(len(values))]
            ax.scatter(jitter, values, s=18, color=COLOURS.get(image), zorder=3)
        ax.set_xticks([1, 2], ["SSH banner", "working\ncredentials"])
        ax.set_ylabel("seconds from the order")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{image} image ({len(runs)} runs)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Order to SSH banner and to working credentials")
    return _finish(fig, machine, path)


def concurrency_chart(
    concurrency: list[dict[str, Any]], machine: dict[str, Any], path: Path
) -> Path:
    """Wall time per batch, and each order's latency, for 1, 4, 8... orders at once."""
    batches = [c for c in concurrency if "wall_s" in c]
    labels = [str(c["orders"]) for c in batches]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    bars = left.bar(labels, [c["wall_s"] for c in batches], color="#4C72B0")
    left.bar_label(bars, fmt="%.1f s", fontsize=8)
    left.set_xlabel("orders at once")
    left.set_ylabel("wall time until all are built (s)")
    left.set_title("Wall time")
    for x, c in enumerate(batches):
        values = c["latencies_s"]
        xs = [x + 0.06 * ((i % 7) - 3) for i in range(len(values))]
        right.scatter(xs, values, s=20, color="#DD8452", zorder=3)
        if values:
            right.hlines(statistics.median(values), x - 0.3, x + 0.3, color="black")
    right.set_xticks(range(len(batches)), labels)
    right.set_xlabel("orders at once")
    right.set_ylabel("order latency: queued to built (s)")
    right.set_ylim(bottom=0)
    right.set_title("Each order's latency (line: median)")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Concurrent orders (tiny image, one worker per order)")
    return _finish(fig, machine, path)


def peer_chart(peer: dict[str, Any], machine: dict[str, Any], path: Path) -> Path:
    """Grouped bars: a kvmvps order beside virt-install of the same image, per mark."""
    labels, ours, peers = [], [], []
    for name, data in peer["images"].items():
        for mark, value in data["kvmvps"].items():
            labels.append(f"{name}\n{mark.removeprefix('order to ')}")
            ours.append(value)
            peers.append(data["virt-install"][mark])
    xs = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(2.2 * len(labels) + 2, 4.5))
    left = ax.bar([x - 0.2 for x in xs], ours, 0.4, label="kvmvps order", color="#4C72B0")
    right = ax.bar(
        [x + 0.2 for x in xs], peers, 0.4, label="virt-install --import + SSH", color="#999999"
    )
    ax.bar_label(left, fmt="%.1f s", fontsize=8)
    ax.bar_label(right, fmt="%.1f s", fontsize=8)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("seconds from the order (median)")
    ax.set_title("kvmvps beside virt-install: same image, same libvirtd")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, machine, path)


def all_charts(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write every plot the results allow; return the files written."""
    written = []
    prov, conc = results.get("provisioning", {}), results.get("concurrency", {})
    if any("summary" in v for v in prov.get("images", {}).values()):
        written.append(steps_chart(prov["images"], prov["machine"], out_dir / "steps.png"))
        written.append(latency_chart(prov["images"], prov["machine"], out_dir / "latency.png"))
    if conc.get("batches"):
        written.append(
            concurrency_chart(conc["batches"], conc["machine"], out_dir / "concurrency.png")
        )
    peer = results.get("peer", {})
    if peer.get("images"):
        written.append(peer_chart(peer, peer["machine"], out_dir / "peer.png"))
    return written
