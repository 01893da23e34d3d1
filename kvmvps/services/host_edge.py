"""A host's edge to the outside: its public address, and whether it is this machine.

Port forwarding (:mod:`~kvmvps.services.forwards`) and HTTP names
(:mod:`~kvmvps.services.http_names`) both sit above this module.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from kvmvps.models import Host
from kvmvps.services import Context

LOCAL_SCHEMES = ("qemu", "qemu+unix")


def public_address(ctx: Context, host: Host) -> str:
    """The host's public IPv4: its own, else KVMVPS_PUBLIC_ADDRESS; "" for none."""
    return host.public_address or ctx.settings.public_address


def is_local(uri: str) -> bool:
    """True for a libvirt URI of this machine (qemu:///system), where iptables runs."""
    parts = urlsplit(uri)
    return parts.scheme in LOCAL_SCHEMES and not parts.netloc


def runs_here(ctx: Context, host: Host) -> bool:
    """True when this process does ``host``'s host-local work (iptables, haproxy).

    A host agent (``kvmvps-admin worker --host NAME``, KVMVPS_AGENT_HOST) does
    its own host's and no other; every other process does the local libvirt
    host's, unless that host has an agent of its own.
    """
    if ctx.settings.agent_host:
        return host.name == ctx.settings.agent_host
    return is_local(host.uri) and not host.agent


def serves_forwards(host: Host) -> bool:
    """True for hosts whose forwards kvmvps can serve.

    The local libvirt host, and any host with an agent (which writes the rules
    on that host). libvirt's test driver counts too (its "host" is this process;
    there are no rules to write). Remote hosts without an agent get none: their
    iptables is on another machine.
    """
    parts = urlsplit(host.uri)
    return host.agent or is_local(host.uri) or (parts.scheme == "test" and not parts.netloc)
