"""Jinja filters and globals: prices, sizes, state badges."""

from __future__ import annotations

from flask import Flask, current_app

from kvmvps.models import JobState, VpsState
from kvmvps.services.actions import ALLOWED, IN_RESCUE

# A VPS's or a job's state -> its badge's class ("running" is both).
STATE_CLASS = {
    VpsState.RUNNING: "ok",
    JobState.SUCCEEDED: "ok",
    VpsState.QUEUED: "wait",
    VpsState.BUILDING: "wait",
    VpsState.DELETING: "wait",
    "running_job": "wait",
    VpsState.STOPPED: "off",
    VpsState.SUSPENDED: "warn",
    VpsState.ERROR: "bad",
    JobState.FAILED: "bad",
}


def price(cents: int | None) -> str:
    if not cents:
        return "Free"
    return f"{current_app.config['CURRENCY']}{cents / 100:,.2f}"


def memory(mib: int | None) -> str:
    if mib is None:
        return "-"
    return f"{mib / 1024:g} GiB" if mib >= 1024 and mib % 256 == 0 else f"{mib} MiB"


def gib(mib: int | None) -> str:
    """Memory in GiB whatever its size: the admin area's one unit for capacity."""
    if mib is None:
        return "-"
    return f"{mib / 1024:,.1f} GiB"


def duration(seconds: float | None) -> str:
    """A job's duration as people read it: ``4.2 s``, ``3 min 5 s``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def state_class(state: str | None) -> str:
    return STATE_CLASS.get(state or "", "off")


def can(state: str, action: str, rescue: bool = False) -> bool:
    """Whether ``action`` may be asked of a VPS in ``state`` (``rescue``: in rescue mode)."""
    fits = action in IN_RESCUE if rescue else action != "unrescue"
    return fits and state in ALLOWED.get(action, ())


def short(value: str | None, length: int = 8) -> str:
    return (value or "")[:length]


def when(value: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM`` UTC."""
    if not value:
        return "-"
    return value.replace("T", " ")[:16] + " UTC"


def size(value: int | None) -> str:
    """Bytes in binary units: ``1.5 GiB``."""
    amount = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def register(app: Flask) -> None:
    for fn in (price, memory, gib, duration, state_class, short, when, size):
        app.add_template_filter(fn)
    app.add_template_global(can)
    app.add_template_global(JobState)
    app.add_template_global(VpsState)

    @app.context_processor
    def site() -> dict[str, object]:
        return {"site_name": app.config["SITE_NAME"]}
