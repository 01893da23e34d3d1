"""The hypervisor adapter: the only package that imports libvirt.

Everything the rest of kvmvps uses is re-exported here, so callers import
from ``kvmvps.hypervisor`` and never from its modules.
"""

from kvmvps.hypervisor.domains import (
    COPY_CHUNK,
    DOMAIN_STATES,
    WRITE_TIMEOUT,
    BackupProgress,
    ConsoleStream,
    DhcpEntry,
    DomainStats,
    HostInfo,
    Hypervisor,
    LifecycleWatch,
    NicState,
    close_all,
    get_hypervisor,
    translate,
)

__all__ = [
    "COPY_CHUNK",
    "DOMAIN_STATES",
    "WRITE_TIMEOUT",
    "BackupProgress",
    "ConsoleStream",
    "DhcpEntry",
    "DomainStats",
    "HostInfo",
    "Hypervisor",
    "LifecycleWatch",
    "NicState",
    "close_all",
    "get_hypervisor",
    "translate",
]
