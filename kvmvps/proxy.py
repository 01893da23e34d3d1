"""The HTTP(S) proxy: an haproxy that routes names to guests.

HTTP goes by its Host header to the guest's port 80; HTTPS goes by the TLS
server name (SNI) to the guest's port 443 without being decrypted, so the
guest keeps its own certificates. kvmvps runs its own haproxy process (Debian's
haproxy package) with a configuration it writes itself: checked with
``haproxy -c``, put in place atomically, and reloaded with ``-sf OLD_PID``,
which starts a new process on the same sockets and lets the old one finish
the connections it holds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmvps.errors import FirewallError

TIMEOUT = 30
HAPROXY = "haproxy"


@dataclass(frozen=True)
class Route:
    """The names of one guest."""

    backend: str  # letters, digits and '_' only
    guest_ip: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class Listen:
    address: str
    http_port: int
    https_port: int


def render(listen: Listen, routes: list[Route]) -> str:
    """The whole haproxy configuration (a pure function of its arguments)."""
    routes = sorted(routes, key=lambda r: r.backend)
    lines = [
        "# written by kvmvps from its database; changes here are overwritten",
        "global",
        "    maxconn 4096",
        "defaults",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout tunnel 1h",
        "frontend kvmvps_http",
        f"    bind {listen.address}:{listen.http_port}",
        "    mode http",
        "    option forwardfor",
    ]
    lines += [
        f"    use_backend {r.backend}_http if {{ req.hdr(host),field(1,:),lower -m str "
        f"{' '.join(r.names)} }}"
        for r in routes
    ]
    lines += [
        "frontend kvmvps_https",
        f"    bind {listen.address}:{listen.https_port}",
        "    mode tcp",
        "    tcp-request inspect-delay 5s",
        "    tcp-request content accept if { req.ssl_hello_type 1 }",
    ]
    lines += [
        f"    use_backend {r.backend}_https if {{ req.ssl_sni -i {' '.join(r.names)} }}"
        for r in routes
    ]
    for r in routes:
        lines += [
            f"backend {r.backend}_http",
            "    mode http",
            f"    server guest {r.guest_ip}:80",
            f"backend {r.backend}_https",
            "    mode tcp",
            f"    server guest {r.guest_ip}:443",
        ]
    return "\n".join(lines) + "\n"


class Proxy:
    """kvmvps's haproxy process: its configuration file and pid file in ``directory``."""

    def __init__(self, directory: Path, haproxy: str = HAPROXY) -> None:
        self.directory = directory
        self.config = directory / "haproxy.cfg"
        self.pidfile = directory / "haproxy.pid"
        self.haproxy = haproxy

    def pid(self) -> int | None:
        """The running haproxy's pid, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return pid if b"haproxy" in cmdline and str(self.config).encode() in cmdline else None

    def current(self) -> str | None:
        return self.config.read_text() if self.config.exists() else None

    def apply(self, text: str) -> bool:
        """Check, install and (re)load ``text``; False when nothing needed doing.

        On any failure the previous configuration stays in place and running.
        """
        if self.current() == text and self.pid() is not None:
            return False
        if shutil.which(self.haproxy) is None:
            raise FirewallError(f"{self.haproxy} is not installed (apt-get install haproxy)")
        self.directory.mkdir(parents=True, exist_ok=True)
        new = self._check(text)
        old_text = self.current()
        os.replace(new, self.config)
        try:
            self._start()
        except FirewallError:
            self._put_back(old_text)
            raise
        return True

    def _check(self, text: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=".haproxy-", suffix=".cfg", dir=self.directory)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        done = self._run([self.haproxy, "-c", "-q", "-f", name])
        if done.returncode != 0:
            Path(name).unlink(missing_ok=True)
            raise FirewallError(f"haproxy rejected the configuration: {_first(done)}")
        return Path(name)

    def _start(self) -> None:
        argv = [self.haproxy, "-D", "-f", str(self.config), "-p", str(self.pidfile)]
        old = self.pid()
        if old is not None:
            argv += ["-sf", str(old)]
        done = self._run(argv)
        if done.returncode != 0:
            raise FirewallError(f"haproxy did not start: {_first(done)}")

    def _put_back(self, old_text: str | None) -> None:
        if old_text is None:
            self.config.unlink(missing_ok=True)
        else:
            self.config.write_text(old_text)

    def stop(self) -> bool:
        """Stop haproxy gracefully (SIGUSR1: finish the connections, then exit)."""
        pid = self.pid()
        self.config.unlink(missing_ok=True)
        if pid is None:
            return False
        os.kill(pid, signal.SIGUSR1)  # haproxy's soft stop
        self.pidfile.unlink(missing_ok=True)
        return True

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FirewallError(f"cannot run {argv[0]}: {exc}") from None


def _first(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    alerts = [ln for ln in lines if "ALERT" in ln] or lines
    return alerts[0] if alerts else f"exit status {done.returncode}"
