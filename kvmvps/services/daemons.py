"""The worker and the website as services: start, status, stop.

Where systemd runs (and the state dir is the standard one), the units in
``deploy/systemd`` are installed with this installation's ``kvmvps-admin``
and started with ``systemctl``; they log to journald. Anywhere else each
service is a supervised background process: a small supervisor (``service
supervise NAME``) in a session of its own restarts its child when it
crashes, writes its pid to ``STATE_DIR/run/NAME.pid`` and the child's output
to ``STATE_DIR/logs/NAME.log``; SIGTERM to the supervisor stops both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kvmvps.config import Settings, as_env
from kvmvps.errors import InvalidInput, KvmvpsError
from kvmvps.services import Context, audit, jobs

NAMES = ("worker", "web")
SYSTEMD_DIR = Path("/etc/systemd/system")
UNITS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
STANDARD_STATE_DIR = Path("/var/lib/kvmvps")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 120.0
WEB_WORKERS = "2"


@dataclass(frozen=True)
class Status:
    """What ``service status`` shows for one service."""

    name: str
    manager: str
    running: bool
    pid: int | None
    uptime_seconds: float | None
    log: str
    url: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_name(name: str) -> str:
    if name not in NAMES:
        raise InvalidInput(f"no service named {name!r}; they are {', '.join(NAMES)}")
    return name


def manager(settings: Settings) -> str:
    """``systemd`` where systemd runs this standard installation, else ``process``."""
    if settings.service_manager != "auto":
        return settings.service_manager
    systemd = Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None
    return "systemd" if systemd and settings.state_dir == STANDARD_STATE_DIR else "process"


def url(settings: Settings) -> str:
    host = settings.web_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a comparison
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{settings.web_port}/"


def command(settings: Settings, name: str) -> list[str]:
    """The child process a service runs."""
    base = [sys.executable, "-m", "kvmvps"]
    if name == "worker":
        return [*base, "worker"]
    return [
        *base,
        "serve",
        "--host",
        settings.web_host,
        "--port",
        str(settings.web_port),
        "--production",
        "--workers",
        WEB_WORKERS,
    ]


# -- supervised processes ----------------------------------------------------
def pid_file(settings: Settings, name: str) -> Path:
    return settings.state_dir / "run" / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.state_dir / "logs" / f"{name}.log"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _supervisor_alive(pid: int, name: str) -> bool:
    """True when ``pid`` is a live supervisor of service ``name`` (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and b"supervise" in argv and name.encode() in argv


def _uptime(pid: int) -> float | None:
    """Seconds since ``pid`` started, from /proc."""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(since_boot - start_ticks / os.sysconf("SC_CLK_TCK"), 1)


def _process_status(settings: Settings, name: str) -> Status:
    pid = _read_pid(pid_file(settings, name))
    alive = pid is not None and _supervisor_alive(pid, name)
    return Status(
        name=name,
        manager="process",
        running=alive,
        pid=pid if alive else None,
        uptime_seconds=_uptime(pid) if alive and pid else None,
        log=str(log_file(settings, name)),
        url=url(settings) if name == "web" else None,
    )


def _process_start(ctx: Context, name: str) -> Status:
    settings = ctx.settings
    if _process_status(settings, name).running:
        return _process_status(settings, name)
    for path in (pid_file(settings, name), log_file(settings, name)):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid_file(settings, name).unlink(missing_ok=True)
    with open(log_file(settings, name), "ab") as log, open(os.devnull, "rb") as devnull:
        os.chmod(log_file(settings, name), 0o600)
        subprocess.Popen(
            [sys.executable, "-m", "kvmvps", "service", "supervise", name],
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **as_env(settings)},  # this installation's, whatever the caller's
            start_new_session=True,
            close_fds=True,
        )
    _wait_ready(ctx, name)
    return _process_status(settings, name)


def _wait_ready(ctx: Context, name: str) -> None:
    """Until the supervisor wrote its pid and the service answers (a live worker, a page)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _ready(ctx, name):
            return
        time.sleep(0.3)
    raise KvmvpsError(
        f"the {name} did not come up within {START_TIMEOUT:g} s; see {status(ctx, name).log}"
    )


def _ready(ctx: Context, name: str) -> bool:
    if not status(ctx, name).running:
        return False
    if name == "worker":
        return bool(jobs.live_workers(ctx))
    try:
        with urllib.request.urlopen(url(ctx.settings) + "healthz", timeout=2) as response:  # noqa: S310 - our own http URL
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _process_stop(settings: Settings, name: str, timeout: float) -> Status:
    status = _process_status(settings, name)
    if status.pid is None:
        pid_file(settings, name).unlink(missing_ok=True)
        return status
    os.kill(status.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _supervisor_alive(status.pid, name):
        time.sleep(0.2)
    if _supervisor_alive(status.pid, name):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(status.pid, signal.SIGKILL)  # its own session: the supervisor's group
    pid_file(settings, name).unlink(missing_ok=True)
    return _process_status(settings, name)


RESTART_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_SECONDS = 60.0


def supervise(settings: Settings, name: str) -> int:
    """Run the service's process until SIGTERM; restart it when it exits by itself."""
    check_name(name)
    path = pid_file(settings, name)
    path.write_text(f"{os.getpid()}\n")
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failures, code = 0, 0
    try:
        while not stopping:
            started = time.monotonic()
            child = subprocess.Popen(command(settings, name))
            code = child.wait()
            if stopping:
                break
            failures = 0 if time.monotonic() - started > STABLE_SECONDS else failures + 1
            pause = RESTART_PAUSES[min(failures, len(RESTART_PAUSES) - 1)]
            print(f"kvmvps {name} exited with {code}; restarting in {pause:g} s", flush=True)
            time.sleep(pause)
    finally:
        if _read_pid(path) == os.getpid():
            path.unlink(missing_ok=True)
    return 0


