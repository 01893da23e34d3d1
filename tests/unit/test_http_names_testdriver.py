"""HTTP names and the proxy: a real haproxy on loopback, VPSes on libvirt's test driver.

The test driver's guests do not exist, so no request here is ever routed to
one: the proxy is only asked about names it does not know (it answers 503
itself). tests/e2e/test_forwarding_real.py reaches real guests by name.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmvps import proxy
from kvmvps.services import Context, forwards, host_edge, http_names
from tests.badinput import assert_one_line_error, create_args
from tests.forwarding import PID, cli, netns, netns_available, netns_iptables
from tests.snapshots import db_snapshot
from tests.tools import needs

pytestmark = needs(
    bool(shutil.which("haproxy")) and netns_available(), "needs haproxy, root, ip and iptables"
)
HTTP_PORT = 10000 + (PID % 5000) * 2  # below the ephemeral ports (32768-)


@pytest.fixture
def web_ctx(td_ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    """Forwarding and names on, the proxy on 127.0.0.1, iptables rules in a namespace."""
    ctx = Context(
        dataclasses.replace(
            td_ctx.settings,
            public_address="127.0.0.1",
            forward_ports="20000-20009",
            base_domain="vps.test",
            chain_prefix="KVT",
            proxy_dir=str(tmp_path / "proxy"),
            proxy_http_port=HTTP_PORT,
            proxy_https_port=HTTP_PORT + 1,
        )
    )
    with netns(f"kvh{PID}") as ns:
        monkeypatch.setattr(forwards, "iptables_for", lambda host: netns_iptables(ns))
        monkeypatch.setattr(host_edge, "is_local", lambda uri: True)
        monkeypatch.setattr(forwards, "_reattach", lambda ctx, host: [])
        try:
            yield ctx
        finally:
            proxy.Proxy(ctx.settings.proxy_path).stop()
            ctx.close()


def ok(ctx: Context, *args: str, **env: str) -> dict | list:
    result = cli(ctx, *args, **env)
    assert result.exit_code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def config(ctx: Context) -> str | None:
    return proxy.Proxy(ctx.settings.proxy_path).current()


def ask(host_header: str, send_rest: bool = True) -> socket.socket | bytes:
    """An HTTP request to the proxy on loopback; the answer (or the open socket)."""
    sock = socket.create_connection(("127.0.0.1", HTTP_PORT), timeout=10)
    sock.sendall(f"GET / HTTP/1.0\r\nHost: {host_header}\r\n".encode())
    if not send_rest:
        return sock
    return finish(sock)


def finish(sock: socket.socket) -> bytes:
    sock.sendall(b"\r\n")
    with sock:
        return sock.recv(200)


def test_a_name_is_routed_by_host_and_sni(web_ctx: Context) -> None:
    vps = ok(web_ctx, *create_args("small", "base", "web1"))
    shown = ok(web_ctx, "vps", "http", "add", "web1", "Shop", "--json")
    assert shown == {
        "name": "shop.vps.test",
        "vps": vps["id"],
        "hostname": "web1",
        "guest_ip": vps["ip"],
        "http": "http://shop.vps.test/",
        "https": "https://shop.vps.test/",
        "acme": "no hook",
    }
    ok(web_ctx, "vps", "http", "add", "web1", "www.example.org.", "--json")
    text = config(web_ctx)
    assert f"bind 127.0.0.1:{HTTP_PORT}" in text and f"bind 127.0.0.1:{HTTP_PORT + 1}" in text
    assert "-m str shop.vps.test www.example.org }" in text
    assert "req.ssl_sni -i shop.vps.test www.example.org }" in text
    assert f"server guest {vps['ip']}:80" in text and f"server guest {vps['ip']}:443" in text
    check = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(web_ctx.settings.proxy_path / "haproxy.cfg")], check=False
    )
    assert check.returncode == 0
    assert ask("nobody.example.net").startswith(b"HTTP/1.1 503")  # answered by haproxy itself
    names = ok(web_ctx, "vps", "http", "list", "web1", "--json")
    assert [n["name"] for n in names] == ["shop.vps.test", "www.example.org"]


@pytest.mark.parametrize(
    "name, code, fragment",
    [
        ("bad_name", 2, "not a valid DNS label"),
        ("shop-", 2, "not a valid DNS label"),
        ("a..example.org", 2, "not a valid DNS name"),
        ("x" * 64 + ".example.org", 2, "not a valid DNS name"),
        ("shop.example.org/evil", 2, "not a valid DNS name"),
        ("10.0.0.1", 2, "not a valid DNS name"),
        ("taken", 1, "the name taken.vps.test is taken"),
        ("TAKEN.vps.test", 1, "the name taken.vps.test is taken"),
    ],
)
def test_bad_or_taken_names_change_nothing(
    web_ctx: Context, name: str, code: int, fragment: str
) -> None:
    ok(web_ctx, *create_args("small", "base", "web1"))
    ok(web_ctx, *create_args("small", "base", "web2"))
    ok(web_ctx, "vps", "http", "add", "web1", "taken", "--json")
    before, proxy_before = db_snapshot(web_ctx), config(web_ctx)
    assert_one_line_error(cli(web_ctx, "vps", "http", "add", "web2", name), code, fragment)
    assert db_snapshot(web_ctx) == before and config(web_ctx) == proxy_before


def test_a_single_label_needs_a_base_domain(web_ctx: Context) -> None:
    ok(web_ctx, *create_args("small", "base", "web1"))
    result = cli(web_ctx, "vps", "http", "add", "web1", "shop", KVMVPS_BASE_DOMAIN="")
    assert_one_line_error(result, 2, "KVMVPS_BASE_DOMAIN is not set")


def test_remove_and_delete_clear_the_proxy(web_ctx: Context) -> None:
    ok(web_ctx, *create_args("small", "base", "web1"))
    ok(web_ctx, *create_args("small", "base", "web2"))
    ok(web_ctx, "vps", "http", "add", "web1", "one", "--json")
    ok(web_ctx, "vps", "http", "add", "web2", "two", "--json")
    removed = cli(web_ctx, "vps", "http", "remove", "web1", "one")
    assert removed.exit_code == 0 and "name one.vps.test of web1 removed" in removed.stdout
    assert "one.vps.test" not in config(web_ctx) and "two.vps.test" in config(web_ctx)
    assert_one_line_error(cli(web_ctx, "vps", "http", "remove", "web1", "one"), 2, "no name")
    haproxy = proxy.Proxy(web_ctx.settings.proxy_path)
    assert haproxy.pid() is not None
    assert cli(web_ctx, "vps", "delete", "web2", "--yes").exit_code == 0
    assert config(web_ctx) is None and haproxy.pid() is None  # no names left: stopped


def test_a_proxy_that_cannot_start_changes_nothing(web_ctx: Context) -> None:
    ok(web_ctx, *create_args("small", "base", "web1"))
    before = db_snapshot(web_ctx)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", HTTP_PORT))
        squatter.listen()
        result = cli(web_ctx, "vps", "http", "add", "web1", "shop")
    assert_one_line_error(result, 1, "haproxy did not start")
    assert db_snapshot(web_ctx) == before and config(web_ctx) is None


def test_a_reload_keeps_open_connections(web_ctx: Context) -> None:
    ok(web_ctx, *create_args("small", "base", "web1"))
    ok(web_ctx, "vps", "http", "add", "web1", "one", "--json")
    haproxy = proxy.Proxy(web_ctx.settings.proxy_path)
    old = haproxy.pid()
    held = ask("nobody.example.net", send_rest=False)  # a request half sent
    ok(web_ctx, "vps", "http", "add", "web1", "two", "--json")
    assert haproxy.pid() not in (None, old)
    assert finish(held).startswith(b"HTTP/1.1 503")  # the old process finished it
    deadline = time.monotonic() + 10
    while Path(f"/proc/{old}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (
        not Path(f"/proc/{old}/cmdline").exists() or not Path(f"/proc/{old}/cmdline").read_bytes()
    )


def test_the_acme_hook_runs_with_the_name(web_ctx: Context, tmp_path: Path) -> None:
    ok(web_ctx, *create_args("small", "base", "web1"))
    record = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        f'#!/bin/sh\necho "$1 $KVMVPS_GUEST_IP" >> {record}\n'
        '[ "$1" != fails.vps.test ] || { echo "no certificate" >&2; exit 3; }\n'
    )
    hook.chmod(0o755)
    shown = ok(web_ctx, "vps", "http", "add", "web1", "shop", "--json", KVMVPS_ACME_HOOK=str(hook))
    assert shown["acme"] == "ok"
    failed = ok(
        web_ctx, "vps", "http", "add", "web1", "fails", "--json", KVMVPS_ACME_HOOK=str(hook)
    )
    assert failed["acme"] == "failed: no certificate"  # the name routes all the same
    assert record.read_text().split("\n")[:2] == [
        f"shop.vps.test {shown['guest_ip']}",
        f"fails.vps.test {shown['guest_ip']}",
    ]
    assert "fails.vps.test" in config(web_ctx)


def test_names_are_the_owners_alone(web_ctx: Context) -> None:
    from kvmvps.errors import NotFound
    from kvmvps.services import users

    ok(web_ctx, *create_args("small", "base", "web1"))
    other = users.add_user(web_ctx, "other@example.com", None, False)
    with pytest.raises(NotFound):
        http_names.add(web_ctx, "web1", "shop", owner_id=other.id)
    assert http_names.list_names(web_ctx, "web1") == []
