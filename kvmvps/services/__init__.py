"""The service layer: the single entry point for the CLI and the website.

Front ends build one :class:`Context` and call functions in the modules of
this package; they hold no logic of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from kvmvps.config import Settings, load_settings, resolve_domain_type
from kvmvps.db import Database
from kvmvps.models import Host

if TYPE_CHECKING:
    from kvmvps.hypervisor import Hypervisor


@dataclass
class Context:
    """Settings, the database and the hypervisors, shared by every service call."""

    settings: Settings
    db: Database = field(init=False)

    def __post_init__(self) -> None:
        self.db = Database.from_settings(self.settings)

    @classmethod
    def from_env(cls) -> Context:
        return cls(load_settings())

    @cached_property
    def domain_type(self) -> str:
        return resolve_domain_type(self.settings)

    def hypervisor(self, host: Host | str) -> Hypervisor:
        # libvirt and lxml load on the first hypervisor call: the CLI's read-only
        # commands make none and skip their import (speed, not cycles)
        from kvmvps.hypervisor import get_hypervisor

        return get_hypervisor(host if isinstance(host, str) else host.uri)

    def close(self) -> None:
        self.db.dispose()
