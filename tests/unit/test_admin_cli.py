"""``user``, ``token``, ``audit`` and ``host`` through the CLI, on libvirt's test driver."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from kvmvps.cli.main import cli
from kvmvps.models import ApiToken, Base, User
from kvmvps.services import Context, hosts, tokens, users
from tests.badinput import _env_of, assert_one_line_error, create_args, run_cli
from tests.snapshots import snapshot
from tests.tools import file_bytes

ACTOR = "os:" + pwd.getpwuid(os.getuid()).pw_name
PASSWORD = "correct horse battery staple"


def ok(ctx: Context, *args: str) -> str:
    result = run_cli(ctx, *args)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.stdout


def js(ctx: Context, *args: str):
    return json.loads(ok(ctx, *args, "--json"))


def entries(ctx: Context, *filters: str) -> list[dict]:
    return js(ctx, "audit", *filters)


def local_host(ctx: Context) -> str:
    """The name 'init' gave the test driver's host (it follows the machine's hostname)."""
    return hosts.list_hosts(ctx)[0]["name"]


def stored(ctx: Context) -> bytes:
    """Everything the database holds: the SQLite files' bytes and every row of every table."""
    data = b""
    if not ctx.settings.database_url:
        for path in sorted(ctx.settings.state_dir.glob("kvmvps.sqlite3*")):
            data += file_bytes(path)
    with ctx.db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            data += repr(conn.execute(select(table)).all()).encode()
    return data


# -- users ----------------------------------------------------------------------
def test_user_add_list_disable_enable(td_ctx: Context) -> None:
    view = js(td_ctx, "user", "add", "Alice@Example.com", "--admin", "--password", PASSWORD)
    assert set(view) == set(users.VIEW_KEYS)
    assert view["email"] == "alice@example.com"
    assert view["is_admin"] is True and view["is_active"] is True and view["has_password"]
    listed = js(td_ctx, "user", "list")
    assert [u["email"] for u in listed] == ["alice@example.com", "operator@localhost"]
    assert not any("hash" in key for u in listed for key in u)
    assert listed[0] == view and view["created_at"].endswith("+00:00")
    assert "EMAIL" in ok(td_ctx, "user", "list") and "alice@example.com" in ok(
        td_ctx, "user", "list"
    )

    assert users.authenticate(td_ctx, "alice@example.com", PASSWORD).email == "alice@example.com"
    assert users.authenticate(td_ctx, "ALICE@example.com ", PASSWORD) is not None
    assert users.authenticate(td_ctx, "alice@example.com", PASSWORD + "x") is None
    assert users.authenticate(td_ctx, "nobody@example.com", PASSWORD) is None
    assert users.authenticate(td_ctx, "not an address", PASSWORD) is None
    assert users.authenticate(td_ctx, "operator@localhost", "") is None  # no password at all

    assert "alice@example.com disabled" in ok(td_ctx, "user", "disable", "alice@example.com")
    assert users.authenticate(td_ctx, "alice@example.com", PASSWORD) is None
    assert js(td_ctx, "user", "list")[0]["is_active"] is False
    assert "enabled" in ok(td_ctx, "user", "enable", "alice@example.com")
    assert users.authenticate(td_ctx, "alice@example.com", PASSWORD) is not None


def test_user_bad_input(td_ctx: Context) -> None:
    ok(td_ctx, "user", "add", "bob@example.com", "--password", PASSWORD)
    before = snapshot(td_ctx)
    for args, code, fragment in [
        (["add", "bob@example.com", "--password", PASSWORD], 1, "already exists"),
        (["add", "BOB@example.com", "--password", PASSWORD], 1, "already exists"),
        (["add", "carol@example.com", "--password", "short"], 2, "at least 10 characters"),
        (["add", "carol@example.com", "--password", "x" * 2000], 2, "at most 1024"),
        (["add", "not-an-address", "--password", PASSWORD], 2, "not a valid e-mail"),
        (["add", "c@example.com", "--password", PASSWORD, "--no-password"], 2, "not both"),
        (["disable", "nobody@example.com"], 2, "no user with e-mail"),
        (["enable", "nobody@example.com"], 2, "no user with e-mail"),
        (["password", "nobody@example.com", "--password", PASSWORD], 2, "no user with e-mail"),
        (["password", "bob@example.com", "--password", "short"], 2, "at least 10"),
    ]:
        result = run_cli(td_ctx, "user", *args)
        assert_one_line_error(result, code, fragment)
        assert "short" not in result.stderr  # the password is never echoed
    assert snapshot(td_ctx) == before


