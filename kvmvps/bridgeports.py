"""A running guest's tap devices on the libvirt host, and the bridges they belong to.

When a libvirt network is restarted (``virsh net-destroy`` and
``net-start``), its bridge is made anew and the taps of running guests are
left outside it: the guests are cut off. libvirt puts them back only when
libvirtd itself restarts. Reconciliation puts them back with ``ip link``.
Only for the local host: the taps live there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from lxml import etree

from kvmvps.errors import FirewallError

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
SYS_NET = Path("/sys/class/net")


def ports(domain_xml: str) -> list[tuple[str, str]]:
    """(tap device, bridge) of each network or bridge interface in a live domain XML."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(domain_xml.encode(), parser)
    found = []
    for iface in root.iterfind("./devices/interface"):
        target, source = iface.find("target"), iface.find("source")
        dev = target.get("dev") if target is not None else None
        bridge = source.get("bridge") if source is not None else None
        if dev and bridge and _IFNAME.fullmatch(dev) and _IFNAME.fullmatch(bridge):
            found.append((dev, bridge))
    return found


def master_of(dev: str) -> str | None:
    """The bridge a device is a port of, or None."""
    link = SYS_NET / dev / "master"
    return Path(link.readlink()).name if link.is_symlink() else None


def reattach(dev: str, bridge: str) -> bool:
    """Make ``dev`` a port of ``bridge`` again; False when it was one already."""
    if master_of(dev) == bridge or not (SYS_NET / dev).exists():
        return False
    done = subprocess.run(
        ["ip", "link", "set", "dev", dev, "master", bridge, "up"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise FirewallError(f"cannot attach {dev} to bridge {bridge}: {done.stderr.strip()}")
    return True
