"""Settings: one object, read from the environment and an optional TOML file.

Precedence, highest first: ``KVMVPS_*`` environment variables, the TOML file
named by ``KVMVPS_CONFIG`` (keys are the variable names without the prefix,
lower-case), then the defaults below.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from kvmvps import validation
from kvmvps.errors import InvalidInput

log = logging.getLogger(__name__)

DOMAIN_TYPES = ("auto", "kvm", "qemu")
SIGNUP_MODES = ("open", "closed", "invite")
MAX_QUOTA = 1_000_000
LOG_FORMATS = ("text", "json")
SERVICE_MANAGERS = ("auto", "systemd", "process")
MAX_TB_CACHE_MIB = 4096


@dataclass(frozen=True)
class Settings:
    """Everything kvmvps needs to know about its environment."""

    state_dir: Path = Path("/var/lib/kvmvps")
    database_url: str = ""
    libvirt_uri: str = "qemu:///system"
    domain_type: str = "auto"
    storage_pool: str = "kvmvps"
    network: str = "kvmvps"
    network_subnet: str = "10.213.0.0/24"
    network_bridge: str = "kvmvps0"
    # the default network's IPv6 /64: "auto" (a unique local one), "none", or a prefix
    network_ipv6: str = "auto"
    cpu_overcommit: float = 4.0
    host_memory_reserve_mib: int = 512
    ssh_timeout: float = 120.0
    cache_dir: str = ""
    build_limit: int = 10
    build_timeout: float = 900.0
    # how long a job waits for a host that stops answering before it fails (0: not at all)
    host_wait: float = 300.0
    job_lease_seconds: float = 30.0
    worker_heartbeat_seconds: float = 5.0
    worker_poll_seconds: float = 0.5
    worker_concurrency: int = 4
    customer_shutdown_timeout_max: float = 120.0
    reconcile_interval: float = 60.0
    # a domain found clean is read again at least every this many passes (1: every pass)
    reconcile_recheck_passes: int = 10
    metrics_interval: float = 60.0
    # seconds between the worker's self-tests of each image (0: never); the plan they order
    image_test_interval: float = 86400.0
    image_test_plan: str = ""
    metrics_token: str = ""
    public_address: str = ""
    forward_ports: str = "20000-29999"
    base_domain: str = ""
    chain_prefix: str = "KVMVPS"
    proxy_dir: str = ""
    agent_host: str = ""
    proxy_http_port: int = 80
    proxy_https_port: int = 443
    acme_hook: str = ""
    backup_dir: str = ""
    # customers' limits unless their account has its own (kvmvps-admin user quota)
    quota_vps: int = 10
    quota_vcpus: int = 16
    quota_memory_mib: int = 32768
    quota_disk_gib: int = 500
    signup: str = "open"
    invite_days: int = 7
    # mail for password resets and e-mail confirmations; no host: no mail is sent
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = ""
    smtp_starttls: int = 1
    require_2fa_admins: int = 0
    log_format: str = "text"
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    service_manager: str = "auto"
    # QEMU's translated-code cache per guest under TCG (domain type qemu); 0: QEMU's default (1 GiB)
    tcg_tb_cache_mib: int = 128
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def sqlite_path(self) -> Path:
        return self.state_dir / "kvmvps.sqlite3"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def pool_dir(self) -> Path:
        return self.state_dir / "pool"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @cached_property
    def console_dir(self) -> Path:
        # cached: a reconcile pass builds the facts (and the console log path) of every VPS
        return self.state_dir / "console"

    @property
    def download_cache(self) -> Path:
        """Where image builders keep downloaded packages (KVMVPS_CACHE_DIR)."""
        return Path(self.cache_dir) if self.cache_dir else self.state_dir / "cache"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def forward_port_range(self) -> tuple[int, int]:
        """KVMVPS_FORWARD_PORTS as (first, last); checked by :func:`load_settings`."""
        first, _, last = self.forward_ports.partition("-")
        return int(first), int(last or first)

    @property
    def backup_path(self) -> Path:
        """Where backups are kept (KVMVPS_BACKUP_DIR): a directory, or a mount of remote storage."""
        return Path(self.backup_dir) if self.backup_dir else self.state_dir / "backups"

    @property
    def proxy_path(self) -> Path:
        """Where kvmvps keeps its haproxy configuration and pid file (KVMVPS_PROXY_DIR)."""
        if self.proxy_dir:
            return Path(self.proxy_dir)
        if self.agent_host:  # a host agent runs that host's own proxy
            return self.state_dir / "hosts" / self.agent_host / "proxy"
        return self.state_dir / "proxy"


def _coerce(name: str, raw: Any, default: Any) -> Any:
    """Turn a raw env/TOML value into the type of the field's default."""
    try:
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, bool):
            return str(raw).lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise InvalidInput(f"setting {name}: {raw!r} is not a valid value") from None
    return str(raw)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise InvalidInput(f"KVMVPS_CONFIG names {path}, which does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: not valid TOML ({exc})") from None


