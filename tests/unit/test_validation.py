from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from kvmvps import validation
from kvmvps.errors import InvalidInput


@pytest.mark.parametrize("good", ["web1", "a", "x-y", "A1", "a" * 63, "0day"])
def test_good_hostnames(good: str) -> None:
    assert validation.hostname(good) == good.lower()


@pytest.mark.parametrize(
    "bad", ["", "-a", "a-", "a_b", "a.b", "a" * 64, "web 1", "wéb", "a;rm -rf /", "<x>", "a\nb"]
)
def test_bad_hostnames(bad: str) -> None:
    with pytest.raises(InvalidInput, match="not a valid DNS label"):
        validation.hostname(bad)


@pytest.mark.parametrize("bad", ["", "Small", "-x", "a/b", "x" * 64, "a b", "../etc"])
def test_bad_object_names(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validation.object_name(bad, "plan name")


@pytest.fixture(scope="module")
def real_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("k") / "id"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", str(path)],
        check=True,
    )
    return Path(f"{path}.pub").read_text().strip()


def test_real_ssh_key_is_accepted_and_normalised(real_key: str) -> None:
    assert validation.ssh_public_key("  " + real_key + "  ") == real_key
    assert validation.ssh_public_keys(f"# mine\n\n{real_key}\n") == [real_key]


@pytest.mark.parametrize(
    "bad",
    [
        "ssh-ed25519",
        "ssh-ed25519 AAAAnotbase64!!!",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIBogus",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "hello world",
    ],
)
def test_malformed_ssh_keys(bad: str) -> None:
    with pytest.raises(InvalidInput, match="SSH public key"):
        validation.ssh_public_key(bad)


def test_key_type_must_match_blob(real_key: str) -> None:
    blob = real_key.split()[1]
    with pytest.raises(InvalidInput):
        validation.ssh_public_key(f"ssh-rsa {blob}")


def test_subnets_and_ranges() -> None:
    net = validation.ipv4_network("10.9.0.0/24")
    assert net == ipaddress.IPv4Network("10.9.0.0/24")
    for bad in ("10.9.0.1/24", "10.9.0.0/30", "banana", "10.0.0.0/8"):
        with pytest.raises(InvalidInput):
            validation.ipv4_network(bad)
    assert validation.address_range(net, "10.9.0.10", "10.9.0.20") == ("10.9.0.10", "10.9.0.20")
    with pytest.raises(InvalidInput, match="outside"):
        validation.address_range(net, "10.9.1.10", None)
    with pytest.raises(InvalidInput, match="comes after"):
        validation.address_range(net, "10.9.0.20", "10.9.0.10")


def test_emails() -> None:
    assert validation.email(" Ann@Example.COM ") == "ann@example.com"
    for bad in ("ann", "a@", "<a>@x", "a b@c"):
        with pytest.raises(InvalidInput):
            validation.email(bad)
