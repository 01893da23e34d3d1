"""Operators see what happens: the worker's log lines, JSON lines, and the CLI's progress."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import select
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kvmvps import logs
from kvmvps.cli.output import StepProgress, job_progress
from kvmvps.services import Context, actions, provisioning
from kvmvps.services.provisioning import STEPS, OrderRequest
from kvmvps.worker import Worker
from tests.badinput import _env_of, assert_one_line_error, create_args, run_cli

STEP_NAMES = [s.name for s in STEPS]


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger back as it was after a test that reconfigures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def events(records: list[logging.LogRecord]) -> list[dict]:
    return [getattr(r, logs.FIELDS_ATTR) for r in records if hasattr(r, logs.FIELDS_ATTR)]


def order(ctx: Context, name: str = "web1") -> provisioning.Order:
    return provisioning.record_order(ctx, OrderRequest("small", "base", name), actor="test")


def test_a_build_logs_claimed_each_step_and_finished(
    td_ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    placed = order(td_ctx)
    with caplog.at_level(logging.INFO):
        assert Worker(td_ctx, name="w1").run(max_jobs=1) == 1
    seen = events(caplog.records)
    assert [e["event"] for e in seen] == ["claimed", *["step"] * len(STEPS), "finished"]
    assert all(e["job"] == placed.job and e["kind"] == "create" for e in seen)
    assert all(e["hostname"] == "web1" for e in seen)
    assert [e["step"] for e in seen[1:-1]] == STEP_NAMES
    assert all(isinstance(e["seconds"], float) and e["seconds"] >= 0 for e in seen[1:])
    lines = [r.getMessage() for r in caplog.records if hasattr(r, logs.FIELDS_ATTR)]
    assert lines[0] == f"job {placed.job[:8]} (create web1): claimed by w1"
    assert lines[1].startswith(f"job {placed.job[:8]} (create web1): step clone done in ")
    assert lines[-1].startswith(f"job {placed.job[:8]} (create web1): finished in ")
    assert all("\n" not in line for line in lines)
    assert {r.levelno for r in caplog.records if hasattr(r, logs.FIELDS_ATTR)} == {logging.INFO}


def test_a_failed_step_logs_its_duration_and_the_job_its_reason(
    td_ctx: Context, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_b: provisioning.Build) -> None:
        raise RuntimeError("the disk is on fire")

    index = STEP_NAMES.index("define")
    monkeypatch.setattr(
        provisioning, "STEPS", (*STEPS[:index], dataclasses.replace(STEPS[index], do=broken))
    )
    placed = order(td_ctx)
    with caplog.at_level(logging.INFO):
        Worker(td_ctx).run(max_jobs=1)
    seen = events(caplog.records)
    kinds = [e["event"] for e in seen]
    assert kinds == ["claimed", *["step"] * index, "step-failed", "failed"]
    failed_step, failed = seen[-2], seen[-1]
    assert failed_step["step"] == "define" and "the disk is on fire" in failed_step["error"]
    assert "failed at step 'define'" in failed["error"] and "rolled back" in failed["error"]
    assert failed["job"] == placed.job
    last = [r for r in caplog.records if hasattr(r, logs.FIELDS_ATTR)][-1]
    assert last.levelno == logging.ERROR and "the disk is on fire" in last.getMessage()


def test_a_failed_action_is_logged_with_its_reason(
    td_ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    created = json.loads(run_cli(td_ctx, *create_args()).stdout)
    req = actions.request(td_ctx, created["id"], "suspend")
    td_ctx.hypervisor(td_ctx.settings.libvirt_uri).destroy(created["domain"])
    with caplog.at_level(logging.INFO):
        Worker(td_ctx).run(max_jobs=1)
    seen = events(caplog.records)
    assert [e["event"] for e in seen] == ["claimed", "failed"]
    assert seen[-1]["job"] == req.job and seen[-1]["kind"] == "suspend" and seen[-1]["error"]


def test_json_lines_parse_and_carry_the_fields(td_ctx: Context, root_logging: None) -> None:
    order(td_ctx)
    out = io.StringIO()
    logs.setup(logging.INFO, "json", stream=out)
    Worker(td_ctx).run(max_jobs=1)
    parsed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(parsed) >= len(STEPS) + 2
    jobs_lines = [p for p in parsed if "event" in p]
    assert [p["event"] for p in jobs_lines] == ["claimed", *["step"] * len(STEPS), "finished"]
    for p in jobs_lines:
        assert {"time", "level", "logger", "message", "job", "kind", "hostname"} <= set(p)
        assert p["level"] == "INFO" and p["hostname"] == "web1"


def test_worker_command_takes_the_format_from_option_or_setting(
    td_ctx: Context, root_logging: None
) -> None:
    order(td_ctx, "web1")
    order(td_ctx, "web2")
    result = run_cli(td_ctx, "worker", "--max-jobs", "1", "--log-format", "json")
    assert result.exit_code == 0, result.output
    parsed = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(p.get("event") == "finished" for p in parsed)
    result = run_cli(td_ctx, "worker", "--max-jobs", "1", extra_env={"KVMVPS_LOG_FORMAT": "json"})
    parsed = [json.loads(line) for line in result.stderr.splitlines()]
    assert [p["hostname"] for p in parsed if p.get("event") == "claimed"] == ["web2"]
    assert_one_line_error(
        run_cli(td_ctx, "worker", "--log-format", "xml"), 2, "Invalid value for '--log-format'"
    )
    bad = run_cli(td_ctx, "worker", extra_env={"KVMVPS_LOG_FORMAT": "xml\x1b[2J"})
    assert_one_line_error(bad, 2, "KVMVPS_LOG_FORMAT must be one of text, json")


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    plain = io.StringIO()
    shown = StepProgress(plain, bar=False)
    for i, name in enumerate(STEP_NAMES):
        shown(name, i, len(STEP_NAMES))
    shown("credentials", 90, 100)  # the follower's poll repeats the last step: not shown twice
    shown.close(True)
    assert plain.getvalue().splitlines() == [
        f"  step {name} ({100 * i // len(STEP_NAMES)}%)" for i, name in enumerate(STEP_NAMES)
    ]
    tty = io.StringIO()
    bar = StepProgress(tty, bar=True)
    bar("clone", 0, 10)
    bar("define", 50, 100)
    bar.close(True)
    out = tty.getvalue()
    assert out.count("\r") == 3 and out.endswith("\n") and "\n" not in out[:-1]
    assert "[" + "#" * 12 + "-" * 12 + "]  50%  define" in out and "100%  done" in out
    failed = io.StringIO()
    bar = StepProgress(failed, bar=True)
    bar("clone", 0, 10)
    bar.close(False)
    assert "done" not in failed.getvalue() and failed.getvalue().endswith("clone\n")
    with job_progress(quiet=True) as nothing:
        assert nothing is None


def test_create_wait_shows_steps_on_stderr_and_nothing_under_json(td_ctx: Context) -> None:
    result = run_cli(td_ctx, *[a for a in create_args(hostname="web5") if a != "--json"])
    assert result.exit_code == 0, result.output
    steps = [ln.split()[1] for ln in result.stderr.splitlines() if ln.startswith("  step ")]
    assert steps == STEP_NAMES
    quiet = run_cli(td_ctx, *create_args(hostname="web6"))
    assert quiet.exit_code == 0 and "step" not in quiet.stderr
    assert json.loads(quiet.stdout)["state"] == "running"


def test_create_wait_draws_a_bar_when_stderr_is_a_terminal(td_ctx: Context) -> None:
    """A real kvmvps-admin process whose stderr is a pseudo-terminal draws the bar."""
    if td_ctx.settings.database_url:
        pytest.skip("one database is enough")
    leader, follower = os.openpty()
    args = [a for a in create_args(hostname="tty1") if a != "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "kvmvps", *args],
        env={**os.environ, **_env_of(td_ctx)},
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=300,
        check=False,
    )
    os.close(follower)
    drawn = b""
    while select.select([leader], [], [], 0.5)[0]:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert done.returncode == 0, drawn.decode(errors="replace")
    text = drawn.decode()
    assert "\r\x1b[K  [" in text and "100%  done" in text
    assert all(f"%  {name}" in text for name in STEP_NAMES)
    assert "  step " not in text  # no plain lines on a terminal
    assert b"tty1" in done.stdout and b"running" in done.stdout
