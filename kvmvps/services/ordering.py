"""Recording an order: the VPS row, its address, MAC, pinned CPUs and job, in one transaction.

Checks come first (plan and image on sale, hostname, keys, quota, room on a
host); libvirt is asked for what the order needs outside the write
transaction, and the write re-checks. :mod:`kvmvps.services.provisioning`
then builds what was recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kvmvps import cpupin, guest, ipam, validation
from kvmvps.errors import (
    Conflict,
    InvalidInput,
    KvmvpsError,
)
from kvmvps.models import Image, Network, Plan, Vps, VpsState
from kvmvps.services import (
    Context,
    audit,
    credentials,
    forwards,
    inventory,
    jobs,
    quotas,
    setup,
)
from kvmvps.services.facts import (
    domain_name_for,
)
from kvmvps.services.placement import choose_host
from kvmvps.storage import check_base_image, overlay_capacity

log = logging.getLogger(__name__)


MAX_NAME = 63
MAX_SSH_KEYS_TEXT = 20_000


@dataclass(frozen=True)
class OrderRequest:
    """What a customer or operator asks for."""

    plan: str
    image: str
    hostname: str
    owner_email: str | None = None
    network: str | None = None
    ssh_keys: tuple[str, ...] = ()
    ttl_seconds: int | None = None
    host: str | None = None  # the operator pins the order to this host
    # an image self-test's throwaway VPS: the image and plan may be hidden from the shop
    testing: bool = False
    backup: str | None = None  # a backup's uuid: the new disk is its content (caller checks)


@dataclass(frozen=True)
class Order:
    """A recorded order: the VPS's id and its password, shown this once.

    The password is None for images that kvmvps only boots (no credentials).
    """

    uuid: str
    password: str | None
    job: str


# -- recording an order ------------------------------------------------------
def record_order(ctx: Context, req: OrderRequest, actor: str | None = None) -> Order:
    """Record the VPS, its allocations and its build job in one transaction.

    Either all of it is recorded or none; the password is kept only sealed.
    The owner's quota is checked in the same transaction, under a lock.
    Recorded in the audit log as ``vps.create`` of ``actor``; a lost race for
    the hostname is told as a Conflict.
    """
    target = (req.hostname or "").strip().lower()
    with audit.audited(ctx, actor, "vps.create", target):
        return place_order(ctx, req, actor or "")


def place_order(ctx: Context, req: OrderRequest, actor: str) -> Order:
    """:func:`record_order` without its audit entry (for a service that records its own)."""
    try:
        return _record_order(ctx, req, actor)
    except IntegrityError:
        target = (req.hostname or "").strip().lower()
        raise Conflict(f"you already have a VPS named {target!r}") from None


audit.declare("vps.create")


@dataclass(frozen=True)
class _HostFacts:
    """What libvirt said about the host an order goes to, read before the write transaction."""

    uri: str
    leased: frozenset[str]


def _host_facts(ctx: Context, req: OrderRequest) -> _HostFacts:
    """Choose the host (as the write transaction will), prepare it and read its DHCP leases.

    No write transaction is open meanwhile: over qemu+ssh these calls take
    seconds, and SQLite would hold every other writer back for as long.
    """
    st = ctx.settings
    with ctx.db.reading() as s:
        _offered(s, req)
        plan = inventory.get_by_name(s, Plan, req.plan, "plan")
        if req.owner_email:  # an order over quota never reaches libvirt
            owner = inventory.user_by_email(s, req.owner_email)
            quotas.check_order(s, st, owner, plan, lock=False)
        network = _network_for(ctx, s, plan, req.network)
        host = choose_host(s, plan, st.cpu_overcommit, st.host_memory_reserve_mib, req.host)
        prep = setup.host_prep(s, host.uri)
        nat, net_name = network.kind == "nat", network.libvirt_name
    setup.prepare_host(ctx, prep)
    leased = ctx.hypervisor(prep.uri).dhcp_leases(net_name) if nat else {}
    return _HostFacts(uri=prep.uri, leased=frozenset(leased))


ORDER_ATTEMPTS = 3


class _OtherHost(Exception):
    """The write transaction chose another host than the one prepared: roll back, retry."""


def _record_order(ctx: Context, req: OrderRequest, actor: str) -> Order:
    hostname = validation.hostname(req.hostname)
    ssh_keys = validation.ssh_public_keys(list(req.ssh_keys))
    for _attempt in range(ORDER_ATTEMPTS):
        facts = _host_facts(ctx, req)
        try:
            return _insert_order(ctx, req, actor, hostname, ssh_keys, facts)
        except _OtherHost:
            continue  # capacity moved meanwhile: prepare the other host first
    raise Conflict("the hosts' free capacity keeps changing under this order; try again")


def _insert_order(
    ctx: Context,
    req: OrderRequest,
    actor: str,
    hostname: str,
    ssh_keys: list[str],
    facts: _HostFacts,
) -> Order:
    """The order's write transaction (it re-checks what :func:`_host_facts` read)."""
    with ctx.db.session() as s:
        _offered(s, req)  # again: it may be hidden meanwhile
        plan = inventory.get_by_name(s, Plan, req.plan, "plan")
        image = inventory.get_by_name(s, Image, req.image, "image")
        password = guest.new_password() if image.credentials else None
        network = _network_for(ctx, s, plan, req.network)
        owner = setup.owner_for(ctx, s, req.owner_email)
        overlay_capacity(plan.disk_gib, check_base_image(Path(image.base_path)), image.name)
        if s.scalar(select(Vps.id).where(Vps.owner_id == owner.id, Vps.hostname == hostname)):
            raise Conflict(f"{owner.email} already has a VPS named {hostname!r}")
        quotas.check_order(s, ctx.settings, owner, plan)
        host = choose_host(
            s, plan, ctx.settings.cpu_overcommit, ctx.settings.host_memory_reserve_mib, req.host
        )
        if host.uri != facts.uri:
            raise _OtherHost(host.uri)
        vps = Vps(
            hostname=hostname,
            owner_id=owner.id,
            plan_id=plan.id,
            image_id=image.id,
            host_id=host.id,
            network_id=network.id,
            state=VpsState.QUEUED,
            username=image.login_user,
            domain_name="",
            ssh_keys="\n".join(ssh_keys),
            pending_password=credentials.seal(ctx, password) if password else None,
        )
        if req.ttl_seconds:
            vps.expires_at = jobs.now() + timedelta(seconds=req.ttl_seconds)
        s.add(vps)
        s.flush()
        vps.domain_name = domain_name_for(vps.uuid)
        ipam.allocate(s, vps, network, exclude=set(facts.leased))
        forwards.allocate_ssh(ctx, s, vps, host, network)
        cpupin.allocate(s, vps, host, plan.vcpus, ctx.settings.cpu_overcommit)
        params = {"backup": req.backup} if req.backup else {}
        job = jobs.enqueue(s, "create", vps.uuid, host.id, actor=actor, **params)
        return Order(uuid=vps.uuid, password=password, job=job.uuid)


