"""The connection to one libvirt host, and the call that goes through it.

:class:`Connection` opens the connection lazily, reopens it when it drops and
runs every call through :meth:`Connection._call`, which translates libvirt's
errors. The storage, network and domain calls build on it. Once asked
(:meth:`Connection.domain_changes`), it also follows the host's domain events.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kvmvps.errors import HypervisorUnavailable
from kvmvps.hvtypes import HostInfo
from kvmvps.hypervisor.errors import libvirt, translate
from kvmvps.hypervisor.streams import DomainChanges, start_event_loop

T = TypeVar("T")


class Connection:
    """One libvirt host, reached through ``uri``: its connection and the calls' wrapper."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.RLock()
        self._changes: DomainChanges | None = None  # once someone asked (domain_changes)

    # -- connection -------------------------------------------------------
    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._drop()
            start_event_loop()  # before opening: a remote connection's events need it
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise HypervisorUnavailable(
                    f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}"
                ) from None
            if self._changes is not None:
                self._changes.attach(self._conn)
            return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _call(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn`` on the connection, translating errors; drop a dead connection.

        One connection serves every thread of the process (libvirt allows
        concurrent calls on it); a worker's job threads share it.
        """
        conn = self._connection()
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            err = translate(exc, what)
            if isinstance(err, HypervisorUnavailable):
                self._forget(conn)
            raise err from None

    def _forget(self, conn: libvirt.virConnect) -> None:
        """Stop handing out ``conn``; other threads still in a call on it keep it.

        It is not closed here: the last reference going away closes it, so a
        call in another thread is not cut off by this one's failure.
        """
        with self._lock:
            if self._conn is conn:
                self._conn = None
                if self._changes is not None:
                    self._changes.lost()

    def domain_changes(self) -> set[str] | None:
        """The domains libvirt told of a change of since the last call; None: any may have.

        The first call starts following the host's domain events on this
        connection and answers None, as does the first call after the
        connection was lost or reopened (events may have gone unseen).
        """
        with self._lock:
            if self._changes is None:
                self._changes = DomainChanges()
                if self._conn is not None:
                    self._changes.attach(self._conn)
            changes = self._changes
        self._connection()  # (re)opened meanwhile: attached anew, and None below
        return changes.take()

    def ping(self) -> None:
        """Raise :class:`HypervisorUnavailable` unless libvirtd answers."""
        self._call("ping", lambda c: c.getLibVersion())

    def host_info(self) -> HostInfo:
        def info(conn: libvirt.virConnect) -> HostInfo:
            _model, memory_mib, cpus, *_rest = conn.getInfo()
            return HostInfo(cpus=cpus, memory_mib=memory_mib, hostname=conn.getHostname())

        return self._call("host info", info)

    def _domain(self, name: str, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` on the domain ``name``, as :meth:`_call` does."""
        return self._call(f"{what} {name}", lambda c: fn(c.lookupByName(name)))
