"""What a step table is made of: the state of one build and its do/undo steps.

Provisioning's steps and credentials' steps both work on a :class:`Build`;
this module sits below both, so neither needs the other's module to run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmvps.hypervisor import ConsoleStream, Hypervisor
from kvmvps.interrupt import Interrupted
from kvmvps.services import Context
from kvmvps.services.facts import VpsFacts

Progress = Callable[[str, int, int], None]

__all__ = ["Background", "Build", "Interrupted", "Progress", "Step"]


class Background:
    """A call running in its own thread; ``result()`` re-raises its exception."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> None:
        self.wait()
        if self._error is not None:
            raise self._error


@dataclass
class Build:
    """The state of one build while its steps run."""

    ctx: Context
    facts: VpsFacts
    xml: str = ""
    # the first boot's domain (NICs unplugged, unfiltered) and the NIC that then
    # replaces its own live, filter and link up; None where libvirt has no filters
    boot_xml: str | None = None
    nic_xml: str | None = None
    filters: Background | None = None
    host_key: str | None = None
    deadline: float = 0.0
    job_deadline: float | None = None
    dhcp: Background | None = None
    console: ConsoleStream | None = None  # the serial console, attached from the first boot
    backup: str | None = None  # a backup's uuid whose content becomes the new disk
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def hv(self) -> Hypervisor:
        return self.ctx.hypervisor(self.facts.host_uri)

    def close_console(self) -> None:
        console, self.console = self.console, None
        if console is not None:
            console.close()


@dataclass(frozen=True)
class Step:
    """One ordered, idempotent step and how to undo it."""

    name: str
    do: Callable[[Build], None]
    undo: Callable[[Build], None]
