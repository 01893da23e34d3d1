"""Benchmark: the website under 50 concurrent customers (not a test; it prints figures).

Each simulated customer logs in once (not measured), then until the time or
request budget runs out: loads the dashboard, polls its state JSON, and
places orders (``--orders`` each; the order endpoint records the VPS and
its job and answers). The app is served on 127.0.0.1 in a separate process,
by werkzeug's threaded server or by gunicorn, over libvirt's test driver and
SQLite (or ``--database-url``), so no guest is built: what is measured is the
web tier and the database. Customers run in several processes so that the
load generator's own GIL does not add to the latencies.

    .venv/bin/python bench/web_load.py [--server gunicorn] [--clients 50]
        [--duration 20] [--think 0.5] [--json out.json]

Target: p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "bench password 123"  # noqa: S105 - a name, not a secret
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
MAX_REQUESTS = 20_000
MAX_DURATION = 120.0
LOGIN_TIME = 12.0


# -- the installation and the server -------------------------------------------------
def installation(state: Path, database_url: str, clients: int) -> dict[str, str]:
    """A fresh installation on test:///default with a plan, an image and the customers."""
    from kvmvps.config import load_settings
    from kvmvps.services import Context, inventory, setup, users

    env = {
        "KVMVPS_STATE_DIR": str(state),
        "KVMVPS_LIBVIRT_URI": "test:///default",
        "KVMVPS_DOMAIN_TYPE": "qemu",
        "KVMVPS_STORAGE_POOL": "kvmvpsweb",
        "KVMVPS_NETWORK": "kvmvpsweb",
        "KVMVPS_NETWORK_BRIDGE": "kvmvpsweb0",
        "KVMVPS_NETWORK_SUBNET": "10.234.0.0/22",
        "KVMVPS_HOST_MEMORY_RESERVE_MIB": "0",
        "KVMVPS_IMAGE_TEST_INTERVAL": "0",  # no image self-tests during a benchmark
        "KVMVPS_CPU_OVERCOMMIT": "1000",
        "KVMVPS_DATABASE_URL": database_url,
        "KVMVPS_WEB_SECRET_KEY": os.urandom(16).hex(),
        # every simulated customer logs in from 127.0.0.1 at once
        "KVMVPS_WEB_LOGIN_ADDRESS_LIMIT": "100000/minute",
        "KVMVPS_CONFIG": "",
    }
    ctx = Context(load_settings(env))
    setup.init(ctx)
    base = state / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    inventory.add_plan(ctx, "bench", 1, 1, 1, price_cents=100)
    inventory.add_image(ctx, "bench", base, login_user="vps", credentials=True)
    for i in range(clients):
        users.add_user(ctx, f"c{i}@example.com", PASSWORD)
    ctx.close()
    return env


TIMING = """
import os, sys, time
sys.path.insert(0, {root!r})
import web

_make = web.create_app


def create_app(config=None):
    \"\"\"The app, timing each request inside the server (written on one line per request).\"\"\"
    app = _make(config)
    inner = app.wsgi_app
    fd = os.open({timing!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def timed(environ, start_response):
        started = time.perf_counter()
        try:
            return inner(environ, start_response)
        finally:
            line = "%.3f %s %s %.3f\\n" % (time.time(), environ["REQUEST_METHOD"],
                                            environ["PATH_INFO"],
                                            (time.perf_counter() - started) * 1000)
            os.write(fd, line.encode())

    app.wsgi_app = timed
    return app


web.create_app = create_app
"""
SERVE_WERKZEUG = (
    TIMING
    + """
from werkzeug.serving import make_server
app = create_app({{"RATELIMIT_ENABLED": False}})
make_server("127.0.0.1", {port}, app, threaded=True).serve_forever()
"""
)
SERVE_GUNICORN = (
    TIMING
    + """
from kvmvps.cli.serve_cmds import run_gunicorn
sys.argv = ["kvmvps-web"]
run_gunicorn("127.0.0.1", {port}, {workers}, {threads})
"""
)


def start_server(
    kind: str, env: dict[str, str], port: int, workers: int, threads: int, log: Path, timing: Path
) -> subprocess.Popen:
    code = (SERVE_GUNICORN if kind == "gunicorn" else SERVE_WERKZEUG).format(
        root=str(ROOT), port=port, workers=workers, threads=threads, timing=str(timing)
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server never answered")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- one customer ---------------------------------------------------------------------
class Customer:
    """A browser-like client: one cookie, keep-alive when the server allows it."""

    def __init__(self, port: int, email: str) -> None:
        self.port, self.email = port, email
        self.cookie = ""
        self.csrf = ""
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, bytes]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                continue
            cookie = response.getheader("Set-Cookie")
            if cookie:
                self.cookie = cookie.split(";", 1)[0]
            if response.getheader("Connection", "").lower() == "close" or response.version == 10:
                self.conn.close()
                self.conn = None
            return response.status, data
        raise AssertionError("unreachable")

    def login(self) -> None:
        _, page = self.call("GET", "/login")
        self.csrf = CSRF.search(page.decode()).group(1)
        status, _ = self.call(
            "POST", "/login", {"email": self.email, "password": PASSWORD, "csrf_token": self.csrf}
        )
        assert status == 302, f"login of {self.email} answered {status}"
        _, page = self.call("GET", "/order")
        self.csrf = CSRF.search(page.decode()).group(1)


