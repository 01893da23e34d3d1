#!/usr/bin/env bash
# Run kvmvps's whole test suite on a fresh Debian 12 machine, as root:
# installs what the tests need, starts libvirtd and PostgreSQL, then runs ruff,
# mypy and pytest (which builds the test images on the way).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
KVMVPS_TEST_POSTGRES_URL=$(bash scripts/start-postgres.sh | tail -1)
export KVMVPS_TEST_POSTGRES_URL
export KVMVPS_REQUIRE_LIBVIRT=1 KVMVPS_REQUIRE_POSTGRES=1 KVMVPS_REQUIRE_TOOLS=1
echo "==> vagrant validate" >&2
(cd vagrant && VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate)
echo "==> ruff (lint, including S507: no AutoAddPolicy; format)" >&2
.venv/bin/ruff check kvmvps web tests bench
.venv/bin/ruff format --check kvmvps web tests bench
echo "==> mypy (configuration in pyproject.toml)" >&2
.venv/bin/mypy kvmvps web
echo "==> pytest" >&2
exec .venv/bin/python -m pytest -v --timeout=1800 -p no:cacheprovider "$@"