# -- systemd -----------------------------------------------------------------
def unit(name: str) -> str:
    return f"kvmvps-{name}.service"


def _systemctl(*args: str) -> str:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0 and args[0] not in ("show", "is-active"):
        raise KvmvpsError(f"systemctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def install_units(settings: Settings) -> None:
    """The units from deploy/systemd, run by this installation's kvmvps-admin."""
    admin = str(Path(sys.executable).parent / "kvmvps-admin")
    if not UNITS_DIR.is_dir():
        raise KvmvpsError(
            f"no unit files in {UNITS_DIR}; install deploy/systemd by hand "
            "(README: Running under systemd) or set KVMVPS_SERVICE_MANAGER=process"
        )
    for name in NAMES:
        text = (UNITS_DIR / unit(name)).read_text()
        text = text.replace("/opt/kvmvps/venv/bin/kvmvps-admin", admin)
        (SYSTEMD_DIR / unit(name)).write_text(text)
    dropin = SYSTEMD_DIR / f"{unit('web')}.d"
    dropin.mkdir(exist_ok=True)
    https = os.environ.get("KVMVPS_WEB_HTTPS", "1")
    (dropin / "listen.conf").write_text(
        "[Service]\n"
        f"Environment=KVMVPS_WEB_HTTPS={https}\n"
        "ExecStart=\n"
        f"ExecStart={admin} serve --host {settings.web_host} --port {settings.web_port} "
        f"--production --workers {WEB_WORKERS}\n"
    )
    _systemctl("daemon-reload")


def _systemd_status(settings: Settings, name: str) -> Status:
    props = dict(
        line.split("=", 1)
        for line in _systemctl(
            "show", unit(name), "--property=ActiveState,MainPID,ActiveEnterTimestampMonotonic"
        ).splitlines()
        if "=" in line
    )
    running = props.get("ActiveState") == "active"
    entered = int(props.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    return Status(
        name=name,
        manager="systemd",
        running=running,
        pid=int(props.get("MainPID") or 0) or None,
        uptime_seconds=round(time.monotonic() - entered, 1) if running and entered else None,
        log=f"journalctl -u {unit(name)}",
        url=url(settings) if name == "web" else None,
    )


# -- the service layer's face ------------------------------------------------
def status(ctx: Context, name: str) -> Status:
    check_name(name)
    if manager(ctx.settings) == "systemd":
        return _systemd_status(ctx.settings, name)
    return _process_status(ctx.settings, name)


def start(ctx: Context, name: str) -> Status:
    """Start a service unless it runs already (then it is left alone)."""
    check_name(name)
    if manager(ctx.settings) != "systemd":
        return _process_start(ctx, name)
    if not _systemd_status(ctx.settings, name).running:
        install_units(ctx.settings)
        _systemctl("enable", "--now", unit(name))
        _wait_ready(ctx, name)
    return _systemd_status(ctx.settings, name)


def stop(ctx: Context, name: str, timeout: float = STOP_TIMEOUT) -> Status:
    check_name(name)
    if manager(ctx.settings) == "systemd":
        _systemctl("disable", "--now", unit(name))
        return _systemd_status(ctx.settings, name)
    return _process_stop(ctx.settings, name, timeout)


@audit.audits("service.start", target="names")
def start_all(
    ctx: Context, names: tuple[str, ...] = (), *, actor: str | None = None
) -> list[Status]:
    """Start the services named (all for none): one audit entry of ``actor`` for the lot."""
    return [start(ctx, name) for name in names or NAMES]


@audit.audits("service.stop", target="names")
def stop_all(
    ctx: Context,
    names: tuple[str, ...] = (),
    timeout: float = STOP_TIMEOUT,
    *,
    actor: str | None = None,
) -> list[Status]:
    """Stop the services named (all for none): one audit entry of ``actor`` for the lot."""
    return [stop(ctx, name, timeout) for name in names or NAMES]
