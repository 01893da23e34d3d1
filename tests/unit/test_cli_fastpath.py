"""Read-only commands answered by the running worker: same output, never anything else.

A real worker process serves its control socket; the CLI runs as separate
processes, once the short way and once with ``KVMVPS_CLI_DIRECT=1``, and
both must print the same bytes and exit with the same code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from kvmvps.cli import fastpath
from kvmvps.cli.main import cli
from kvmvps.services import Context, audit, provisioning
from kvmvps.services import vps as vps_service
from tests.badinput import _env_of

PY = sys.executable
PAIRS = [
    ["vps", "list"],
    ["vps", "show", "web1", "--json"],
    ["vps", "show", "nosuch"],
    ["image", "list", "--json"],
    ["jobs", "list"],
    ["audit", "--limit", "5"],
    ["--help"],
]


def cli_env(ctx: Context, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVMVPS_")}
    return {**env, **_env_of(ctx), **extra}


def kvmvps(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "kvmvps", *args], env=env, capture_output=True, text=True, timeout=120
    )


def short_way(env: dict[str, str], *args: str) -> dict[str, object] | None:
    """The worker's answer, asked from a process that must not import SQLAlchemy."""
    probe = (
        "import json, sys; from kvmvps.cli import fastpath; "
        "a = fastpath.ask_worker(sys.argv[1:], __import__('os').environ); "
        "print(json.dumps({'answer': a, 'sqlalchemy': 'sqlalchemy' in sys.modules}))"
    )
    out = subprocess.run(
        [PY, "-c", probe, *args], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(out.stdout)
    assert result["sqlalchemy"] is False
    return result["answer"]


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def serving(
    database_url: str, request: pytest.FixtureRequest
) -> Iterator[tuple[Context, subprocess.Popen[bytes], Path]]:
    """A worker process serving the installation's control socket.

    Processes and a socket are what is tested here, the same for either
    database, so one database is enough.
    """
    if database_url:
        pytest.skip("one database is enough: processes and a socket are tested here")
    td_ctx: Context = request.getfixturevalue("td_ctx")
    provisioning.record_order(
        td_ctx, provisioning.OrderRequest("small", "base", "web1"), actor="test"
    )
    sock = Path(td_ctx.settings.state_dir) / fastpath.SOCKET_NAME
    worker = subprocess.Popen(
        [PY, "-m", "kvmvps", "worker"], env=cli_env(td_ctx), stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: short_way(cli_env(td_ctx), "plan", "list") is not None)
        # the worker builds the order first (on its own test driver): wait for a still state
        wait_for(lambda: vps_service.show(td_ctx, "web1")["state"] not in ("building", "queued"))
        yield td_ctx, worker, sock
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def test_only_read_only_commands_take_the_short_way() -> None:
    assert fastpath.routable(["vps", "list", "--json"])
    assert fastpath.routable(["audit"])
    assert fastpath.routable(["--help"]) and fastpath.routable(["vps", "list", "--help"])
    for argv in (
        ["vps", "delete", "web1"],
        ["vps", "create"],
        ["vps", "delete", "--help"],
        ["--debug", "vps", "list"],
        ["vps"],
        [],
        ["worker"],
        ["vps", "show", "web1", "--debug"],
    ):
        assert not fastpath.routable(argv), argv
    # every short-way command exists, and none is a state-changing (audited) one
    known = {(n,) for n in cli.commands} | {
        (g, n)
        for g, group in cli.commands.items()
        if isinstance(group, click.Group)
        for n in group.commands
    }
    for path in fastpath.READ_ONLY - {("--help",), ("-h",)}:
        assert path in known, path
        assert ".".join(path) not in audit.ACTIONS, path


def test_the_worker_answers_exactly_as_the_command_would(serving) -> None:
    ctx, _worker, sock = serving
    assert sock.stat().st_mode & 0o777 == 0o600
    env = cli_env(ctx)
    for args in PAIRS:
        answer = short_way(env, *args)
        assert answer is not None, args
        direct = kvmvps({**env, "KVMVPS_CLI_DIRECT": "1"}, *args)
        assert (answer["code"], answer["stdout"], answer["stderr"]) == (
            direct.returncode,
            direct.stdout,
            direct.stderr,
        ), args
    assert kvmvps(env, "vps", "list").stdout.splitlines()[1].split()[1] == "web1"
    listed = json.loads(short_way(env, "vps", "list", "--json")["stdout"])
    assert [r["hostname"] for r in listed] == ["web1"]


def test_the_worker_declines_what_it_must_not_answer(serving) -> None:
    """Other settings, changing commands, garbage and strangers: all refused; it goes on."""
    ctx, worker, sock = serving
    check_other_settings_or_a_changing_command_run_here(ctx, sock)
    check_garbage_and_huge_requests_are_dropped(ctx, worker, sock)
    check_another_user_cannot_reach_the_socket(sock)


def check_other_settings_or_a_changing_command_run_here(ctx: Context, sock: Path) -> None:
    env = cli_env(ctx)
    # another network name: other settings, so the worker declines and the command runs here
    assert short_way({**env, "KVMVPS_NETWORK": "elsewhere"}, "plan", "list") is None
    assert fastpath.run(["plan", "list"], {**env, "KVMVPS_CLI_DIRECT": "1"}) is None
    # a hand-made request for a changing command is refused by the worker, and changes nothing
    for argv in (["vps", "delete", "web1", "--yes"], ["vps", "create", "--help"], "vps list"):
        assert raw(sock, {"argv": argv, "env": fastpath.settings_env(env)}) == {
            "direct": "not a read-only command" if isinstance(argv, list) else "not a request"
        }
    assert vps_service.show(ctx, "web1")["hostname"] == "web1"


def raw(sock: Path, request: object) -> dict[str, object] | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(request if isinstance(request, bytes) else json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        data = b"".join(iter(lambda: s.recv(65536), b""))
    return json.loads(data) if data else None


def check_garbage_and_huge_requests_are_dropped(
    ctx: Context, worker: subprocess.Popen[bytes], sock: Path
) -> None:
    assert raw(sock, b"\x00\xff not json") is None
    assert raw(sock, b"[" * (fastpath.MAX_REQUEST + 10)) is None
    assert raw(sock, {"argv": [1, 2], "env": {}}) == {"direct": "not a request"}
    assert worker.poll() is None
    assert short_way(cli_env(ctx), "vps", "list")["code"] == 0


def check_another_user_cannot_reach_the_socket(sock: Path) -> None:
    probe = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); "
        'exec(\'try:\\n s.connect(sys.argv[1]); print("connected")\\n'
        'except PermissionError: print("refused")\')'
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-c", probe, str(sock)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "refused"


def test_a_killed_worker_leaves_a_socket_the_cli_steps_around(serving) -> None:
    ctx, worker, sock = serving
    env = cli_env(ctx)
    worker.kill()
    worker.wait(timeout=30)
    assert sock.exists()  # stale: nobody answers
    assert short_way(env, "vps", "list") is None
    shown = kvmvps(env, "vps", "list", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)[0]["hostname"] == "web1"
    # the next worker takes the stale socket over; a clean stop removes it
    again = subprocess.Popen([PY, "-m", "kvmvps", "worker"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: short_way(env, "vps", "list") is not None)
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=60)
    assert not sock.exists()
