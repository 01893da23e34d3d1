"""The README's settings table matches the code: every setting documented, every default right.

The table is what operators read; a default changed in the code but not in
the table (as once happened with ``KVMVPS_WEB_HTTPS``) misleads them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from kvmvps.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# tuning knobs for tests and benchmarks, deliberately left out of the operators' table
INTERNAL = {"extra", "worker_heartbeat_seconds", "worker_poll_seconds"}
# defaults computed from other settings: the table describes them in words
DERIVED = {"database_url", "cache_dir", "proxy_dir", "backup_dir"}


def _table() -> dict[str, str]:
    """``KVMVPS_NAME`` -> the default cell's text, from the Configuration section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`KVMVPS_"):
            continue
        names = re.findall(r"`(KVMVPS_[A-Z0-9_]+)`", cells[0])
        defaults = re.split(r"\s+/\s+|,\s+", cells[1])
        if len(defaults) != len(names):
            defaults = [cells[1]] * len(names)
        rows.update({n: d.strip() for n, d in zip(names, defaults, strict=True)})
    return rows


def _as_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return '`""`' if value == "" else f"`{value}`"


def test_every_setting_is_documented_with_its_default() -> None:
    rows = _table()
    assert len(rows) > 30, "the settings table was not found"
    for f in dataclasses.fields(Settings):
        if f.name in INTERNAL:
            continue
        name = "KVMVPS_" + f.name.upper()
        assert name in rows, f"{name} is missing from the README's settings table"
        if f.name in DERIVED:
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert rows[name] == _as_text(default), (
            f"README says {name} defaults to {rows[name]}, the code says {_as_text(default)}"
        )


def test_every_documented_setting_is_read_by_the_code() -> None:
    fields = {"KVMVPS_" + f.name.upper() for f in dataclasses.fields(Settings)}
    code = "\n".join(p.read_text() for d in ("kvmvps", "web") for p in (ROOT / d).rglob("*.py"))
    for name in _table():
        read = name in fields or name in code or name.removeprefix("KVMVPS_") in code
        assert read, f"the README documents {name}, which no code reads"
