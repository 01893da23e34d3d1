"""Benchmark: the serial console over WebSockets (not a test; it prints figures).

Runs against a live installation (the website, e.g. ``serve --production
--workers 1``, and running VPSes), with an operator's API token:

* **click to first byte**: a ticket from the API (what the Console button
  asks for), the WebSocket handshake, a carriage return, and the first byte
  of the guest's answer; repeated ``--rounds`` times on the first VPS;
* **sessions held**: one console session per VPS given (a console has one
  session at a time, so each needs its own guest), all kept open, while
  ``--pages`` requests for a page are timed; prints p50/p99 and whether p99
  stays within 100 ms.

    .venv/bin/python bench/console.py --url http://127.0.0.1:8000 --token kvp_... \\
        --vps ID1 --vps ID2 ... [--rounds 10] [--pages 200] [--page /api/v1/plans]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit

from simple_websocket import Client, ConnectionClosed

TARGET_P99_MS = 100.0


def _request(url: str, method: str, path: str, token: str) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_type(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def ticket_url(url: str, token: str, vps: str) -> str:
    status, body = _request(url, "POST", f"/api/v1/servers/{vps}/console", token)
    if status != 200:
        raise SystemExit(f"no console ticket for {vps}: HTTP {status} {body[:200]!r}")
    return str(json.loads(body)["url"])


def first_byte(url: str, token: str, vps: str) -> float:
    """Seconds from asking for a ticket to the first byte the guest sends back."""
    started = time.perf_counter()
    ws = Client.connect(ticket_url(url, token, vps))
    try:
        ws.send("\r")
        while True:
            data = ws.receive(timeout=30)
            if data is None:
                raise SystemExit(f"no answer from the console of {vps} in 30 s")
            if data:
                return time.perf_counter() - started
    finally:
        ws.close()


def hold(url: str, token: str, vps: str, stop: threading.Event, opened: list[str]) -> None:
    ws = Client.connect(ticket_url(url, token, vps))
    opened.append(vps)
    try:
        while not stop.is_set():
            ws.receive(timeout=0.5)  # drain output; the server's pings are answered
    except ConnectionClosed:
        opened.remove(vps)
    finally:
        ws.close()


def page_latencies(url: str, token: str, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        status, _ = _request(url, "GET", path, token)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise SystemExit(f"{path} answered HTTP {status}")
    return times


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True, help="an operator's API token")
    ap.add_argument("--vps", action="append", required=True, help="a running VPS (repeat)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--page", default="/api/v1/plans")
    args = ap.parse_args(argv)

    firsts = [first_byte(args.url, args.token, args.vps[0]) * 1000 for _ in range(args.rounds)]
    print(
        f"click to first byte: median {statistics.median(firsts):.0f} ms, "
        f"max {max(firsts):.0f} ms over {len(firsts)} rounds"
    )
    idle = page_latencies(args.url, args.token, args.page, args.pages)
    print(
        f"{args.page} with no console open: p50 {statistics.median(idle):.1f} ms, p99 {p99(idle):.1f} ms"
    )

    stop, opened = threading.Event(), []
    holders = [
        threading.Thread(target=hold, args=(args.url, args.token, v, stop, opened), daemon=True)
        for v in args.vps
    ]
    for t in holders:
        t.start()
    deadline = time.monotonic() + 60
    while len(opened) < len(args.vps) and time.monotonic() < deadline:
        time.sleep(0.1)
    busy = page_latencies(args.url, args.token, args.page, args.pages)
    verdict = "within" if p99(busy) <= TARGET_P99_MS else "over"
    print(
        f"{len(opened)} console sessions held: {args.page} p50 {statistics.median(busy):.1f} ms, "
        f"p99 {p99(busy):.1f} ms ({verdict} {TARGET_P99_MS:.0f} ms)"
    )
    stop.set()
    for t in holders:
        t.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
