"""HTTP(S) names: NAME.BASE_DOMAIN (or a whole custom domain) routed to a VPS.

The proxy (haproxy, see :mod:`kvmvps.proxy`) on the local libvirt host
listens on the public address: HTTP by Host header to the guest's port 80,
HTTPS by SNI, passed through undecrypted, to the guest's port 443. Its
configuration is written from the database by :func:`apply_proxy`.

``KVMVPS_ACME_HOOK`` may name a program that kvmvps runs with the new name
as its argument once the name routes (e.g. to add a DNS record, or to ask
for a certificate); see the README.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import NotRequired, TypedDict

from sqlalchemy import select
from sqlalchemy.orm import Session

from kvmvps import proxy, validation
from kvmvps.errors import Conflict, InvalidInput, NotFound
from kvmvps.models import Host, HttpName, Network, Vps
from kvmvps.services import Context, audit, guard, host_edge, jobs
from kvmvps.services.vps import resolve

log = logging.getLogger(__name__)

MAX_NAMES_PER_VPS = 20
HOOK_TIMEOUT = 300


def full_name(ctx: Context, name: str) -> str:
    """NAME.BASE_DOMAIN for a single label, the name itself when it has dots."""
    raw = (name or "").strip().lower().removesuffix(".")
    if raw and "." not in raw:
        if not ctx.settings.base_domain:
            raise InvalidInput(
                f"{name!r} is a single label and KVMVPS_BASE_DOMAIN is not set; "
                "give a full domain name"
            )
        validation.hostname(raw)
        raw = f"{raw}.{ctx.settings.base_domain.lower()}"
    return validation.dns_name(raw, "HTTP name")


class NameView(TypedDict):
    """The stable JSON shape of an HTTP name."""

    name: str
    vps: str
    hostname: str
    guest_ip: str | None
    http: str
    https: str
    acme: NotRequired[str]  # when just added: what the ACME hook said


def name_view(row: HttpName, vps: Vps) -> NameView:
    return {
        "name": row.name,
        "vps": vps.uuid,
        "hostname": vps.hostname,
        "guest_ip": vps.ip,
        "http": f"http://{row.name}/",
        "https": f"https://{row.name}/",
    }


@audit.audits("vps.http.add", target="ref")
def add(
    ctx: Context, ref: str, name: str, owner_id: int | None = None, *, actor: str | None = None
) -> NameView:
    """Route ``name`` to the VPS; the proxy serves it on return.

    A name that is taken, or a proxy that refuses the new configuration,
    leaves everything as it was.
    """
    fqdn = full_name(ctx, name)
    with ctx.db.session() as s:
        vps = resolve(s, ref, owner_id)
        guard.check_action(vps, "http_name_add", operator=owner_id is None)
        _routable(ctx, vps)
        if s.scalar(select(HttpName.id).where(HttpName.name == fqdn)) is not None:
            raise Conflict(f"the name {fqdn} is taken")
        count = len(list(s.scalars(select(HttpName.id).where(HttpName.vps_id == vps.id))))
        if count >= MAX_NAMES_PER_VPS:
            raise Conflict(f"{vps.hostname} has {count} names already, the most a VPS may have")
        row = HttpName(name=fqdn, vps_id=vps.id)
        s.add(row)
        s.flush()
        _apply_proxy_for(ctx, s, vps.host)
        shown = name_view(row, vps)
    shown["acme"] = run_acme_hook(ctx, fqdn, shown)
    return shown


def _routable(ctx: Context, vps: Vps) -> None:
    if vps.network.kind != "nat" or not vps.ip:
        raise Conflict(
            f"{vps.hostname} is not a NAT VPS with an address; names are routed to NAT VPSes only"
        )
    if not (host_edge.is_local(vps.host.uri) or vps.host.agent):
        raise Conflict(
            f"{vps.hostname} is on host {vps.host.name!r}, which has no agent; the proxy runs "
            "on the local host and on hosts with an agent"
        )
    if not host_edge.public_address(ctx, vps.host):
        raise Conflict("HTTP names need a public address (set KVMVPS_PUBLIC_ADDRESS)")


def list_names(ctx: Context, ref: str, owner_id: int | None = None) -> list[NameView]:
    with ctx.db.session() as s:
        vps = resolve(s, ref, owner_id)
        rows = s.scalars(select(HttpName).where(HttpName.vps_id == vps.id).order_by(HttpName.name))
        return [name_view(r, vps) for r in rows]


@audit.audits("vps.http.remove", target="ref")
def remove(
    ctx: Context, ref: str, name: str, owner_id: int | None = None, *, actor: str | None = None
) -> NameView:
    """Stop routing ``name`` to the VPS."""
    with ctx.db.session() as s:
        vps = resolve(s, ref, owner_id)
        guard.check_action(vps, "http_name_remove", operator=owner_id is None)
        fqdn = (name or "").strip().lower().removesuffix(".")
        candidates = {fqdn}
        if "." not in fqdn and ctx.settings.base_domain:
            candidates.add(f"{fqdn}.{ctx.settings.base_domain.lower()}")
        row = s.scalar(
            select(HttpName).where(HttpName.vps_id == vps.id, HttpName.name.in_(candidates))
        )
        if row is None:
            raise NotFound(f"{vps.hostname} has no name {name!r}")
        shown = name_view(row, vps)
        s.delete(row)
        s.flush()
        _apply_proxy_for(ctx, s, vps.host)
        return shown


# -- the proxy configuration --------------------------------------------------
def desired(ctx: Context, session: Session) -> str | None:
    """The proxy configuration for the names of the host(s) this process serves; None for none."""
    rows = session.execute(
        select(HttpName.name, Vps, Host)
        .join(Vps, Vps.id == HttpName.vps_id)
        .join(Host, Host.id == Vps.host_id)
        .join(Network, Network.id == Vps.network_id)
        .where(Vps.ip.is_not(None), Network.kind == "nat")
        .order_by(HttpName.name)
    )
    names: dict[str, list[str]] = {}
    guests: dict[str, tuple[str, str]] = {}
    for name, vps, host in rows:
        address = host_edge.public_address(ctx, host)
        if host_edge.runs_here(ctx, host) and address and vps.ip:
            backend = "vps_" + vps.uuid.replace("-", "")[:16]
            names.setdefault(backend, []).append(name)
            guests[backend] = (vps.ip, address)
    if not names:
        return None
    routes = [proxy.Route(b, guests[b][0], tuple(n)) for b, n in names.items()]
    address = next(iter(guests.values()))[1]
    st = ctx.settings
    return proxy.render(proxy.Listen(address, st.proxy_http_port, st.proxy_https_port), routes)


def _apply_proxy_for(ctx: Context, session: Session, host: Host) -> None:
    """After a change of ``host``'s names: its proxy here, or a word to its agent."""
    if host_edge.runs_here(ctx, host) or not host.agent:
        _apply_proxy_in(ctx, session)
    else:
        jobs.request_edge(session, host)


