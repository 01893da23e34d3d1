"""Checks for user text before it reaches the database, XML, a shell or libvirt.

Every check returns the normalised value or raises :class:`InvalidInput` with
a one-line message that names the offending field. Patterns are matched with
``fullmatch`` (a ``$`` would let a trailing newline through), and no field
takes control characters (see :func:`one_line`).
"""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata

from kvmvps.errors import InvalidInput

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_EMAIL = re.compile(r"[^@\s<>\"']{1,64}@[A-Za-z0-9.-]{1,190}")
_UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
MAX_SSH_KEYS = 20
# Unicode categories that can move a terminal's cursor, recolour it, hide or
# reorder text: C0/C1 controls and DEL, format characters (bidi overrides,
# zero-width), and the line and paragraph separators.
CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
MAX_DB_ID = 2**31 - 1


def _trim(value: str | None) -> str:
    """Spaces and tabs around a value are dropped; a newline is not (it is refused)."""
    return (value or "").strip(" \t")


def is_control(ch: str) -> bool:
    return unicodedata.category(ch) in CONTROL_CATEGORIES


def has_control(text: str, allow: str = "") -> bool:
    """Whether ``text`` holds a control character (other than those in ``allow``)."""
    return any(is_control(ch) and ch not in allow for ch in text)


def printable(text: str, keep: str = "") -> str:
    """``text`` with every control character (but those in ``keep``) written as an escape.

    ESC becomes ``\\x1b``, U+202E ``\\u202e``: harmless on a terminal, still legible.
    """
    if not has_control(text, keep):
        return text
    return "".join(ch if ch in keep or not is_control(ch) else ascii(ch)[1:-1] for ch in text)


def one_line(value: str | None, what: str, maximum: int) -> str:
    """Free text on one line (a name, a reason): stripped, no control characters."""
    text = _trim(value)
    if len(text) > maximum:
        raise InvalidInput(f"the {what} must be at most {maximum} characters long")
    if has_control(text):
        raise InvalidInput(f"the {what} must be one line, without control characters")
    return text


def not_longer(value: str | None, what: str, limit: int) -> None:
    """Refuse a value longer than ``limit`` characters before anything else looks at it."""
    if len(value or "") > limit:
        raise InvalidInput(f"the {what} is too long (at most {limit} characters)")


def hostname(value: str) -> str:
    """A DNS label: letters, digits and inner hyphens, at most 63 characters."""
    label = _trim(value).lower()
    if not _LABEL.fullmatch(label):
        raise InvalidInput(
            f"hostname {value!r} is not a valid DNS label "
            "(letters, digits and inner hyphens, at most 63 characters)"
        )
    return label


_DNS_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+")


def dns_name(value: str, what: str = "name") -> str:
    """A fully qualified DNS name of two labels or more, lower-cased, at most 253 characters."""
    name = _trim(value).lower().removesuffix(".")
    if len(name) > 253 or not _DNS_NAME.fullmatch(name) or name.rsplit(".", 1)[-1].isdigit():
        raise InvalidInput(
            f"{what} {value!r} is not a valid DNS name (labels of letters, "
            "digits and inner hyphens, joined by dots)"
        )
    return name


def object_name(value: str, what: str = "name") -> str:
    """Names of plans, images, networks and hosts: short, lower-case, safe anywhere."""
    name = _trim(value)
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"{what} {value!r} is not valid (lower-case letters, digits, '.', '_' and '-', "
            "at most 63 characters, starting with a letter or digit)"
        )
    return name


def email(value: str) -> str:
    addr = _trim(value).lower()
    if len(addr) > 254 or has_control(addr) or not _EMAIL.fullmatch(addr):
        raise InvalidInput(f"{value!r} is not a valid e-mail address")
    return addr


def unix_user(value: str) -> str:
    if not _UNIX_USER.fullmatch(value or ""):
        raise InvalidInput(f"login user {value!r} is not a valid Unix user name")
    return value


def positive_int(value: int, what: str, maximum: int) -> int:
    return whole_number(value, what, 1, maximum)


