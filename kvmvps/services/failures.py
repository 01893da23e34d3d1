"""Failures in plain words, for customers.

A job's error names the step that failed and the technical reason, which is
what an operator needs (the admin area and the worker's log show it whole).
A customer gets a sentence instead: what went wrong, in their terms, and
that nothing was left half-made.
"""

from __future__ import annotations

import re

# Each provisioning step, as a customer would put its failure.
STEP_SENTENCES: dict[str, str] = {
    "clone": "the server's disk could not be created",
    "seed": "the server's first-boot settings could not be prepared",
    "render": "the server's configuration could not be prepared",
    "forwards": "the server's network ports could not be set up",
    "define": "the server could not be registered on its host",
    "start": "the server did not start",
    "dhcp": "the server's network address could not be set up",
    "dhcp-ready": "the server's network address could not be set up",
    "filter": "the server's network protection could not be set up",
    "host-key": "the server did not answer SSH in time",
    "credentials": "the server's login could not be set up",
}
KIND_SENTENCES: dict[str, str] = {
    "create": "the server could not be built",
    "reinstall": "the server could not be reinstalled",
    "start": "the server did not start",
    "shutdown": "the server did not shut down",
    "destroy": "the server could not be powered off",
    "reboot": "the server did not reboot",
    "suspend": "the server could not be paused",
    "resume": "the server could not be resumed",
    "delete": "the server could not be deleted completely",
    "password_reset": "the new password could not be set",
    "backup": "the backup could not be made",
    "restore": "the backup could not be restored",
    "snapshot": "the snapshot could not be taken",
    "snapshot_revert": "the server could not go back to the snapshot",
    "snapshot_delete": "the snapshot could not be deleted",
}
GENERIC = "the last operation on this server did not work"
_STEP = re.compile(r"at step '([a-z-]+)'")
ROLLED_BACK = (
    "Nothing was left half-made; please try again, and contact support if it happens again."
)
FOLLOW_UP = "Please try again, and contact support if it happens again."
HOST_AWAY = (
    "Its host is not answering at the moment; what was made there is cleaned up "
    "as soon as it is back. Please try again later."
)
HOST_DID_NOT_ANSWER = "Its host did not answer, so nothing was changed. Please try again later."


def plain(error: str | None, kind: str | None = None) -> str | None:
    """A customer's sentence for a job's or server's ``error`` (None for no error)."""
    if not error:
        return None
    match = _STEP.search(error)
    if match and match[1] in STEP_SENTENCES:
        sentence = STEP_SENTENCES[match[1]]
    elif "time limit" in error:
        sentence = "building the server took too long"
    elif "abandoned" in error:
        sentence = "the build was interrupted too often"
    else:
        sentence = KIND_SENTENCES.get(kind or "", GENERIC)
    if "rolled back when the host answers again" in error:
        return f"{sentence[0].upper()}{sentence[1:]}. {HOST_AWAY}"
    if re.match(r"host \S+ did not answer for ", error):
        return f"{sentence[0].upper()}{sentence[1:]}. {HOST_DID_NOT_ANSWER}"
    rolled_back = "rolled back" in error
    return f"{sentence[0].upper()}{sentence[1:]}. {ROLLED_BACK if rolled_back else FOLLOW_UP}"


def for_owner(error: str | None, owner_id: int | None, kind: str | None = None) -> str | None:
    """An error as a view's reader sees it: plain words for an owner, whole for operators."""
    return plain(error, kind) if owner_id is not None and error else error
