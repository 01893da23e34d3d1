"""Helpers for the port-forwarding and proxy tests: settings, network namespaces, iptables.

Every name carries the test process's pid, so two test runs on one machine
never share a namespace, a veth, a chain or a proxy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from kvmvps import firewall
from kvmvps.services import Context
from tests.badinput import run_cli

PID = os.getpid()


def forwarding_env(ctx: Context) -> dict[str, str]:
    """The forwarding and proxy settings of ``ctx`` as KVMVPS_* variables, for the CLI."""
    s = ctx.settings
    return {
        "KVMVPS_PUBLIC_ADDRESS": s.public_address,
        "KVMVPS_FORWARD_PORTS": s.forward_ports,
        "KVMVPS_BASE_DOMAIN": s.base_domain,
        "KVMVPS_CHAIN_PREFIX": s.chain_prefix,
        "KVMVPS_PROXY_DIR": str(s.proxy_path),
        "KVMVPS_PROXY_HTTP_PORT": str(s.proxy_http_port),
        "KVMVPS_PROXY_HTTPS_PORT": str(s.proxy_https_port),
        "KVMVPS_ACME_HOOK": s.acme_hook,
    }


def cli(ctx: Context, *args: str, **env: str):
    """kvmvps-admin with ``ctx``'s forwarding settings too; click's Result."""
    return run_cli(ctx, *args, extra_env={**forwarding_env(ctx), **env})


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def netns_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore"):
        return False
    probe = f"kvprobe{PID}"
    if sh("ip", "netns", "add", probe, check=False).returncode != 0:
        return False
    sh("ip", "netns", "del", probe, check=False)
    return True


@contextmanager
def netns(name: str) -> Iterator[str]:
    """A network namespace for the duration of the block."""
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def netns_iptables(name: str) -> firewall.Iptables:
    return firewall.Iptables(prefix=("ip", "netns", "exec", name))


def iptables_save(ipt: firewall.Iptables) -> str:
    """iptables-save without its comments and counters: only the rules."""
    out = ipt.run(["iptables-save"]).stdout
    return "\n".join(
        ln for ln in out.splitlines() if not ln.startswith("#") and not ln.startswith(":")
    )
