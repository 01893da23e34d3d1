"""The worker's control socket: it answers read-only CLI commands for short-lived clients.

The client side is :mod:`kvmvps.cli.fastpath`. One request per connection:
a JSON line ``{"argv": [...], "env": {"KVMVPS_...": ...}}``; the answer is
``{"code": N, "stdout": "...", "stderr": "..."}``, or ``{"direct": why}``
when the client must run the command itself. The socket is mode 0600 in the
state dir and the peer's uid is checked (root or the worker's own user), so
it answers exactly the people who could run the command themselves. It runs
only commands :func:`fastpath.routable` allows (checked here again), and only
when the client's ``KVMVPS_*`` variables load the same settings as the
worker's own.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, TypeGuard

import click

from kvmvps.cli import fastpath
from kvmvps.config import load_settings
from kvmvps.errors import KvmvpsError
from kvmvps.services import Context

log = logging.getLogger(__name__)
BACKLOG = 16


class _ThreadStream(io.TextIOBase):
    """sys.stdout/sys.stderr for the worker: a thread answering a request writes to its buffer.

    Every other thread (jobs, events, logging) writes to the real stream as before.
    """

    def __init__(self, real: TextIO, local: threading.local, attr: str) -> None:
        super().__init__()
        self.real, self._local, self._attr = real, local, attr

    def _target(self) -> TextIO:
        target: TextIO | None = getattr(self._local, self._attr, None)
        return target if target is not None else self.real

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return False if self._target() is not self.real else self.real.isatty()

    def fileno(self) -> int:
        return self.real.fileno()


class ControlServer:
    """Serves the control socket in a daemon thread of the worker process."""

    def __init__(self, ctx: Context, cli: click.Group) -> None:
        self.ctx, self.settings, self.cli = ctx, ctx.settings, cli
        self.path = Path(ctx.settings.state_dir) / fastpath.SOCKET_NAME
        self._local = threading.local()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> bool:
        """Listen and serve; False (and the CLI keeps its long way) when it cannot."""
        try:
            self._sock = self._listen()
        except OSError as exc:
            log.info("no control socket at %s: %s", self.path, exc)
            return False
        if self._sock is None:
            return False
        sys.stdout = _ThreadStream(sys.stdout, self._local, "out")
        sys.stderr = _ThreadStream(sys.stderr, self._local, "err")
        threading.Thread(target=self._serve, name="control", daemon=True).start()
        return True

    def _listen(self) -> socket.socket | None:
        if self._answers():
            log.info("another worker answers on %s", self.path)
            return None
        self.path.unlink(missing_ok=True)  # stale: its worker is gone
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(BACKLOG)
        return sock

    def _answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.path))
            except OSError:
                return False
        return True

    def close(self) -> None:
        """Stop answering and remove the socket (if it is still ours)."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self.path.unlink(missing_ok=True)
            self._sock = None

    def _serve(self) -> None:
        while not self._stop.is_set() and self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(fastpath.TIMEOUT_S)
            try:
                if not _trusted_peer(conn):
                    return
                answer = self.answer(_read_request(conn))
                conn.sendall(json.dumps(answer).encode())
            except (OSError, ValueError) as exc:
                log.debug("control request dropped: %s", exc)

    def answer(self, request: Any) -> dict[str, Any]:
        """The reply to one decoded request."""
        if not isinstance(request, dict):
            return {"direct": "not a request"}
        argv, env = request.get("argv"), request.get("env")
        if not _strings(argv) or not isinstance(env, dict) or not _strings(list(env.values())):
            return {"direct": "not a request"}
        if not fastpath.routable(argv):
            return {"direct": "not a read-only command"}
        if not self._same_settings(env):
            return {"direct": "other settings"}
        return self._run(argv)

    def _same_settings(self, env: dict[str, str]) -> bool:
        try:
            return load_settings(fastpath.settings_env(env)) == self.settings
        except (KvmvpsError, ValueError, TypeError):
            return False

    def _run(self, argv: Sequence[str]) -> dict[str, Any]:
        out, err = io.StringIO(), io.StringIO()
        self._local.out, self._local.err = out, err
        try:
            # the worker's context: no engine to build, no schema to check per command
            self.cli.main(
                args=list(argv), prog_name="kvmvps-admin", standalone_mode=True, obj=self.ctx
            )
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            self._local.out = self._local.err = None
        return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _strings(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _read_request(conn: socket.socket) -> Any:
    data = b""
    while len(data) <= fastpath.MAX_REQUEST:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    if len(data) > fastpath.MAX_REQUEST:
        raise ValueError("request too large")
    return json.loads(data)


def _trusted_peer(conn: socket.socket) -> bool:
    """Root, or the user the worker runs as (the socket's mode already says so)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.getuid())
