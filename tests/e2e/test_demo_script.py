"""The README's main-job command, run as a new user would: ``bash scripts/demo.sh``.

It runs on the real libvirtd with an installation of its own (state dir,
pool, network, bridge, subnet, web port), logs in to the VPS with OpenSSH
using what the script printed, logs in to the website as the printed
operator, runs the script again and checks nothing was duplicated, then
stops the services and removes what it made.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmvps.config import load_settings
from kvmvps.services import Context, daemons, users
from kvmvps.services import vps as vps_service
from tests import conftest
from tests.conftest import _SLOT, _remove_pool, cleanup_installation, make_state_dir
from tests.tools import assert_no_trace
from tests.web.conftest import CSRF_INPUT

pytestmark = [pytest.mark.libvirt, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
NAME, SUBNET = f"kvd{os.getpid()}", f"10.{190 + _SLOT}.2.0/24"
PRODUCTION_NETWORK = "kvmvps"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def field(output: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}:\s+(.+)$", output, re.MULTILINE)
    assert match, f"no {label!r} in:\n{output}"
    return match[1].strip()


def network_info(name: str) -> str:
    done = subprocess.run(
        ["virsh", "-c", "qemu:///system", "net-info", name], capture_output=True, text=True
    )
    return done.stdout if done.returncode == 0 else "absent"


class Demo:
    """One installation of the demo, driven through the script and the CLI."""

    def __init__(self, state: Path) -> None:
        self.state, self.port = state, free_port()
        self.env = {
            **os.environ,
            **conftest.test_env(state, name=NAME, subnet=SUBNET),
            "KVMVPS_WEB_PORT": str(self.port),
            "KVMVPS_VENV": sys.prefix,
            "PYTHONPATH": str(ROOT),
        }
        self._ctx: Context | None = None

    def script(self) -> str:
        done = subprocess.run(
            ["bash", "scripts/demo.sh"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout + done.stderr

    def ctx(self) -> Context:
        if self._ctx is None:
            self._ctx = Context(load_settings(self.env))
        return self._ctx

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kvmvps", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def js(self, *args: str) -> object:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def demo_install() -> Iterator[Demo]:
    demo = Demo(make_state_dir("demo-"))
    try:
        yield demo
    finally:
        demo.cli("service", "stop", "--timeout", "30")
        if demo._ctx is not None:
            demo._ctx.close()
        ctx = Context(load_settings(conftest.test_env(demo.state, name=NAME, subnet=SUBNET)))
        try:
            cleanup_installation(ctx)
        finally:
            ctx.close()
            _remove_pool(NAME)
            shutil.rmtree(demo.state, ignore_errors=True)


def ssh(host: str, port: str, user: str, password: str, known_hosts: Path) -> str:
    done = subprocess.run(
        [
            "sshpass",
            "-e",
            "ssh",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "ConnectTimeout=20",
            "-p",
            port,
            f"{user}@{host}",
            "hostname",
        ],
        env={**os.environ, "SSHPASS": password},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie does not (where PID 1 does not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def web_login(base: str, email: str, password: str) -> tuple[int, str]:
    """Log in through the real login form (CSRF token and all); (status, admin page)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(base + "login", timeout=30) as page:
        token = CSRF_INPUT.search(page.read().decode())
    assert token, "no CSRF token on the login page"
    form = urllib.parse.urlencode({"email": email, "password": password, "csrf_token": token[1]})
    try:
        with opener.open(base + "login", data=form.encode(), timeout=30) as answer:
            answer.read()
        with opener.open(base + "admin/servers", timeout=30) as admin:
            return admin.status, admin.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_demo_script_delivers_and_reruns_to_the_same_state(
    demo_install: Demo, tmp_path: Path
) -> None:
    production = network_info(PRODUCTION_NETWORK)
    out = demo_install.script()

    # the VPS answers SSH with the printed credentials, its host key pinned
    user_host = field(out, "log in").split()
    port, (user, host) = user_host[2], user_host[3].split("@")
    password = field(out, "VPS password")
    known_hosts = tmp_path / "known_hosts"
    target = host if port == "22" else f"[{host}]:{port}"
    known_hosts.write_text(f"{target} {field(out, 'host key')}\n")
    assert ssh(host, port, user, password, known_hosts) == "demo"
    wrong = tmp_path / "wrong_hosts"  # another key for that address: OpenSSH refuses
    wrong.write_text(
        f"{target} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBtAtWOaXYpeQSDkcfuD0Axp3MG1PyhaCP8SEHTDwPMT\n"
    )
    with pytest.raises(AssertionError, match="REMOTE HOST IDENTIFICATION HAS CHANGED"):
        ssh(host, port, user, password, wrong)

    # the website answers on the printed URL; the printed operator logs in over plain HTTP
    base = field(out, "website").split()[0]
    assert base == f"http://127.0.0.1:{demo_install.port}/"
    assert "KVMVPS_WEB_HTTPS=0" in out
    email, op_password = field(out, "operator login"), field(out, "operator password")
    status, admin_page = web_login(base, email, op_password)
    assert status == 200 and "demo" in admin_page
    assert web_login(base, email, op_password[::-1])[0] in (401, 403)

    # services: running, with pid, uptime, log and URL
    ctx = demo_install.ctx()
    services = {n: daemons.status(ctx, n).as_dict() for n in daemons.NAMES}
    assert all(s["running"] and s["pid"] and s["manager"] == "process" for s in services.values())
    assert services["web"]["url"] == base and Path(services["worker"]["log"]).is_file()
    worker_log = Path(services["worker"]["log"]).read_text()
    assert "(create demo): finished in" in worker_log and "step host-key done in" in worker_log
    for secret in (password, op_password):  # never logged, never stored in plain text
        assert_no_trace(demo_install.state, secret)

    # run again: the same VPS, the same operator, the same service processes
    vps_before = vps_service.list_vps(ctx)
    again = demo_install.script()
    assert "reusing VPS demo" in again and "building VPS" not in again
    assert password not in again and op_password not in again
    assert field(again, "log in") == field(out, "log in")
    assert vps_service.list_vps(ctx) == vps_before and len(vps_before) == 1
    assert [u.email for u in users.list_users(ctx)].count(email) == 1
    after = {n: daemons.status(ctx, n).pid for n in daemons.NAMES}
    assert after == {n: s["pid"] for n, s in services.items()}
    assert ssh(host, port, user, password, known_hosts) == "demo"
    assert web_login(base, email, op_password)[0] == 200
    assert network_info(PRODUCTION_NETWORK) == production  # the real installation: untouched

    # stop: nothing left running, no pid files
    stopped = demo_install.js("service", "stop")
    assert not any(s["running"] for s in stopped)
    assert not list((demo_install.state / "run").glob("*.pid"))
    for s in services.values():
        assert not _alive(s["pid"])
