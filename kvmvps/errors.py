"""The project's exceptions.

Every error a user can cause or meet derives from :class:`KvmvpsError` and
carries a one-line message meant for people. Front ends print ``str(exc)``
and map :attr:`KvmvpsError.exit_code` to a process exit status.
"""


class KvmvpsError(Exception):
    """Base class: an expected failure with a one-line, human message."""

    exit_code = 1


class InvalidInput(KvmvpsError):
    """The caller asked for something malformed (bad hostname, bad key...)."""

    exit_code = 2


class NotFound(KvmvpsError):
    """A named object (plan, image, VPS...) does not exist."""

    exit_code = 2


class Conflict(KvmvpsError):
    """The request clashes with existing state (duplicate, in use...)."""


class CapacityError(KvmvpsError):
    """No room: address pool full, no host with enough CPUs or memory."""


class ImageError(KvmvpsError):
    """A base image is missing, unreadable or not a usable qcow2."""


class ImageBuildError(KvmvpsError):
    """Building a guest image failed."""


class XmlValidationError(KvmvpsError):
    """A rendered document failed libvirt's RelaxNG schema."""


class HypervisorError(KvmvpsError):
    """libvirt refused or failed an operation."""


class HypervisorUnavailable(HypervisorError):
    """libvirtd cannot be reached."""


class HypervisorNotFound(HypervisorError):
    """libvirt has no such domain, network, pool or volume."""


class HypervisorInvalid(HypervisorError):
    """libvirt rejected a definition or an operation as invalid."""


class GuestError(KvmvpsError):
    """Talking to a guest over SSH failed."""


class HostKeyMismatch(GuestError):
    """The guest served a host key other than the pinned one."""


class StepFailed(KvmvpsError):
    """A provisioning step failed; the steps before it were rolled back."""


class FirewallError(HypervisorError):
    """iptables, or the HTTP proxy, on a libvirt host refused or failed a change."""


class Forbidden(KvmvpsError):
    """The caller may not do this: a suspended VPS, a quota reached, sign-up closed,
    an operator's action asked for by a customer."""


class Suspended(Forbidden):
    """The VPS is suspended by an operator; only an operator can lift that."""


class QuotaExceeded(Forbidden):
    """The order would take the customer past their limits."""
