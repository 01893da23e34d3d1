"""The consoles of one real tiny guest: libvirt streams, the CLI's service, the browser.

One VPS is built for the module (its build reads the host key from the console
stream, not the log file) and shared: each serial test logs in on the console,
runs a command, sees its output and logs out again. The browser tests use
Chromium (as tests/e2e/test_browser.py does): once against the development
server, once through haproxy with a self-signed certificate (``wss://``) in
front of the production server (gunicorn). The graphical console's tests speak
RFB with the guest's real QEMU VNC server, through the web server's WebSocket
relay and through an SSH tunnel to a ``qemu+ssh://`` host, and let noVNC draw it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from simple_websocket import Client

from kvmvps import vnc
from kvmvps.cli.vps_extra_cmds import relay
from kvmvps.hypervisor import ConsoleStream, get_hypervisor
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
from tests.tools import needs

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


def _browser_vnc(driver: WebDriver, base: str, vps: dict, name: str) -> None:
    """The logged-in customer's graphical console: noVNC connects and draws the guest's screen."""
    driver.get(f"{base}/servers/{vps['id']}")
    started = time.monotonic()
    driver.find_element(By.CSS_SELECTOR, "[data-vnc-link]").click()
    WebDriverWait(driver, 60, poll_frequency=0.1).until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "[data-console-status]").get_attribute("textContent")
            == "connected"
        ),
        "the graphical console never connected",
    )
    print(f"graphical console connected {time.monotonic() - started:.2f} s after the click")
    size = driver.execute_script(
        "var c = document.querySelector('[data-vnc] canvas'); return [c.width, c.height];"
    )
    assert size[0] >= 640 and size[1] >= 400, size  # the guest's VGA screen
    # not blank: the guest's text (its login prompt) lights up pixels on the dark screen
    WebDriverWait(driver, 30, poll_frequency=0.2).until(
        lambda d: d.execute_script(LIT_PIXELS) > 200, "the graphical console stays blank"
    )
    shot(driver, name)


# How many sampled pixels of the noVNC canvas differ from its top-left one.
LIT_PIXELS = """
var c = document.querySelector('[data-vnc] canvas');
var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
var lit = 0;
for (var i = 0; i < d.length; i += 4 * 7) {
  if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) { lit++; }
}
return lit;
"""


def test_console_in_the_browser(site: str, open_browser: Callable, guest: dict) -> None:
    driver = open_browser()
    _browser_console(driver, site, guest, "20-console")
    _browser_vnc(driver, site, guest, "22-graphical-console")


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
        _browser_vnc(driver, tls_site, guest, "23-graphical-console-tls")  # over wss://
    finally:
        driver.quit()


# -- the graphical console -----------------------------------------------------------
def rfb_handshake(
    take: Callable[[int], bytes], send: Callable[[bytes], None]
) -> tuple[int, int, str]:
    """RFB 3.8 with no authentication, as noVNC does it: (width, height, desktop name)."""
    assert take(12) == b"RFB 003.008\n"  # QEMU's greeting
    send(b"RFB 003.008\n")
    count = take(1)[0]
    assert 1 in take(count), "the display asks for a password"  # 1: None
    send(b"\x01")
    assert take(4) == b"\0\0\0\0"  # SecurityResult OK
    send(b"\x01")  # ClientInit, shared
    head = take(24)
    width, height = int.from_bytes(head[:2], "big"), int.from_bytes(head[2:4], "big")
    name = take(int.from_bytes(head[20:24], "big")).decode()
    return width, height, name


def taker(receive: Callable[[float], bytes | str | None]) -> Callable[[int], bytes]:
    """Exactly n bytes at a time out of a stream of messages (or chunks)."""
    buffer = bytearray()

    def take(n: int) -> bytes:
        deadline = time.monotonic() + 90  # a machine under heavy load is slow, not wrong
        while len(buffer) < n:
            assert time.monotonic() < deadline, f"only {bytes(buffer)!r} of {n} bytes came"
            data = receive(0.5)
            if data is not None:
                assert data != b"", "the display closed"
                buffer.extend(data.encode() if isinstance(data, str) else data)
        out = bytes(buffer[:n])
        del buffer[:n]
        return out

    return take


def display_port(real_ctx: Context, guest: dict) -> int:
    return vnc.display_port(
        get_hypervisor(real_ctx.settings.libvirt_uri).domain_xml(guest["domain"])
    )


@needs(shutil.which("ss") is not None, "ss (iproute2) lists the host's listening sockets")
def test_the_vnc_display_listens_on_the_hosts_loopback_only(real_ctx: Context, guest: dict) -> None:
    port = display_port(real_ctx, guest)
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True)
    local = [line.split()[3] for line in listening.stdout.splitlines()]
    on_port = [address for address in local if address.rsplit(":", 1)[1] == str(port)]
    assert on_port == [f"127.0.0.1:{port}"], on_port


def test_graphical_console_through_the_web_relay(site: str, real_ctx: Context, guest: dict) -> None:
    user = users.get_user(real_ctx, guest["email"])
    ticket = console.issue_ticket(real_ctx, guest["id"], user.id, console.VNC)
    url = site.replace("http://", "ws://") + f"/console/vnc?ticket={ticket.secret}"
    ws = Client.connect(url)  # a program: no Origin (its Host header lacks the port)
    try:
        width, height, name = rfb_handshake(taker(lambda t: ws.receive(timeout=t)), ws.send)
        assert width >= 640 and height >= 400 and guest["domain"] in name
        # a whole-screen update request: pixels come back (FramebufferUpdate, type 0)
        ws.send(b"\x03\x00\x00\x00\x00\x00" + width.to_bytes(2, "big") + height.to_bytes(2, "big"))
        assert taker(lambda t: ws.receive(timeout=t))(1) == b"\x00"
    finally:
        ws.close()
    deadline = time.monotonic() + 10
    while True:
        entries = audit.list_entries(real_ctx, limit=5, actor=f"user:{guest['email']}")
        if entries and entries[0]["action"] == "vps.console.end":
            break
        assert time.monotonic() < deadline, entries
        time.sleep(0.1)
    assert "vnc session" in (entries[0]["detail"] or "")
    assert entries[1]["action"] == "vps.console" and "vnc" in (entries[1]["detail"] or "")


def test_graphical_console_through_ssh_to_a_remote_host(
    real_ctx: Context, guest: dict, remote_uri: str
) -> None:
    target = console.Target(guest["id"], guest["hostname"], remote_uri, guest["domain"])
    try:
        with console.open_session(real_ctx, target, "os:vnc-test", console.VNC) as session:
            width, height, name = rfb_handshake(taker(session.read), session.write)
            assert width >= 640 and guest["domain"] in name
    finally:
        get_hypervisor(remote_uri).close()  # its sshd stops after this test
    entries = audit.list_entries(real_ctx, limit=2, actor="os:vnc-test")
    assert [e["action"] for e in entries] == ["vps.console.end", "vps.console"]
    assert "vnc session" in (entries[0]["detail"] or "")
