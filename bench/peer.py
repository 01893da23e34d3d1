"""Benchmark: kvmvps's order beside ``virt-install --import`` of the same image.

The peer is what an operator without kvmvps does: a qcow2 overlay on the
same base image, ``virt-install --import`` with the same memory, vCPUs,
disk bus, network and (for images booted from their own kernel) the same
kernel, initrd and command line, then the same credentials by hand over
OpenSSH: one command that sets the hostname, the login user's password and
keys, and a password login that proves it. Both run on the same libvirtd, in
the benchmark's own pool and network, alternately (kvmvps, peer, kvmvps,
...), so a change in the machine's load hits both alike.

Measured from the moment of the order (kvmvps) or of the overlay's creation
(peer): the first SSH banner, and working credentials. It measures; it does
not test.

    .venv/bin/python bench/peer.py --runs 5 [--images tiny,debian] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import plots  # noqa: E402
import report  # noqa: E402
from provision import (  # noqa: E402
    BENCH_NAME,
    BENCH_SUBNET,
    BannerWatch,
    installation,
    machine,
    one_order,
    teardown,
)

from kvmvps import guest, keys  # noqa: E402
from kvmvps.models import Image  # noqa: E402
from kvmvps.services import Context, images, inventory  # noqa: E402

PEER_PREFIX = "kvmvpspeer-"
MEMORY_MIB, VCPUS, DISK_GIB = 512, 1, 2
BUILDERS = {"tiny": images.build_tiny, "debian": images.build_debian}
MARKS = ("order to SSH banner", "order to working credentials")


def image_row(ctx: Context, name: str) -> Image:
    """The image's row: base file, kernel, initrd, command line, login user."""
    with ctx.db.session() as s:
        row = s.query(Image).filter_by(name=name).one()
        s.expunge(row)
        return row


def virt_install_cmd(ctx: Context, img: Image, name: str, disk: Path, mac: str) -> list[str]:
    """``virt-install --import`` with what kvmvps gives the same image."""
    cmd = [
        "virt-install",
        f"--connect={ctx.settings.libvirt_uri}",
        f"--name={name}",
        "--import",
        f"--virt-type={ctx.domain_type}",
        f"--memory={MEMORY_MIB}",
        f"--vcpus={VCPUS}",
        f"--disk=path={disk},format=qcow2,bus=virtio",
        f"--network=network={BENCH_NAME},model=virtio,mac={mac}",
        "--osinfo=detect=on,require=off",
        "--rng=/dev/urandom",  # kvmvps gives its guests the host's entropy too
        "--graphics=none",
        "--noautoconsole",
        "--quiet",
    ]
    if img.kernel_path:
        boot = f"kernel={img.kernel_path}"
        boot += f",initrd={img.initrd_path}" if img.initrd_path else ""
        boot += f",kernel_args={img.cmdline}" if img.cmdline else ""
        cmd.append(f"--boot={boot}")
    if img.cloud_init:
        key = keys.provisioning_public_key(ctx.settings)
        cmd.append(f"--cloud-init=disable=on,ssh-key={_key_file(ctx, key)}")
    return cmd


def _key_file(ctx: Context, public_line: str) -> Path:
    path = ctx.settings.state_dir / "peer-key.pub"
    path.write_text(public_line + "\n")
    return path


def _ssh(ctx: Context, ip: str, user: str, known: Path) -> list[str]:
    """OpenSSH as a peer's script would call it: the provisioning key, a fresh known_hosts."""
    return [
        "ssh",
        "-i",
        str(keys.provisioning_key_path(ctx.settings)),
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=accept-new",  # the peer has no pinned key: first use
        "-o",
        "ConnectTimeout=5",
        f"{user}@{ip}",
    ]


def credentials_by_hand(ctx: Context, img: Image, ip: str, hostname: str, work: Path) -> None:
    """What kvmvps's credentials step does, as one OpenSSH command plus a password login."""
    password = guest.new_password()
    shadow = guest.hash_password(password)
    pubkey = keys.provisioning_public_key(ctx.settings)
    admin = "root" if not img.cloud_init else img.login_user
    known = work / "known_hosts"
    remote = f"sh -c {shlex.quote(guest.PUSH_ALL)} _ {hostname} {img.login_user}"
    if admin != "root":
        remote = f"sudo {remote}"
    stdin = f"{img.login_user}:{shadow}\n{pubkey}\n".encode()
    subprocess.run([*_ssh(ctx, ip, admin, known), remote], input=stdin, check=True, timeout=60)
    proof = [
        "sshpass",
        "-e",
        "ssh",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "-o",
        "PubkeyAuthentication=no",
        f"{img.login_user}@{ip}",
        "true",
    ]
    env = {**os.environ, "SSHPASS": password}
    subprocess.run(proof, env=env, check=True, timeout=60, capture_output=True)


