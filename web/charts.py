"""Usage charts as server-rendered SVG: coordinates computed here, placed by ``_charts.html``.

No script and no inline style: lines take their colours from classes in
style.css, so the pages stay within the site's Content Security Policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmvps.services.usage import Point, Series

WIDTH, HEIGHT = 600, 160
LEFT, BOTTOM, TOP = 0, 18, 6


@dataclass(frozen=True)
class Line:
    label: str
    css: str
    segments: list[str]  # SVG polyline "x,y x,y ..." strings, broken at gaps


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    top: str  # the y axis's top value, as text
    lines: list[Line]
    first: str
    last: str
    empty: bool
    width: int = WIDTH
    height: int = HEIGHT
    plot_bottom: int = HEIGHT - BOTTOM


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for factor in (1, 2, 5, 10):
        if factor * power >= value:
            return factor * power
    return 10 * power


def _bytes_rate(value: float) -> str:
    for unit in ("B/s", "KiB/s", "MiB/s", "GiB/s"):
        if value < 1024:
            return f"{value:g} {unit}"
        value /= 1024
    return f"{value:g} TiB/s"


def _segments(values: list[float | None], top: float) -> list[str]:
    count = max(len(values) - 1, 1)
    plot = HEIGHT - BOTTOM - TOP
    segments: list[str] = []
    current: list[str] = []
    for i, value in enumerate(values):
        if value is None:
            if current:
                segments.append(" ".join(current))
            current = []
            continue
        x = LEFT + (WIDTH - LEFT) * i / count
        y = TOP + plot * (1 - min(value, top) / top)
        current.append(f"{x:.1f},{y:.1f}")
    if current:
        segments.append(" ".join(current))
    # a lone point still shows: a polyline of one point is drawn as a dot by its stroke caps
    return [seg if " " in seg else f"{seg} {seg}" for seg in segments]


def _chart(title: str, series: Series, fields: list[tuple[str, str, str]], percent: bool) -> Chart:
    values = {f: [getattr(p, f) for p in series.points] for f, _label, _css in fields}
    seen = [v for vs in values.values() for v in vs if v is not None]
    top = 100.0 if percent and max(seen, default=0) <= 100 else _nice(max(seen, default=0))
    lines = [Line(label, css, _segments(values[f], top)) for f, label, css in fields]
    fmt = "%H:%M" if series.period != "month" else "%d %b"
    return Chart(
        title=title,
        unit="%" if percent else "bytes/s",
        top=f"{top:g} %" if percent else _bytes_rate(top),
        lines=lines,
        first=series.start.strftime(fmt),
        last=series.end.strftime(fmt),
        empty=not seen,
    )


def charts(series: Series) -> list[Chart]:
    """CPU, network and disk charts of one series."""
    return [
        _chart("CPU", series, [("cpu_pct", "CPU", "line-a")], True),
        _chart(
            "Network",
            series,
            [("rx_bps", "in", "line-a"), ("tx_bps", "out", "line-b")],
            False,
        ),
        _chart(
            "Disk I/O",
            series,
            [("read_bps", "read", "line-a"), ("write_bps", "write", "line-b")],
            False,
        ),
    ]


__all__ = ["Chart", "Line", "Point", "charts"]
