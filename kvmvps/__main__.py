"""``python -m kvmvps`` is ``kvmvps-admin``."""

from kvmvps.cli.entry import main

main()