def _apply_proxy_in(ctx: Context, session: Session) -> bool:
    text = desired(ctx, session)
    haproxy = proxy.Proxy(ctx.settings.proxy_path)
    if text is None:
        return haproxy.stop()
    return haproxy.apply(text)


def apply_proxy(ctx: Context) -> bool:
    """Write and reload the proxy configuration from the database; False when it was right.

    The one function that writes the proxy's configuration. With no names,
    a running proxy is stopped.
    """
    with ctx.db.session() as s:
        return _apply_proxy_in(ctx, s)


def run_acme_hook(ctx: Context, name: str, shown: NameView) -> str:
    """Run KVMVPS_ACME_HOOK with the new name; its outcome in a few words."""
    hook = ctx.settings.acme_hook
    if not hook:
        return "no hook"
    env = {
        **os.environ,
        "KVMVPS_HTTP_NAME": name,
        "KVMVPS_VPS": shown["vps"],
        "KVMVPS_GUEST_IP": shown["guest_ip"] or "",
    }
    try:
        done = subprocess.run(
            [hook, name],
            env=env,
            capture_output=True,
            text=True,
            timeout=HOOK_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("the ACME hook %s failed for %s: %s", hook, name, exc)
        return f"failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        log.warning("the ACME hook %s failed for %s: %s", hook, name, last)
        return f"failed: {last}"
    return "ok"
