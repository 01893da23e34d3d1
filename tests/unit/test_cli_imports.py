"""Read-only CLI commands import only what they need (a structural check, not a timed one).

``kvmvps-admin vps list`` once spent three quarters of its 0.87 s importing
Alembic, libvirt, paramiko, Jinja2 and the website's modules it never uses.
Each command below runs in a fresh interpreter against a real installation
(libvirt's test driver, SQLite); the modules it loaded are then listed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kvmvps.services import Context, provisioning
from tests.badinput import _env_of

# modules a read-only command must not load: migrations, the website, SSH, libvirt, templates
HEAVY = (
    "alembic",
    "flask",
    "werkzeug",
    "paramiko",
    "libvirt",
    "jinja2",
    "lxml",
    "pycdlib",
    "invoke",
    "cryptography",
)
READ_ONLY = (
    ("vps", "list"),
    ("vps", "list", "--json"),
    ("vps", "show", "web1"),
    ("plan", "list"),
    ("image", "list"),
    ("network", "list"),
)
# runs the CLI as the kvmvps-admin script does, then prints the top-level modules loaded
HARNESS = """
import json, sys
from kvmvps.cli.main import main
sys.argv = ["kvmvps-admin", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("\\n" + json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.fixture
def database_url() -> str:
    """SQLite only: which modules a command imports does not depend on the database."""
    return ""


def loaded_by(ctx: Context, args: tuple[str, ...]) -> tuple[int, set[str], str]:
    env = {**os.environ, **_env_of(ctx)}
    out = subprocess.run(
        [sys.executable, "-c", HARNESS, *args], env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report["code"], set(report["modules"]), out.stdout + out.stderr


def test_read_only_commands_skip_heavy_modules(td_ctx: Context) -> None:
    provisioning.record_order(td_ctx, provisioning.OrderRequest("small", "base", "web1"))
    for args in READ_ONLY:
        code, modules, output = loaded_by(td_ctx, args)
        assert code in (0, None), (args, output)
        assert "sqlalchemy" in modules  # it did read the database
        assert not modules & set(HEAVY), f"{' '.join(args)} imported {modules & set(HEAVY)}"
    assert "web1" in loaded_by(td_ctx, ("vps", "list"))[2]


def test_a_write_command_still_loads_what_it_needs(td_ctx: Context) -> None:
    """The lazy lookup is not a stub: 'vps start' reaches libvirt and the job runner."""
    code, modules, output = loaded_by(td_ctx, ("vps", "start", "nonesuch"))
    assert code in (1, 2) and "error: " in output and "Traceback" not in output
    assert {"libvirt", "paramiko"} <= modules
