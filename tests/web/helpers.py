"""Checks shared by the website and API tests."""

from __future__ import annotations

import html
import re

import pytest

from kvmvps.hypervisor import Hypervisor
from kvmvps.services import Context, audit
from tests.snapshots import db_snapshot
from tests.tools import files_holding

# Hypervisor calls that do work on a host: a request must never make them.
WORK = (
    "create_volume",
    "upload_volume",
    "delete_volume",
    "resize_volume",
    "define_domain",
    "undefine",
    "start",
    "shutdown",
    "destroy",
    "reboot",
    "suspend",
    "resume",
    "add_dhcp_host",
    "remove_dhcp_host",
    "remove_network",
)
PASSWORD_INPUT = re.compile(r'value="([^"]*)" aria-label="Password" data-password')


def forbid_libvirt_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every working hypervisor call fail the test; returns the calls tried."""
    tried: list[str] = []
    for name in WORK:

        def refuse(*_args: object, _name: str = name, **_kwargs: object) -> None:
            tried.append(_name)
            raise AssertionError(f"a web request called Hypervisor.{_name}")

        monkeypatch.setattr(Hypervisor, name, refuse)
    return tried


def forbid_libvirt(monkeypatch: pytest.MonkeyPatch) -> None:
    """No libvirt at all: for pages that must read the database only."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a read-only page reached for libvirt")

    monkeypatch.setattr(Context, "hypervisor", refuse)


def text(response: object) -> str:
    """A page's text with entities decoded (messages are compared as people read them)."""
    return html.unescape(response.get_data(as_text=True))  # type: ignore[attr-defined]


def field_errors(response: object, name: str) -> list[str]:
    """The error messages shown right after the field ``name`` (within its block)."""
    page = response.get_data(as_text=True)  # type: ignore[attr-defined]
    start = page.find(f'name="{name}"')
    assert start >= 0, f"no field {name} on the page"
    tag = page[page.rfind("<", 0, start) : page.find(">", start)]
    end = page.find("</fieldset>" if 'type="radio"' in tag else "</div>", start)
    block = page[start:end]
    return [html.unescape(m) for m in re.findall(r'<p class="error" role="alert">(.*?)</p>', block)]


def shown_password(response: object) -> str | None:
    match = PASSWORD_INPUT.search(response.get_data(as_text=True))  # type: ignore[attr-defined]
    return html.unescape(match.group(1)) if match else None


def assert_not_stored(ctx: Context, secret: str) -> None:
    """The secret is in no row of any table, and (SQLite) in no byte of the database files."""
    assert secret not in repr(db_snapshot(ctx))
    assert all(secret not in repr(e) for e in audit.list_entries(ctx, limit=10_000))
    if not ctx.settings.database_url:
        db = ctx.settings.sqlite_path
        held = files_holding(db.parent, secret)
        assert not [f for f in held if f.startswith(str(db))], f"the password is in {held}"
