"""The Debian mirror the host's apt already uses: where the Debian image's packages come from.

Both formats apt reads: deb822 ``.sources`` stanzas and one-line ``.list``
entries; disabled stanzas and other types (``deb-src``) are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES_DIR = Path("/etc/apt/sources.list.d")
SOURCES_LIST = Path("/etc/apt/sources.list")
MIRROR_SCHEMES = ("http://", "https://", "file:/")


def host_mirror(
    suite: str = "bookworm", sources_dir: Path = SOURCES_DIR, sources_list: Path = SOURCES_LIST
) -> str:
    """The Debian mirror the host's apt uses for ``suite``, else deb.debian.org."""
    entries: list[tuple[str, list[str]]] = []
    for path in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        entries += _deb822_entries(_read_text(path))
    for path in [sources_list, *sorted(sources_dir.glob("*.list"))]:
        entries += _one_line_entries(_read_text(path))
    for uri, suites in entries:
        if suite in suites and uri.startswith(MIRROR_SCHEMES):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    """(URI, suites) of each enabled ``Types: deb`` stanza of a .sources file."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries.append((uri, fields.get("suites", "").split()))
    return entries


def _one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    """(URI, [suite]) of each ``deb`` line of a sources.list file."""
    entries = []
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0])
        words = line.split()
        if len(words) >= 3 and words[0] == "deb":
            entries.append((words[1], [words[2]]))
    return entries


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
