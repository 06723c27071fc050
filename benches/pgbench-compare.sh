#!/usr/bin/env bash
# Side-by-side pgbench -S: PostgreSQL directly, through pgdual, through PgBouncer (session
# mode) and through socat (a bare TCP forwarder, the floor), in one run, rounds alternating
# A B C D so that machine noise hits every target alike.
#
#   benches/pgbench-compare.sh [seconds-per-run] [rounds]
#
# Needs: PostgreSQL server binaries, pgbouncer, socat, taskset (apt-get install -y
# postgresql pgbouncer socat util-linux). Builds pgdual in release mode. Prints one line per
# run and a summary of medians; the raw figures go to $OUT (default target/pgbench-compare.csv).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-8}
ROUNDS=${2:-3}
SCALE=${SCALE:-10}
OUT=${OUT:-target/pgbench-compare.csv}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
for tool in pgbouncer socat taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y pgbouncer socat util-linux" >&2; exit 1; }
done

cargo build --release -q -p pgdual
PGDUAL=target/release/pgdual

WORK=$(mktemp -d /tmp/pgdual-bench-XXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); PX_PORT=$(free_port); BO_PORT=$(free_port); SO_PORT=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust --no-sync >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w -o \
  "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=256MB" \
  start >/dev/null
PG_PID=$(head -1 "$WORK/data/postmaster.pid")
"$BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
"$BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench >/dev/null 2>&1

PGDUAL_LOG_LEVEL=warn "$PGDUAL" serve --listen "127.0.0.1:$PX_PORT" --legacy-port "$PG_PORT" --admin-listen "" &
PIDS+=($!)
cat > "$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BO_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 40
logfile = $WORK/pgbouncer.log
INI
echo '"postgres" ""' > "$WORK/users.txt"
chmod 644 "$WORK/pgbouncer.ini" "$WORK/users.txt"
"${AS[@]}" pgbouncer -q "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)
socat "TCP-LISTEN:$SO_PORT,fork,reuseaddr,nodelay,bind=127.0.0.1" "TCP:127.0.0.1:$PG_PORT,nodelay" &
PIDS+=($!)
sleep 1

declare -A PORT=([direct]=$PG_PORT [pgdual]=$PX_PORT [pgbouncer]=$BO_PORT [socat]=$SO_PORT)
TARGETS=(direct pgdual pgbouncer socat)
echo "phase,clients,mode,round,target,tps,latency_ms" > "$OUT"

run() { # phase clients mode round target [pin]
  local out
  out=$(${6:+taskset -c 0} "$BIN/pgbench" -n -S -M "$3" -c "$2" -j "$([ "$2" -gt 1 ] && echo 2 || echo 1)" \
        -T "$SECS" -h 127.0.0.1 -p "${PORT[$5]}" -U postgres bench 2>&1)
  local tps lat
  tps=$(awk '/^tps = /{print $3}' <<<"$out")
  lat=$(awk '/^latency average = /{print $4}' <<<"$out")
  echo "$1,$2,$3,$4,$5,${tps:-0},${lat:-0}" | tee -a "$OUT"
}

echo "# load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, PostgreSQL $("$BIN/postgres" --version | awk '{print $3}')"
for mode in simple extended prepared; do
  for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do run free 16 "$mode" "$r" "$t"; done
  done
done

# Latency at one client: everything pinned to CPU 0, so the figure is the work per round
# trip rather than the time an idle CPU takes to wake.
for pid in "$PG_PID" "${PIDS[@]}"; do taskset -a -cp 0 "$pid" >/dev/null; done
for mode in simple extended prepared; do
  for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do run pinned 1 "$mode" "$r" "$t" pin; done
  done
done

echo
echo "median over $ROUNDS rounds of ${SECS}s (TPS; latency ms)"
python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
keys = sorted({(r["phase"], int(r["clients"]), r["mode"]) for r in rows}, key=lambda k: (k[0], k[1], ["simple","extended","prepared"].index(k[2])))
targets = ["direct", "pgdual", "pgbouncer", "socat"]
print("| clients | mode | " + " | ".join(targets) + " | pgdual / pgbouncer | pgdual added µs vs socat |")
print("|---|---|" + "---|" * (len(targets) + 2))
for k in keys:
    med = {}
    for t in targets:
        sel = [r for r in rows if (r["phase"], int(r["clients"]), r["mode"]) == k and r["target"] == t]
        med[t] = (statistics.median(float(r["tps"]) for r in sel), statistics.median(float(r["latency_ms"]) for r in sel))
    cells = [f"{med[t][0]:,.0f} ({med[t][1]*1000:.0f} µs)" for t in targets]
    ratio = med["pgdual"][0] / med["pgbouncer"][0] if med["pgbouncer"][0] else float("nan")
    added = (med["pgdual"][1] - med["socat"][1]) * 1000
    print(f"| {k[1]}{' pinned' if k[0]=='pinned' else ''} | {k[2]} | " + " | ".join(cells) + f" | {ratio:.2f}x | {added:+.1f} |")
PY
