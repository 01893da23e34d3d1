"""Control characters: refused in every field, escaped on the operator's terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmvps import validation
from kvmvps.errors import InvalidInput
from kvmvps.models import AuditEntry, User
from kvmvps.services import Context, audit, provisioning, tokens, users, vps_extra
from tests.badinput import assert_one_line_error, run_cli

ESC = "\x1b]0;pwned\x07\x1b[2J"  # retitles the terminal and clears it
HOSTILE = ["\x1b", "\x00", "\x7f", "\x9b", "\u202e", "\u2028", "\u200b"]


@pytest.mark.parametrize(
    ("check", "good"),
    [
        (validation.hostname, "web1"),
        (lambda v: validation.object_name(v, "plan name"), "small"),
        (validation.email, "a@example.com"),
        (validation.dns_name, "www.example.org"),
        (validation.unix_user, "debian"),
        (validation.bridge_name, "br0"),
        (validation.duration, "30m"),
    ],
)
def test_patterns_refuse_a_trailing_newline_and_control_characters(check, good: str) -> None:
    assert check(good)
    for bad in (good + "\n", good + "\r\n", "\n" + good, good[:1] + "\x1b" + good[1:]):
        with pytest.raises(InvalidInput):
            check(bad)


@pytest.mark.parametrize("ch", HOSTILE)
def test_free_text_fields_refuse_every_kind_of_control(ch: str) -> None:
    with pytest.raises(InvalidInput, match="control characters"):
        validation.one_line(f"a{ch}b", "reason", 100)
    with pytest.raises(InvalidInput):
        validation.email(f"a{ch}b@example.com")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    with pytest.raises(InvalidInput, match="control characters"):
        validation.ssh_public_key(f"{key} me{ch}@laptop")
    assert validation.one_line("  fine text  ", "reason", 100) == "fine text"


def test_printable_escapes_and_keeps_what_it_is_told() -> None:
    assert validation.printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert validation.printable("x\u202ey") == "x\\u202ey"
    assert validation.printable("l1\nl2\tz", keep="\n\t") == "l1\nl2\tz"
    assert validation.printable("plain ünïcode") == "plain ünïcode"


def test_token_names_and_kernel_command_lines_refuse_control(td_ctx: Context) -> None:
    with pytest.raises(InvalidInput, match="control characters"):
        tokens.create_token(td_ctx, "operator@localhost", "ci" + ESC)
    assert tokens.list_tokens(td_ctx) == []
    with pytest.raises(InvalidInput):
        users.add_user(td_ctx, "evil" + ESC + "@example.com", "long enough password")


def test_audit_entries_keep_what_was_typed_legible(td_ctx: Context) -> None:
    audit.record(td_ctx, "web:127.0.0.1", "user.login", "x" + ESC + "@e.com", audit.FAILED)
    target = audit.list_entries(td_ctx, limit=1)[0]["target"]
    assert "\x1b" not in target and "\x07" not in target and "\\x1b]0;pwned" in target


def raw_rows(ctx: Context) -> None:
    """Rows as an older version (or a direct database edit) might have left them."""
    with ctx.db.session() as s:
        s.add(AuditEntry(actor="web:" + ESC, action="user.login", target=ESC, result="failed"))
        s.add(User(email="old" + ESC + "@example.com", is_admin=False, is_active=True))


def test_the_cli_escapes_audit_and_user_lists(td_ctx: Context) -> None:
    raw_rows(td_ctx)
    for args in (["audit"], ["user", "list"]):
        result = run_cli(td_ctx, *args)
        assert result.exit_code == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "\\x1b" in result.stdout
        as_json = run_cli(td_ctx, *args, "--json").stdout
        assert "\x1b" not in as_json and "\\u001b" in as_json


def test_the_console_log_reaches_the_terminal_escaped(td_ctx: Context) -> None:
    placed = provisioning.record_order(
        td_ctx, provisioning.OrderRequest("small", "base", "web1"), actor="test"
    )
    _name, path = vps_extra.console_log_path(td_ctx, placed.uuid)
    Path(path).write_bytes(b"login: \x1b]0;owned\x07\x1b[31mred\x1b[0m\r\nline two\n\x9b2J\n")
    result = run_cli(td_ctx, "vps", "console", "web1", "--log")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b[31mred" in out and "line two\n" in out


def test_cli_errors_are_escaped(td_ctx: Context) -> None:
    result = run_cli(td_ctx, "user", "disable", "evil" + ESC + "@example.com")
    assert_one_line_error(result, 2, "is not a valid e-mail address")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
