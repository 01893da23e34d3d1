"""The one check every customer-facing action on a VPS goes through.

An operator's suspension (``Vps.suspended_reason``) freezes a VPS for its
customer: every action that changes it (power, reinstall, password reset,
delete, forwards, HTTP names, and anything added later) calls
:func:`check_action` first and is refused with the operator's reason.
Operators themselves may still pause, destroy or delete a suspended VPS;
anything that would run it again waits until they lift the suspension.

This module reads only the VPS row handed to it: no libvirt, no queries.
"""

from __future__ import annotations

from kvmvps.errors import Conflict, Suspended
from kvmvps.models import Vps

# what an operator may still do to a VPS they suspended (nothing here runs it)
OPERATOR_WHILE_SUSPENDED = frozenset(
    {
        "suspend",
        "destroy",
        "delete",
        "forward_remove",
        "http_name_remove",
        "backup",
        "backup_delete",
    }
)
# how refusals name an action: "cannot <label> <hostname>"
LABELS = {
    "password_reset": "reset the password of",
    "shut_down": "shut down",
    "forward_add": "add a forward to",
    "forward_remove": "remove a forward of",
    "http_name_add": "add an HTTP name to",
    "http_name_remove": "remove an HTTP name of",
    "backup": "back up",
    "backup_restore": "restore a backup of",
    "backup_delete": "delete a backup of",
    "snapshot": "take a snapshot of",
    "snapshot_revert": "revert to a snapshot of",
    "snapshot_delete": "delete a snapshot of",
}


def is_suspended(vps: Vps) -> bool:
    return vps.suspended_reason is not None


def check_action(vps: Vps, action: str, *, operator: bool) -> None:
    """Refuse ``action`` on a suspended VPS: always for customers, for operators unless harmless.

    ``operator`` is True for an operator's request (the service functions'
    ``owner_id is None``), False for a customer acting on their own VPS.
    """
    what = LABELS.get(action, action.replace("_", " "))
    if vps.host.down_since is not None:
        raise Conflict(
            f"cannot {what} {vps.hostname}: its host {vps.host.name} is not answering; "
            "try again when it is back"
        )
    if not is_suspended(vps):
        return
    if not operator:
        raise Suspended(
            f"cannot {what} {vps.hostname}: it is suspended by the operators "
            f"({vps.suspended_reason}); contact support"
        )
    if action not in OPERATOR_WHILE_SUSPENDED:
        raise Suspended(
            f"cannot {what} {vps.hostname}: it is suspended ({vps.suspended_reason}); "
            f"lift the suspension first (kvmvps-admin vps unsuspend {vps.hostname})"
        )


def holds_running(vps: Vps, libvirt_state: str | None) -> bool:
    """True when a suspended VPS's domain runs anyway (started behind kvmvps's back)."""
    return runs_while_suspended(vps.suspended_reason, libvirt_state)


def runs_while_suspended(suspended_reason: str | None, libvirt_state: str | None) -> bool:
    """:func:`holds_running` of a VPS's columns."""
    return suspended_reason is not None and libvirt_state in ("running", "idle", "in shutdown")
