"""The serial console of one real tiny guest: libvirt streams, the CLI's service, the browser.

One VPS is built for the module (its build reads the host key from the console
stream, not the log file) and shared: each test logs in on the console, runs a
command, sees its output and logs out again. The browser tests use Chromium
(as tests/e2e/test_browser.py does): once against the development server, once
through haproxy with a self-signed certificate (``wss://``) in front of the
production server (gunicorn).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from kvmvps.cli.vps_extra_cmds import relay
from kvmvps.hypervisor import ConsoleStream
from kvmvps.services import Context, audit, console, inventory, users
from tests.badinput import _env_of, create_args, run_cli
from tests.e2e.test_browser import (
    PASSWORD,
    browser_plan,
    fill,
    new_browser,
    open_browser,
    shot,
    site,
    submit,
)
from tests.integration.test_remote_host import remote_uri

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]
__all__ = ["browser_plan", "open_browser", "remote_uri", "site"]  # fixtures used here

MARK = "con$((6*7))sole"  # typed; the shell prints con42sole
SEEN = "con42sole"
READ_SCREEN = """
var b = window.kvmvpsConsole.buffer.active, out = [];
for (var i = 0; i < b.length; i++) { out.push(b.getLine(i).translateToString(true)); }
return out.join("\\n");
"""


@pytest.fixture(scope="module")
def guest(real_ctx: Context, tiny_image: str) -> Iterator[dict]:
    """One running tiny VPS of a customer with a password, for the whole module."""
    if "small" not in [p.name for p in inventory.list_plans(real_ctx)]:
        inventory.add_plan(real_ctx, "small", 1, 256, 1, price_cents=500)
    email = f"console-{uuid.uuid4().hex[:8]}@example.com"
    users.add_user(real_ctx, email, PASSWORD)
    result = run_cli(  # a loaded CI machine may take minutes to boot a guest under TCG
        real_ctx,
        *create_args("small", "tiny", "console1", "--owner", email),
        extra_env={"KVMVPS_SSH_TIMEOUT": "300"},
    )
    assert result.exit_code == 0, result.stderr
    vps = {**json.loads(result.stdout), "email": email}
    yield vps
    run_cli(real_ctx, "vps", "delete", vps["id"], "--yes")


def wait_for(read: Callable[[], str], text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        seen = read()
        if text in seen:
            return seen
        assert time.monotonic() < deadline, f"never saw {text!r}; the console shows:\n{seen[-800:]}"
        time.sleep(0.1)


def session_over(stream: ConsoleStream) -> tuple[Callable[[], str], Callable[[str], None]]:
    """A reader of everything the console printed so far, and a writer of keystrokes."""
    out: list[bytes] = []

    def read() -> str:
        while (data := stream.read(0.05)) not in (None, b""):
            out.append(data)
        return b"".join(out).decode(errors="replace")

    return read, lambda text: stream.write(text.encode())


def log_in_and_run(read: Callable[[], str], type_: Callable[[str], None], vps: dict) -> None:
    type_("\r")
    wait_for(read, "login:")
    type_(vps["username"] + "\r")
    wait_for(read, "assword:")
    type_(vps["password"] + "\r")
    wait_for(read, "$ ")
    type_(f"echo {MARK}\r")
    wait_for(read, SEEN)
    type_("exit\r")  # back to the login prompt for the next test


def test_the_build_read_the_host_key_from_the_console_stream(
    real_ctx: Context, guest: dict
) -> None:
    # the log file is not what the build read: the pinned key (and the pushed
    # password) worked, and the build attached the console before the first boot
    assert guest["host_key_fingerprint"].startswith("SHA256:")
    assert guest["state"] == "running"


def test_console_stream_on_the_local_host(real_ctx: Context, guest: dict) -> None:
    with ConsoleStream(real_ctx.settings.libvirt_uri, guest["domain"]) as stream:
        log_in_and_run(*session_over(stream), guest)


def test_console_over_qemu_ssh_with_an_audited_session(
    real_ctx: Context, guest: dict, remote_uri: str
) -> None:
    target = console.Target(guest["id"], guest["hostname"], remote_uri, guest["domain"])
    with console.open_session(real_ctx, target, "os:console-test") as session:
        log_in_and_run(*session_over(session.stream), guest)
    entries = audit.list_entries(real_ctx, limit=5, actor="os:console-test")
    assert [e["action"] for e in entries[:2]] == ["vps.console.end", "vps.console"]
    assert entries[0]["target"] == "console1" and guest["id"] in (entries[0]["detail"] or "")


def test_the_cli_relay_over_the_stream(real_ctx: Context, guest: dict) -> None:
    """``vps console``'s relay: keystrokes from a file descriptor, output to another."""
    keys_r, keys_w = os.pipe()
    out_r, out_w = os.pipe()
    os.set_blocking(out_r, False)
    target = console.console_target(real_ctx, guest["hostname"])
    out: list[bytes] = []

    def read() -> str:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(out_r, 65536):
                out.append(chunk)
        return b"".join(out).decode(errors="replace")

    with console.open_session(real_ctx, target, "os:console-test") as session:
        relaying = threading.Thread(target=relay, args=(session, keys_r, out_w), daemon=True)
        relaying.start()
        log_in_and_run(read, lambda text: os.write(keys_w, text.encode()), guest)
        os.write(keys_w, b"\x1d")  # Ctrl+] leaves
        relaying.join(timeout=10)
        assert not relaying.is_alive()
    for fd in (keys_r, keys_w, out_r, out_w):
        os.close(fd)


