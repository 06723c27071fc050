#!/usr/bin/env bash
# Memory of idle client sessions: the resident set (VmRSS from /proc) of one pgdual process
# with no session, then with N idle sessions (each authenticated on legacy and waiting), for
# each N given; then once more after one of the sessions sent a single large query, to show
# that a buffer grown by one message shrinks back.
#
#   benches/idle-memory.sh [N ...]          # default: 1000 4000 9000
#
# Legacy runs with max_connections raised to the largest N; every idle pgdual session holds
# one idle legacy backend, so the machine needs memory for those backends too.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("${@:-1000 4000 9000}")
read -r -a COUNTS <<<"${COUNTS[*]}"
MAX=0; for n in "${COUNTS[@]}"; do [ "$n" -gt "$MAX" ] && MAX=$n; done

BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release -q -p pgdual -p pgdual-benches --bin pgdual --bin pgdual-idle
PGDUAL=$PWD/target/release/pgdual
IDLE=$PWD/target/release/pgdual-idle
WORK=$(mktemp -d /tmp/pgdual-idle-XXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
L_PORT=$(free_port); P_PORT=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/legacy" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Each session holds two descriptors in pgdual (client and legacy) and one in the client.
ulimit -n $((MAX * 2 + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ $((MAX * 2 + 64)) -gt "$(ulimit -n)" ]; then
  echo "open-file limit $(ulimit -n) holds at most $((($(ulimit -n) - 64) / 2)) sessions" >&2
  exit 1
fi

"${AS[@]}" "$BIN/initdb" -D "$WORK/legacy" -U postgres -A trust --no-sync >/dev/null
"${AS[@]}" bash -c "ulimit -n $((MAX + 1024)) 2>/dev/null; exec \"$BIN/pg_ctl\" -D \"$WORK/legacy\" -l \"$WORK/legacy.log\" -w -o \
  \"-p $L_PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=$((MAX + 20)) -c shared_buffers=128MB\" start" >/dev/null

cat > "$WORK/pgdual.toml" <<CONF
listen = "127.0.0.1:$P_PORT"
workers = 2
[legacy]
port = $L_PORT
[admin]
listen = ""
[limits]
max_client_connections = $((MAX + 10))
[log]
level = "warn"
CONF

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

echo "machine: $(nproc) vCPU, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -r)"
printf '%-10s %14s %14s %18s\n' sessions "rss KiB" "delta KiB" "per session KiB"
for n in "${COUNTS[@]}"; do
  "$PGDUAL" serve --config "$WORK/pgdual.toml" &
  PID=$!; PIDS+=("$PID")
  until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$P_PORT"; do sleep 0.1; done
  # One session opened and closed first, so the baseline includes what the first session
  # allocates once (runtime, TLS and analysis state).
  "$IDLE" --port "$P_PORT" --sessions 1 </dev/null >/dev/null
  sleep 0.5
  base=$(rss_kib "$PID")
  coproc HOLD { "$IDLE" --port "$P_PORT" --sessions "$n"; }
  read -r ready <&"${HOLD[0]}"
  sleep 1
  held=$(rss_kib "$PID")
  printf '%-10s %14s %14s %18.1f\n' "$n" "$held" "$((held - base))" "$(echo "($held - $base) / $n" | bc -l)"
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" 2>/dev/null || true
  kill "$PID"; wait "$PID" 2>/dev/null || true
  [ "$ready" = "ready $n" ] || { echo "only $ready of $n sessions opened" >&2; exit 1; }
done

# One session sends one 16 MB query, then all sit idle: the relay's buffer for that session
# must not keep the 16 MB.
"$PGDUAL" serve --config "$WORK/pgdual.toml" &
PID=$!; PIDS+=("$PID")
until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$P_PORT"; do sleep 0.1; done
"$IDLE" --port "$P_PORT" --sessions 1 </dev/null >/dev/null
base=$(rss_kib "$PID")
coproc HOLD { "$IDLE" --port "$P_PORT" --sessions 100 --large-first $((16 * 1024 * 1024)); }
read -r ready <&"${HOLD[0]}"
sleep 1
held=$(rss_kib "$PID")
echo "100 idle sessions, one of which sent a 16 MB query: delta $((held - base)) KiB ($ready)"
exec {HOLD[1]}>&-
wait "$HOLD_PID" 2>/dev/null || true
