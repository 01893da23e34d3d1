#!/usr/bin/env bash
# Run kvmvps's whole test suite on a fresh Debian 12 machine, as root:
# installs what the tests need, starts libvirtd, builds the test images, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
export KVMVPS_REQUIRE_LIBVIRT=1
echo "==> ruff (lint, including S507: no AutoAddPolicy)" >&2
.venv/bin/ruff check kvmvps web tests
echo "==> pytest" >&2
exec .venv/bin/python -m pytest -v --timeout=1800 -p no:cacheprovider "$@"
