"""The NoCloud seed: user-data and meta-data as data, and the cidata ISO read back."""

from __future__ import annotations

import io

import pycdlib
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kvmvps.cloudinit import (
    HostKey,
    build_seed_iso,
    generate_host_key,
    render_meta_data,
    render_user_data,
)
from kvmvps.errors import InvalidInput

PROV_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbq2l3ILx6n5ZC8t1bYq1h4Ks5Uq5ik2Nqk3x0m7ZxQ kvmvps"

# YAML syntax, tags, anchors, implicit types, document markers, non-ASCII: all must stay text.
HOSTILE = [
    "a: b",
    "- item",
    "#not-a-comment",
    "{x: 1}",
    "[1, 2]",
    "&anchor",
    "*alias",
    "!!python/object/apply:os.system ['id']",
    "'single",
    '"double',
    "null",
    "~",
    "yes",
    "off",
    "0x1F",
    "1e3",
    "012",
    "---",
    "...",
    "%TAG ! tag:x,2000:",
    "@at",
    "`tick`",
    "| block",
    "> folded",
    "a #b",
    ": ",
    " leading",
    "trailing ",
    "caf\u00e9 \u2603 \U0001f600",
    "ALL=(ALL) NOPASSWD:ALL",
    "",
]


def _user_data(**overrides: object) -> str:
    args: dict[str, object] = {
        "hostname": "web1",
        "login_user": "debian",
        "provisioning_pubkey": PROV_KEY,
        "host_keys": [generate_host_key()],
    }
    args.update(overrides)
    return render_user_data(**args)  # type: ignore[arg-type]


