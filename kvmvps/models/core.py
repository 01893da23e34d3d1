"""The inventory and what runs on it.

Networks, plans, images (and their self-tests), hosts, VPSes, and what each
VPS holds: its addresses, port forwards, HTTP names and pinned CPUs.
"""

from __future__ import annotations

import uuid as uuidlib
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kvmvps.models.accounts import User
from kvmvps.models.base import Base, utcnow


class VpsState:
    """The states a VPS moves through."""

    QUEUED = "queued"
    BUILDING = "building"
    RUNNING = "running"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    ERROR = "error"
    DELETING = "deleting"
    # shown, never stored: the VPS's host does not answer, so its state is not known
    UNKNOWN = "unknown"

    ALL = (QUEUED, BUILDING, RUNNING, STOPPED, SUSPENDED, ERROR, DELETING)
    SHOWN = (*ALL, UNKNOWN)


class Network(Base):
    __tablename__ = "networks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "nat" or "bridge"
    libvirt_name: Mapped[str] = mapped_column(String(64), unique=True)
    bridge_name: Mapped[str] = mapped_column(String(15))
    subnet: Mapped[str] = mapped_column(String(43))
    gateway: Mapped[str] = mapped_column(String(39))
    pool_start: Mapped[str | None] = mapped_column(String(39))
    pool_end: Mapped[str | None] = mapped_column(String(39))
    # NAT networks: the guests' IPv6 /64 (routed by the host, not NATed); None: IPv4 only
    ipv6_prefix: Mapped[str | None] = mapped_column(String(43), unique=True)
    # False: guests' bridge ports are isolated from each other (they still reach the host)
    allow_guest_traffic: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default="false"
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Plan(Base):
    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_gib: Mapped[int] = mapped_column(Integer)
    price_cents: Mapped[int] = mapped_column(Integer, default=0)
    # port forwards a VPS of this plan may add beyond its SSH forward
    extra_forwards: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # hidden from the shop: customers can neither see nor order it; its VPSes keep running
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    network_id: Mapped[int | None] = mapped_column(ForeignKey("networks.id"))
    # resource limits (kvmvps.limits.LIMIT_FIELDS); NULL means unlimited
    cpu_shares: Mapped[int | None] = mapped_column(Integer)
    cpu_quota_pct: Mapped[int | None] = mapped_column(Integer)
    disk_bytes_sec: Mapped[int | None] = mapped_column(BigInteger)
    disk_read_bytes_sec: Mapped[int | None] = mapped_column(BigInteger)
    disk_write_bytes_sec: Mapped[int | None] = mapped_column(BigInteger)
    disk_iops: Mapped[int | None] = mapped_column(Integer)
    disk_read_iops: Mapped[int | None] = mapped_column(Integer)
    disk_write_iops: Mapped[int | None] = mapped_column(Integer)
    net_in_kibps: Mapped[int | None] = mapped_column(Integer)
    net_in_peak_kibps: Mapped[int | None] = mapped_column(Integer)
    net_in_burst_kib: Mapped[int | None] = mapped_column(Integer)
    net_out_kibps: Mapped[int | None] = mapped_column(Integer)
    net_out_peak_kibps: Mapped[int | None] = mapped_column(Integer)
    net_out_burst_kib: Mapped[int | None] = mapped_column(Integer)
    # monthly transfer (in + out); NULL: unmetered. Over it: "throttle" or "suspend"
    transfer_gib: Mapped[int | None] = mapped_column(Integer)
    over_limit: Mapped[str] = mapped_column(
        String(16), default="throttle", server_default="throttle"
    )
    over_limit_kibps: Mapped[int] = mapped_column(Integer, default=128, server_default="128")
    # backups a customer may keep per VPS (on demand and scheduled together)
    backup_slots: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # None, "daily" or "weekly": the worker backs up every VPS of the plan that often
    backup_schedule: Mapped[str | None] = mapped_column(String(8))
    # scheduled backups kept per VPS (older ones are pruned); within the slots
    backup_keep: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    snapshot_limit: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    network: Mapped[Network | None] = relationship()


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    base_path: Mapped[str] = mapped_column(String(4096))
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    kernel_path: Mapped[str | None] = mapped_column(String(4096))
    initrd_path: Mapped[str | None] = mapped_column(String(4096))
    cmdline: Mapped[str | None] = mapped_column(String(1024))
    login_user: Mapped[str] = mapped_column(String(32))
    cloud_init: Mapped[bool] = mapped_column(Boolean, default=False)
    # False for images that do not follow the guest contract: kvmvps only boots them
    credentials: Mapped[bool] = mapped_column(Boolean, default=True)
    os_family: Mapped[str] = mapped_column(String(32), default="linux")
    # hidden from the shop: customers can neither order nor reinstall with it
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # a rescue system: VPSes boot it (their own disk as vdb) in rescue mode
    rescue: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # its last self-test failed: hidden from the shop and refused for orders until one passes
    test_failed: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # under TCG, the translated-code cache of its VPSes in MiB (0: QEMU's own);
    # None: KVMVPS_TCG_TB_CACHE_MIB
    tcg_tb_cache_mib: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImageTest(Base):
    """One self-test of an image: a throwaway VPS ordered, checked and removed.

    ``checks`` is a JSON list of ``{"name", "ok", "seconds", "detail"}``;
    ``passed`` is None while the test runs. ``vps_uuid`` names the throwaway
    VPS until it is gone, so a test whose worker died is cleaned up.
    """

    __tablename__ = "image_tests"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuidlib.uuid4()))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    job_uuid: Mapped[str | None] = mapped_column(String(36))
    vps_uuid: Mapped[str | None] = mapped_column(String(36))
    actor: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    passed: Mapped[bool | None] = mapped_column(Boolean)
    checks: Mapped[str] = mapped_column(Text, default="[]")
    error: Mapped[str | None] = mapped_column(Text)


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    uri: Mapped[str] = mapped_column(String(1024), unique=True)
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # in maintenance: no new VPS is placed here; those it carries keep running
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # the host's public IPv4 for port forwards; None: KVMVPS_PUBLIC_ADDRESS
    public_address: Mapped[str | None] = mapped_column(String(39))
    # True: the host's own agent (`kvmvps-admin worker --host NAME` on it) runs its
    # jobs and its host-local work (iptables, haproxy); central workers leave them
    agent: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # set by reconcile when the host's libvirt stops answering; cleared when it answers
    down_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Vps(Base):
    __tablename__ = "vps"
    __table_args__ = (UniqueConstraint("owner_id", "hostname"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuidlib.uuid4()))
    hostname: Mapped[str] = mapped_column(String(63))
    domain_name: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id"))
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id"))
    state: Mapped[str] = mapped_column(String(16), default=VpsState.BUILDING)
    mac: Mapped[str | None] = mapped_column(String(17), unique=True)
    ip: Mapped[str | None] = mapped_column(String(39))
    ipv6: Mapped[str | None] = mapped_column(String(39))
    username: Mapped[str | None] = mapped_column(String(32))
    host_key: Mapped[str | None] = mapped_column(Text)
    host_key_fingerprint: Mapped[str | None] = mapped_column(String(128))
    ssh_keys: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pending_password: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # a failed build whose host stopped answering: it keeps its address and CPUs until
    # reconcile, once the host answers again, has undone what the build made there
    rollback_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # an operator's suspension: while the reason is set, the customer can change nothing
    suspended_reason: Mapped[str | None] = mapped_column(String(500))
    suspended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    suspended_by: Mapped[str | None] = mapped_column(String(300))
    # over its monthly transfer: network in and out held to this many KiB/s (None: not held)
    throttle_kibps: Mapped[int | None] = mapped_column(Integer)
    # rescue mode: the rescue image booted instead of the VPS's own system, and its host key
    rescue_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    rescue_host_key: Mapped[str | None] = mapped_column(Text)
    rescue_host_key_fingerprint: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    owner: Mapped[User] = relationship()
    plan: Mapped[Plan] = relationship()
    image: Mapped[Image] = relationship(foreign_keys=[image_id])
    rescue_image: Mapped[Image | None] = relationship(foreign_keys=[rescue_image_id])
    host: Mapped[Host] = relationship()
    network: Mapped[Network] = relationship()
    pins: Mapped[list[CpuPin]] = relationship(
        back_populates="vps", order_by="CpuPin.vcpu", cascade="all, delete-orphan"
    )
    forwards: Mapped[list[Forward]] = relationship(order_by="Forward.id", viewonly=True)

    @property
    def pinned_cpus(self) -> list[int]:
        return [pin.host_cpu for pin in self.pins]

    @property
    def in_rescue(self) -> bool:
        return self.rescue_image_id is not None


