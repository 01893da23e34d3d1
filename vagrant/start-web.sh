#!/usr/bin/env bash
# Vagrant provisioner, run as root inside the VM on every `vagrant up`: run the
# website (kvmvps-admin serve on 0.0.0.0:8080, forwarded to the host's
# 127.0.0.1:8080) and a worker that builds the orders it takes, as systemd units.
set -euo pipefail
repo=${KVMVPS_REPO:-/opt/kvmvps}
K=$repo/.venv/bin/kvmvps-admin
log() { printf '==> %s\n' "$*" >&2; }

unit() {  # unit NAME DESCRIPTION COMMAND...
  local name=$1 description=$2
  shift 2
  cat >"/etc/systemd/system/$name.service" <<UNIT
[Unit]
Description=$description
After=network-online.target libvirtd.service

[Service]
WorkingDirectory=$repo
ExecStart=$*
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
}

if [ ! -x "$K" ]; then
  log "kvmvps is not installed yet (the kvmvps provisioner has not run); no website"
  exit 0
fi
if ! "$K" serve --help >/dev/null 2>&1; then
  log "this kvmvps has no 'serve' command; the website is not started"
  exit 0
fi
unit kvmvps-web "kvmvps website" "$K" serve --host 0.0.0.0 --port 8080
unit kvmvps-worker "kvmvps worker" "$K" worker
systemctl daemon-reload
systemctl enable kvmvps-web kvmvps-worker >/dev/null 2>&1
systemctl restart kvmvps-web kvmvps-worker
log "website: http://localhost:8080/ on the host (inside the VM: http://127.0.0.1:8080/)"
