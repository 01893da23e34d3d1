"""The NoCloud seed for one VPS: cloud-config user-data, meta-data, the cidata ISO.

The guest's cloud-init reads the seed from an ISO9660 filesystem labelled
``cidata``. Attach it as a read-only CD-ROM on a virtio-scsi controller
(``<target dev='sda' bus='scsi'/>``): Debian's cloud kernel has no AHCI driver,
so a SATA CD-ROM is invisible to it.

Everything is serialised with PyYAML's safe dumper, never by formatting text
into YAML, so any string stays data. One-line values (hostname, user name,
public keys) must not hold control characters: a newline in an
authorized_keys entry would be a second key, so they are refused here too.
"""

from __future__ import annotations

import io
import ipaddress
import re
from dataclasses import dataclass

import pycdlib
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmvps.errors import InvalidInput

SEED_LABEL = "cidata"
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
LOGIN_USER_SUDO = "ALL=(ALL) NOPASSWD:ALL"
LOGIN_USER_GROUPS = ("adm", "sudo")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# seed file -> its ISO9660 level-1 name (Rock Ridge and Joliet carry the real name)
_SEED_FILES = {
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "network-config": "/NETCFG.;1",
}


@dataclass(frozen=True)
class HostKey:
    """One SSH host key pair, as cloud-init's ``ssh_keys`` wants it."""

    key_type: str  # "ed25519"
    private_openssh: str  # "-----BEGIN OPENSSH PRIVATE KEY-----\n..."
    public_openssh: str  # "ssh-ed25519 AAAA..."


def generate_host_key() -> HostKey:
    """Generate a fresh ed25519 host key pair."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    return HostKey(key_type="ed25519", private_openssh=private, public_openssh=public)


def render_user_data(
    *, hostname: str, login_user: str, provisioning_pubkey: str, host_keys: list[HostKey]
) -> str:
    """The ``#cloud-config`` user-data: hostname, pinned host keys, root key, login user.

    No passwords: kvmvps pushes the customer's password and keys over SSH later.
    """
    for what, value in (
        ("hostname", hostname),
        ("login user", login_user),
        ("provisioning key", provisioning_pubkey),
    ):
        _one_line(what, value)
    if login_user == "root":
        raise InvalidInput("the login user cannot be root")
    config = {
        "preserve_hostname": False,
        "hostname": hostname,
        "fqdn": hostname,
        "manage_etc_hosts": True,
        "ssh_deletekeys": True,
        # With ssh_keys given cloud-init generates nothing; naming only our key
        # types (whose files it has just written) keeps that true even if it
        # did. An empty list fails cloud-init's schema (minItems 1).
        "ssh_genkeytypes": sorted({key.key_type for key in host_keys}),
        "ssh_keys": _ssh_keys(host_keys),
        "disable_root": False,
        "ssh_authorized_keys": [provisioning_pubkey],
        "ssh_pwauth": True,
        "users": [
            {
                "name": login_user,
                "gecos": login_user,
                "groups": list(LOGIN_USER_GROUPS),
                "sudo": LOGIN_USER_SUDO,
                "shell": "/bin/bash",
                "lock_passwd": True,
            }
        ],
    }
    return "#cloud-config\n" + _dump(config)


def render_meta_data(*, instance_id: str, hostname: str) -> str:
    """The NoCloud meta-data: a new instance-id makes cloud-init run its per-instance steps."""
    _one_line("instance id", instance_id)
    _one_line("hostname", hostname)
    if not instance_id:
        raise InvalidInput("the instance id cannot be empty")
    return _dump({"instance-id": instance_id, "local-hostname": hostname})


def render_network_config(*, mac: str, ipv6: str, ipv6_gateway: str) -> str:
    """NoCloud network-config v2: IPv4 by DHCP, the fixed IPv6 address, no router adverts."""
    for what, value in (("MAC", mac), ("IPv6 address", ipv6), ("IPv6 gateway", ipv6_gateway)):
        _one_line(what, value)
    try:
        address, gateway = ipaddress.IPv6Address(ipv6), ipaddress.IPv6Address(ipv6_gateway)
    except ValueError:
        raise InvalidInput(
            f"IPv6 address {ipv6!r} or gateway {ipv6_gateway!r} is invalid"
        ) from None
    # keyed and named eth0 (the images boot with net.ifnames=0): ifupdown, which
    # cloud-init renders to on Debian 12, names the interface by this key;
    # gateway6 becomes ifupdown's own "gateway" (a route would need net-tools)
    config = {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": mac.lower()},
                "set-name": "eth0",
                "dhcp4": True,
                "dhcp6": False,
                "accept-ra": False,
                "addresses": [f"{address}/64"],
                "gateway6": str(gateway),
            }
        },
    }
    return _dump(config)


def build_seed_iso(*, user_data: str, meta_data: str, network_config: str | None = None) -> bytes:
    """An ISO9660 image (Joliet and Rock Ridge) labelled ``cidata``, built in memory."""
    files = {"meta-data": meta_data, "user-data": user_data}
    if network_config is not None:
        files["network-config"] = network_config
    iso = pycdlib.PyCdlib()
    iso.new(
        interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL, sys_ident="LINUX"
    )
    try:
        for name, text in files.items():
            data = text.encode("utf-8")
            iso.add_fp(
                io.BytesIO(data), len(data), _SEED_FILES[name], rr_name=name, joliet_path="/" + name
            )
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def _ssh_keys(host_keys: list[HostKey]) -> dict[str, str]:
    """cloud-init's ``ssh_keys`` mapping: ``<type>_private`` / ``<type>_public``."""
    if not host_keys:
        raise InvalidInput("at least one SSH host key is needed")
    keys: dict[str, str] = {}
    for key in host_keys:
        if key.key_type not in HOST_KEY_TYPES:
            raise InvalidInput(f"unsupported SSH host key type {key.key_type!r}")
        if f"{key.key_type}_private" in keys:
            raise InvalidInput(f"two SSH host keys of type {key.key_type}")
        public = key.public_openssh.strip()
        _one_line("host public key", public)
        # cloud-init writes both verbatim (keys-to-console cats the .pub file):
        # each must end in a newline.
        keys[f"{key.key_type}_private"] = key.private_openssh.rstrip("\n") + "\n"
        keys[f"{key.key_type}_public"] = public + "\n"
    return keys


def _one_line(what: str, value: str) -> None:
    """Refuse non-strings, and strings with control characters or line breaks."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, not {type(value).__name__}")
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} {value!r} contains control characters")


class _Dumper(yaml.SafeDumper):
    """SafeDumper that prefers ``|`` blocks for multi-line strings (PEM keys)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line strings as literal blocks; PyYAML quotes them if a block can't hold them."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(data: dict) -> str:
    """Safe YAML, ASCII only (anything else escaped), never line-folded."""
    return yaml.dump(
        data,
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=False,
        width=2**31 - 1,
    )
