"""Semantic XML comparison for golden-file tests (as nova's assertXmlEqual)."""

from __future__ import annotations

import os
from pathlib import Path

from lxml import etree

GOLDEN = Path(__file__).parent / "golden"


def canonical(xml: str) -> bytes:
    """Whitespace-insensitive canonical form: attribute order and indentation ignored."""
    parser = etree.XMLParser(remove_blank_text=True, remove_comments=True)
    root = etree.fromstring(xml.encode(), parser)
    for el in root.iter():
        if el.text is not None and not el.text.strip():
            el.text = None
        if el.tail is not None and not el.tail.strip():
            el.tail = None
    return etree.tostring(root, method="c14n")


REGENERATE = "KVMVPS_REGENERATE_GOLDEN"


def assert_matches_golden(xml: str, name: str) -> None:
    """Compare with tests/golden/NAME; ``KVMVPS_REGENERATE_GOLDEN=1`` (re)writes it.

    A test run never creates a golden file by itself: a missing one fails.
    """
    path = GOLDEN / name
    if os.environ.get(REGENERATE) == "1":
        path.write_text(xml)
    if not path.exists():
        raise AssertionError(
            f"golden file {path} is missing; write it with "
            f"{REGENERATE}=1 python -m pytest tests/unit/test_xml_golden.py and review the diff"
        )
    expected = path.read_text()
    assert canonical(xml) == canonical(expected), f"{name} differs from its golden file"
