#!/usr/bin/env bash
# Where pgdual's work per read goes, in instructions (valgrind's callgrind: repeatable whatever
# else the machine does): the mapped table of the dual-read benchmark read by `pgbench -S` in
# each read mode, pgdual under callgrind, counters zeroed after a warm-up and dumped after
# READS reads. Prints instructions per read for the whole process (relay workers and the
# shadow thread) and the inclusive cost of the functions that matter, per mode.
#
#   benches/read-profile.sh [protocol] [reads]       # protocol: simple | extended | prepared
#   MODES="legacy shadow" benches/read-profile.sh simple 4000
#   PERCENT=10 MODES=shadow benches/read-profile.sh prepared   # the mode at 10 %
set -euo pipefail
cd "$(dirname "$0")/.."

PROTO=${1:-simple}
READS=${2:-4000}
SCALE=${SCALE:-1}
NAME=read-profile
. benches/two-clusters.sh
. benches/mapped-accounts.sh
CLIENTS=4

printf "mode,instructions_per_read\n"
for mode in ${MODES:-legacy shadow new}; do
  P_PORT=$(free_port); ADMIN=$(free_port)
  pgdual_config "$WORK/$mode" "$P_PORT" "$ADMIN"
  out="$WORK/callgrind.$mode"
  valgrind -q --tool=callgrind --callgrind-out-file="$out" "$PGDUAL" serve --config "$WORK/$mode/pgdual.toml" &
  pid=$!
  PIDS+=($pid)
  until curl -fsS "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1; do sleep 0.5; done
  curl -fsS -X PUT -d "{\"mode\": \"$mode\", \"percent\": ${PERCENT:-100}}" \
    "http://127.0.0.1:$ADMIN/tables/public.pgbench_accounts/read" >/dev/null
  bench() { "$BIN/pgbench" -n -S -M "$PROTO" -c "$CLIENTS" -t "$1" -h 127.0.0.1 -p "$P_PORT" -U postgres postgres >/dev/null 2>&1; }
  bench 100   # warm-up: connections, plans, descriptions, the warm pool
  sleep 2
  callgrind_control -z "$pid" >/dev/null
  bench $((READS / CLIENTS))
  sleep 2     # shadow comparisons still queued
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  dump=$(ls -t "$out".* | head -1)   # the dump of the zeroed counters: $out.1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
  printf "%s,%.0f\n" "$mode" "$(python3 -c "print($total / $READS)")"
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null > "$WORK/annotate.$mode" || true
  sed -n '/file:function/,$p' "$WORK/annotate.$mode" | sed -n 1,40p > "$WORK/top.$mode"
  echo "--- $mode: inclusive instructions, top functions (whole run of $READS reads)" >&2
  cat "$WORK/top.$mode" >&2
done