class IpLease(Base):
    """An address of a network: held by a VPS, or free since ``released_at``.

    Released rows are kept so that the address freed longest ago is reused
    first; a fresh guest never inherits an address (and the DHCP lease, ARP
    and DNS caches) of one deleted a moment ago.
    """

    __tablename__ = "ip_leases"
    __table_args__ = (
        UniqueConstraint("network_id", "address"),
        UniqueConstraint("network_id", "ipv6"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id"))
    address: Mapped[str] = mapped_column(String(39))
    # the IPv6 address that goes with ``address`` on a network with a prefix
    ipv6: Mapped[str | None] = mapped_column(String(39))
    mac: Mapped[str | None] = mapped_column(String(17), unique=True)
    vps_id: Mapped[int | None] = mapped_column(ForeignKey("vps.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Forward(Base):
    """A public port of a host: forwarded to a VPS's guest port, or free since ``released_at``.

    Released rows are kept, as addresses are, so that the port freed longest
    ago is reused first. ``kind`` is "ssh" for the forward every NAT VPS gets
    to its port 22, "extra" for the ones a customer adds.
    """

    __tablename__ = "forwards"
    __table_args__ = (UniqueConstraint("host_id", "protocol", "public_port"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id"))
    protocol: Mapped[str] = mapped_column(String(3))  # "tcp" or "udp"
    public_port: Mapped[int] = mapped_column(Integer)
    public_address: Mapped[str | None] = mapped_column(String(39))
    vps_id: Mapped[int | None] = mapped_column(ForeignKey("vps.id"), index=True)
    guest_port: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class HttpName(Base):
    """A DNS name the host's proxy routes to a VPS: HTTP by Host header, HTTPS by SNI."""

    __tablename__ = "http_names"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CpuPin(Base):
    __tablename__ = "cpu_pins"
    __table_args__ = (UniqueConstraint("vps_id", "vcpu"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id"))
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id"))
    vcpu: Mapped[int] = mapped_column(Integer)
    host_cpu: Mapped[int] = mapped_column(Integer)

    vps: Mapped[Vps] = relationship(back_populates="pins")