def _lease(ctx: Context, mac: str) -> str | None:
    hv = ctx.hypervisor(ctx.settings.libvirt_uri)
    return next((ip for ip, m in hv.dhcp_leases(BENCH_NAME).items() if m == mac), None)


def _dhcp_host(ctx: Context, verb: str, mac: str, ip: str) -> None:
    """The peer's address, as an operator adds it: a DHCP host entry in the network."""
    entry = f"<host mac='{mac}' ip='{ip}'/>"
    subprocess.run(
        ["virsh", "-q", "-c", ctx.settings.libvirt_uri, "net-update", BENCH_NAME, verb]
        + ["ip-dhcp-host", entry, "--live", "--config"],
        capture_output=True,
        check=verb == "add",
    )


def peer_order(ctx: Context, img: Image, n: int) -> dict[str, float]:
    """One peer run: overlay, virt-install, banner, credentials by hand; then removed."""
    name, mac = f"{PEER_PREFIX}{n}", f"52:54:00:ee:00:{n % 50:02x}"
    address = f"{BENCH_SUBNET.rsplit('.', 1)[0]}.{200 + n % 50}"
    work = Path(tempfile.mkdtemp(prefix="peer-", dir=ctx.settings.state_dir))
    os.chmod(work, 0o755)  # noqa: S103 - QEMU (libvirt-qemu) reads the overlay
    disk = work / "disk.qcow2"
    t0 = time.perf_counter()
    watch = BannerWatch(lambda: _lease(ctx, mac), t0)
    try:
        _dhcp_host(ctx, "add", mac, address)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2"]
            + ["-b", img.base_path, str(disk), f"{DISK_GIB}G"],
            check=True,
        )
        os.chmod(disk, 0o644)
        subprocess.run(virt_install_cmd(ctx, img, name, disk, mac), check=True, timeout=300)
        watch.start()
        while watch.seen_at is None and time.perf_counter() - t0 < 300:
            time.sleep(0.05)
        ip = _lease(ctx, mac)
        if watch.seen_at is None or ip is None:
            raise RuntimeError(f"peer run {n}: no SSH banner within 300 s")
        credentials_by_hand(ctx, img, ip, f"peer{n}", work)
        done = time.perf_counter() - t0
    finally:
        watch.stop.set()
        remove_peer(ctx, name, work.name)
        _dhcp_host(ctx, "delete", mac, address)
        shutil.rmtree(work, ignore_errors=True)
    return {"order to SSH banner": watch.seen_at, "order to working credentials": done}


def remove_peer(ctx: Context, name: str, pool: str | None = None) -> None:
    """Destroy and undefine a peer domain, and the pool virt-install made for its disk's dir."""
    uri = ctx.settings.libvirt_uri
    verbs = [["destroy", name], ["undefine", "--nvram", name]]
    if pool is not None:
        verbs += [["pool-destroy", pool], ["pool-undefine", pool]]
    for verb in verbs:
        subprocess.run(["virsh", "-q", "-c", uri, *verb], capture_output=True, check=False)


def compare(ctx: Context, names: list[str], runs: int) -> dict[str, Any]:
    """Per image: both tools' runs, medians and the ratio peer / kvmvps."""
    inventory.add_plan(ctx, "peerbench", VCPUS, MEMORY_MIB, DISK_GIB)
    out: dict[str, Any] = {}
    for name in names:
        img = image_row(ctx, name)
        ours, peers = [], []
        for i in range(runs):
            ours.append(
                {k: v for k, v in one_order(ctx, name, i, "peerbench").items() if k in MARKS}
            )
            peers.append(peer_order(ctx, img, i))
        out[name] = {
            "kvmvps": _medians(ours),
            "virt-install": _medians(peers),
            "runs": {"kvmvps": ours, "virt-install": peers},
        }
        out[name]["ratio"] = {
            m: out[name]["virt-install"][m] / out[name]["kvmvps"][m] for m in MARKS
        }
    return {"images": out}


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {m: statistics.median(r[m] for r in runs) for m in MARKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", default="tiny", help="comma-separated: tiny,debian")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    names = [n for n in args.images.split(",") if n]
    if not names or set(names) - set(BUILDERS):
        parser.error(f"--images: choose from {', '.join(BUILDERS)}")
    if shutil.which("virt-install") is None:
        parser.error("virt-install is missing (Debian package virtinst)")
    ctx = installation()
    result: dict[str, Any] = {"machine": machine(ctx)}
    print(f"machine: {result['machine']}")
    try:
        for name in names:
            BUILDERS[name](ctx, name)
        result.update(compare(ctx, names, args.runs))
        result["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    finally:
        for i in range(args.runs):
            remove_peer(ctx, f"{PEER_PREFIX}{i}")
        teardown(ctx)
    print("\n".join(report.peer_section(result)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peer.json").write_text(json.dumps(result, indent=2) + "\n")
    chart = plots.peer_chart(result, result["machine"], args.out / "peer.png")
    print(f"\nwrote {args.out / 'peer.json'} and {chart}")


if __name__ == "__main__":
    main()
