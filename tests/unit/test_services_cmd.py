"""``kvmvps-admin service``: supervised background processes with pid files and logs."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmvps.config import as_env, load_settings
from kvmvps.services import Context, daemons, jobs
from tests.badinput import assert_one_line_error, run_cli


@pytest.fixture
def sqlite_ctx(td_ctx: Context) -> Iterator[Context]:
    if td_ctx.settings.database_url:
        pytest.skip("a process per service: one database is enough")
    yield td_ctx
    daemons.stop(td_ctx, "worker", timeout=20)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_status_before_anything_started(td_ctx: Context) -> None:
    result = run_cli(td_ctx, "service", "status", "--json")
    shown = {s["name"]: s for s in json.loads(result.stdout)}
    assert set(shown) == {"worker", "web"}
    assert not any(s["running"] or s["pid"] for s in shown.values())
    assert shown["web"]["url"] == "http://127.0.0.1:8000/" and shown["worker"]["url"] is None
    assert shown["worker"]["log"].endswith("logs/worker.log")
    assert_one_line_error(run_cli(td_ctx, "service", "stop", "mailer"), 2, "Invalid value")


def test_a_stale_or_foreign_pid_file_is_not_a_running_service(td_ctx: Context) -> None:
    path = daemons.pid_file(td_ctx.settings, "worker")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")  # alive, but pytest is no supervisor
    assert not daemons.status(td_ctx, "worker").running
    assert not daemons.stop(td_ctx, "worker").running
    assert not path.exists() and Path(f"/proc/{os.getpid()}").exists()  # nobody was killed
    path.write_text("not a pid\n")
    assert daemons.status(td_ctx, "worker").pid is None


def test_worker_starts_once_is_restarted_when_it_dies_and_stops(sqlite_ctx: Context) -> None:
    ctx = sqlite_ctx
    first = daemons.start(ctx, "worker")
    assert first.running and first.pid and first.manager == "process"
    assert jobs.live_workers(ctx)
    assert daemons.start(ctx, "worker").pid == first.pid  # running already: left alone
    assert first.pid is not None
    wait_for(lambda: len(children(first.pid)) == 1)
    child = children(first.pid)[0]
    os.kill(child, signal.SIGKILL)  # a crash: the supervisor starts a new one
    wait_for(lambda: children(first.pid) not in ([], [child]))
    log = daemons.log_file(ctx.settings, "worker")
    wait_for(lambda: "restarting in" in log.read_text())
    assert "kvmvps worker exited with -9" in log.read_text()
    assert daemons.status(ctx, "worker").pid == first.pid
    (second,) = children(first.pid)
    assert log.stat().st_mode & 0o077 == 0
    stopped = daemons.stop(ctx, "worker", timeout=30)
    assert not stopped.running and not daemons.pid_file(ctx.settings, "worker").exists()
    assert not daemons._supervisor_alive(first.pid, "worker")  # gone (or a zombie of ours)
    assert not Path(f"/proc/{second}").exists()  # the worker went with its supervisor


def test_settings_of_the_services_are_checked() -> None:
    from kvmvps.errors import InvalidInput

    with pytest.raises(InvalidInput, match="KVMVPS_WEB_PORT 70000"):
        load_settings({"KVMVPS_WEB_PORT": "70000"})
    with pytest.raises(InvalidInput, match="KVMVPS_SERVICE_MANAGER must be one of"):
        load_settings({"KVMVPS_SERVICE_MANAGER": "init.d"})
    custom = load_settings({"KVMVPS_WEB_HOST": "::1", "KVMVPS_WEB_PORT": "8443"})
    assert daemons.url(custom) == "http://[::1]:8443/"
    assert daemons.manager(load_settings({"KVMVPS_STATE_DIR": "/tmp/elsewhere"})) == "process"
    settings = load_settings({"KVMVPS_STATE_DIR": "/srv/x", "KVMVPS_WEB_PORT": "9000"})
    assert load_settings(as_env(settings)) == settings  # what a service's process is given


def test_readme_documents_these_settings_with_their_defaults() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    defaults = load_settings({})
    rows = {
        "`KVMVPS_LOG_FORMAT` | `text`": defaults.log_format == "text",
        "`KVMVPS_SERVICE_MANAGER` | `auto`": defaults.service_manager == "auto",
        "`KVMVPS_WEB_HOST` / `KVMVPS_WEB_PORT` | `127.0.0.1` / `8000`": (
            defaults.web_host,
            defaults.web_port,
        )
        == ("127.0.0.1", 8000),
    }
    for row, matches_code in rows.items():
        assert f"| {row} |" in readme and matches_code, row
