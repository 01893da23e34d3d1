"""The read-only commands' short way: ask the running worker to answer them.

``kvmvps-admin vps list`` in a fresh process spends almost all of its time
importing SQLAlchemy and the models (about 1 s under emulation-grade CPUs)
for a query of a few milliseconds. The worker service has all of that
loaded already, so, the way ``virsh`` asks ``libvirtd``, a read-only command
first tries the worker's control socket (``<state dir>/control.sock``, mode
0600, served by :mod:`kvmvps.cli.control`): it sends its arguments and its
``KVMVPS_*`` settings, and prints the answer. The worker runs the very same
click command, and only when the settings it would load from those
variables equal its own; otherwise, or when no worker answers, the command
runs here as before. ``KVMVPS_CLI_DIRECT=1`` always runs it here.

This module imports the standard library only: that is the point of it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

SOCKET_NAME = "control.sock"
DEFAULT_STATE_DIR = "/var/lib/kvmvps"  # kvmvps.config.Settings.state_dir's default
# (group, command) pairs that read and never change anything, and the
# top-level commands that do; nothing else is ever sent to the worker.
READ_ONLY = frozenset(
    {
        ("vps", "list"),
        ("vps", "show"),
        ("plan", "list"),
        ("image", "list"),
        ("network", "list"),
        ("host", "list"),
        ("host", "show"),
        ("user", "list"),
        ("token", "list"),
        ("jobs", "list"),
        ("jobs", "show"),
        ("audit",),
        ("--help",),  # the top-level help lists every command: the slowest to load
        ("-h",),
    }
)
DEBUG = "--debug"  # tracebacks and debug logs belong to a process of one's own
MAX_REQUEST = 64 * 1024
TIMEOUT_S = 60.0
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command killed by SIGPIPE


def routable(argv: Sequence[str]) -> bool:
    """True for a read-only command (or its help; never with --debug) the worker may answer."""
    if not argv or DEBUG in argv:
        return False
    return tuple(argv[:1]) in READ_ONLY or tuple(argv[:2]) in READ_ONLY


def settings_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that make kvmvps's settings."""
    return {k: v for k, v in env.items() if k.startswith("KVMVPS_")}


def socket_path(env: Mapping[str, str]) -> Path | None:
    """Where this environment's worker would listen; None when that can't be told cheaply."""
    if env.get("KVMVPS_STATE_DIR"):
        return Path(env["KVMVPS_STATE_DIR"]) / SOCKET_NAME
    if env.get("KVMVPS_CONFIG"):
        return None  # the state dir may be in the file: leave it to the full command
    return Path(DEFAULT_STATE_DIR) / SOCKET_NAME


def ask_worker(argv: Sequence[str], env: Mapping[str, str]) -> dict[str, object] | None:
    """The worker's answer (code, stdout, stderr), or None when the command must run here."""
    path = socket_path(env)
    if path is None or not routable(argv):
        return None
    request = json.dumps({"argv": list(argv), "env": settings_env(env)}).encode() + b"\n"
    if len(request) > MAX_REQUEST:
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT_S)
            sock.connect(str(path))
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            data = b"".join(iter(lambda: sock.recv(65536), b""))
        answer = json.loads(data)
    except (OSError, ValueError):
        return None  # no worker, a stale socket, a worker that died answering
    if not isinstance(answer, dict) or not isinstance(answer.get("code"), int):
        return None  # "direct": the worker's settings differ from ours
    return answer


def run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int | None:
    """Print the worker's answer and return the exit code; None: run the command here."""
    env = os.environ if env is None else env
    if env.get("KVMVPS_CLI_DIRECT"):
        return None
    answer = ask_worker(argv, env)
    if answer is None:
        return None
    try:
        sys.stderr.write(str(answer.get("stderr", "")))
        sys.stdout.write(str(answer.get("stdout", "")))
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    code = answer["code"]
    return code if isinstance(code, int) else 1


def silence_stdout() -> None:
    """The reader of our output went away (``| head``): point stdout at /dev/null.

    Then Python's final flush has nowhere to fail, and the command ends quietly.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
