from __future__ import annotations

from pathlib import Path

import pytest

from kvmvps.config import kvm_usable, load_settings, resolve_domain_type
from kvmvps.errors import InvalidInput


def test_defaults_do_not_clash_with_libvirts_default_network() -> None:
    s = load_settings({})
    assert s.state_dir == Path("/var/lib/kvmvps")
    assert s.effective_database_url == "sqlite:////var/lib/kvmvps/kvmvps.sqlite3"
    assert s.libvirt_uri == "qemu:///system"
    assert s.domain_type == "auto"
    assert s.network != "default" and not s.network_subnet.startswith("192.168.122.")


def test_environment_beats_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "kvmvps.toml"
    cfg.write_text('state_dir = "/srv/kv"\nnetwork = "filenet"\ncpu_overcommit = 2.5\n')
    s = load_settings({"KVMVPS_CONFIG": str(cfg), "KVMVPS_NETWORK": "envnet"})
    assert s.state_dir == Path("/srv/kv")
    assert s.network == "envnet"
    assert s.cpu_overcommit == 2.5
    assert s.sqlite_path == Path("/srv/kv/kvmvps.sqlite3")


def test_database_url_override() -> None:
    s = load_settings({"KVMVPS_DATABASE_URL": "postgresql+psycopg://u@/kv"})
    assert s.effective_database_url == "postgresql+psycopg://u@/kv"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"KVMVPS_DOMAIN_TYPE": "xen"}, "KVMVPS_DOMAIN_TYPE must be one of"),
        ({"KVMVPS_CPU_OVERCOMMIT": "lots"}, "not a valid value"),
        ({"KVMVPS_CONFIG": "/nonexistent/kvmvps.toml"}, "does not exist"),
        ({"KVMVPS_WORKER_CONCURRENCY": "0"}, "KVMVPS_WORKER_CONCURRENCY must be between 1 and 64"),
        ({"KVMVPS_WORKER_CONCURRENCY": "10000"}, "must be between 1 and 64"),
        ({"KVMVPS_WORKER_CONCURRENCY": "four"}, "not a valid value"),
        ({"KVMVPS_CUSTOMER_SHUTDOWN_TIMEOUT_MAX": "-1"}, "at most 3600 seconds"),
        ({"KVMVPS_CUSTOMER_SHUTDOWN_TIMEOUT_MAX": "1e9"}, "at most 3600 seconds"),
    ],
)
def test_bad_settings_are_one_line_errors(env: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as err:
        load_settings(env)
    assert "\n" not in str(err.value)


def test_broken_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("state_dir = \n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_settings({"KVMVPS_CONFIG": str(cfg)})


def test_kvm_needs_cpu_flags_and_an_openable_device(tmp_path: Path) -> None:
    no_flags = tmp_path / "cpuinfo-plain"
    no_flags.write_text("flags\t\t: fpu sse2 hypervisor\n")
    with_flags = tmp_path / "cpuinfo-vmx"
    with_flags.write_text("flags\t\t: fpu vmx sse2\n")
    device = tmp_path / "kvm"
    device.write_text("")
    assert not kvm_usable(no_flags, device)
    assert not kvm_usable(with_flags, tmp_path / "missing")
    assert kvm_usable(with_flags, device)


def test_explicit_domain_type_wins() -> None:
    assert resolve_domain_type(load_settings({"KVMVPS_DOMAIN_TYPE": "qemu"})) == "qemu"
    assert resolve_domain_type(load_settings({"KVMVPS_DOMAIN_TYPE": "kvm"})) == "kvm"


def test_auto_matches_this_machine(caplog: pytest.LogCaptureFixture) -> None:
    from kvmvps import config

    config._warn_once.cache_clear()  # the warning is logged once per process
    chosen = resolve_domain_type(load_settings({"KVMVPS_DOMAIN_TYPE": "auto"}))
    assert chosen == ("kvm" if kvm_usable() else "qemu")
    if chosen == "qemu":
        assert "QEMU emulation" in caplog.text
