#!/usr/bin/env bash
# Prepare a Debian 12 host (as root) for kvmvps: packages, libvirtd, Python venv.
# Idempotent. Works with and without systemd.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  dnsmasq-base iptables ebtables libvirt-daemon-config-nwfilter e2fsprogs cpio busybox-static dropbear-bin genisoimage
  debootstrap openssh-client sshpass kmod gcc python3-venv python3-dev postgresql haproxy iproute2
  vagrant vagrant-libvirt virtinst openssh-server chromium chromium-driver fonts-dejavu-core
)

log() { printf '==> %s\n' "$*" >&2; }

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start_libvirt() {
  # QEMU runs as libvirt-qemu; without group access to /dev/kvm libvirt re-probes
  # QEMU on every call (32 s per define instead of 0.06 s).
  if [ -e /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 660 /dev/kvm; fi
  if [ -d /run/systemd/system ]; then
    systemctl start virtlogd libvirtd
  else
    mkdir -p /run/libvirt
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
  fi
  for _ in $(seq 1 60); do
    virsh -c qemu:///system version >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "libvirtd did not answer on qemu:///system"; return 1
}

python_env() {
  local venv=${KVMVPS_VENV:-.venv}
  if [ "$venv" != .venv ]; then  # an environment of the caller's: use it as it is
    "$venv/bin/python" -c 'import kvmvps' || { log "$venv has no kvmvps"; return 1; }
    return 0
  fi
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
  fi
  # pip runs again only when pyproject.toml changed since it last ran.
  local stamp=.venv/.kvmvps-pyproject.sha256
  # ... and when the installed kvmvps is not this checkout (a moved or copied tree)
  local here tree=$PWD
  here=$(cd / && "$tree/.venv/bin/python" -c 'import kvmvps; print(kvmvps.__file__)' 2>/dev/null || true)
  if [ -x .venv/bin/kvmvps-admin ] && sha256sum -c --status "$stamp" 2>/dev/null \
    && [ "$here" = "$PWD/kvmvps/__init__.py" ]; then
    return 0
  fi
  log "installing kvmvps and its Python dependencies"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test,postgres]'
  sha256sum pyproject.toml >"$stamp"
}

install_packages
start_libvirt
python_env
log "host ready: $(virsh -c qemu:///system version --daemon | head -1)"
