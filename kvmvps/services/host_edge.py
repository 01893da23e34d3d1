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


def serves_forwards(uri: str) -> bool:
    """True for hosts whose forwards kvmvps can serve: the local libvirt host.

    libvirt's test driver counts too (its "host" is this process; there are no
    rules to write). Remote hosts (qemu+ssh://) get no forwards yet: their
    iptables is on another machine.
    """
    parts = urlsplit(uri)
    return is_local(uri) or (parts.scheme == "test" and not parts.netloc)
