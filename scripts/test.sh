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
pytest=(.venv/bin/python -m pytest -v --timeout=1800 -p no:cacheprovider --durations=30)
if (($#)); then
    echo "==> pytest $*" >&2
    exec "${pytest[@]}" "$@"
fi
# Two streams side by side: the real-guest tests (integration, e2e) keep one core
# busy with a QEMU guest, the unit and web tests (test driver, databases) use the
# other. The unit stream runs at a lower priority so guests boot at their pace.
logs=${KVMVPS_TEST_LOGS:-test-artifacts/pytest}
rm -rf "$logs" && mkdir -p "$logs"
# each run its own temporary directory: a process left over from an earlier run
# (killed, or still exiting) never writes into this one's
tmp=$(mktemp -d /tmp/kvmvps-pytest.XXXXXX)
stream() {
    local name=$1
    shift
    local rc=0
    "$@" --basetemp="$tmp/$name" >"$logs/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$logs/$name.rc"
}
echo "==> pytest: unit and web tests (log: $logs/unit.log), beside the real-guest tests" >&2
stream unit nice -n 5 "${pytest[@]}" tests/unit tests/web &
unit_pid=$!
echo "==> pytest: integration and e2e tests (log: $logs/real.log)" >&2
stream real "${pytest[@]}" tests/integration tests/e2e &
real_pid=$!
tail -n +1 --pid="$real_pid" -F "$logs/real.log" 2>/dev/null &
wait "$real_pid" "$unit_pid"
sleep 1
echo
echo "==> pytest: unit and web tests, the whole log"
cat "$logs/unit.log"
echo
echo "==> pytest: both streams"
rc=0
for name in real unit; do
    code=$(cat "$logs/$name.rc")
    grep -E '^(FAILED|ERROR) ' "$logs/$name.log" || true
    echo "$name: $(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$logs/$name.log" | tail -1) (exit $code)"
    ((code == 0)) || rc=1
done
((rc)) || rm -rf "$tmp"  # kept after a failure, for a look at what the tests left
exit "$rc"
