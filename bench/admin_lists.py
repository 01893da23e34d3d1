"""The admin area's lists with many VPSes: the time of each page, and its statements.

Records one real order on libvirt's test driver, then adds ``--count`` VPSes
(default 10,000) with a job and an audit entry each, spread over ``--users``
customers, in bulk; then times the admin pages through the website (the
service query and the rendering) and counts the SQL statements each issues.
A page's cost must not grow with the number of rows: filters and
LIMIT/OFFSET are in the query, related rows come in a fixed number of
statements.

    .venv/bin/python bench/admin_lists.py [--count 10000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import event, insert, select

from kvmvps.config import load_settings
from kvmvps.models import AuditEntry, Host, Image, Job, JobState, Network, Plan, User, Vps
from kvmvps.services import Context, inventory, provisioning, setup, users
from web import create_app

PASSWORD = "a bench password"  # noqa: S105 - the bench operator of a throwaway database
PAGES = (
    "/admin",
    "/admin/servers",
    "/admin/servers?page=100",
    "/admin/servers?q=c7@example.com",
    "/admin/servers?state=running&page=50",
    "/admin/jobs",
    "/admin/jobs?page=150",
    "/admin/jobs?state=succeeded&kind=create&user=c3@example.com",
    "/admin/users",
    "/admin/audit?page=100",
)


def populate(ctx: Context, count: int, customers: int) -> str:
    """``count`` VPSes of ``customers`` customers, running, with a job and an audit entry each."""
    base = ctx.settings.state_dir / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    inventory.add_image(ctx, "base", base, credentials=False)
    inventory.add_plan(ctx, "nano", 1, 1, 1)
    users.add_user(ctx, "ops@example.com", PASSWORD, admin=True)
    provisioning.record_order(ctx, provisioning.OrderRequest("nano", "base", "real1"))
    with ctx.db.session() as s:
        ids = {
            "plan": s.scalar(select(Plan.id)),
            "image": s.scalar(select(Image.id)),
            "host": s.scalar(select(Host.id)),
            "net": s.scalar(select(Network.id)),
        }
        owners = [
            s.execute(
                insert(User).values(email=f"c{i}@example.com", is_admin=False)
            ).inserted_primary_key[0]
            for i in range(customers)
        ]
        vps_rows, job_rows, audit_rows = [], [], []
        for i in range(count):
            vid = str(uuid.uuid4())
            vps_rows.append(
                {
                    "uuid": vid,
                    "hostname": f"b{i}",
                    "domain_name": f"kvmvps-{vid}",
                    "owner_id": owners[i % customers],
                    "plan_id": ids["plan"],
                    "image_id": ids["image"],
                    "host_id": ids["host"],
                    "network_id": ids["net"],
                    "state": "running",
                    "ssh_keys": "",
                }
            )
            job_rows.append(
                {
                    "uuid": str(uuid.uuid4()),
                    "kind": "create",
                    "vps_uuid": vid,
                    "host_id": ids["host"],
                    "state": JobState.SUCCEEDED,
                    "progress": 100,
                    "actor": f"user:c{i % customers}@example.com",
                    "params": "{}",
                    "attempts": 1,
                }
            )
            audit_rows.append(
                {"actor": "os:bench", "action": "vps.create", "target": f"b{i}", "result": "ok"}
            )
        s.execute(insert(Vps), vps_rows)
        s.execute(insert(Job), job_rows)
        s.execute(insert(AuditEntry), audit_rows)
    return "ops@example.com"


def time_pages(ctx: Context, email: str, repeats: int) -> dict[str, dict[str, float]]:
    app = create_app(
        {
            "KVMVPS_CONTEXT": ctx,
            "SECRET_KEY": "bench",
            "WTF_CSRF_ENABLED": False,
            "RATELIMIT_ENABLED": False,
            "HTTPS": False,
        }
    )
    client: FlaskClient = app.test_client()
    assert client.post("/login", data={"email": email, "password": PASSWORD}).status_code == 302
    issued = [0]

    def note(*_args: Any) -> None:
        issued[0] += 1

    for engine in {ctx.db.engine, ctx.db._read_engine}:
        event.listen(engine, "before_cursor_execute", note)
    out: dict[str, dict[str, float]] = {}
    for page in PAGES:
        walls, statements = [], 0
        for _ in range(repeats):
            issued[0] = 0
            start = time.perf_counter()
            r = client.get(page)
            walls.append(time.perf_counter() - start)
            assert r.status_code == 200, (page, r.status_code)
            statements = issued[0]
        out[page] = {"median_ms": statistics.median(walls) * 1000, "statements": statements}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default="", help="an empty PostgreSQL database's URL")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="kvmvps-admin-lists-"))
    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_LIBVIRT_URI": "test:///default",
        "KVMVPS_DOMAIN_TYPE": "qemu",
        "KVMVPS_NETWORK_SUBNET": "10.100.0.0/16",
        "KVMVPS_CPU_OVERCOMMIT": "1000",
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_DATABASE_URL": args.postgres,
    }
    ctx = Context(load_settings(env))
    try:
        setup.init(ctx)
        email = populate(ctx, args.count, args.users)
        db = "PostgreSQL" if args.postgres else "SQLite"
        print(f"{args.count + 1} VPSes, {args.users} customers, {db}; median of {args.repeats}")
        for page, r in time_pages(ctx, email, args.repeats).items():
            print(f"{page:60} {r['median_ms']:7.1f} ms  {r['statements']:.0f} statements")
    finally:
        ctx.close()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
