"""The hypervisor adapter: the only package that imports libvirt.

One :class:`Hypervisor` per host URI owns a lazily opened connection that is
reopened when it drops. Every libvirt error is translated into the project's
own exceptions, and nothing libvirt-typed leaves this package: what it hands
out is plain data (:mod:`kvmvps.hvtypes`).

- ``errors``: libvirt's errors translated (:func:`translate`)
- ``connection``: the connection to one host and the call wrapper (:class:`Connection`)
- ``storage``, ``network``: the storage and network calls (mixins of :class:`Connection`)
- ``domains``: :class:`Hypervisor` (domain calls; the mixins composed) and the shared
  one per URI (:func:`get_hypervisor`, :func:`close_all`)
- ``streams``: libvirt's event loop, :class:`LifecycleWatch`, :class:`ConsoleStream`, and
  the domain changes a connection was told of (``DomainChanges``)

Callers import from ``kvmvps.hypervisor``, never from its modules.
"""

from kvmvps.hvtypes import BackupProgress, DhcpEntry, DomainStats, HostInfo, NicState
from kvmvps.hypervisor.domains import DOMAIN_STATES, Hypervisor, close_all, get_hypervisor
from kvmvps.hypervisor.errors import translate
from kvmvps.hypervisor.storage import COPY_CHUNK
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