def _load(text: str) -> dict:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_generate_host_key_is_a_matching_ed25519_pair() -> None:
    key = generate_host_key()
    assert key.key_type == "ed25519"
    assert key.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    private = serialization.load_ssh_private_key(key.private_openssh.encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    assert key.public_openssh == public
    assert public.startswith("ssh-ed25519 AAAA") and "\n" not in public
    assert generate_host_key().public_openssh != key.public_openssh


def test_user_data_is_exactly_the_expected_cloud_config() -> None:
    key = generate_host_key()
    text = _user_data(host_keys=[key])
    assert text.startswith("#cloud-config\n")
    assert _load(text) == {
        "preserve_hostname": False,
        "hostname": "web1",
        "fqdn": "web1",
        "manage_etc_hosts": True,
        "ssh_deletekeys": True,
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {
            "ed25519_private": key.private_openssh,
            "ed25519_public": key.public_openssh + "\n",
        },
        "disable_root": False,
        "ssh_authorized_keys": [PROV_KEY],
        "ssh_pwauth": True,
        "users": [
            {
                "name": "debian",
                "gecos": "debian",
                "groups": ["adm", "sudo"],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "lock_passwd": True,
            }
        ],
    }


def _keys(node: object) -> set[str]:
    """Every mapping key anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_user_data_holds_no_password_material() -> None:
    text = _user_data()
    keys = _keys(_load(text))
    assert not keys & {"password", "passwd", "hashed_passwd", "plain_text_passwd", "chpasswd"}
    assert "$6$" not in text and "$y$" not in text
    assert _load(text)["users"][0]["lock_passwd"] is True


def test_private_key_gets_its_final_newline() -> None:
    key = generate_host_key()
    bare = HostKey("ed25519", key.private_openssh.rstrip("\n"), key.public_openssh + "\n")
    keys = _load(_user_data(host_keys=[bare]))["ssh_keys"]
    assert keys["ed25519_private"] == key.private_openssh
    assert keys["ed25519_public"] == key.public_openssh + "\n"


def test_several_key_types_are_all_installed_and_named() -> None:
    ed, other = generate_host_key(), generate_host_key()
    rsa = HostKey("rsa", other.private_openssh, "ssh-rsa AAAAB3NzaC1yc2E")
    data = _load(_user_data(host_keys=[ed, rsa]))
    assert data["ssh_genkeytypes"] == ["ed25519", "rsa"]
    assert set(data["ssh_keys"]) == {
        "ed25519_private",
        "ed25519_public",
        "rsa_private",
        "rsa_public",
    }


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_stay_data(value: str) -> None:
    key = generate_host_key()
    text = _user_data(hostname=value, login_user=value, provisioning_pubkey=value, host_keys=[key])
    assert text.isascii()
    data = _load(text)
    assert data["hostname"] == value and data["fqdn"] == value
    assert data["users"][0]["name"] == value and data["users"][0]["gecos"] == value
    assert data["ssh_authorized_keys"] == [value]
    assert set(data) == set(_load(_user_data(host_keys=[key])))
    meta = _load(render_meta_data(instance_id=value or "x", hostname=value))
    assert meta == {"instance-id": value or "x", "local-hostname": value}


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\tb", "a\x00", "a\x7f", "a\x85b", "a\u2028b"])
@pytest.mark.parametrize("field", ["hostname", "login_user", "provisioning_pubkey"])
def test_line_breaks_and_control_characters_are_refused(field: str, bad: str) -> None:
    # A newline in an authorized_keys value would be a second key line.
    with pytest.raises(InvalidInput):
        _user_data(**{field: bad})


def test_public_host_key_with_a_newline_inside_is_refused() -> None:
    key = generate_host_key()
    with pytest.raises(InvalidInput):
        _user_data(
            host_keys=[
                HostKey("ed25519", key.private_openssh, key.public_openssh + "\nssh-ed25519 AAAA")
            ]
        )


@pytest.mark.parametrize(
    "host_keys, message",
    [
        ([], "at least one"),
        ([HostKey("dsa", "x", "ssh-dss AAAA")], "unsupported"),
        (
            [HostKey("ed25519", "x", "ssh-ed25519 A"), HostKey("ed25519", "y", "ssh-ed25519 B")],
            "two SSH host keys",
        ),
    ],
)
def test_bad_host_key_lists_are_refused(host_keys: list[HostKey], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _user_data(host_keys=host_keys)


def test_root_cannot_be_the_login_user() -> None:
    with pytest.raises(InvalidInput, match="root"):
        _user_data(login_user="root")


def test_non_string_values_are_refused() -> None:
    with pytest.raises(InvalidInput):
        _user_data(hostname=["web1"])


def test_meta_data_is_exact() -> None:
    text = render_meta_data(instance_id="i-0a1b2c", hostname="web1")
    assert _load(text) == {"instance-id": "i-0a1b2c", "local-hostname": "web1"}
    with pytest.raises(InvalidInput):
        render_meta_data(instance_id="", hostname="web1")


def _read(iso: pycdlib.PyCdlib, **path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue()


def _open_iso(data: bytes) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    return iso


def test_seed_iso_reads_back_with_label_and_files() -> None:
    user_data = _user_data(hostname="caf\u00e9: {x}")
    meta_data = render_meta_data(instance_id="i-1", hostname="web1")
    data = build_seed_iso(user_data=user_data, meta_data=meta_data)
    # The primary volume descriptor sits at sector 16; its volume id at bytes 40..71.
    assert data[16 * 2048 + 1 : 16 * 2048 + 6] == b"CD001"
    assert data[16 * 2048 + 40 : 16 * 2048 + 72].rstrip(b" ") == b"cidata"
    iso = _open_iso(data)
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == b"cidata"
        assert iso.has_rock_ridge() and iso.has_joliet()
        names = {c.rock_ridge.name() for c in iso.list_children(rr_path="/") if c.rock_ridge}
        assert names == {b".", b"..", b"user-data", b"meta-data"}
        assert _read(iso, rr_path="/user-data") == user_data.encode()
        assert _read(iso, rr_path="/meta-data") == meta_data.encode()
        assert _read(iso, joliet_path="/user-data") == user_data.encode()
        assert _read(iso, joliet_path="/meta-data") == meta_data.encode()
    finally:
        iso.close()


def test_seed_iso_carries_network_config_only_when_given() -> None:
    network = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
    data = build_seed_iso(
        user_data="#cloud-config\n", meta_data="instance-id: i\n", network_config=network
    )
    iso = _open_iso(data)
    try:
        assert _read(iso, rr_path="/network-config") == network.encode()
        assert _read(iso, rr_path="/user-data") == b"#cloud-config\n"
    finally:
        iso.close()
    bare = _open_iso(build_seed_iso(user_data="#cloud-config\n", meta_data="instance-id: i\n"))
    try:
        names = {c.rock_ridge.name() for c in bare.list_children(rr_path="/") if c.rock_ridge}
        assert b"network-config" not in names
    finally:
        bare.close()
