"""The Markdown report of a benchmark result (``bench/run.py``).

Every section names the machine it was measured on (cores, CPU, domain type
and the load at the time), so that TCG and KVM figures are never mixed up.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

NOT_MEASURED = "not measured"


def fmt_s(value: float | None) -> str:
    """Seconds for a table: ms below one second, else seconds."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def machine_note(m: dict[str, Any]) -> str:
    """An italic line: the machine of one section."""
    kind = "real KVM" if m.get("domain_type") == "kvm" else "TCG emulation, no KVM"
    return (
        f"*Measured on {m.get('cores')} cores ({m.get('cpu_model')}), "
        f"{m.get('memory_gib')} GiB, domain type `{m.get('domain_type')}` ({kind}); "
        f"1-min load average {m.get('load_avg_1m')}{_others(m)} when it started.*"
    )


def _others(m: dict[str, Any]) -> str:
    n = m.get("other_guests_running")
    return "" if n is None else f", {n} other guest{'s' * (n != 1)} running on the host"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _section(title: str, data: dict[str, Any] | None) -> tuple[list[str], bool]:
    """The heading and machine line; True when that is all (the section failed or is absent)."""
    lines = ["", f"## {title}", ""]
    if not data:
        return lines + [f"**{NOT_MEASURED}** (this run skipped it)."], True
    if "machine" in data:
        lines += [machine_note(data["machine"]), ""]
    if data.get("error"):
        return lines + [f"**{NOT_MEASURED}**: the section failed: `{data['error']}`"], True
    return lines, False


def steps_section(prov: dict[str, Any]) -> list[str]:
    """Median seconds per provisioning step, per image, with the min-max spread."""
    head, done = _section("Provisioning: time per step", prov)
    if done:
        return head
    images = {k: v for k, v in prov["images"].items() if "summary" in v}
    if not images:
        return head + [f"**{NOT_MEASURED}**: every run failed."]
    first = next(iter(images.values()))["summary"]
    steps = [k for k in first if not k.startswith("order to")]
    header = ["step"] + [f"{name}: median (min–max)" for name in images]
    rows = [
        [s.removeprefix("step ").replace("render", "render + validate")]
        + [_spread(v["summary"].get(s)) for v in images.values()]
        for s in steps
    ]
    notes = [
        f"{name}: image built in {fmt_s(v.get('build_s'))}, {v['summary'][steps[0]]['n']} "
        f"orders one after another{_loads(v)}"
        for name, v in images.items()
    ]
    return (
        head
        + _table(header, rows)
        + [""]
        + [f"- {n}" for n in notes]
        + [
            "- `allocate` is the order's transaction (VPS row, address, MAC, pinned CPUs, job); "
            "`claim` is the job being claimed; every build step includes its job progress write.",
            "- `dhcp` only starts the DHCP update; `dhcp-ready` waits for it, after `start`.",
            "- `host-key` waits for the guest to print its host keys on the console (the tiny "
            "and the default Debian image); a cloud-init image gets its host key from kvmvps, "
            "so its wait for the boot falls in `credentials`, which logs in as soon as SSH "
            "answers.",
        ]
        + _failures(prov["images"])
    )


def _loads(v: dict[str, Any]) -> str:
    loads = v.get("load_avg_1m_after_runs") or []
    return f"; 1-min load average after each run {min(loads)}–{max(loads)}" if loads else ""


def _spread(v: dict[str, float] | None) -> str:
    if not v:
        return "–"
    return f"{fmt_s(v['median'])} ({fmt_s(v['min'])}–{fmt_s(v['max'])})"


def _failures(images: dict[str, Any]) -> list[str]:
    lines = []
    for name, v in images.items():
        for failure in v.get("failures", []):
            lines.append(f"- **failed run** ({name}): `{failure}`")
    return lines