def whole_number(value: int, what: str, minimum: int, maximum: int) -> int:
    """An int (not a bool) within bounds; huge ones are refused without being echoed."""
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        small = not isinstance(value, int) or value.bit_length() <= 64
        shown = repr(value)[:40] if small else "a larger number"
        raise InvalidInput(
            f"{what} must be a whole number from {minimum} to {maximum}, not {shown}"
        )
    return value


def whole_number_text(value: str | int | None, what: str, maximum: int, default: int) -> int:
    """A whole number 1..``maximum`` as a query string or an option gives it; ``default``
    when missing. Only a few digits are converted, so a huge one is refused cheaply."""
    if value is None or value == "":
        return default
    text = str(value).strip()
    head = text[: len(str(maximum)) + 1]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(head) <= maximum:
        raise InvalidInput(f"{what} must be a whole number from 1 to {maximum}")
    return int(text)


def seconds(value: object, what: str, maximum: float) -> float:
    """A number of seconds above 0 and at most ``maximum`` (finite; ints of any size refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{what} must be a number of seconds")
    if isinstance(value, float) and not math.isfinite(value) or not 0 < value <= maximum:
        raise InvalidInput(f"{what} must be between 0 and {maximum:g} seconds")
    return float(value)


def db_id(value: int, what: str) -> int:
    """A row id as the database holds it (a larger one cannot exist)."""
    return whole_number(value, what, 1, MAX_DB_ID)


def ssh_public_key(line: str) -> str:
    """One OpenSSH public key line, normalised to ``type base64 [comment]``."""
    parts = (line or "").strip().split()
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES:
        raise InvalidInput(f"not an SSH public key: {_preview(line)}")
    # cryptography is imported only for a key to check: every CLI command imports
    # this module, and most never see a key (speed, not cycles)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidInput(f"malformed SSH public key: {_preview(line)}") from None
    comment = " ".join(parts[2:])
    if has_control(line.strip()):
        raise InvalidInput("SSH public key comment holds control characters")
    return " ".join([parts[0], parts[1]] + ([comment[:100]] if comment else []))


def ssh_public_keys(text_or_lines: str | list[str]) -> list[str]:
    """Several keys, one per line; blank lines and ``#`` comments are skipped."""
    lines = text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines
    keys = [ssh_public_key(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if len(keys) > MAX_SSH_KEYS:
        raise InvalidInput(f"at most {MAX_SSH_KEYS} SSH keys may be given")
    return keys


_DURATION = re.compile(r"([0-9]{1,6})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: str) -> int:
    """A duration such as ``90s``, ``30m``, ``2h`` or ``7d``, in seconds (1 min to 1 year)."""
    match = _DURATION.fullmatch(_trim(value).lower())
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


def ipv6_prefix(value: str) -> ipaddress.IPv6Network:
    """A guest network's IPv6 prefix: a /64, not link-local, multicast or loopback."""
    if has_control(value or ""):
        raise InvalidInput(f"IPv6 prefix {_preview(value)} contains control characters")
    try:
        net = ipaddress.IPv6Network(value, strict=True)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"IPv6 prefix {_preview(value)} is not an IPv6 network such as fd12:3456:789a:1::/64"
        ) from None
    if net.prefixlen != 64:
        raise InvalidInput(f"IPv6 prefix {net}: the prefix must be a /64")
    addr = net.network_address
    if addr.is_link_local or addr.is_multicast or addr.is_loopback or addr.is_unspecified:
        raise InvalidInput(f"IPv6 prefix {net} is link-local, multicast or reserved")
    if net.network_address.ipv4_mapped is not None:
        raise InvalidInput(f"IPv6 prefix {net} is an IPv4-mapped range")
    return net


def _preview(text: str | None) -> str:
    text = (text or "").strip().replace("\n", " ")
    return repr(text if len(text) <= 40 else text[:37] + "...")


_BRIDGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def bridge_name(value: str) -> str:
    """A Linux interface name: at most 15 characters, no slashes or spaces."""
    if not _BRIDGE.fullmatch(value or ""):
        raise InvalidInput(
            f"bridge name {value!r} is not a valid interface name (at most 15 characters)"
        )
    return value


def address_range(
    net: ipaddress.IPv4Network, start: str | None, end: str | None
) -> tuple[str | None, str | None]:
    """An optional pool range inside ``net``, start not after end."""
    parsed: list[ipaddress.IPv4Address | None] = []
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
