"""The hypervisor adapter: the only package that imports libvirt.

Everything the rest of kvmvps uses is re-exported here, so callers import
from ``kvmvps.hypervisor`` and never from its modules.
"""

from kvmvps.hypervisor.domains import (
    COPY_CHUNK,
    DOMAIN_STATES,
    BackupProgress,
    DhcpEntry,
    DomainStats,
    HostInfo,
    Hypervisor,
    NicState,
    close_all,
    get_hypervisor,
)
from kvmvps.hypervisor.errors import translate
from kvmvps.hypervisor.streams import WRITE_TIMEOUT, ConsoleStream, LifecycleWatch

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
