"""Storage calls: pools, volumes, and copying a volume to another host.

Mixed into :class:`kvmvps.hypervisor.Hypervisor`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from lxml import etree

from kvmvps.errors import HypervisorError, HypervisorInvalid
from kvmvps.hypervisor.connection import Connection
from kvmvps.hypervisor.errors import libvirt

COPY_CHUNK = 1 << 20


def _send_all(stream: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = stream.send(view.tobytes())
        view = view[sent:]


class StorageCalls(Connection):
    """A libvirt host's storage pools and volumes."""

    def ensure_pool(self, name: str, xml: str) -> None:
        """Define, build, start and autostart the pool unless it already runs."""

        def ensure(conn: libvirt.virConnect) -> None:
            try:
                pool = conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = conn.storagePoolDefineXML(xml, 0)
                pool.build(0)
            if not pool.isActive():
                pool.create(0)
            if not pool.autostart():
                pool.setAutostart(1)

        self._call(f"storage pool {name}", ensure)

    def create_volume(self, pool: str, name: str, xml: str) -> str:
        """Create a volume from ``xml`` unless it exists; return its path."""

        def create(conn: libvirt.virConnect) -> str:
            sp = conn.storagePoolLookupByName(pool)
            try:
                return sp.storageVolLookupByName(name).path()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
            return sp.createXML(xml, 0).path()

        return self._call(f"create volume {name}", create)

    def upload_volume(self, pool: str, name: str, xml: str, data: bytes) -> str:
        """Create a volume and fill it with ``data`` through a libvirt stream."""

        def upload(conn: libvirt.virConnect) -> str:
            sp = conn.storagePoolLookupByName(pool)
            vol = sp.createXML(xml, 0)
            stream = conn.newStream(0)
            vol.upload(stream, 0, len(data), 0)
            stream.send(data)
            stream.finish()
            return vol.path()

        return self._call(f"upload volume {name}", upload)

    def volume_exists(self, pool: str, name: str) -> bool:
        return name in self.list_volumes(pool)

    def delete_volume(self, pool: str, name: str) -> bool:
        """Delete a volume; False when it was already gone."""

        def delete(conn: libvirt.virConnect) -> bool:
            try:
                vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return False
                raise
            vol.delete(0)
            return True

        return self._call(f"delete volume {name}", delete)

    def volume_capacity(self, pool: str, name: str) -> int:
        """The volume's virtual size in bytes."""

        def capacity(conn: libvirt.virConnect) -> int:
            return conn.storagePoolLookupByName(pool).storageVolLookupByName(name).info()[1]

        return self._call(f"volume {name}", capacity)

    def resize_volume(self, pool: str, name: str, capacity_bytes: int) -> None:
        """Grow a volume to ``capacity_bytes``; never shrinks, a no-op at that size."""

        def resize(conn: libvirt.virConnect) -> None:
            vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            current = vol.info()[1]
            if capacity_bytes < current:
                raise HypervisorInvalid(
                    f"resize volume {name}: {capacity_bytes} bytes is smaller than its "
                    f"{current}; volumes only grow"
                )
            if capacity_bytes > current:
                vol.resize(capacity_bytes, 0)

        self._call(f"resize volume {name}", resize)

    def grow_disk_live(self, name: str, disk: str, capacity_bytes: int) -> None:
        """Grow the disk ``disk`` (``vda``) of a running domain: QEMU grows its image
        and the guest sees the new size at once."""
        flag = libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
        self._domain(
            name, f"grow disk {disk} of", lambda d: d.blockResize(disk, capacity_bytes, flag)
        )

    def volume_path(self, pool: str, name: str) -> str:
        """The file of a volume (the pool is refreshed first: files may change under it)."""

        def path(conn: libvirt.virConnect) -> str:
            sp = conn.storagePoolLookupByName(pool)
            sp.refresh(0)
            return sp.storageVolLookupByName(name).path()

        return self._call(f"volume {name}", path)

    def pool_path(self, pool: str) -> str:
        """The directory of a ``dir`` pool."""
        xml = self._call(
            f"storage pool {pool}", lambda c: c.storagePoolLookupByName(pool).XMLDesc(0)
        )
        path = etree.fromstring(xml.encode()).findtext("target/path")
        if not path:
            raise HypervisorInvalid(f"storage pool {pool} has no target directory")
        return path

    def list_volumes(self, pool: str) -> list[str]:
        def names(conn: libvirt.virConnect) -> list[str]:
            sp = conn.storagePoolLookupByName(pool)
            sp.refresh(0)
            return sorted(sp.listVolumes())

        return self._call(f"list volumes in {pool}", names)

    def copy_volume_to(self, pool: str, name: str, target: Connection, xml: str) -> int:
        """Copy the volume's file into a new volume (``xml``) of the same pool on ``target``.

        Both ends are libvirt storage streams through this process, so the
        hosts need no shared file system and no other channel. Returns the
        number of bytes copied.
        """

        def copy(conn: libvirt.virConnect) -> int:
            source = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            far = target._connection()
            made = far.storagePoolLookupByName(pool).createXML(xml, 0)
            down, up = conn.newStream(0), far.newStream(0)
            source.download(down, 0, 0, 0)
            made.upload(up, 0, 0, 0)
            total = 0
            try:
                while chunk := down.recv(COPY_CHUNK):
                    if not isinstance(chunk, bytes):
                        raise HypervisorError(f"copy volume {name}: the stream stalled")
                    _send_all(up, chunk)
                    total += len(chunk)
                down.finish()
                up.finish()
            except BaseException:
                for stream in (down, up):
                    with contextlib.suppress(libvirt.libvirtError):
                        stream.abort()
                raise
            return total

        return self._call(f"copy volume {name}", copy)
