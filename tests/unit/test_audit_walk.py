"""One audit path: every state-changing CLI command leaves exactly one audit entry.

The entries are written by the service calls themselves, with the actor the
CLI passes (``os:<user>``); read-only commands leave none. Every command of
``kvmvps-admin`` is walked on libvirt's test driver, refusals included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import click
from click.testing import CliRunner
from sqlalchemy import select, update

from kvmvps.cli.main import cli
from kvmvps.models import ApiToken, Backup, Job, Snapshot, Vps
from kvmvps.services import Context, audit, jobs
from tests.badinput import _env_of, create_args, run_cli
from tests.unit.test_admin_cli import ACTOR, PASSWORD, node_uri

Args = list[str] | Callable[[Context, Path], list[str]]
# long-running, exec'ing, or starting real background services (demo: init, the
# worker and the website, a VPS build; each part is recorded by its own service)
NOT_RUN = {"worker", "serve", "vps.console", "service.supervise", "demo"}


def _token_id(ctx: Context, _tmp: Path) -> list[str]:
    with ctx.db.session() as s:
        return ["token", "revoke", str(s.scalar(select(ApiToken.id)))]


def _last_job(ctx: Context, _tmp: Path) -> list[str]:
    with ctx.db.session() as s:
        return ["jobs", "show", s.scalar(select(Job.uuid).order_by(Job.id.desc()))]


def _last_backup(ctx: Context, _tmp: Path) -> list[str]:
    with ctx.db.session() as s:
        return ["vps", "backup", "delete", "web1", s.scalar(select(Backup.uuid))]


def _last_snapshot(verb: str, *extra: str) -> Callable[[Context, Path], list[str]]:
    def args(ctx: Context, _tmp: Path) -> list[str]:
        with ctx.db.session() as s:
            uuid = s.scalar(select(Snapshot.uuid).order_by(Snapshot.id.desc()))
        return ["vps", "snapshot", verb, "web1", str(uuid), *extra]

    return args


def _expire_web2(ctx: Context, _tmp: Path) -> list[str]:
    with ctx.db.session() as s:
        s.execute(
            update(Vps).where(Vps.hostname == "web2").values(expires_at=jobs.now() - timedelta(1))
        )
    return ["vps", "delete", "--all-expired"]


# (command line, the one action it records; None: read-only, it records nothing)
WALK: list[tuple[Args, str | None]] = [
    (["plan", "add", "big", "--vcpus", "1", "--memory-mib", "128", "--disk-gib", "1"], "plan.add"),
    (["plan", "add", "big", "--vcpus", "1", "--memory-mib", "1", "--disk-gib", "1"], "plan.add"),
    (["plan", "edit", "big", "--cpu-quota-pct", "50"], "plan.edit"),
    (["plan", "edit", "big"], "plan.edit"),  # refused by the service: nothing to change
    (["plan", "list"], None),
    (
        ["plan", "backups", "big", "--slots", "3", "--schedule", "daily", "--keep", "2"],
        "plan.backups",
    ),
    (["plan", "backups", "big", "--keep", "9"], "plan.backups"),  # refused: more than the slots
    (lambda ctx, tmp: ["image", "add", "img2", str(tmp / "base.qcow2")], "image.add"),
    (["image", "list"], None),
    (["image", "test", "base"], "image.test"),  # queued: nothing runs it here
    (["image", "test", "base", "--wait"], "image.test"),  # refused: one test at a time
    (["image", "tests", "base"], None),
    (["image", "show", "base"], None),
    (["image", "build-tiny", "bad name"], "image.build-tiny"),
    (["image", "build-debian", "bad name"], "image.build-debian"),
    (["image", "build-debian", "bad name", "--cloud-init"], "image.build-debian"),
    (["network", "add", "lan2", "--subnet", "10.232.7.0/24"], "network.add"),
    (
        ["network", "add", "lan3", "--subnet", "10.232.8.0/24", "--allow-guest-traffic"],
        "network.add",
    ),
    (["network", "list"], None),
    (["user", "add", "ivy@example.com", "--password", PASSWORD], "user.add"),
    (["user", "add", "ivy@example.com", "--password", PASSWORD], "user.add"),
    (["user", "list"], None),
    (["user", "quota", "ivy@example.com"], None),
    (["user", "quota", "ivy@example.com", "--vps", "3"], "user.quota"),
    (["user", "quota", "ivy@example.com", "--vps", "-3"], "user.quota"),
    (["user", "invite", "--email", "new@example.com", "--days", "7"], "user.invite"),
    (["user", "password", "ivy@example.com", "--password", PASSWORD + "!"], "user.password"),
    (["user", "password", "nobody@example.com", "--password", PASSWORD], "user.password"),
    (["user", "disable", "ivy@example.com"], "user.disable"),
    (["user", "enable", "ivy@example.com"], "user.enable"),
    (["token", "create", "ivy@example.com", "--name", "ci"], "token.create"),
    (["token", "list"], None),
    (_token_id, "token.revoke"),
    (["token", "revoke", "999"], "token.revoke"),
    (lambda ctx, tmp: ["host", "add", "node2", "--uri", node_uri(tmp)], "host.add"),
    (["host", "list"], None),
    (["host", "show", "node2"], None),
    (["host", "disable", "node2"], "host.disable"),
    (["host", "enable", "node2"], "host.enable"),
    (["host", "maintenance", "node2", "on"], "host.maintenance"),
    (["host", "maintenance", "nope", "off"], "host.maintenance"),
    (["host", "maintenance", "node2", "off"], "host.maintenance"),
    (["host", "public-address", "node2", "203.0.113.7"], "host.public-address"),
    (["host", "agent", "node2", "on"], "host.agent"),
    (["host", "agent", "node2", "off"], "host.agent"),
    (["host", "remove", "node2"], "host.remove"),
    (create_args(hostname="web1"), "vps.create"),
    (create_args(plan="nope", hostname="web9"), "vps.create"),
    (["vps", "migrate", "web1", "--to", "nope"], "vps.migrate"),  # refused: no such host
    (["host", "evacuate", "nope"], "host.evacuate"),  # refused: no such host
    (["vps", "list"], None),
    (["vps", "show", "web1"], None),
    (["vps", "xml", "web1"], None),
    (["vps", "console", "web1", "--log"], None),  # no log yet: an error, but not a change
    (["vps", "reboot", "web1"], "vps.reboot"),
    (["vps", "pause", "web1"], "vps.pause"),
    (["vps", "resume", "web1"], "vps.resume"),
    (["vps", "start", "web1"], "vps.start"),  # refused: it runs
    (["vps", "destroy", "web1"], "vps.destroy"),
    (["vps", "resize", "web1", "--plan", "big"], "vps.resize"),
    (["vps", "start", "web1"], "vps.start"),
    (["vps", "shutdown", "web1", "--timeout", "5", "--force"], "vps.shutdown"),
    (["vps", "start", "web1"], "vps.start"),
    (["vps", "suspend", "web1"], "vps.suspend"),  # usage error: no --reason
    (["vps", "suspend", "web1", "--reason", "unpaid invoice"], "vps.suspend"),
    (["vps", "reboot", "web1"], "vps.reboot"),  # refused: suspended by the operators
    (["vps", "unsuspend", "web1"], "vps.unsuspend"),
    (["vps", "transfer-reset", "web1"], "vps.transfer_reset"),
    (["vps", "transfer-reset", "nosuchvps"], "vps.transfer_reset"),  # refused: not found
    (["vps", "forward", "add", "web1", "--guest-port", "80"], "vps.forward.add"),
    (["vps", "forward", "list", "web1"], None),
    (["vps", "forward", "remove", "web1", "20001"], "vps.forward.remove"),
    (["vps", "http", "add", "web1", "shop"], "vps.http.add"),
    (["vps", "http", "list", "web1"], None),
    (["vps", "http", "remove", "web1", "shop"], "vps.http.remove"),
    (["vps", "rescue", "web1"], "vps.rescue"),  # refused: no rescue image yet
    (["image", "edit", "base"], "image.edit"),  # refused: nothing to change
    (["image", "edit", "base", "--rescue"], "image.edit"),
    (["vps", "rescue", "web1"], "vps.rescue"),
    (["vps", "reinstall", "web1", "--yes"], "vps.reinstall"),  # refused: in rescue mode
    (["vps", "unrescue", "web1"], "vps.unrescue"),
    (["vps", "backup", "create", "web1"], "vps.backup.create"),  # queued; the copy fails here
    (["vps", "backup", "list", "web1"], None),
    (["vps", "backup", "restore", "web1", "nope", "--yes"], "vps.backup.restore"),
    (_last_backup, "vps.backup.delete"),
    (["vps", "backup", "restore", "web1", "nope", "--as-new", "web9"], "vps.backup.restore-new"),
    (["plan", "snapshots", "small", "--limit", "2"], "plan.snapshots"),
    (["vps", "snapshot", "create", "web1", "--label", "pre"], "vps.snapshot.create"),
    (["vps", "snapshot", "list", "web1"], None),
    (_last_snapshot("revert", "--yes"), "vps.snapshot.revert"),
    (_last_snapshot("delete"), "vps.snapshot.delete"),
    (["vps", "reinstall", "web1", "--yes"], "vps.reinstall"),
    (["vps", "password-reset", "web1"], "vps.password-reset"),
    (["vps", "reboot", "nope"], "vps.reboot"),
    (["jobs", "list"], None),
    (["service", "status", "worker"], None),
    (["service", "start", "nope"], "service.start"),  # usage error: starts nothing
    (["service", "stop", "nope"], "service.stop"),
    (_last_job, None),
    (["audit"], None),
    (["reconcile"], None),
    (["reconcile", "--fix"], "reconcile"),
    (["init"], "init"),
    (["vps", "delete", "web1", "--yes"], "vps.delete"),
    (create_args(hostname="web2"), "vps.create"),
    (_expire_web2, "vps.delete"),
    (["image", "remove", "img2"], "image.remove"),
    (["network", "remove", "lan2"], "network.remove"),
    (["network", "remove", "lan3"], "network.remove"),
    (["plan", "remove", "big"], "plan.remove"),
    (["plan", "remove", "big"], "plan.remove"),
]


def _leaves(group: click.Group, prefix: tuple[str, ...] = ()) -> set[str]:
    found = set()
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        if isinstance(cmd, click.Group):
            found |= _leaves(cmd, path)
        else:
            found.add(".".join(path))
    return found


def _path(args: list[str]) -> str:
    group: click.Command = cli
    path = []
    for word in args:
        if not isinstance(group, click.Group) or word not in group.commands:
            break
        path.append(word)
        group = group.commands[word]
    return ".".join(path)


def test_every_command_leaves_exactly_one_entry_or_none(td_ctx: Context, tmp_path: Path) -> None:
    walked: set[str] = set()
    for args_or_fn, action in WALK:
        args = args_or_fn(td_ctx, tmp_path) if callable(args_or_fn) else args_or_fn
        before = audit.list_entries(td_ctx, limit=10_000)
        result = run_cli(td_ctx, *args)
        after = audit.list_entries(td_ctx, limit=10_000)
        new = after[: len(after) - len(before)]
        walked.add(_path(args))
        if action is None:
            assert new == [], (args, new)
            continue
        assert [e["action"] for e in new] == [action], (args, result.stderr, new)
        entry = new[0]
        assert entry["actor"] == ACTOR
        if result.exit_code == 0:
            assert entry["result"] == "ok", (args, entry)
        if entry["result"] == "failed":
            assert entry["detail"] and "\n" not in entry["detail"], entry
            assert entry["detail"] in result.stderr, (entry, result.stderr)
    assert walked | NOT_RUN == _leaves(cli), "classify every new command in WALK"


def test_only_service_actions_are_audited_and_every_command_maps_to_one(td_ctx: Context) -> None:
    _leaves(cli)  # commands load their services lazily: load them all, as the walk does
    changing = {a for _args, a in WALK if a is not None}
    assert changing <= audit.ACTIONS
    read_only = {_path(a) for a, action in WALK if action is None and isinstance(a, list)}
    # reconcile changes things only with --fix, user quota only with a limit given, and
    # vps console records a session (vps.console) only when one opens: the walk's has none
    assert not (read_only - {"reconcile", "user.quota", "vps.console"}) & audit.ACTIONS


def test_refusals_before_the_call_are_recorded_once(td_ctx: Context) -> None:
    """A usage error or a declined confirmation of a state-changing command: one 'failed' entry."""
    run_cli(td_ctx, *create_args(hostname="web1"))
    count = len(audit.list_entries(td_ctx))
    declined = CliRunner().invoke(
        cli, ["vps", "reinstall", "web1"], input="n\n", env=_env_of(td_ctx)
    )
    assert declined.exit_code == 1
    run_cli(td_ctx, "vps", "delete")  # names no VPS: usage error raised by the command
    run_cli(td_ctx, "vps", "shutdown", "web1", "--timeout", "x")
    got = audit.list_entries(td_ctx, limit=3)
    assert len(audit.list_entries(td_ctx)) == count + 3
    assert [(e["action"], e["target"], e["result"]) for e in got] == [
        ("vps.shutdown", "", "failed"),  # click stopped before it read the VPS
        ("vps.delete", "", "failed"),
        ("vps.reinstall", "web1", "failed"),
    ]
    assert got[1]["detail"] == "name one VPS, or give --all-expired"
    assert got[2]["detail"] == "aborted"
    listed = json.loads(run_cli(td_ctx, "audit", "--json", "--limit", "1").stdout)
    assert listed[0]["action"] == "vps.shutdown"
