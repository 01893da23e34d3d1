"""Per-plan resource limits: the fields, their units and bounds, and their checks.

A plan holds one nullable column per field; NULL means unlimited. This
module is pure: it turns the fields into the specs the domain template
places (``<cputune>``, ``<iotune>``, ``<bandwidth>``) and into the parameter
sets the hypervisor adapter applies live. It knows nothing of the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kvmvps.errors import InvalidInput
from kvmvps.xmlspec import Bandwidth, BandwidthLimit, CpuTune, IoTune


@dataclass(frozen=True)
class LimitField:
    """One plan column: its name, unit, bounds and what it means."""

    name: str
    unit: str
    minimum: int
    maximum: int
    help: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


# bounds: libvirt's schema (shares, KiB/s as unsignedInt) and tc's 32-bit burst in bytes
LIMIT_FIELDS: tuple[LimitField, ...] = (
    LimitField("cpu_shares", "weight", 2, 10000, "CPU weight against other guests (default 1024)."),
    LimitField("cpu_quota_pct", "%", 1, 100, "Each vCPU may use at most this % of a host core."),
    LimitField("disk_bytes_sec", "bytes/s", 4096, 1 << 40, "Disk throughput, read+write."),
    LimitField("disk_read_bytes_sec", "bytes/s", 4096, 1 << 40, "Disk read throughput."),
    LimitField("disk_write_bytes_sec", "bytes/s", 4096, 1 << 40, "Disk write throughput."),
    LimitField("disk_iops", "IOPS", 1, 1 << 24, "Disk operations per second, read+write."),
    LimitField("disk_read_iops", "IOPS", 1, 1 << 24, "Disk reads per second."),
    LimitField("disk_write_iops", "IOPS", 1, 1 << 24, "Disk writes per second."),
    LimitField("net_in_kibps", "KiB/s", 1, 1 << 24, "Traffic to the guest: average rate."),
    LimitField("net_in_peak_kibps", "KiB/s", 1, 1 << 24, "Traffic to the guest: peak rate."),
    LimitField("net_in_burst_kib", "KiB", 1, 1 << 21, "Traffic to the guest: burst at peak."),
    LimitField("net_out_kibps", "KiB/s", 1, 1 << 24, "Traffic from the guest: average rate."),
    LimitField("net_out_peak_kibps", "KiB/s", 1, 1 << 24, "Traffic from the guest: peak rate."),
    LimitField("net_out_burst_kib", "KiB", 1, 1 << 21, "Traffic from the guest: burst."),
)
FIELDS_BY_NAME = {f.name: f for f in LIMIT_FIELDS}
UNLIMITED_WORDS = ("unlimited", "none")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class PlanLimits:
    """The limits of one plan; None everywhere means unlimited."""

    cpu_shares: int | None = None
    cpu_quota_pct: int | None = None
    disk_bytes_sec: int | None = None
    disk_read_bytes_sec: int | None = None
    disk_write_bytes_sec: int | None = None
    disk_iops: int | None = None
    disk_read_iops: int | None = None
    disk_write_iops: int | None = None
    net_in_kibps: int | None = None
    net_in_peak_kibps: int | None = None
    net_in_burst_kib: int | None = None
    net_out_kibps: int | None = None
    net_out_peak_kibps: int | None = None
    net_out_burst_kib: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in LIMIT_FIELDS}

    # -- specs for the domain template ------------------------------------
    def cputune(self) -> CpuTune:
        quota = None if self.cpu_quota_pct is None else CPU_PERIOD_US * self.cpu_quota_pct // 100
        return CpuTune(
            shares=self.cpu_shares,
            period_us=CPU_PERIOD_US if quota is not None else None,
            quota_us=quota,
        )

    def iotune(self) -> IoTune | None:
        tune = IoTune(
            total_bytes_sec=self.disk_bytes_sec,
            read_bytes_sec=self.disk_read_bytes_sec,
            write_bytes_sec=self.disk_write_bytes_sec,
            total_iops_sec=self.disk_iops,
            read_iops_sec=self.disk_read_iops,
            write_iops_sec=self.disk_write_iops,
        )
        return tune if tune.limited else None

    def bandwidth(self) -> Bandwidth | None:
        inbound = _direction(self.net_in_kibps, self.net_in_peak_kibps, self.net_in_burst_kib)
        outbound = _direction(self.net_out_kibps, self.net_out_peak_kibps, self.net_out_burst_kib)
        if inbound is None and outbound is None:
            return None
        return Bandwidth(inbound=inbound, outbound=outbound)


def throttled(lim: PlanLimits, kibps: int | None) -> PlanLimits:
    """``lim`` with network in and out held to at most ``kibps`` (None: ``lim`` itself).

    A plan's own lower average stays; peak and burst go, so nothing exceeds the hold.
    """
    if kibps is None:
        return lim
    held = {
        "net_in_kibps": min(lim.net_in_kibps or kibps, kibps),
        "net_out_kibps": min(lim.net_out_kibps or kibps, kibps),
        "net_in_peak_kibps": None,
        "net_in_burst_kib": None,
        "net_out_peak_kibps": None,
        "net_out_burst_kib": None,
    }
    return PlanLimits(**{**lim.as_dict(), **held})


def _direction(average: int | None, peak: int | None, burst: int | None) -> BandwidthLimit | None:
    if average is None:
        return None
    return BandwidthLimit(average_kibps=average, peak_kibps=peak, burst_kib=burst)


def parse_value(text: str, name: str) -> int | None:
    """An option's text: a whole number, or ``unlimited`` (None)."""
    field = FIELDS_BY_NAME[name]
    value = (text or "").strip().lower()
    if value in UNLIMITED_WORDS:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise InvalidInput(
            f"{field.option} must be a whole number of {field.unit} or 'unlimited', not {text!r}"
        )
    return int(value)