def _offered(session: Session, req: OrderRequest) -> None:
    """The plan and image are for sale.

    An image self-test orders them regardless; a backup's image need not be
    on sale any more (the new disk is the backup's content).
    """
    if req.testing:
        inventory.get_by_name(session, Plan, req.plan, "plan")
        inventory.get_by_name(session, Image, req.image, "image")
        return
    inventory.for_sale(session, Plan, req.plan, "plan")
    if req.backup is None:
        inventory.for_sale(session, Image, req.image, "image")


def _named(session: Session, model: type[Plan] | type[Image], name: str, what: str) -> None:
    if not name:
        raise InvalidInput(f"choose {what}")
    validation.not_longer(name, f"{what} name", MAX_NAME)
    inventory.for_sale(session, model, name, what)


def check_order(
    ctx: Context, owner_id: int, plan: str, image: str, hostname: str, ssh_keys: str | list[str]
) -> dict[str, KvmvpsError]:
    """Every field error of an order at once, by field name (empty when it looks fine).

    Recording the order checks all of this again; this only lets a form show
    each problem next to its field.
    """
    errors: dict[str, KvmvpsError] = {}
    try:
        validation.not_longer(hostname, "hostname", MAX_NAME)
        hostname = validation.hostname(hostname)
    except InvalidInput as exc:
        errors["hostname"] = exc
    try:
        text = ssh_keys if isinstance(ssh_keys, str) else "\n".join(ssh_keys)
        validation.not_longer(text, "list of SSH keys", MAX_SSH_KEYS_TEXT)
        validation.ssh_public_keys(ssh_keys)
    except InvalidInput as exc:
        errors["ssh_keys"] = exc
    with ctx.db.reading() as s:
        for field_name, model, name in (("plan", Plan, plan), ("image", Image, image)):
            try:
                _named(s, model, name, f"a {field_name}" if not name else field_name)
            except KvmvpsError as exc:
                errors[field_name] = exc
        if "hostname" not in errors and s.scalar(
            select(Vps.id).where(Vps.owner_id == owner_id, Vps.hostname == hostname)
        ):
            errors["hostname"] = Conflict(f"you already have a VPS named {hostname!r}")
    return errors


def _network_for(ctx: Context, session: Session, plan: Plan, name: str | None) -> Network:
    if name:
        return inventory.get_by_name(session, Network, name, "network")
    if plan.network is not None:
        return plan.network
    return inventory.default_network(ctx, session)
