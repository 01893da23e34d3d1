#!/usr/bin/env bash
# Vagrant provisioner, run as root inside the VM on the first `vagrant up`
# (and on `vagrant provision`): set kvmvps up exactly as the README says
# (bash scripts/demo.sh), then run the whole test suite (bash scripts/test.sh).
# KVMVPS_SKIP_TESTS=1 stops after the set-up.
set -euo pipefail
repo=${KVMVPS_REPO:-/opt/kvmvps}
log() { printf '==> %s\n' "$*" >&2; }

check_kvm() {
  if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -c /dev/kvm ]; then
    log "nested virtualisation works: kvmvps guests in this VM run under KVM"
  else
    log "WARNING: this VM has no vmx/svm flag or no /dev/kvm; kvmvps guests fall back to"
    log "  TCG emulation. On the host: modprobe -r kvm_intel && modprobe kvm_intel nested=1"
    log "  (kvm_amd nested=1 on AMD), then vagrant destroy -f && vagrant up."
  fi
}

cd "$repo"
check_kvm
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
log "set-up: bash scripts/demo.sh"
bash scripts/demo.sh
log "kvmvps uses domain type: $(.venv/bin/kvmvps-admin init --json | grep -o '"domain_type": "[a-z]*"')"
if [ "${KVMVPS_SKIP_TESTS:-0}" = 1 ]; then
  log "KVMVPS_SKIP_TESTS=1: not running the test suite"
  exit 0
fi
log "tests: bash scripts/test.sh"
bash scripts/test.sh
