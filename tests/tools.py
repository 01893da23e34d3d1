"""Optional tools: a skip where they are missing, a failure where CI requires them.

``KVMVPS_REQUIRE_TOOLS=1`` (set by scripts/test.sh) turns every skip for a
missing tool or privilege (netns, iptables, haproxy, image builders,
selenium/chromium, sshpass) into a failure, as ``KVMVPS_REQUIRE_LIBVIRT`` and
``KVMVPS_REQUIRE_POSTGRES`` do for libvirtd and PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_TOOLS = "KVMVPS_REQUIRE_TOOLS"


def tools_required() -> bool:
    return os.environ.get(REQUIRE_TOOLS) == "1"


def missing_tool(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail it instead under ``KVMVPS_REQUIRE_TOOLS=1``."""
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_TOOLS}=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """A marker for tests that need a tool: skip (or fail, when required) where it is missing.

    The conftest's ``pytest_runtest_setup`` acts on it.
    """
    return pytest.mark.needs_tool(available=available, reason=reason)


def check_needs(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        if not mark.kwargs["available"]:
            missing_tool(mark.kwargs["reason"])


def files_holding(root: Path, secret: str) -> list[str]:
    """The files under ``root`` (not following symlinks) whose bytes contain ``secret``.

    The search runs in a child process (grep). Opening and closing a live
    SQLite file in this process would drop every POSIX lock this process's
    own SQLite connections hold on it (a close() releases them all), and a
    writer in another process could then corrupt the database.
    """
    found = subprocess.run(
        ["grep", "-rlaF", "--", secret, str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode in (0, 1), found.stderr
    return found.stdout.splitlines()


def assert_no_trace(root: Path, secret: str) -> None:
    """``secret`` is in no file under ``root``."""
    assert not files_holding(root, secret), f"the secret is in {files_holding(root, secret)}"


def file_bytes(path: Path) -> bytes:
    """The bytes of ``path``, read by a child process (see ``files_holding``)."""
    return subprocess.run(["cat", "--", str(path)], capture_output=True, check=True).stdout
