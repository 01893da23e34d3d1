"""libvirt's errors as the project's own exceptions; the one module that imports libvirt.

The package's other modules take ``libvirt`` from here, so libvirt is always
loaded with its error handler in place. Importing this module stops libvirt
from printing every error to stderr;
:func:`translate` turns a ``libvirtError`` into a :class:`HypervisorError`
subclass by its code and domain.
"""

from __future__ import annotations

from typing import Any

import libvirt as libvirt  # re-exported: the package's one import of libvirt

from kvmvps.errors import (
    HypervisorError,
    HypervisorInvalid,
    HypervisorNotFound,
    HypervisorUnavailable,
)


def _ignore_libvirt_errors(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; we raise them instead."""


libvirt.registerErrorHandler(_ignore_libvirt_errors, None)

_NOT_FOUND = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_NWFILTER,
    libvirt.VIR_ERR_NO_DOMAIN_BACKUP,
}
_UNAVAILABLE_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_AUTH_FAILED}
_UNAVAILABLE_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_INVALID = {
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_INVALID_ARG,
    libvirt.VIR_ERR_OPERATION_INVALID,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_DOM_EXIST,
    libvirt.VIR_ERR_NETWORK_EXIST,
    libvirt.VIR_ERR_STORAGE_VOL_EXIST,
}


def translate(exc: libvirt.libvirtError, what: str) -> HypervisorError:
    """Our exception for a libvirt error, with a one-line message."""
    code, domain = exc.get_error_code(), exc.get_error_domain()
    message = (exc.get_error_message() or str(exc)).splitlines()[0]
    if code in _NOT_FOUND:
        return HypervisorNotFound(f"{what}: {message}")
    if code in _UNAVAILABLE_CODES or domain in _UNAVAILABLE_DOMAINS:
        return HypervisorUnavailable(f"libvirt is unavailable ({what}): {message}")
    if code in _INVALID:
        return HypervisorInvalid(f"{what}: {message}")
    return HypervisorError(f"{what}: {message}")
