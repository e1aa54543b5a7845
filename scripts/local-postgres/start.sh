#!/usr/bin/env bash
# Bring up ck_dagster's test Postgres: Debian's postgresql on 127.0.0.1:5432 (as root, no
# systemd), with a role and database for Dagster instances. Prints the URL to use:
#   postgresql://ck:ck-postgres-local@127.0.0.1:5432/ck_dagster
# Safe to run again: installs only when missing, starts only when down.
#
# Knobs (environment): CK_PG_DB=ck_dagster  CK_PG_USER=ck  CK_PG_PASSWORD=ck-postgres-local
set -euo pipefail

DB=${CK_PG_DB:-ck_dagster}
ROLE=${CK_PG_USER:-ck}
PASSWORD=${CK_PG_PASSWORD:-ck-postgres-local}   # listens on 127.0.0.1 only

say() { printf '[local-postgres %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { printf '[local-postgres] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run me as root (I install packages and start postgres)"

if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q 'install ok installed'; then
  say "installing postgresql"
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # no systemd: we start the server ourselves
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy_added=1
  fi
  rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
  } >/tmp/ck-local-postgres-apt.log 2>&1 || rc=$?
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { tail -n 30 /tmp/ck-local-postgres-apt.log >&2; fail "apt-get install failed"; }
fi

read -r version cluster _ < <(pg_lsclusters -h | head -n 1) || true
if [ -z "${version:-}" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -n 1); cluster=main
  say "creating cluster $version/$cluster"
  pg_createcluster "$version" "$cluster" >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c' | grep -q online; then
  say "starting postgres $version/$cluster"
  pg_ctlcluster "$version" "$cluster" start -- -o "-c listen_addresses=127.0.0.1" \
    || { tail -n 20 "/var/log/postgresql/postgresql-$version-$cluster.log" >&2; fail "postgres did not start"; }
fi
for _ in $(seq 100); do runuser -u postgres -- pg_isready -q && break; sleep 0.1; done
runuser -u postgres -- pg_isready -q || fail "postgres does not answer"

psql_admin() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtA "$@"; }
[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" = 1 ] ||
  psql_admin -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
[ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" = 1 ] ||
  psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
say "postgres $version/$cluster up"
echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:5432/$DB"