def _browser_console(driver, base: str, vps: dict, name: str) -> None:
    driver.get(base + "/login")
    fill(driver, email=vps["email"], password=PASSWORD)
    submit(driver)
    driver.get(f"{base}/servers/{vps['id']}")
    started = time.monotonic()
    driver.find_element(By.CSS_SELECTOR, "[data-console-link]").click()
    WebDriverWait(driver, 20, poll_frequency=0.1).until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "[data-console-status]").get_attribute("textContent")
            == "connected"
        ),
        "the console never connected",
    )
    print(f"console connected {time.monotonic() - started:.2f} s after the click ({name})")

    def read() -> str:
        return str(driver.execute_script(READ_SCREEN))

    keys = driver.find_element(By.CSS_SELECTOR, "textarea.xterm-helper-textarea")
    log_in_and_run(read, lambda text: keys.send_keys(text.replace("\r", Keys.ENTER)), vps)
    shot(driver, name)


def test_console_in_the_browser(site: str, open_browser: Callable, guest: dict) -> None:
    _browser_console(open_browser(), site, guest, "20-console")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


@pytest.fixture
def tls_site(real_ctx: Context, tmp_path: Path) -> Iterator[str]:
    """``serve --production`` (gunicorn) behind haproxy terminating TLS with a self-signed cert."""
    web, tls = _free_port(), _free_port()
    env = {
        **os.environ,
        **_env_of(real_ctx),
        "KVMVPS_WEB_HTTPS": "1",
        "KVMVPS_WEB_PROXIES": "1",
        "KVMVPS_WEB_LOGIN_LIMIT": "100/minute",
    }
    gunicorn_log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-c", "from kvmvps.cli.main import main; main()"]
        + ["serve", "--production", "--workers", "1"]
        + ["--port", str(web)],
        env=env,
        stdout=gunicorn_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    key, cert, pem = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "site.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n"
        "  timeout server 30s\n  timeout tunnel 1h\n"
        f"frontend tls\n  bind 127.0.0.1:{tls} ssl crt {pem}\n  option forwardfor\n"
        "  http-request set-header X-Forwarded-Proto https\n  default_backend web\n"
        f"backend web\n  server web1 127.0.0.1:{web}\n"
    )
    haproxy_log = tmp_path / "haproxy.log"
    proxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)],
        stdout=haproxy_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_port(web, server, gunicorn_log)
        _wait_port(tls, proxy, haproxy_log)
        yield f"https://127.0.0.1:{tls}"
    finally:
        proxy.terminate()
        server.send_signal(signal.SIGINT)  # gunicorn's quick stop: no grace for open sockets
        for proc in (proxy, server):
            proc.wait(timeout=30)


def test_console_through_a_tls_proxy_and_the_production_server(
    tls_site: str, guest: dict, tmp_path: Path
) -> None:
    driver = new_browser(tmp_path / "profile", "--ignore-certificate-errors")
    try:
        _browser_console(driver, tls_site, guest, "21-console-tls")
        assert driver.execute_script("return location.protocol") == "https:"
    finally:
        driver.quit()
