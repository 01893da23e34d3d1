"""``kvmvps-admin serve``: the dev server and gunicorn really serve the app; the unit files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import pytest

from kvmvps.cli import serve_cmds
from kvmvps.services import Context
from tests.badinput import _env_of

ROOT = Path(__file__).resolve().parents[2]
# serve_cmds.register(cli) is wired into kvmvps.cli.main by its owner; this runs it standalone.
LAUNCH = (
    "import sys; from kvmvps.cli.main import cli; from kvmvps.cli import serve_cmds; "
    "'serve' in cli.commands or serve_cmds.register(cli); sys.argv[0] = 'kvmvps-admin'; "
    "cli()"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                return response.read()
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def test_register_adds_the_command() -> None:
    group = click.Group()
    serve_cmds.register(group)
    assert "serve" in group.commands
    assert serve_cmds.bind_address("::1", 80) == "[::1]:80"
    assert 2 <= serve_cmds.default_workers() <= 9


@pytest.mark.parametrize("production", [False, True], ids=["dev", "gunicorn"])
def test_serve_answers_and_stops_on_sigterm(td_ctx: Context, production: bool) -> None:
    if td_ctx.settings.database_url:
        pytest.skip("one database is enough for this")
    port = free_port()
    argv = [sys.executable, "-c", LAUNCH, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if production:
        argv += ["--production", "--workers", "2", "--threads", "2"]
    env = {**os.environ, **_env_of(td_ctx), "KVMVPS_WEB_SITE_NAME": "Acme Cloud"}
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
    )
    try:
        page = wait_for(f"http://127.0.0.1:{port}/", proc)
        assert b"Acme Cloud" in page and b"small" in page
        assert b'"ok"' in wait_for(f"http://127.0.0.1:{port}/healthz", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code in (0, -signal.SIGTERM), proc.stdout.read().decode()[-2000:]
    assert (td_ctx.settings.state_dir / "web-secret-key").stat().st_mode & 0o077 == 0


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every ``key=value`` of a unit file, values of repeated keys kept in order."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize(
    "unit", ["kvmvps-web.service", "kvmvps-worker.service", "kvmvps-agent@.service"]
)
def test_systemd_units(unit: str) -> None:
    path = ROOT / "deploy" / "systemd" / unit
    settings = unit_settings(path)
    assert settings["Restart"] == ["on-failure"]
    assert "KVMVPS_STATE_DIR=/var/lib/kvmvps" in settings["Environment"]
    command = {
        "kvmvps-web.service": "serve --host 127.0.0.1 --port 8000 --production",
        "kvmvps-worker.service": "worker",
        "kvmvps-agent@.service": "worker --host %i",
    }[unit]
    assert settings["ExecStart"][0].endswith(f"kvmvps-admin {command}")
    assert settings["WantedBy"] == ["multi-user.target"]
    for section in re.findall(r'see "([^"]+)" in the README', path.read_text()):
        assert f"### {section}\n" in (ROOT / "README.md").read_text(), section
    assert re.search(r'see "[^"]+" in the README', path.read_text())
    if not shutil.which("systemd-analyze"):
        return
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    problems = [ln for ln in verify.stderr.splitlines() if "is not executable" not in ln]
    assert problems == [], problems


def test_workers_starting_together_share_one_secret_key(tmp_path: Path) -> None:
    """gunicorn's workers make the key at once: each must read the whole, same key."""
    import threading

    from web.app import load_secret_key

    for round_ in range(20):
        state = tmp_path / str(round_)
        state.mkdir()
        keys: list[str] = []
        threads = [
            threading.Thread(target=lambda s=state, k=keys: k.append(load_secret_key(s)))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) == 64
        assert sorted(p.name for p in state.iterdir()) == ["web-secret-key"]
        assert (state / "web-secret-key").stat().st_mode & 0o777 == 0o600