def latency_section(prov: dict[str, Any]) -> list[str]:
    """Order to SSH banner and to working credentials: median, min, max, stdev."""
    head, done = _section("Order to SSH banner and to working credentials", prov)
    if done:
        return head
    rows = []
    for name, v in prov["images"].items():
        for metric in ("order to SSH banner", "order to working credentials"):
            s = v.get("summary", {}).get(metric)
            if s:
                rows.append(
                    [
                        name,
                        metric.removeprefix("order to "),
                        str(s["n"]),
                        fmt_s(s["median"]),
                        fmt_s(s["min"]),
                        fmt_s(s["max"]),
                        fmt_s(s["stdev"]),
                    ]
                )
    header = ["image", "from the order to", "runs", "median", "min", "max", "stdev"]
    return (
        head
        + _table(header, rows)
        + [
            "",
            "- The SSH banner is polled on port 22 every 50 ms (0.5 s connect timeout) from "
            "the moment of the order; working credentials means the build finished, with its "
            "login using the new password.",
        ]
    )


def concurrency_section(conc: dict[str, Any]) -> list[str]:
    """Wall time and per-order latency for 1, 4 and 8 orders at once."""
    head, done = _section("Concurrent orders", conc)
    if done:
        return head
    rows = []
    for c in conc["batches"]:
        lat = c["latencies_s"]
        waits = c.get("queue_wait_s") or []
        rows.append(
            [
                str(c["orders"]),
                fmt_s(c["wall_s"]),
                fmt_s(statistics.median(lat)) if lat else "–",
                fmt_s(min(lat)) if lat else "–",
                fmt_s(max(lat)) if lat else "–",
                fmt_s(statistics.median(waits)) if waits else "–",
                str(c["failed"]),
            ]
        )
    header = [
        "orders at once",
        "wall time",
        "latency median",
        "min",
        "max",
        "of which queued (median)",
        "failed",
    ]
    return (
        head
        + _table(header, rows)
        + [
            "",
            f"- Image `{conc['image']}`, one in-process worker per order (polling every "
            "20 ms); latency is from the job being queued to it finishing, and the queued part "
            "ends when a worker claims it.",
        ]
        + [
            f"- **failed order** ({c['orders']} at once): `{e}`"
            for c in conc["batches"]
            for e in c["errors"]
        ]
    )


def peer_section(peer: dict[str, Any]) -> list[str]:
    """A kvmvps order beside ``virt-install --import`` of the same image."""
    head, done = _section("kvmvps beside virt-install", peer)
    if done:
        return head
    rows = []
    for name, data in peer["images"].items():
        for mark, ours in data["kvmvps"].items():
            theirs = data["virt-install"][mark]
            rows.append(
                [
                    name,
                    mark.removeprefix("order to "),
                    fmt_s(ours),
                    fmt_s(theirs),
                    f"{theirs / ours:.2f}x",
                ]
            )
    header = ["image", "from the order to", "kvmvps", "virt-install", "virt-install / kvmvps"]
    return (
        head
        + _table(header, rows)
        + [
            "",
            "- The peer: a qcow2 overlay on the same base image, `virt-install --import` with "
            "the same memory, vCPUs, disk bus, network and kernel, then the same credentials by "
            "hand (one OpenSSH command, then a password login). Runs alternate between the two "
            "tools; medians.",
        ]
    )


def control_section(cp: dict[str, Any]) -> list[str]:
    """``vps list`` and a reconcile pass at 1,000 VPSes."""
    head, done = _section("Control plane", cp)
    if done:
        return head
    rows = [
        [
            name,
            str(len(values)),
            fmt_s(statistics.median(values)),
            fmt_s(min(values)),
            fmt_s(max(values)),
        ]
        for name, values in (
            ("`vps list` (service call)", cp["list_s"]),
            ("`kvmvps-admin vps list --json` (CLI process)", cp.get("cli_list_s", [])),
            ("reconcile pass", cp["reconcile_s"]),
        )
        if values
    ]
    return (
        head
        + _table(["operation", "runs", "median", "min", "max"], rows)
        + [
            "",
            f"- {cp['vps']:,} VPSes on libvirt's test driver (`test:///default`) with SQLite; "
            f"building them all through their jobs took {fmt_s(cp['build_all_s'])}.",
            "- The CLI figure includes starting Python and importing kvmvps.",
        ]
    )


