#!/usr/bin/env bash
# A PostgreSQL cluster owned by the project: its own data directory and port, wal_level=logical,
# run as an unprivileged OS user (initdb refuses root), listening on loopback only.
#   hack/postgres/postgres.sh up|down|status   start, stop (pg_ctl, by postmaster.pid) or report
#   hack/postgres/postgres.sh psql [ARGS]      psql as the superuser over the cluster's socket
set -euo pipefail
COMPONENT=postgres
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/../lib.sh"

PG_DIR=$KARTFLOW_DEV_DIR/postgres
DATA=$PG_DIR/data
SOCKET_DIR=$PG_DIR/run
LOGFILE=$PG_DIR/postgres.log

find_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    apt_install postgresql
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  fi
  [ -x "$dir/initdb" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
  echo "$dir"
}
PG_BIN=$(find_bin)

# The server must not run as root: as root we use (or create) an unprivileged system user.
if [ "$(id -u)" -eq 0 ]; then
  PG_OS_USER=${PG_OS_USER:-postgres}
  id "$PG_OS_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
  as_pg() { runuser -u "$PG_OS_USER" -- "$@"; }
else
  PG_OS_USER=$(id -un)
  as_pg() { "$@"; }
fi

running() { as_pg "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }
su_psql() { PGOPTIONS="-c client_min_messages=warning" as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PG_PORT" -U postgres "$@"; }

init_cluster() {
  log "initialising a cluster in $DATA (owner $PG_OS_USER)"
  mkdir -p "$PG_DIR"
  chmod 755 "$KARTFLOW_DEV_DIR" "$PG_DIR"
  install -d -o "$PG_OS_USER" -m 700 "$DATA"
  install -d -o "$PG_OS_USER" -m 755 "$SOCKET_DIR"
  as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 \
    || { tail -n 20 "$PG_DIR/initdb.log" >&2; die "initdb failed (log tail above)"; }
  # Logical decoding for CDC; room for many test slots; fsync traded for speed because this
  # cluster only ever holds test data.
  as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<CONF

# kartflow local stack
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCKET_DIR'
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
max_connections = 200
fsync = off
full_page_writes = off
CONF
  as_pg tee "$DATA/pg_hba.conf" >/dev/null <<HBA
local all         all                 trust
host  all         all   127.0.0.1/32  scram-sha-256
host  replication all   127.0.0.1/32  scram-sha-256
HBA
}

# TLS, so the slot guard's and the CDC worker's sslmode handling is tested against the real
# server: a local CA (tls/ca.crt, what a caCert Secret holds), a server certificate for DNS name
# "localhost" only (so verify-full to 127.0.0.1 fails on the name while verify-ca passes), and an
# unrelated CA (tls/other-ca.crt) a client must refuse. Plaintext connections still work.
TLS_DIR=$PG_DIR/tls
ensure_tls() {
  if [ ! -s "$TLS_DIR/server.crt" ]; then
    command -v openssl >/dev/null || apt_install openssl
    log "creating a local CA and server certificate in $TLS_DIR"
    mkdir -p "$TLS_DIR"
    local ca_ext="basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign"
    for ca in ca other-ca; do
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kartflow local ${ca}" \
        -addext "$(sed -n 1p <<<"$ca_ext")" -addext "$(sed -n 2p <<<"$ca_ext")" \
        -keyout "$TLS_DIR/$ca.key" -out "$TLS_DIR/$ca.crt" 2>/dev/null || die "openssl could not create $ca"
    done
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null || die "openssl could not create the server key"
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$TLS_DIR/server.ext"
    openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
      -CAcreateserial -days 3650 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.crt" 2>/dev/null \
      || die "openssl could not sign the server certificate"
    chmod 755 "$TLS_DIR"
    chmod 644 "$TLS_DIR"/*.crt
  fi
  install -o "$PG_OS_USER" -m 600 "$TLS_DIR/server.key" "$DATA/server.key"
  install -o "$PG_OS_USER" -m 644 "$TLS_DIR/server.crt" "$DATA/server.crt"
  if ! grep -q '^ssl = on' "$DATA/postgresql.conf"; then
    as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<'CONF'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
CONF
    if running; then as_pg "$PG_BIN/pg_ctl" -D "$DATA" reload >/dev/null; fi
  fi
}

# The test role can stream, create publications and slots on tables it owns, read slot and WAL
# statistics and terminate backends: what kartflow's CDC worker and slot guard need, not superuser.
ensure_role() {
  su_psql -d postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE "$PG_USER" LOGIN REPLICATION PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
GRANT pg_signal_backend, pg_monitor TO "$PG_USER";
SQL
  if [ -z "$(su_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'")" ]; then
    su_psql -d postgres -c "CREATE DATABASE \"$PG_DATABASE\" OWNER \"$PG_USER\""
  fi
}

up() {
  if running; then
    log "already running at 127.0.0.1:$PG_PORT"
  else
    if port_open 127.0.0.1 "$PG_PORT"; then
      die "port $PG_PORT is taken by a server this script did not start; stop it or change PG_PORT and DATABASE_URL in hack/stack.env"
    fi
    [ -f "$DATA/PG_VERSION" ] || init_cluster
    ensure_tls
    log "starting PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') at 127.0.0.1:$PG_PORT (log: $LOGFILE)"
    touch "$LOGFILE" && chown "$PG_OS_USER" "$LOGFILE" 2>/dev/null || true
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start >/dev/null \
      || { tail -n 20 "$LOGFILE" >&2; die "PostgreSQL did not start (log tail above)"; }
  fi
  ensure_tls
  ensure_role
  log "ready: $DATABASE_URL (TLS too; CA $TLS_DIR/ca.crt)"
}

down() {
  if ! running; then log "not running"; return; fi
  log "stopping"
  as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
}

status() {
  if running; then
    echo "postgres: running (pid $(head -n1 "$DATA/postmaster.pid")), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), wal_level=logical, at 127.0.0.1:$PG_PORT"
  else
    echo "postgres: stopped"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  psql) shift; su_psql "$@" ;;
  *) die "usage: $0 up|down|status|psql [ARGS...]" ;;
esac
