#!/usr/bin/env bash
# Start PostgreSQL 15 (Debian's package; by hand when there is no systemd) and
# make a role and database for kvmvps's tests. Idempotent. Prints the URL.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
# host agents in the second-host namespaces (scripts/second-host.sh, 10.251.0.0/16)
# reach the database over their veth link; nothing else gets in
conf=/etc/postgresql/$version/main
restart=
if ! grep -q "^listen_addresses = '\*'" "$conf/postgresql.conf"; then
  echo "listen_addresses = '*'" >>"$conf/postgresql.conf"
  restart=1
fi
if ! grep -q "10.251.0.0/16" "$conf/pg_hba.conf"; then
  echo "host    all             kvmvps          10.251.0.0/16           scram-sha-256" >>"$conf/pg_hba.conf"
  restart=1
fi
if [[ -n $restart ]] && pg_lsclusters -h | grep -q "^$version main .* online"; then
  pg_ctlcluster "$version" main restart
fi
if ! pg_lsclusters -h | grep -q "^$version main .* online"; then
  pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 60); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.5
done
su postgres -c "psql -qAtc \"select 1 from pg_roles where rolname='kvmvps'\"" | grep -q 1 || \
  su postgres -c "psql -qc \"create role kvmvps login createdb password 'kvmvps'\""
# tests drop their databases WITH (FORCE), which may have to stop an autovacuum worker
su postgres -c "psql -qc 'grant pg_signal_backend to kvmvps'" >/dev/null
su postgres -c "psql -qAtc \"select 1 from pg_database where datname='kvmvps'\"" | grep -q 1 || \
  su postgres -c "createdb -O kvmvps kvmvps"
echo "postgresql+psycopg://kvmvps:kvmvps@127.0.0.1:5432/kvmvps"
