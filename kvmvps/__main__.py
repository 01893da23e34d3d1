"""``python -m kvmvps`` is ``kvmvps-admin``."""

from kvmvps.cli.main import main

main()
