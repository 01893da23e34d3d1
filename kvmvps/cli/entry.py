"""The ``kvmvps-admin`` executable: the worker answers read-only commands, else the full CLI.

Nothing beyond the standard library is imported until the full CLI is
needed (see :mod:`kvmvps.cli.fastpath`).
"""

from __future__ import annotations

import sys

from kvmvps.cli import fastpath


def main() -> None:
    code = fastpath.run(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    # Imported here, not above: loading it is what the short way saves.
    from kvmvps.cli.main import main as full_cli

    full_cli()
