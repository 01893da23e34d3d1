"""The graphical console's pieces that need no guest: the display's XML, the SSH tunnel's command.

The relay itself runs against real QEMU in tests/e2e/test_console_real.py.
"""

from __future__ import annotations

import socket

import pytest

from kvmvps import vnc, xmlrender
from kvmvps.errors import Conflict, HypervisorError
from kvmvps.xmlspec import GraphicsSpec
from tests.unit.test_xml_golden import domain

LIVE = """<domain><devices>
  <graphics type='vnc' port='{port}' autoport='yes' listen='{addr}'>
    <listen type='address' address='{addr}'/>
  </graphics>
</devices></domain>"""
SSH_URI = (
    "qemu+ssh://root@192.0.2.7:2222/system?keyfile=/etc/kvmvps/id&known_hosts=/etc/kvmvps/kh"
    "&command=/usr/local/bin/ssh-pinned&no_tty=1"
)


def test_the_rendered_domain_has_a_loopback_display_and_a_vga_card() -> None:
    xml = xmlrender.domain_xml(domain())
    assert '<graphics type="vnc" autoport="yes" listen="127.0.0.1">' in xml
    assert '<model type="vga"/>' in xml
    assert "<graphics" not in xmlrender.domain_xml(domain(graphics=None))


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.1", "::", "localhost"])  # noqa: S104 refused here
def test_a_display_off_loopback_cannot_be_specified(address: str) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        GraphicsSpec(listen=address)


def test_the_port_comes_from_the_live_xml_on_loopback_only() -> None:
    assert vnc.display_port(LIVE.format(port=5901, addr="127.0.0.1")) == 5901
    assert vnc.display_port(LIVE.format(port=5902, addr="::1")) == 5902
    for addr in ("0.0.0.0", "192.0.2.1", "::"):  # noqa: S104 each is refused
        with pytest.raises(Conflict, match="not on loopback"):
            vnc.display_port(LIVE.format(port=5901, addr=addr))
    with pytest.raises(Conflict, match="no port"):
        vnc.display_port(LIVE.format(port=-1, addr="127.0.0.1"))
    with pytest.raises(Conflict, match="no graphical console"):
        vnc.display_port("<domain><devices><serial type='pty'/></devices></domain>")


def test_the_tunnel_uses_the_uris_ssh_and_pins_the_host_key() -> None:
    command = vnc.ssh_command(SSH_URI, 5901)
    assert command[0] == "/usr/local/bin/ssh-pinned"
    pairs = set(zip(command, command[1:], strict=False))
    assert {("-p", "2222"), ("-l", "root"), ("-i", "/etc/kvmvps/id")} <= pairs
    assert ("-o", "UserKnownHostsFile=/etc/kvmvps/kh") in pairs
    assert ("-o", "StrictHostKeyChecking=yes") in pairs and ("-o", "BatchMode=yes") in pairs
    assert command[-4:] == ["-W", "127.0.0.1:5901", "--", "192.0.2.7"]
    plain = vnc.ssh_command("qemu+ssh://hv2.example/system", 5900)
    assert plain[0] == "ssh" and "-l" not in plain and "-i" not in plain
    assert ("-o", "StrictHostKeyChecking=yes") in set(zip(plain, plain[1:], strict=False))


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+tcp://hv2.example/system",
        "qemu+tls://hv2.example/system",
        "qemu+ssh:///system",
        "test:///default",
    ],
)
def test_other_transports_get_no_tunnel(uri: str) -> None:
    with pytest.raises(Conflict, match="local or qemu\\+ssh"):
        vnc.ssh_command(uri, 5900)


def test_a_hostile_hostname_is_never_an_ssh_option() -> None:
    # "-oProxyCommand=..." as a host would be an option without the "--" before it
    command = vnc.ssh_command("qemu+ssh://-oProxyCommand=touch%20x/system", 5900)
    assert command[-2] == "--"


def test_a_closed_display_is_a_one_line_error() -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(HypervisorError, match="cannot reach the VNC display"):
            vnc.VncChannel("qemu:///system", port)
