# Sourced by the benchmark scripts: builds pgdual, starts throwaway legacy and new PostgreSQL
# servers on free ports (fsync off) in a temporary directory removed at exit, and runs
# `pgbench -i -s $SCALE` on legacy. Sets BIN, PGDUAL, WORK, L_PORT, N_PORT, PIDS (processes
# to kill at exit), free_port, psql_l and psql_n. Expects NAME (the directory's prefix);
# LEGACY_CPUS / NEW_CPUS (taskset lists) pin each server when set; LEGACY_OPTS adds server
# settings to legacy (`-c wal_level=logical`); PGDUAL_BINARY runs that build of pgdual
# instead of this checkout's (say, the build before a change, for the per-read profile).
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
if [ -n "${PGDUAL_BINARY:-}" ]; then
  PGDUAL=$PGDUAL_BINARY
else
  cargo build --release -q -p pgdual
  PGDUAL=$PWD/target/release/pgdual
fi

WORK=$(mktemp -d "/tmp/pgdual-$NAME-XXXX")
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
L_PORT=$(free_port); N_PORT=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in legacy new; do "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/$d" -m fast stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for d in legacy new; do
  port=$([ $d = legacy ] && echo "$L_PORT" || echo "$N_PORT")
  cpus=$([ $d = legacy ] && echo "${LEGACY_CPUS:-}" || echo "${NEW_CPUS:-}")
  opts=$([ $d = legacy ] && echo "${LEGACY_OPTS:-}" || true)
  SRV_PIN=(); [ -n "$cpus" ] && SRV_PIN=(taskset -c "$cpus")
  "${AS[@]}" "$BIN/initdb" -D "$WORK/$d" -U postgres -A trust --no-sync >/dev/null
  "${SRV_PIN[@]}" "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/$d" -l "$WORK/$d.log" -w -o \
    "-p $port -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=256MB $opts" \
    start >/dev/null
done
psql_l() { "$BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$L_PORT" -U postgres -c "$1"; }
psql_n() { "$BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$N_PORT" -U postgres -c "$1"; }
"$BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$L_PORT" -U postgres postgres >/dev/null 2>&1