def web_section(web: dict[str, Any]) -> list[str]:
    """p50 and p99 under concurrent clients (bench/web_load.py), or why not."""
    head, done = _section("Web", web)
    if done:
        return head
    if not web.get("measured"):
        return head + [f"**{NOT_MEASURED}**: {web.get('reason', 'no reason given')}"]
    rows = []
    for run in web["runs"]:
        for kind in ("all", "dashboard", "state.json", "order"):
            k = run.get(kind)
            if k:
                rows.append(
                    [
                        run["server"],
                        kind,
                        str(k["n"]),
                        f"{k['p50_ms']:.0f} ms",
                        f"{k['p99_ms']:.0f} ms",
                        f"{k['max_ms']:.0f} ms",
                        str(k["errors"]),
                    ]
                )
    header = ["server", "requests", "n", "p50", "p99", "max", "errors"]
    rates = "; ".join(f"{r['server']} {r['rps']:.0f} requests/s" for r in web["runs"])
    first = web["runs"][0] if web["runs"] else {}
    return (
        head
        + _table(header, rows)
        + [
            "",
            f"- {web['clients']} logged-in customers, each pausing {first.get('think_s', '?')} s "
            "between requests (dashboard, state JSON, a few orders), for "
            f"{first.get('wall_s', '?')} s in all, log-ins included; {rates}.",
            "- `bench/web_load.py`: the app over libvirt's test driver and SQLite, so no guest is "
            "built; werkzeug is `kvmvps-admin serve`, gunicorn is `serve --production`. "
            "The load generator shares the machine's cores with the server.",
        ]
    )


def density_section(dens: dict[str, Any]) -> list[str]:
    """QEMU RSS and CPU per idle guest, per image."""
    head, done = _section("Density: what an idle guest costs", dens)
    if done:
        return head
    rows = []
    for name, d in dens["images"].items():
        if d.get("error"):
            rows.append([name, "–", "–", "–", "–", f"failed: `{d['error']}`"])
            continue
        rows.append(
            [
                name,
                str(d["guests"]),
                f"{d['guest_memory_mib']} MiB",
                f"{d['rss_mib_median']:.0f} MiB ({min(d['rss_mib']):.0f}–{max(d['rss_mib']):.0f})",
                _mib(d.get("code_cache_mib_median")),
                f"{d['cpu_percent_median']:.1f} % ({min(d['cpu_percent']):.1f}–"
                f"{max(d['cpu_percent']):.1f})",
            ]
        )
    first = next(iter(dens["images"].values()), {})
    header = [
        "image",
        "guests",
        "guest memory",
        "QEMU RSS per guest, median (range)",
        "of which code cache",
        "CPU per idle guest, % of one core (range)",
    ]
    return (
        head
        + _table(header, rows)
        + [
            "",
            f"- Guests idle for {first.get('settle_s', '?')} s after their build, then CPU "
            f"(utime + stime from /proc/<pid>/stat) sampled over {first.get('window_s', '?')} s; "
            "RSS is `VmRSS` of the QEMU process (pid from /run/libvirt/qemu/<domain>.pid).",
            "- The code cache is the resident part of QEMU's anonymous rwx mappings: under TCG, "
            "its translated-code cache (a 1 GiB mapping that fills as the guest runs new code). "
            "KVM has none, so compare RSS only between runs of the same domain type.",
        ]
    )


def _mib(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.0f} MiB"


def markdown(results: dict[str, Any]) -> str:
    """The whole report."""
    m = results["machine"]
    lines = [
        "# kvmvps benchmark",
        "",
        f"`bench/run.py{' --quick' if results['mode'] == 'quick' else ''}`, "
        f"{results['started']}, {results['seconds']:.0f} s in all.",
        "",
        machine_note(m),
        "",
        f"Software: {m.get('qemu')}; {m.get('libvirt')}; Linux {m.get('kernel')}; "
        f"Python {m.get('python')}.",
    ]
    for name, error in (results.get("image_build_errors") or {}).items():
        lines += ["", f"**The {name} image did not build**, so it is not measured: `{error}`"]
    if m.get("domain_type") != "kvm":
        lines += [
            "",
            "**These figures are under TCG emulation (no KVM).** Guests boot and run "
            "several times slower than under KVM; compare them only with other TCG runs.",
        ]
    for part in (
        steps_section(results.get("provisioning") or {}),
        latency_section(results.get("provisioning") or {}),
        concurrency_section(results.get("concurrency") or {}),
        peer_section(results.get("peer") or {}),
        control_section(results.get("control_plane") or {}),
        web_section(results.get("web") or {}),
        density_section(results.get("density") or {}),
    ):
        lines += part
    return "\n".join(lines) + "\n"
