#!/usr/bin/env bash
# Makes sure PostgreSQL answers at DATABASE_URL (default: the local server).
# For a local URL it starts the cluster when it is stopped, and installs PostgreSQL from the
# distribution's packages when it is missing (creating the `root` role and database, with
# trust authentication on 127.0.0.1). A remote URL is only checked.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

ready() {
  psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1
}

wait_ready() {
  for _ in $(seq 1 60); do
    if ready; then return 0; fi
    sleep 0.5
  done
  return 1
}

if command -v psql >/dev/null 2>&1 && ready; then
  exit 0
fi

case "$DATABASE_URL" in
  *@127.0.0.1[:/]*|*@localhost[:/]*|*@127.0.0.1|*@localhost) ;;
  *) die "PostgreSQL at DATABASE_URL is unreachable, and it is not local, so it is not started here" ;;
esac

if ! ls -d /etc/postgresql/*/main >/dev/null 2>&1; then
  log "PostgreSQL is not installed: installing it with apt"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql postgresql-client >/dev/null
fi

version="$(ls /etc/postgresql | sort -V | tail -n 1)"
log "starting PostgreSQL $version"
$sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true

if wait_ready; then
  exit 0
fi

# A fresh installation: no `root` role, and password authentication on TCP.
log "configuring the fresh PostgreSQL installation for local development"
hba="/etc/postgresql/$version/main/pg_hba.conf"
if ! $sudo grep -q 'ordo: local development' "$hba"; then
  $sudo sed -i '1i host all all 127.0.0.1/32 trust # ordo: local development' "$hba"
fi
$sudo su postgres -c "psql -qc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'root') THEN CREATE ROLE root SUPERUSER LOGIN; END IF; END \\\$\\\$\"" 
$sudo su postgres -c "psql -Atqc \"SELECT 1 FROM pg_database WHERE datname = 'root'\" | grep -q 1 || createdb -O root root"
$sudo pg_ctlcluster --skip-systemctl-redirect "$version" main reload

wait_ready || die "PostgreSQL does not answer at $DATABASE_URL"
