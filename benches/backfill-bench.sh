#!/usr/bin/env bash
# Backfill and verify throughput on pgbench_accounts (SCALE 20: 2M rows) mapped to new with
# renamed columns and one transform, with dual-write on: first with no load, then while a
# TPC-B pgbench load runs through pgdual. Reports rows/s of each job, and the load's TPS and
# p50/p99 latency without and with the backfill running (pgbench's per-transaction log).
#
#   benches/backfill-bench.sh [clients] [backfill flags...]
#
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${1:-4}
shift || true
FLAGS=("$@")
SCALE=${SCALE:-20}
NAME=backfill-bench
. benches/two-clusters.sh
PORT=$(free_port); ADMIN=$(free_port)
psql_n "CREATE SCHEMA bank;
  CREATE TABLE bank.accounts (account_id int PRIMARY KEY, branch_id int, balance_cents bigint, filler char(84));"
psql_l "VACUUM ANALYZE pgbench_accounts"
cat > "$WORK/rules.toml" <<'RULES'
[[table]]
legacy = "public.pgbench_accounts"
new = "bank.accounts"
keys = ["aid"]
write = "on"
columns = { account_id = "aid", branch_id = "bid", balance_cents = "abalance::bigint * 100", filler = "filler" }
RULES
cat > "$WORK/pgdual.toml" <<CONF
listen = "127.0.0.1:$PORT"
rules_file = "$WORK/rules.toml"
[legacy]
port = $L_PORT
[new]
host = "127.0.0.1"
port = $N_PORT
[admin]
listen = "127.0.0.1:$ADMIN"
[mirror]
dead_letter_file = "$WORK/dead.jsonl"
[log]
level = "warn"
CONF
"$PGDUAL" serve --config "$WORK/pgdual.toml" 2>"$WORK/pgdual.log" &
PIDS+=($!)
until psql_l "SELECT 1 FROM pg_trigger WHERE tgname LIKE 'pgdual%' LIMIT 1" | grep -q 1; do sleep 0.2; done

rows=$(psql_l "SELECT count(*) FROM pgbench_accounts")
echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); table: $rows rows"

# Runs a job, prints its wall time in seconds.
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$WORK/job.out" 2>"$WORK/job.err" || { cat "$WORK/job.out" "$WORK/job.err"; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
job() { "$PGDUAL" "$1" public.pgbench_accounts --config "$WORK/pgdual.toml" "${@:2}"; }

# pgbench through pgdual for $1 seconds, its per-transaction log at prefix $2.
load() {
  rm -f "$2".*
  "$BIN/pgbench" -n -c "$CLIENTS" -j "$CLIENTS" -T "$1" -l --log-prefix="$2" \
    -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$2.out" 2>&1
}
# "tps p50_ms p99_ms" of the transactions of log prefix $1 that ended between epochs $2 and $3.
stats() {
  cat "$1".* | awk -v a="$2" -v b="$3" '$1 ~ /^[0-9]+$/ { t = $5 + $6 / 1e6; if (t >= a && t <= b) print $3 }' |
    sort -n | awk -v d="$(echo "$3 - $2" | bc -l)" '
    {v[NR]=$1} END {printf "%.0f %.2f %.2f\n", NR/d, v[int(NR*0.5)]/1000, v[int(NR*0.99)]/1000}'
}
now() { date +%s.%N; }
LOAD_SECS=${LOAD_SECS:-120}

echo "== unloaded"
secs=$(timed job backfill "${FLAGS[@]}")
printf "backfill: %.1f s, %.0f rows/s\n" "$secs" "$(echo "$rows / $secs" | bc -l)"
secs=$(timed job verify)
printf "verify:   %.1f s, %.0f rows/s\n" "$secs" "$(echo "$rows / $secs" | bc -l)"
grep -q "parity: 100%" "$WORK/job.out" || { cat "$WORK/job.out"; exit 1; }

echo "== under a pgbench load through pgdual ($CLIENTS clients, TPC-B)"
psql_n "TRUNCATE bank.accounts"
a=$(now); load 20 "$WORK/base"; b=$(now)
read -r b_tps b_p50 b_p99 <<<"$(stats "$WORK/base" "$(echo "$a + 2" | bc)" "$(echo "$b - 1" | bc)")"
echo "load alone: tps $b_tps, p50 $b_p50 ms, p99 $b_p99 ms"
l0=$(now)
load "$LOAD_SECS" "$WORK/during" &
LOADER=$!
sleep 3
a=$(now)
secs=$(timed job backfill --restart "${FLAGS[@]}")
b=$(now)
printf "backfill: %.1f s, %.0f rows/s\n" "$secs" "$(echo "$rows / $secs" | bc -l)"
grep -o "[0-9.]* s of it throttled" "$WORK/job.out" || true
wait "$LOADER"
# Only while both ran: the load may end before the backfill does.
end=$(echo "if ($b < $l0 + $LOAD_SECS) $b else $l0 + $LOAD_SECS" | bc -l)
read -r d_tps d_p50 d_p99 <<<"$(stats "$WORK/during" "$a" "$end")"
printf "load during the backfill (%.0f s of it): tps %s, p50 %s ms, p99 %s ms\n" "$(echo "$end - $a" | bc -l)" "$d_tps" "$d_p50" "$d_p99"
printf "ratios (during/alone): tps %.2fx, p99 %.2fx\n" "$(echo "$d_tps / $b_tps" | bc -l)" "$(echo "$d_p99 / $b_p99" | bc -l)"
load 40 "$WORK/verify-load" &
LOADER=$!
sleep 3
secs=$(timed job verify)
printf "verify under load: %.1f s, %.0f rows/s\n" "$secs" "$(echo "$rows / $secs" | bc -l)"
wait "$LOADER"
grep -E "parity|in flight" "$WORK/job.out"