def load_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and overrides."""
    env = dict(os.environ if env is None else env)
    file_values = _read_toml(env["KVMVPS_CONFIG"]) if env.get("KVMVPS_CONFIG") else {}
    values: dict[str, Any] = {}
    defaults = Settings()
    for f in fields(Settings):
        if f.name == "extra":
            continue
        default = getattr(defaults, f.name)
        key = "KVMVPS_" + f.name.upper()
        if key in env:
            values[f.name] = _coerce(key, env[key], default)
        elif f.name in file_values:
            values[f.name] = _coerce(f.name, file_values[f.name], default)
    settings = replace(defaults, **values, **overrides)
    if settings.domain_type not in DOMAIN_TYPES:
        raise InvalidInput(
            f"KVMVPS_DOMAIN_TYPE must be one of {', '.join(DOMAIN_TYPES)}, not {settings.domain_type!r}"
        )
    _check_forwarding(settings)
    _check_tenants(settings)
    _check_choices(settings)
    _check_queue(settings)
    return settings


def _check_tenants(s: Settings) -> None:
    """One-line errors for bad quota and sign-up settings."""
    if s.signup not in SIGNUP_MODES:
        raise InvalidInput(
            f"KVMVPS_SIGNUP must be one of {', '.join(SIGNUP_MODES)}, not {s.signup!r}"
        )
    for name in ("quota_vps", "quota_vcpus", "quota_memory_mib", "quota_disk_gib"):
        value = getattr(s, name)
        if not 0 <= value <= MAX_QUOTA:
            raise InvalidInput(f"KVMVPS_{name.upper()} must be from 0 to {MAX_QUOTA}, not {value}")
    if not 1 <= s.invite_days <= 366:
        raise InvalidInput(f"KVMVPS_INVITE_DAYS must be from 1 to 366, not {s.invite_days}")
    for name in ("smtp_starttls", "require_2fa_admins"):
        if getattr(s, name) not in (0, 1):
            raise InvalidInput(f"KVMVPS_{name.upper()} must be 0 or 1, not {getattr(s, name)}")
    if not 1 <= s.smtp_port <= 65535:
        raise InvalidInput(f"KVMVPS_SMTP_PORT must be from 1 to 65535, not {s.smtp_port}")


def _check_choices(s: Settings) -> None:
    for name, value, allowed in (
        ("KVMVPS_LOG_FORMAT", s.log_format, LOG_FORMATS),
        ("KVMVPS_SERVICE_MANAGER", s.service_manager, SERVICE_MANAGERS),
    ):
        if value not in allowed:
            raise InvalidInput(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    if not 1 <= s.web_port <= 65535:
        raise InvalidInput(f"KVMVPS_WEB_PORT {s.web_port} is not a port (1-65535)")
    if not 0 <= s.tcg_tb_cache_mib <= MAX_TB_CACHE_MIB:
        raise InvalidInput(
            f"KVMVPS_TCG_TB_CACHE_MIB must be from 0 to {MAX_TB_CACHE_MIB}, not {s.tcg_tb_cache_mib}"
        )


def as_env(settings: Settings) -> dict[str, str]:
    """The ``KVMVPS_*`` variables that give a child process exactly these settings."""
    return {
        "KVMVPS_" + f.name.upper(): str(getattr(settings, f.name))
        for f in fields(Settings)
        if f.name != "extra"
    }


MAX_WORKER_CONCURRENCY = 64


def _check_queue(s: Settings) -> None:
    """One-line errors for worker and queue settings out of range."""
    if not 1 <= s.worker_concurrency <= MAX_WORKER_CONCURRENCY:
        raise InvalidInput(
            f"KVMVPS_WORKER_CONCURRENCY must be between 1 and {MAX_WORKER_CONCURRENCY}, "
            f"not {s.worker_concurrency}"
        )
    if s.image_test_interval != 0 and not 600 <= s.image_test_interval <= 366 * 86400:
        raise InvalidInput(
            "KVMVPS_IMAGE_TEST_INTERVAL must be 0 (off) or from 600 seconds to a year, "
            f"not {s.image_test_interval:g}"
        )
    if s.metrics_interval != 0 and not 5 <= s.metrics_interval <= 3600:
        raise InvalidInput(
            "KVMVPS_METRICS_INTERVAL must be 0 (off) or from 5 to 3600 seconds, "
            f"not {s.metrics_interval:g}"
        )
    if not 1 <= s.reconcile_recheck_passes <= 1000:
        raise InvalidInput(
            "KVMVPS_RECONCILE_RECHECK_PASSES must be from 1 (every pass) to 1000, "
            f"not {s.reconcile_recheck_passes}"
        )
    if not 0 <= s.host_wait <= 3600:
        raise InvalidInput(f"KVMVPS_HOST_WAIT must be from 0 to 3600 seconds, not {s.host_wait:g}")
    if s.metrics_token and len(s.metrics_token) < 16:
        raise InvalidInput("KVMVPS_METRICS_TOKEN must be at least 16 characters long")
    if not 0 < s.customer_shutdown_timeout_max <= 3600:
        raise InvalidInput(
            "KVMVPS_CUSTOMER_SHUTDOWN_TIMEOUT_MAX must be more than 0 and at most 3600 seconds, "
            f"not {s.customer_shutdown_timeout_max:g}"
        )


_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
_CHAIN_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,19}")


def _check_forwarding(s: Settings) -> None:
    """One-line errors for bad port-forwarding and proxy settings."""
    match = _PORTS.fullmatch(s.forward_ports.strip())
    first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
    if not match or not 1 <= first <= last <= 65535:
        raise InvalidInput(
            f"KVMVPS_FORWARD_PORTS {s.forward_ports!r} is not a port range such as 20000-29999"
        )
    if s.public_address:
        try:
            ipaddress.IPv4Address(s.public_address)
        except ValueError:
            raise InvalidInput(
                f"KVMVPS_PUBLIC_ADDRESS {s.public_address!r} is not an IPv4 address"
            ) from None
    for name, port in (("HTTP", s.proxy_http_port), ("HTTPS", s.proxy_https_port)):
        if not 1 <= port <= 65535 or first <= port <= last:
            raise InvalidInput(
                f"KVMVPS_PROXY_{name}_PORT {port} must be a port outside "
                f"KVMVPS_FORWARD_PORTS ({s.forward_ports})"
            )
    if not _CHAIN_PREFIX.fullmatch(s.chain_prefix):
        raise InvalidInput(
            f"KVMVPS_CHAIN_PREFIX {s.chain_prefix!r} must be a letter and up to "
            "19 letters, digits or '_'"
        )
    if s.base_domain:
        validation.dns_name(s.base_domain, "KVMVPS_BASE_DOMAIN")


def kvm_usable(cpuinfo: Path = Path("/proc/cpuinfo"), dev: Path = Path("/dev/kvm")) -> bool:
    """True when the CPU has vmx/svm and /dev/kvm can be opened read-write."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    if not any(f" {flag}" in flags for flag in ("vmx", "svm")):
        return False
    try:
        fd = os.open(dev, os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def resolve_domain_type(settings: Settings) -> str:
    """The libvirt domain type to use: kvm when usable, otherwise qemu (TCG)."""
    if settings.domain_type != "auto":
        return settings.domain_type
    if kvm_usable():
        return "kvm"
    _warn_once("no usable KVM (no vmx/svm or /dev/kvm); guests run under QEMU emulation")
    return "qemu"


@cache
def _warn_once(message: str) -> None:
    log.warning(message)
