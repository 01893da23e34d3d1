"""The graphical console's byte channel: a guest's VNC display on its host's loopback.

QEMU's VNC server listens on the host's 127.0.0.1 only (see
:class:`kvmvps.xmlspec.GraphicsSpec`); its port is the one libvirt chose,
read from the running domain's XML. On this machine the channel is a TCP
connection to it. On a ``qemu+ssh://`` host it is OpenSSH's ``ssh -W``
(stdio forwarding) to that host's loopback, started with the same user,
key, wrapper command and known hosts the libvirt URI names, and always with
``StrictHostKeyChecking=yes``: an unknown or changed host key is refused,
never learnt. Other transports (``qemu+tcp``, ``qemu+tls``) get no
graphical console.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import subprocess
from urllib.parse import parse_qs, urlsplit

from lxml import etree

from kvmvps.errors import Conflict, HypervisorError

LOCAL_SCHEMES = ("qemu", "qemu+unix")
SSH_SCHEMES = ("qemu+ssh",)
CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536


def display_port(domain_xml: str) -> int:
    """The port of the running domain's VNC display; refuse one not on loopback."""
    root = etree.fromstring(domain_xml.encode())
    graphics = root.find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise Conflict("this server has no graphical console (it gets one when next defined)")
    addresses = {graphics.get("listen") or ""} | {
        listen.get("address") or "" for listen in graphics.findall("listen")
    }
    for address in addresses - {""}:
        if not ipaddress.ip_address(address).is_loopback:
            raise Conflict(f"the VNC display listens on {address}, not on loopback; refused")
    port = int(graphics.get("port") or "-1")
    if not 0 < port < 65536:
        raise Conflict("the server's VNC display has no port (is it running?)")
    return port


def ssh_command(uri: str, port: int) -> list[str]:
    """``ssh -W 127.0.0.1:PORT`` to the host of a ``qemu+ssh://`` URI, as libvirt reaches it."""
    parts = urlsplit(uri)
    if parts.scheme not in SSH_SCHEMES or not parts.hostname:
        raise Conflict(f"the graphical console needs a local or qemu+ssh:// host, not {uri!r}")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    command = [query.get("command") or "ssh"]
    if parts.port:
        command += ["-p", str(parts.port)]
    if parts.username:
        command += ["-l", parts.username]
    if query.get("keyfile"):
        command += ["-i", query["keyfile"]]
    if query.get("known_hosts"):
        command += ["-o", f"UserKnownHostsFile={query['known_hosts']}"]
    command += ["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
    command += ["-o", f"ConnectTimeout={CONNECT_TIMEOUT:.0f}", "-T"]
    return [*command, "-W", f"127.0.0.1:{port}", "--", parts.hostname]


class VncChannel:
    """Bytes to and from one guest's VNC display (local TCP or an ``ssh -W`` tunnel)."""

    def __init__(self, uri: str, port: int) -> None:
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ended = False
        if urlsplit(uri).scheme in LOCAL_SCHEMES and not urlsplit(uri).netloc:
            try:
                self._sock = socket.create_connection(("127.0.0.1", port), CONNECT_TIMEOUT)
            except OSError as exc:
                raise HypervisorError(f"cannot reach the VNC display: {exc.strerror}") from None
            self._sock.settimeout(None)
            self._rfd = self._wfd = self._sock.fileno()
            return
        try:
            self._proc = subprocess.Popen(
                ssh_command(uri, port),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a ^C of the server's terminal is not the tunnel's
            )
        except OSError as exc:
            raise HypervisorError(f"cannot start ssh for the VNC display: {exc}") from None
        stdin, stdout = self._proc.stdin, self._proc.stdout
        if stdin is None or stdout is None:  # never: both are pipes
            raise HypervisorError("ssh for the VNC display has no pipes")
        self._rfd, self._wfd = stdout.fileno(), stdin.fileno()

    def read(self, timeout: float) -> bytes | None:
        """The display's next bytes; None when nothing came within ``timeout``, b"" at the end."""
        if self._ended:
            return b""
        try:
            ready, _, _ = select.select([self._rfd], [], [], timeout)
            if not ready:
                return None
            data = os.read(self._rfd, READ_SIZE)
        except (OSError, ValueError):
            data = b""
        if not data:
            self._ended = True
        return data

    def write(self, data: bytes) -> None:
        """Send ``data`` to the display; raise :class:`HypervisorError` once it has closed."""
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._wfd, view)
            except (OSError, ValueError):
                self._ended = True
                raise HypervisorError("the VNC display has closed") from None
            view = view[sent:]

    def close(self) -> None:
        """End the connection (idempotent); the guest keeps running."""
        self._ended = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def __enter__(self) -> VncChannel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
