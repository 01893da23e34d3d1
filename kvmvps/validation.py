"""Checks for user text before it reaches the database, XML, a shell or libvirt.

Every check returns the normalised value or raises :class:`InvalidInput` with
a one-line message that names the offending field.
"""

from __future__ import annotations

import ipaddress
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from kvmvps.errors import InvalidInput

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_EMAIL = re.compile(r"^[^@\s<>\"']{1,64}@[A-Za-z0-9.-]{1,190}$")
_UNIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
MAX_SSH_KEYS = 20


def not_longer(value: str | None, what: str, limit: int) -> None:
    """Refuse a value longer than ``limit`` characters before anything else looks at it."""
    if len(value or "") > limit:
        raise InvalidInput(f"the {what} is too long (at most {limit} characters)")


def hostname(value: str) -> str:
    """A DNS label: letters, digits and inner hyphens, at most 63 characters."""
    label = (value or "").strip().lower()
    if not _LABEL.match(label):
        raise InvalidInput(
            f"hostname {value!r} is not a valid DNS label "
            "(letters, digits and inner hyphens, at most 63 characters)"
        )
    return label


_DNS_NAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")


def dns_name(value: str, what: str = "name") -> str:
    """A fully qualified DNS name of two labels or more, lower-cased, at most 253 characters."""
    name = (value or "").strip().lower().removesuffix(".")
    if len(name) > 253 or not _DNS_NAME.match(name) or name.rsplit(".", 1)[-1].isdigit():
        raise InvalidInput(
            f"{what} {value!r} is not a valid DNS name (labels of letters, "
            "digits and inner hyphens, joined by dots)"
        )
    return name


def object_name(value: str, what: str = "name") -> str:
    """Names of plans, images, networks and hosts: short, lower-case, safe anywhere."""
    name = (value or "").strip()
    if not _NAME.match(name):
        raise InvalidInput(
            f"{what} {value!r} is not valid (lower-case letters, digits, '.', '_' and '-', "
            "at most 63 characters, starting with a letter or digit)"
        )
    return name


def email(value: str) -> str:
    addr = (value or "").strip().lower()
    if len(addr) > 254 or not _EMAIL.match(addr):
        raise InvalidInput(f"{value!r} is not a valid e-mail address")
    return addr


def unix_user(value: str) -> str:
    if not _UNIX_USER.match(value or ""):
        raise InvalidInput(f"login user {value!r} is not a valid Unix user name")
    return value


def positive_int(value: int, what: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise InvalidInput(f"{what} must be a whole number from 1 to {maximum}, not {value!r}")
    return value


def ssh_public_key(line: str) -> str:
    """One OpenSSH public key line, normalised to ``type base64 [comment]``."""
    parts = (line or "").strip().split()
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES:
        raise InvalidInput(f"not an SSH public key: {_preview(line)}")
    try:
        serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidInput(f"malformed SSH public key: {_preview(line)}") from None
    comment = " ".join(parts[2:])
    if any(ord(ch) < 32 for ch in comment):
        raise InvalidInput("SSH public key comment holds control characters")
    return " ".join([parts[0], parts[1]] + ([comment[:100]] if comment else []))


def ssh_public_keys(text_or_lines: str | list[str]) -> list[str]:
    """Several keys, one per line; blank lines and ``#`` comments are skipped."""
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines
    keys = [ssh_public_key(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if len(keys) > MAX_SSH_KEYS:
        raise InvalidInput(f"at most {MAX_SSH_KEYS} SSH keys may be given")
    return keys


_DURATION = re.compile(r"^(\d{1,6})([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: str) -> int:
    """A duration such as ``90s``, ``30m``, ``2h`` or ``7d``, in seconds (1 min to 1 year)."""
    match = _DURATION.match((value or "").strip().lower())
    if not match:
        raise InvalidInput(f"duration {value!r} is not like 30m, 2h or 7d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 60 <= seconds <= 366 * 86400:
        raise InvalidInput(f"duration {value!r} must be between 1 minute and 1 year")
    return seconds


def ipv4_network(value: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except (ValueError, TypeError):
        raise InvalidInput(f"subnet {value!r} is not an IPv4 network such as 10.0.0.0/24") from None
    if net.prefixlen > 29 or net.prefixlen < 16:
        raise InvalidInput(f"subnet {value}: the prefix must be between /16 and /29")
    return net


def _preview(text: str | None) -> str:
    text = (text or "").strip().replace("\n", " ")
    return repr(text if len(text) <= 40 else text[:37] + "...")


_BRIDGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def bridge_name(value: str) -> str:
    """A Linux interface name: at most 15 characters, no slashes or spaces."""
    if not _BRIDGE.match(value or ""):
        raise InvalidInput(
            f"bridge name {value!r} is not a valid interface name (at most 15 characters)"
        )
    return value


def address_range(
    net: ipaddress.IPv4Network, start: str | None, end: str | None
) -> tuple[str | None, str | None]:
    """An optional pool range inside ``net``, start not after end."""
    parsed = []
    for label, value in (("pool start", start), ("pool end", end)):
        if value is None:
            parsed.append(None)
            continue
        try:
            addr = ipaddress.IPv4Address(value)
        except ValueError:
            raise InvalidInput(f"{label} {value!r} is not an IPv4 address") from None
        if addr not in net:
            raise InvalidInput(f"{label} {value} is outside {net}")
        parsed.append(addr)
    if parsed[0] and parsed[1] and parsed[0] > parsed[1]:
        raise InvalidInput(f"pool start {start} comes after pool end {end}")
    return start, end
