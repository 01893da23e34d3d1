#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: set everything up on the
# embedded default (SQLite in /var/lib/kvmvps, local libvirt), start the
# worker and the website as services, build a demo VPS, and print how to log
# in to both. Run again, it reuses what exists and ends in the same state.
#
# It honours the KVMVPS_* settings (state dir, network name/bridge/subnet,
# KVMVPS_WEB_PORT...), so a second installation never touches the first;
# KVMVPS_VENV names the Python environment to use (default: .venv, made by
# scripts/setup-host.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export KVMVPS_VENV=${KVMVPS_VENV:-.venv}
bash scripts/setup-host.sh
K="$KVMVPS_VENV/bin/kvmvps-admin"
# The demo site is tried from this machine over plain HTTP; real use puts a
# TLS proxy in front and keeps the secure default (KVMVPS_WEB_HTTPS=1).
export KVMVPS_WEB_HTTPS=0 KVMVPS_WEB_HOST=${KVMVPS_WEB_HOST:-127.0.0.1}
# init, the services, the tiny image, a plan, an operator and the VPS, in one go:
"$K" demo
echo
echo "kvmvps-admin is $(cd "$(dirname "$K")" && pwd)/kvmvps-admin; try: $K vps list"
