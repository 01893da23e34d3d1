"""A built wheel, installed in a fresh venv, renders and validates the templates."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

PROBE = """
from kvmvps import xmlrender
from kvmvps.xmlspec import (DomainSpec, InterfaceSpec, VolumeDiskSpec, BridgeNetworkSpec,
                            nat_network_spec, vcpupins_for)
import domain_templates, network_xml
assert "site-packages" in domain_templates.__file__, domain_templates.__file__
spec = DomainSpec(name="kvmvps-000000000000", uuid="6f1c1b2e-6a55-4a8e-9a59-0c3b1b7a2d10",
    domain_type="qemu", memory_kib=65536, vcpus=1, vcpupins=vcpupins_for([0]),
    disks=(VolumeDiskSpec("kvmvps", "v.qcow2", "vda"),),
    interfaces=(InterfaceSpec("network", "kvmvps", "52:54:00:00:00:01"),),
    console_log="/tmp/c.log", title="t", vps_uuid="u", installation="kvmvps")
print(len(xmlrender.domain_xml(spec)))
print(len(xmlrender.nat_network_xml(nat_network_spec("n", "b0", "10.0.0.0/24", "10.0.0.1"))))
print(len(xmlrender.bridge_network_xml(BridgeNetworkSpec("p", "br0"))))
import kvmvps.images.tiny, importlib.resources as r
print(sorted(p.name for p in r.files("kvmvps.images").joinpath("guest").iterdir())[0])
"""


def test_wheel_renders_templates_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("kvmvps-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # ensurepip costs seconds; our pip installs into it
    py = env_dir / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
            "jinja2",
            "markupsafe",
            "lxml",
            "cryptography",
            "cffi",
            "pycparser",
        ],
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [str(py), "-c", PROBE], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.split()
    assert int(out[0]) > 800 and int(out[1]) > 150 and int(out[2]) > 60  # whole documents
    assert out[3].startswith("debian-") or out[3].startswith("tiny-")
