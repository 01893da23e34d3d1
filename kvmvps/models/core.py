"""The tables apart from metering.

Accounts, the inventory (networks, plans, images, hosts), VPSes and what each
holds, backups, snapshots, the audit log, jobs, workers and locks.
"""

from __future__ import annotations

import uuid as uuidlib
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

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


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # per-customer limits; None: the KVMVPS_QUOTA_* default
    quota_vps: Mapped[int | None] = mapped_column(Integer)
    quota_vcpus: Mapped[int | None] = mapped_column(Integer)
    quota_memory_mib: Mapped[int | None] = mapped_column(Integer)
    quota_disk_gib: Mapped[int | None] = mapped_column(Integer)
    # raised to end every session of the user (log out, new password, disabled)
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # TOTP second factor: the secret sealed (Fernet, key in the state dir); the
    # last time step a code was accepted in, so a code works once
    totp_secret: Mapped[str | None] = mapped_column(Text)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RecoveryCode(Base):
    """A one-time code that stands in for a TOTP code; only its SHA-256 is stored."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AccountToken(Base):
    """A mailed link's secret (password reset, e-mail confirmation); only its SHA-256."""

    __tablename__ = "account_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))  # "reset" or "email"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    new_email: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SavedKey(Base):
    """An SSH public key kept on a customer's account, offered at order time."""

    __tablename__ = "saved_keys"
    __table_args__ = (UniqueConstraint("user_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PasswordReveal(Base):
    """A new VPS password, sealed, waiting to be shown to its owner once."""

    __tablename__ = "password_reveals"

    id: Mapped[int] = mapped_column(primary_key=True)
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id", ondelete="CASCADE"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    job_uuid: Mapped[str | None] = mapped_column(String(36))
    sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Invitation(Base):
    """A single-use sign-up code; only its SHA-256 is stored."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    created_by: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class LoginCounter(Base):
    """Attempts (logins, sign-ups) counted per key in one fixed time window.

    ``key`` is a digest of what is limited (a client address, or an address
    and an e-mail); ``window`` is the window's start in Unix seconds.
    """

    __tablename__ = "login_counters"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    window: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


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


class BackupState:
    QUEUED = "queued"
    READY = "ready"
    FAILED = "failed"

    ALL = (QUEUED, READY, FAILED)


class Backup(Base):
    """A full copy of a VPS's disk in the backup directory: ``<uuid>.qcow2`` + ``<uuid>.json``.

    The row outlives its VPS (a deleted VPS's backups may be kept), so it
    names the VPS by uuid and keeps its owner and hostname. File names are
    made from the backup's own uuid only, never from user text.
    """

    __tablename__ = "backups"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuidlib.uuid4()))
    vps_uuid: Mapped[str] = mapped_column(String(36), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    hostname: Mapped[str] = mapped_column(String(63))
    image_name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="manual")  # or "scheduled"
    state: Mapped[str] = mapped_column(String(16), default=BackupState.QUEUED)
    consistency: Mapped[str | None] = mapped_column(String(16))  # "stopped", "crash", "frozen"
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    virtual_bytes: Mapped[int | None] = mapped_column(BigInteger)
    host_key: Mapped[str | None] = mapped_column(Text)
    host_key_fingerprint: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SnapshotState:
    QUEUED = "queued"
    READY = "ready"
    FAILED = "failed"

    ALL = (QUEUED, READY, FAILED)


class Snapshot(Base):
    """An internal qcow2 snapshot of a VPS's disk (with its memory when it ran).

    libvirt knows it as ``snap-<uuid>``, made from the row's own uuid; the
    customer's ``label`` is display text only. The rows go with their VPS.
    """

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuidlib.uuid4()))
    vps_id: Mapped[int] = mapped_column(ForeignKey("vps.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default=SnapshotState.QUEUED)
    with_memory: Mapped[bool | None] = mapped_column(Boolean)  # taken while it ran
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


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


class ApiToken(Base):
    """A bearer token for the REST API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(64), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    user: Mapped[User] = relationship()


class ConsoleTicket(Base):
    """A one-use pass to one VPS's console for one user; only its SHA-256 is stored."""

    __tablename__ = "console_tickets"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # no foreign keys: a ticket outliving its user or VPS is simply refused
    user_id: Mapped[int] = mapped_column(Integer)
    vps_uuid: Mapped[str] = mapped_column(String(36))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # which console it opens: "serial" or "vnc" (a ticket of one kind opens no other)
    kind: Mapped[str] = mapped_column(String(8), default="serial", server_default="serial")


class AuditEntry(Base):
    """Who did what to which object, when, and how it ended."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300), default="")
    result: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)


class JobState:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    UNFINISHED = (QUEUED, RUNNING)
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED)


class Job(Base):
    """A durable unit of work (an order, a power action...) that a worker runs."""

    __tablename__ = "jobs"
    # the claim's scan: queued jobs in id order, never the long tail of finished ones
    __table_args__ = (
        Index(
            "ix_jobs_queued",
            "id",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuidlib.uuid4()))
    kind: Mapped[str] = mapped_column(String(32))
    vps_uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    step: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[str] = mapped_column(Text, default="{}")
    error: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(300), default="")
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Worker(Base):
    """A running worker process and its last sign of life."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lock(Base):
    """A named, expiring lock shared by every process (e.g. one reconcile at a time)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
