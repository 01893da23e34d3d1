#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: set everything up on the
# embedded default (SQLite in /var/lib/kvmvps, local libvirt), build the tiny
# image, and order a demo VPS; print how to log in to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
K=.venv/bin/kvmvps-admin
$K init
$K image list --json | grep -q '"name": "tiny"' || $K image build-tiny tiny
$K plan list --json | grep -q '"name": "demo"' || \
  $K plan add demo --vcpus 1 --memory-mib 256 --disk-gib 1 --price-cents 300
name="demo-$(date +%H%M%S)"
echo "==> ordering VPS $name" >&2
$K vps create --plan demo --image tiny --hostname "$name"
echo
echo "kvmvps-admin is at $(pwd)/$K; try: $K vps list"
