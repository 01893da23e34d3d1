"""Long-lived libvirt streams: domain lifecycle events and a guest's serial console.

Both run on libvirt's default event loop, started once per process in a
daemon thread, each on a libvirt connection of its own.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from kvmvps.errors import HypervisorError
from kvmvps.hypervisor.errors import libvirt, translate

# -- lifecycle events --------------------------------------------------------
_events_lock = threading.Lock()
_events_started = False


def start_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread (once per process)."""
    global _events_started
    with _events_lock:
        if _events_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _events_started = True


# the events after which a domain's documents may differ: started, stopped, defined,
# undefined...; a device added or removed; tunables (pins, limits); its metadata
_CHANGE_EVENTS = (
    "LIFECYCLE",
    "DEVICE_ADDED",
    "DEVICE_REMOVED",
    "TUNABLE",
    "METADATA_CHANGE",
)


class DomainChanges:
    """The domains libvirt reported a change of, on one connection, since the last look.

    Attached to a connection (:meth:`attach`, on each (re)open), it counts
    every domain named in one of ``_CHANGE_EVENTS``. Until it is attached, and
    after the connection was lost or reopened, anything may have changed
    unseen: :meth:`take` then says so (None) once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self._unknown = True  # nothing seen yet: anything may have changed
        self.following = False

    def attach(self, conn: libvirt.virConnect) -> None:
        """Follow ``conn``'s domain events from now on; what came before is unknown."""
        self.lost()
        try:
            for name in _CHANGE_EVENTS:
                event = getattr(libvirt, f"VIR_DOMAIN_EVENT_ID_{name}")
                try:
                    conn.domainEventRegisterAny(None, event, self._on_event, None)
                except libvirt.libvirtError:
                    if name == "LIFECYCLE":
                        raise
                    # a driver without this event: its changes are not told of
            with contextlib.suppress(libvirt.libvirtError):  # drivers without close callbacks
                conn.registerCloseCallback(lambda *_args: self.lost(), None)
            self.following = True
        except libvirt.libvirtError:
            self.following = False

    def _on_event(self, _conn: Any, dom: Any, *_details: Any) -> None:
        with self._lock:
            self._names.add(dom.name())

    def lost(self) -> None:
        """Events may have been missed (the connection closed or was reopened)."""
        with self._lock:
            self._unknown = True
            self._names.clear()

    def take(self) -> set[str] | None:
        """The domains changed since the last call; None when any may have changed."""
        with self._lock:
            names, self._names = self._names, set()
            unknown, self._unknown = self._unknown, False
        return None if unknown or not self.following else names


class LifecycleWatch:
    """Calls ``callback(domain_name)`` whenever a domain starts, stops, pauses..."""

    def __init__(self, uri: str, callback: Callable[[str], None]) -> None:
        start_event_loop()
        self.uri = uri
        try:
            self._conn = libvirt.open(uri)
            with contextlib.suppress(libvirt.libvirtError):  # drivers without keepalive
                self._conn.setKeepAlive(5, 3)
            self._id = self._conn.domainEventRegisterAny(
                None,
                libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lambda _c, dom, _event, _detail, _opaque: callback(dom.name()),
                None,
            )
        except libvirt.libvirtError as exc:
            raise translate(exc, f"watch domain events on {uri}") from None

    def close(self) -> None:
        try:
            self._conn.domainEventDeregisterAny(self._id)
            self._conn.close()
        except libvirt.libvirtError:
            pass


# -- serial console ----------------------------------------------------------
_STREAM_END = libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
_STREAM_EVENTS = libvirt.VIR_STREAM_EVENT_READABLE | _STREAM_END
WRITE_TIMEOUT = 10.0


class ConsoleStream:
    """A guest's serial console through ``virDomainOpenConsole`` on a libvirt stream.

    The stream is non-blocking and driven by libvirt's event loop, on a
    connection of its own (so ``qemu+ssh://`` hosts work the same as local
    ones, and closing it never disturbs the shared connection). Output waits in
    a queue for :meth:`read`; :meth:`write` sends keystrokes. Opening takes the
    console over from any other session (``VIR_DOMAIN_CONSOLE_FORCE``): that
    one ends, so a reconnecting browser is never locked out by its own ghost.
    """

    def __init__(self, uri: str, domain: str) -> None:
        start_event_loop()
        self.domain = domain
        self._output: queue.Queue[bytes | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ended = False
        self._conn: libvirt.virConnect | None = None
        try:
            self._conn = libvirt.open(uri)
            with contextlib.suppress(libvirt.libvirtError):  # drivers without keepalive
                self._conn.setKeepAlive(5, 3)
            dom = self._conn.lookupByName(domain)
            self._stream = self._conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            dom.openConsole(None, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            self._stream.eventAddCallback(_STREAM_EVENTS, self._on_event, None)
        except libvirt.libvirtError as exc:
            self.close()
            raise translate(exc, f"console of {domain}") from None

    def _on_event(self, stream: Any, events: int, _opaque: Any) -> None:
        """In the event loop's thread: move what the guest wrote into the queue."""
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(65536)
                except libvirt.libvirtError:
                    self._end()
                    return
                if data == -2:  # nothing more for now
                    break
                if not data:
                    self._end()
                    return
                self._output.put(bytes(data))
        if events & _STREAM_END:
            self._end()

    def _end(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()
        self._output.put(None)

    @property
    def ended(self) -> bool:
        return self._ended

    def read(self, timeout: float) -> bytes | None:
        """The guest's next output; None when nothing came within ``timeout``, b"" at the end."""
        try:
            data = self._output.get(timeout=timeout)
        except queue.Empty:
            return None
        if data is None:
            self._output.put(None)  # every later read sees the end too
            return b""
        return data

    def write(self, data: bytes) -> None:
        """Send ``data`` to the guest; raise :class:`HypervisorError` once the console ended."""
        deadline = time.monotonic() + WRITE_TIMEOUT
        while data:
            if self._ended:
                raise HypervisorError(f"the console of {self.domain} has closed")
            try:
                sent = self._stream.send(data)
            except libvirt.libvirtError as exc:
                self._end()
                raise translate(exc, f"console of {self.domain}") from None
            if sent == -2:
                if time.monotonic() > deadline:
                    raise HypervisorError(f"the console of {self.domain} takes no input")
                time.sleep(0.01)
                continue
            data = data[sent:]

    def close(self) -> None:
        """End the session (idempotent); the guest keeps running."""
        if self._conn is None:
            return
        if hasattr(self, "_stream"):
            self._end()
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.abort()
        conn, self._conn = self._conn, None
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def __enter__(self) -> ConsoleStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