def check(values: Mapping[str, int | None]) -> PlanLimits:
    """Validated limits from ``values`` (field name -> number or None)."""
    unknown = set(values) - set(FIELDS_BY_NAME)
    if unknown:
        raise InvalidInput(f"unknown limit {sorted(unknown)[0]!r}")
    for name, value in values.items():
        if value is None:
            continue
        field = FIELDS_BY_NAME[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInput(f"{field.option} must be a whole number, not {value!r}")
        if not field.minimum <= value <= field.maximum:
            raise InvalidInput(
                f"{field.option} must be from {field.minimum} to {field.maximum} "
                f"{field.unit} (or unlimited), not {value}"
            )
    limits = PlanLimits(**values)
    _check_combinations(limits)
    return limits


def _check_combinations(lim: PlanLimits) -> None:
    if lim.disk_bytes_sec is not None and (
        lim.disk_read_bytes_sec is not None or lim.disk_write_bytes_sec is not None
    ):
        raise InvalidInput("--disk-bytes-sec excludes --disk-read-bytes-sec/--disk-write-bytes-sec")
    if lim.disk_iops is not None and (
        lim.disk_read_iops is not None or lim.disk_write_iops is not None
    ):
        raise InvalidInput("--disk-iops excludes --disk-read-iops/--disk-write-iops")
    for way, average, peak, burst in (
        ("in", lim.net_in_kibps, lim.net_in_peak_kibps, lim.net_in_burst_kib),
        ("out", lim.net_out_kibps, lim.net_out_peak_kibps, lim.net_out_burst_kib),
    ):
        if average is None and (peak is not None or burst is not None):
            raise InvalidInput(
                f"--net-{way}-peak-kibps and --net-{way}-burst-kib need --net-{way}-kibps"
            )
        if average is not None and peak is not None and peak < average:
            raise InvalidInput(f"--net-{way}-peak-kibps must not be below --net-{way}-kibps")


def _rate(bytes_sec: int) -> str:
    if bytes_sec >= 1 << 20:
        return f"{bytes_sec / (1 << 20):g} MiB/s"
    return f"{bytes_sec / 1024:g} KiB/s"


def summary(lim: PlanLimits) -> list[str]:
    """The limits in words, one line each; empty when the plan is unlimited."""
    lines = []
    if lim.cpu_quota_pct is not None:
        lines.append(f"CPU: at most {lim.cpu_quota_pct} % of a core per vCPU")
    if lim.cpu_shares is not None:
        lines.append(f"CPU weight {lim.cpu_shares}")
    for label, value in (
        ("disk", lim.disk_bytes_sec),
        ("disk read", lim.disk_read_bytes_sec),
        ("disk write", lim.disk_write_bytes_sec),
    ):
        if value is not None:
            lines.append(f"{label}: {_rate(value)}")
    for label, value in (
        ("disk", lim.disk_iops),
        ("disk read", lim.disk_read_iops),
        ("disk write", lim.disk_write_iops),
    ):
        if value is not None:
            lines.append(f"{label}: {value} IOPS")
    for label, value in (("network in", lim.net_in_kibps), ("network out", lim.net_out_kibps)):
        if value is not None:
            lines.append(f"{label}: {_rate(value * 1024)}")
    return lines