def run_customer(
    port: int,
    index: int,
    start: float,
    until: float,
    budget: int,
    orders: int,
    think: float,
    out: list[tuple[str, float, int]],
) -> None:
    """Log in, wait for the others, then browse and poll; orders fall at random moments."""
    me = Customer(port, f"c{index}@example.com")
    me.login()
    chance = random.Random(index)
    # customers arrive at random moments of the first pause, not all at once
    time.sleep(max(0.0, start - time.monotonic()) + chance.uniform(0, max(think, 0.2)))
    order_at = sorted(start + chance.uniform(0, max(0.0, until - start - 1)) for _ in range(orders))
    ordered, n = 0, 0
    while time.monotonic() < until and n < budget:
        n += 1
        if ordered < orders and time.monotonic() >= order_at[ordered]:
            ordered += 1
            form = {
                "plan": "bench",
                "image": "bench",
                "hostname": f"c{index}n{ordered}",
                "ssh_keys": "",
                "csrf_token": me.csrf,
            }
            name, method, path = "order", "POST", "/order"
        elif n % 2:
            name, method, path, form = "dashboard", "GET", "/servers", None
        else:
            name, method, path, form = "state.json", "GET", "/servers/state.json", None
        started = time.perf_counter()
        status, _ = me.call(method, path, form)
        out.append((name, time.perf_counter() - started, status))
        if think:
            time.sleep(think)


def customer_process(
    port: int,
    indexes: list[int],
    start: float,
    until: float,
    budget: int,
    orders: int,
    think: float,
    queue: multiprocessing.Queue,
) -> None:
    samples: list[tuple[str, float, int]] = []
    threads = [
        threading.Thread(
            target=run_customer, args=(port, i, start, until, budget, orders, think, samples)
        )
        for i in indexes
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(samples)


# -- the run ------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarise(samples: list[tuple[str, float, int]], wall: float) -> dict[str, object]:
    out: dict[str, object] = {
        "requests": len(samples),
        "wall_s": round(wall, 2),
        "rps": round(len(samples) / wall, 1),
    }
    expected = {"order": 302, "dashboard": 200, "state.json": 200}
    for name in ("all", "order", "dashboard", "state.json"):
        picked = [s for s in samples if name == "all" or s[0] == name]
        if not picked:
            continue
        ms = [s[1] * 1000 for s in picked]
        bad = sum(1 for s in picked if s[2] != expected[s[0]])
        out[name] = {
            "n": len(picked),
            "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(percentile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1),
            "errors": bad,
        }
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    state = Path(tempfile.mkdtemp(prefix="kvmvps-webload-"))
    env = installation(state, args.database_url, args.clients)
    port = free_port()
    timing = state / "timing.log"
    server = start_server(
        args.server, env, port, args.workers, args.threads, state / "server.log", timing
    )
    try:
        wait_ready(port, server)
        start = time.monotonic() + LOGIN_TIME  # everyone logs in first (scrypt: slow)
        wall_start = time.time() + LOGIN_TIME
        until = start + min(args.duration, MAX_DURATION)
        budget = max(1, min(args.requests, MAX_REQUESTS) // args.clients)
        queue: multiprocessing.Queue = multiprocessing.Queue()
        groups = [list(range(args.clients))[i :: args.processes] for i in range(args.processes)]
        procs = [
            multiprocessing.Process(
                target=customer_process,
                args=(port, g, start, until, budget, args.orders, args.think, queue),
            )
            for g in groups
            if g
        ]
        for p in procs:
            p.start()
        samples = [s for _ in procs for s in queue.get(timeout=MAX_DURATION + 120)]
        for p in procs:
            p.join()
        wall = time.monotonic() - start
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        inside = server_side(timing, wall_start)
        shutil.rmtree(state, ignore_errors=True)
    return {
        "server": args.server,
        "clients": args.clients,
        "think_s": args.think,
        **summarise(samples, wall),
        "inside_server": summarise(inside, wall),
    }


ENDPOINTS = {
    ("POST", "/order"): "order",
    ("GET", "/servers"): "dashboard",
    ("GET", "/servers/state.json"): "state.json",
}


def server_side(timing: Path, since: float) -> list[tuple[str, float, int]]:
    """The time each measured request spent inside the app, as the server saw it."""
    samples = []
    for line in timing.read_text().splitlines() if timing.exists() else []:
        at, method, path, ms = line.split()
        name = ENDPOINTS.get((method, path))
        if name and float(at) >= since:
            expected = 302 if name == "order" else 200
            samples.append((name, float(ms) / 1000, expected))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("werkzeug", "gunicorn"), default="werkzeug")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--processes", type=int, default=5, help="load generator processes")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--requests", type=int, default=10_000, help="request budget")
    parser.add_argument("--orders", type=int, default=2, help="orders per customer")
    parser.add_argument("--think", type=float, default=0.5, help="pause between requests")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn processes")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per process")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
