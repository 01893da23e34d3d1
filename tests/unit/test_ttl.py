"""Throwaway VPSes: --ttl marks them, the worker or --all-expired deletes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from kvmvps.models import Vps
from kvmvps.services import Context
from kvmvps.worker import Worker
from tests.badinput import assert_one_line_error, create_args, run_cli


def expire(ctx: Context, uuid: str) -> None:
    with ctx.db.session() as s:
        s.execute(
            update(Vps)
            .where(Vps.uuid == uuid)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_ttl_is_recorded(td_ctx: Context) -> None:
    vps = json.loads(run_cli(td_ctx, *create_args(), "--ttl", "2h").stdout)
    expires = datetime.fromisoformat(vps["expires_at"])
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 7100 < left <= 7200
    assert json.loads(run_cli(td_ctx, *create_args(hostname="keep")).stdout)["expires_at"] is None


def test_bad_ttl(td_ctx: Context) -> None:
    for bad, fragment in (("soon", "is not like"), ("10s", "between 1 minute"), ("400d", "1 year")):
        assert_one_line_error(run_cli(td_ctx, *create_args(), "--ttl", bad), 2, fragment)
    assert json.loads(run_cli(td_ctx, "vps", "list", "--json").stdout) == []


def test_worker_deletes_expired_vps(td_ctx: Context) -> None:
    gone = json.loads(run_cli(td_ctx, *create_args(), "--ttl", "1m").stdout)
    kept = json.loads(run_cli(td_ctx, *create_args(hostname="kept"), "--ttl", "1h").stdout)
    expire(td_ctx, gone["id"])
    worker = Worker(td_ctx)
    worker.tick()  # heartbeat queues the delete, then runs it
    worker.tick()
    names = [v["hostname"] for v in json.loads(run_cli(td_ctx, "vps", "list", "--json").stdout)]
    assert names == ["kept"] and kept["id"]


def test_delete_all_expired(td_ctx: Context) -> None:
    a = json.loads(run_cli(td_ctx, *create_args(hostname="a"), "--ttl", "1m").stdout)
    json.loads(run_cli(td_ctx, *create_args(hostname="b"), "--ttl", "1m").stdout)
    expire(td_ctx, a["id"])
    out = run_cli(td_ctx, "vps", "delete", "--all-expired")
    assert out.exit_code == 0 and a["id"] in out.stdout
    names = [v["hostname"] for v in json.loads(run_cli(td_ctx, "vps", "list", "--json").stdout)]
    assert names == ["b"]
    assert_one_line_error(run_cli(td_ctx, "vps", "delete"), 2, "--all-expired")