def test_user_add_prompts_hidden_with_confirmation(td_ctx: Context) -> None:
    env = _env_of(td_ctx)
    result = CliRunner().invoke(
        cli,
        ["user", "add", "dave@example.com", "--json"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
        env=env,
    )
    assert result.exit_code == 0, result.stderr
    assert PASSWORD not in result.output  # hidden input is not echoed
    assert "Repeat for confirmation" in result.output
    assert users.authenticate(td_ctx, "dave@example.com", PASSWORD) is not None
    # a mismatch asks again; running out of input aborts and creates nothing
    result = CliRunner().invoke(
        cli, ["user", "add", "erin@example.com"], input=f"{PASSWORD}\nsomething else\n", env=env
    )
    assert result.exit_code == 1 and result.stderr == "error: aborted\n"
    assert [u["email"] for u in js(td_ctx, "user", "list")] == [
        "dave@example.com",
        "operator@localhost",
    ]


def test_token_only_user_and_password_change(td_ctx: Context) -> None:
    view = js(td_ctx, "user", "add", "api@example.com", "--no-password")
    assert view["has_password"] is False
    assert users.authenticate(td_ctx, "api@example.com", "") is None
    ok(td_ctx, "user", "password", "api@example.com", "--password", PASSWORD)
    assert users.authenticate(td_ctx, "api@example.com", PASSWORD) is not None


def test_passwords_are_stored_only_as_scrypt_hashes(td_ctx: Context) -> None:
    ok(td_ctx, "user", "add", "frank@example.com", "--password", PASSWORD)
    new = "another long passphrase"
    ok(td_ctx, "user", "password", "frank@example.com", "--password", new)
    with td_ctx.db.session() as s:
        stored_hash = s.scalar(select(User.password_hash).where(User.email == "frank@example.com"))
    assert stored_hash.startswith("scrypt:")
    data = stored(td_ctx)
    assert PASSWORD.encode() not in data and new.encode() not in data
    assert stored_hash.encode() in data  # the scan does see what is stored


# -- tokens ---------------------------------------------------------------------
def test_token_create_verify_list_revoke(td_ctx: Context) -> None:
    ok(td_ctx, "user", "add", "gina@example.com", "--password", PASSWORD)
    made = js(td_ctx, "token", "create", "gina@example.com", "--name", "ci")
    plaintext = made.pop("token")
    assert set(made) == set(tokens.VIEW_KEYS)
    assert plaintext.startswith("kvp_") and len(plaintext) >= 40
    assert made["user"] == "gina@example.com" and made["name"] == "ci" and not made["revoked"]
    assert made["last_used_at"] is None

    assert tokens.verify_token(td_ctx, plaintext).email == "gina@example.com"
    altered = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    assert tokens.verify_token(td_ctx, altered) is None
    assert tokens.verify_token(td_ctx, "") is None
    listed = js(td_ctx, "token", "list")
    assert [t["id"] for t in listed] == [made["id"]] and listed[0]["last_used_at"]
    assert plaintext not in json.dumps(listed)
    assert js(td_ctx, "token", "list", "--user", "gina@example.com")[0]["id"] == made["id"]
    assert js(td_ctx, "token", "list", "--user", "operator@localhost") == []

    out = ok(td_ctx, "token", "create", "gina@example.com")
    assert "will not be shown again" in out and "kvp_" in out
    assert f"token {made['id']} of gina@example.com revoked" in ok(
        td_ctx, "token", "revoke", str(made["id"])
    )
    assert tokens.verify_token(td_ctx, plaintext) is None
    assert js(td_ctx, "token", "list")[0]["revoked"] is True


def test_disabling_a_user_revokes_their_tokens(td_ctx: Context) -> None:
    ok(td_ctx, "user", "add", "hank@example.com", "--no-password")
    first = js(td_ctx, "token", "create", "hank@example.com")["token"]
    second = js(td_ctx, "token", "create", "hank@example.com")["token"]
    assert "2 API token(s) revoked" in ok(td_ctx, "user", "disable", "hank@example.com")
    assert (
        tokens.verify_token(td_ctx, first) is None and tokens.verify_token(td_ctx, second) is None
    )
    ok(td_ctx, "user", "enable", "hank@example.com")
    assert tokens.verify_token(td_ctx, first) is None  # revoked stays revoked
    assert all(t["revoked"] for t in js(td_ctx, "token", "list"))
    ok(td_ctx, "user", "disable", "hank@example.com")
    assert_one_line_error(run_cli(td_ctx, "token", "create", "hank@example.com"), 1, "disabled")


def test_token_bad_input(td_ctx: Context) -> None:
    before = snapshot(td_ctx)
    for args, code, fragment in [
        (["create", "nobody@example.com"], 2, "no user with e-mail"),
        (["create", "operator@localhost", "--name", "x" * 65], 2, "at most 64"),
        (["create", "operator@localhost", "--name", "a\x07b"], 2, "one line"),
        (["revoke", "999"], 2, "no API token with id 999"),
        (["revoke", "abc"], 2, "is not a valid integer"),
        (["list", "--user", "nobody@example.com"], 2, "no user with e-mail"),
    ]:
        assert_one_line_error(run_cli(td_ctx, "token", *args), code, fragment)
    assert snapshot(td_ctx) == before


def test_token_plaintext_is_never_stored(td_ctx: Context) -> None:
    made = [
        js(td_ctx, "token", "create", "operator@localhost", "--name", f"t{i}")["token"]
        for i in range(3)
    ]
    assert tokens.verify_token(td_ctx, made[0]) is not None
    data = stored(td_ctx)
    with td_ctx.db.session() as s:
        hashes = set(s.scalars(select(ApiToken.token_hash)))
    assert hashes == {tokens.digest(t) for t in made}
    for plaintext in made:
        assert plaintext.encode() not in data
        assert plaintext.removeprefix("kvp_").encode() not in data
        assert tokens.digest(plaintext).encode() in data


# -- audit ----------------------------------------------------------------------
def test_state_changing_commands_are_audited(td_ctx: Context) -> None:
    assert entries(td_ctx) == []  # the fixture used services, not the CLI
    ok(td_ctx, "plan", "add", "big", "--vcpus", "2", "--memory-mib", "512", "--disk-gib", "2")
    run_cli(td_ctx, "plan", "remove", "nope")
    ok(td_ctx, *create_args(hostname="web1"))
    ok(td_ctx, "user", "add", "ivy@example.com", "--password", PASSWORD)
    got = entries(td_ctx)
    assert [(e["action"], e["target"], e["result"]) for e in got] == [
        ("user.add", "ivy@example.com", "ok"),
        ("vps.create", "web1", "ok"),
        ("plan.remove", "nope", "failed"),
        ("plan.add", "big", "ok"),
    ]
    assert {e["actor"] for e in got} == {ACTOR}
    assert got[2]["detail"] == "no plan named 'nope'"
    assert got[0]["detail"] is None and got[0]["at"]
    assert PASSWORD.encode() not in stored(td_ctx)


def test_read_only_commands_are_not_audited(td_ctx: Context) -> None:
    ok(td_ctx, *create_args(hostname="web1"))
    count = len(entries(td_ctx))
    for args in (
        ["plan", "list"],
        ["image", "list"],
        ["network", "list"],
        ["host", "list"],
        ["host", "show", local_host(td_ctx)],
        ["user", "list"],
        ["token", "list"],
        ["vps", "list"],
        ["vps", "show", "web1"],
        ["vps", "xml", "web1"],
        ["audit"],
        ["jobs", "list"],
        ["reconcile"],
        ["plan", "add", "--help"],
        ["vps", "create", "-h"],
        ["vps", "--help"],
        ["--help"],
    ):
        result = run_cli(td_ctx, *args)
        assert result.exit_code == 0, (args, result.stderr)
    run_cli(td_ctx, "plan", "frobnicate")  # not a command
    assert len(entries(td_ctx)) == count
    ok(td_ctx, "reconcile", "--fix")
    assert entries(td_ctx)[0]["action"] == "reconcile"


def test_failures_usage_errors_and_aborts_are_audited(td_ctx: Context) -> None:
    ok(td_ctx, *create_args(hostname="web1"))
    run_cli(td_ctx, "plan", "add", "half", "--vcpus", "1")
    declined = CliRunner().invoke(cli, ["vps", "delete", "web1"], input="n\n", env=_env_of(td_ctx))
    assert declined.exit_code == 1
    run_cli(td_ctx, "token", "revoke", "77")
    got = entries(td_ctx, "--limit", "3")
    assert [(e["action"], e["target"], e["result"]) for e in got] == [
        ("token.revoke", "77", "failed"),
        ("vps.delete", "web1", "failed"),
        ("plan.add", "half", "failed"),
    ]
    assert got[0]["detail"] == "no API token with id 77"
    assert got[1]["detail"] == "aborted"
    assert "Missing option '--memory-mib'" in got[2]["detail"]


def test_audit_filters_and_output(td_ctx: Context) -> None:
    for name in ("p1", "p2", "p3"):
        ok(td_ctx, "plan", "add", name, "--vcpus", "1", "--memory-mib", "64", "--disk-gib", "1")
    ok(td_ctx, "plan", "remove", "p2")
    assert [e["target"] for e in entries(td_ctx, "--limit", "2")] == ["p2", "p3"]
    assert [e["target"] for e in entries(td_ctx, "--action", "plan.add")] == ["p3", "p2", "p1"]
    assert [e["action"] for e in entries(td_ctx, "--target", "p2")] == ["plan.remove", "plan.add"]
    assert len(entries(td_ctx, "--actor", ACTOR)) == 4
    assert entries(td_ctx, "--actor", "os:nobody") == []
    table = ok(td_ctx, "audit")
    assert table.splitlines()[0].split() == ["AT", "ACTOR", "ACTION", "TARGET", "RESULT", "DETAIL"]
    assert "plan.remove" in table and ACTOR in table
    assert_one_line_error(run_cli(td_ctx, "audit", "--limit", "0"), 2, "limit must be")
    entry = entries(td_ctx, "--limit", "1")[0]
    assert set(entry) == {"id", "at", "actor", "action", "target", "result", "detail"}
    assert entry["at"].endswith("+00:00")


def test_init_is_audited_once_the_database_exists(td_ctx: Context, tmp_path: Path) -> None:
    env = {
        **_env_of(td_ctx),
        "KVMVPS_STATE_DIR": str(tmp_path / "other"),
        "KVMVPS_DATABASE_URL": "",
    }
    failed = CliRunner().invoke(
        cli, ["plan", "add", "x", "--vcpus", "1", "--memory-mib", "1", "--disk-gib", "1"], env=env
    )
    assert_one_line_error(failed, 1, "run 'kvmvps-admin init'")
    assert not (tmp_path / "other" / "kvmvps.sqlite3").exists()  # no database made to audit
    assert CliRunner().invoke(cli, ["init"], env=env).exit_code == 0
    listed = CliRunner().invoke(cli, ["audit", "--json"], env=env)
    assert [(e["action"], e["result"]) for e in json.loads(listed.stdout)] == [("init", "ok")]


# -- hosts ----------------------------------------------------------------------
def node_uri(tmp_path: Path, memory_mib: int = 65536, cpus: int = 8) -> str:
    """A separate test-driver host with its own CPUs and memory."""
    path = tmp_path / "node.xml"
    path.write_text(
        f"<node><cpu><mhz>3000</mhz><model>i686</model><active>{cpus}</active>"
        f"<nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>"
        f"<memory>{memory_mib * 1024}</memory></node>"
    )
    return f"test://{path}"


def test_host_add_show_list(td_ctx: Context, tmp_path: Path) -> None:
    uri = node_uri(tmp_path)
    local_host_name = local_host(td_ctx)
    view = js(td_ctx, "host", "add", "kvm2", "--uri", uri)
    assert set(view) == set(hosts.SHOW_KEYS)
    assert view["name"] == "kvm2" and view["uri"] == uri and view["enabled"] is True
    assert (view["cpus"], view["memory_mib"], view["vps_count"]) == (8, 65536, 0)
    assert view["vcpu_limit"] == 32 and view["memory_limit_mib"] == 65536
    hv = td_ctx.hypervisor(uri)
    assert hv.network_exists(td_ctx.settings.network)  # prepared: network and pool
    assert hv.list_volumes(td_ctx.settings.storage_pool) == []
    assert [h["name"] for h in js(td_ctx, "host", "list")] == sorted(["kvm2", local_host_name])
    assert js(td_ctx, "host", "show", "kvm2") == view
    shown = ok(td_ctx, "host", "show", "kvm2")
    assert "vcpus_pinned" in shown and "memory_committed_mib" in shown
    assert entries(td_ctx)[0] == {
        **entries(td_ctx)[0],
        "action": "host.add",
        "target": "kvm2",
        "result": "ok",
    }


def test_host_bad_input(td_ctx: Context, tmp_path: Path) -> None:
    uri = node_uri(tmp_path)
    ok(td_ctx, "host", "add", "kvm2", "--uri", uri)
    before = snapshot(td_ctx)
    for args, code, fragment in [
        (["add", "kvm2", "--uri", "test:///default?x"], 1, "already has the name 'kvm2'"),
        (["add", "kvm3", "--uri", uri], 1, "host 'kvm2' already has the URI"),
        (
            ["add", "kvm3", "--uri", "qemu:///system?socket=/nonexistent"],
            1,
            "cannot connect to libvirt",
        ),
        (["add", "Bad Name", "--uri", "qemu:///system"], 2, "host name"),
        (["add", "kvm3", "--uri", "not a uri"], 2, "not a libvirt URI"),
        (["add", "kvm3"], 2, "Missing option '--uri'"),
        (["show", "nope"], 2, "no host named 'nope'"),
        (["remove", "nope"], 2, "no host named 'nope'"),
        (["disable", "nope"], 2, "no host named 'nope'"),
        (["enable", "nope"], 2, "no host named 'nope'"),
    ]:
        assert_one_line_error(run_cli(td_ctx, "host", *args), code, fragment)
    assert snapshot(td_ctx) == before
    assert len(js(td_ctx, "host", "list")) == 2
    added = entries(td_ctx, "--action", "host.add")
    assert [(e["target"], e["result"]) for e in added] == [
        ("kvm3", "failed"),
        ("kvm3", "failed"),
        ("Bad Name", "failed"),
        ("kvm3", "failed"),
        ("kvm3", "failed"),
        ("kvm2", "failed"),
        ("kvm2", "ok"),
    ]
    assert "cannot connect to libvirt" in added[3]["detail"]


def test_host_in_use_disable_enable_remove(td_ctx: Context, tmp_path: Path) -> None:
    local = local_host(td_ctx)
    ok(td_ctx, "host", "add", "kvm2", "--uri", node_uri(tmp_path))
    first = json.loads(ok(td_ctx, *create_args(hostname="web1")))
    assert first["host"] == "kvm2"  # the host with the most free memory
    shown = js(td_ctx, "host", "show", "kvm2")
    assert (shown["vps_count"], shown["vcpus_pinned"], shown["memory_committed_mib"]) == (1, 1, 256)
    assert_one_line_error(run_cli(td_ctx, "host", "remove", "kvm2"), 1, "carries 1 VPS")

    assert "host kvm2 disabled" in ok(td_ctx, "host", "disable", "kvm2")
    assert js(td_ctx, "host", "show", "kvm2")["enabled"] is False
    second = json.loads(ok(td_ctx, *create_args(hostname="web2")))
    assert second["host"] == local  # disabled hosts get no new VPSes
    assert "host kvm2 enabled" in ok(td_ctx, "host", "enable", "kvm2")
    assert js(td_ctx, "host", "show", "kvm2")["enabled"] is True

    ok(td_ctx, "vps", "delete", "web1", "--yes")
    assert "host kvm2 removed" in ok(td_ctx, "host", "remove", "kvm2")
    assert [h["name"] for h in js(td_ctx, "host", "list")] == [local]
    assert [(e["action"], e["result"]) for e in entries(td_ctx, "--target", "kvm2")] == [
        ("host.remove", "ok"),
        ("host.enable", "ok"),
        ("host.disable", "ok"),
        ("host.remove", "failed"),
        ("host.add", "ok"),
    ]


def test_help_has_examples() -> None:
    for group in ("user", "token", "audit", "host"):
        result = CliRunner().invoke(cli, [group, "--help"])
        assert result.exit_code == 0 and "Examples:" in result.stdout, group
        assert f"kvmvps-admin {group}" in result.stdout


def test_audit_table_is_append_only_for_the_cli(td_ctx: Context) -> None:
    """Only the CLI wrapper writes entries: a failing command leaves state untouched."""
    before = snapshot(td_ctx)
    assert_one_line_error(run_cli(td_ctx, "plan", "remove", "nope"), 2, "no plan named")
    assert snapshot(td_ctx) == before  # the snapshot leaves the audit log out
    with td_ctx.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == 1


@pytest.mark.parametrize("detail", ["line one\nline two", "x" * 5000])
def test_audit_details_are_one_short_line(td_ctx: Context, detail: str) -> None:
    from kvmvps.services import audit

    audit.record(td_ctx, ACTOR, "test.action", "t", "failed", detail)
    stored_detail = audit.list_entries(td_ctx, limit=1)[0]["detail"]
    assert "\n" not in stored_detail and len(stored_detail) <= audit.MAX_DETAIL
    assert stored_detail.startswith(detail.splitlines()[0][:100])


def test_audited_records_the_outcome_and_reraises(td_ctx: Context) -> None:
    from kvmvps.errors import NotFound
    from kvmvps.services import audit

    assert audit.os_actor() == ACTOR
    with audit.audited(td_ctx, "api:alice@example.com", "vps.start", "web1"):
        pass
    with pytest.raises(NotFound), audit.audited(td_ctx, "api:x", "vps.stop", "web2"):
        raise NotFound("no VPS matches 'web2'")
    with pytest.raises(RuntimeError), audit.audited(td_ctx, "api:x", "vps.reboot", "web3"):
        raise RuntimeError("boom\nsecond line")
    got = [
        (e["actor"], e["action"], e["target"], e["result"], e["detail"])
        for e in audit.list_entries(td_ctx)
    ]
    assert got == [
        ("api:x", "vps.reboot", "web3", "failed", "RuntimeError: boom"),
        ("api:x", "vps.stop", "web2", "failed", "no VPS matches 'web2'"),
        ("api:alice@example.com", "vps.start", "web1", "ok", None),
    ]


def test_authenticate_checks_a_hash_whoever_asks(
    td_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown, password-less and disabled users cost one hash check, like real ones."""
    users.add_user(td_ctx, "jo@example.com", PASSWORD)
    users.add_user(td_ctx, "off@example.com", PASSWORD)
    users.disable_user(td_ctx, "off@example.com")
    checked = []
    real = users.check_password_hash
    monkeypatch.setattr(
        users,
        "check_password_hash",
        lambda stored_hash, pw: checked.append(stored_hash) or real(stored_hash, pw),
    )
    for email in (
        "jo@example.com",
        "nobody@example.com",
        "operator@localhost",
        "off@example.com",
        "not an address",
    ):
        users.authenticate(td_ctx, email, PASSWORD)
    assert len(checked) == 5 and all(h.startswith("scrypt:") for h in checked)
    assert len(set(checked)) == 3  # jo's, off's, and one dummy for the rest
