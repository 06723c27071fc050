#!/usr/bin/env bash
# pgdual against another build of itself (say, the last release), side by side in one run:
# select-only pgbench (-S) on a mapped table through two pgdual processes in front of the
# same legacy and new servers, the table's reads in legacy, shadow (100 %) and new (100 %)
# mode, in the simple, extended and prepared protocols, rounds alternating which build runs
# first.
# Besides TPS it reads each pgdual's CPU time from /proc (utime + stime) around every run:
# the two databases share this machine's CPUs, so CPU per transaction is the figure that
# isolates pgdual's own cost.
#
#   BASELINE=/path/to/old/pgdual benches/baseline-compare.sh [seconds-per-run] [rounds] [clients]
#   MODES="shadow" PROTOCOLS="simple" BASELINE=... benches/baseline-compare.sh   # a subset
#
# The current build is this checkout's release binary. Raw figures go to $OUT (default
# target/baseline-compare.csv).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-5}
ROUNDS=${2:-3}
CLIENTS=${3:-16}
SCALE=${SCALE:-10}
OUT=${OUT:-target/baseline-compare.csv}
NAME=baseline-compare
[ -x "${BASELINE:-}" ] || { echo "set BASELINE to the pgdual binary to compare against" >&2; exit 1; }
. benches/two-clusters.sh
. benches/mapped-accounts.sh

declare -A PORT ADMIN PID
start() { # name binary
  local dir="$WORK/$1"
  PORT[$1]=$(free_port); ADMIN[$1]=$(free_port)
  pgdual_config "$dir" "${PORT[$1]}" "${ADMIN[$1]}"
  "$2" serve --config "$dir/pgdual.toml" &
  PID[$1]=$!
  PIDS+=($!)
  until curl -fsS "http://127.0.0.1:${ADMIN[$1]}/healthz" >/dev/null 2>&1; do sleep 0.1; done
}
start current "$PGDUAL"
start baseline "$BASELINE"

set_mode() {
  for b in current baseline; do
    curl -fsS -X PUT -d "{\"mode\": \"$1\", \"percent\": 100}" \
      "http://127.0.0.1:${ADMIN[$b]}/tables/public.pgbench_accounts/read" >/dev/null
  done
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Shadow comparisons skipped because every slot was busy (labels in any order).
skipped() {
  curl -fsS "http://127.0.0.1:${ADMIN[$1]}/metrics" |
    awk '/^pgdual_shadow_reads_total/ && /outcome="skipped"/ {s += $2} END {print s + 0}'
}

echo "mode,protocol,round,build,tps,transactions,cpu_us_per_tx,shadows_skipped" > "$OUT"
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, PostgreSQL $("$BIN/postgres" --version | awk '{print $3}')"
MODES=${MODES:-legacy shadow new}
PROTOCOLS=${PROTOCOLS:-simple extended prepared}
for mode in $MODES; do
  set_mode "$mode"
  for proto in $PROTOCOLS; do
    for r in $(seq "$ROUNDS"); do
      # ABBA: the build that runs first alternates, so warm-up and drift hit both alike.
      order=(current baseline)
      [ $((r % 2)) = 0 ] && order=(baseline current)
      for b in "${order[@]}"; do
        before=$(cpu_ticks "${PID[$b]}"); skipped_before=$(skipped "$b")
        out=$("$BIN/pgbench" -n -S -M "$proto" -c "$CLIENTS" -j 2 -T "$SECS" -h 127.0.0.1 \
              -p "${PORT[$b]}" -U postgres postgres 2>&1)
        after=$(cpu_ticks "${PID[$b]}")
        tps=$(awk '/^tps = /{print $3}' <<<"$out")
        tx=$(awk '/^number of transactions actually processed:/{print $6}' <<<"$out")
        cpu=$(python3 -c "print(f'{($after - $before) * 1e6 / $(getconf CLK_TCK) / max(${tx:-0}, 1):.1f}')")
        echo "$mode,$proto,$r,$b,${tps:-0},${tx:-0},$cpu,$(( $(skipped "$b") - skipped_before ))" | tee -a "$OUT"
      done
    done
  done
done

echo
echo "median over $ROUNDS rounds of ${SECS}s at -c $CLIENTS (TPS; pgdual CPU µs per transaction)"
python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("| mode | protocol | current | baseline | current / baseline TPS | CPU µs/tx current | CPU µs/tx baseline | shadows skipped current | baseline |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in ["legacy", "shadow", "new"]:
    for proto in ["simple", "extended", "prepared"]:
        if not any((r["mode"], r["protocol"]) == (mode, proto) for r in rows):
            continue
        med = {}
        for b in ["current", "baseline"]:
            sel = [r for r in rows if (r["mode"], r["protocol"], r["build"]) == (mode, proto, b)]
            med[b] = (statistics.median(float(r["tps"]) for r in sel),
                      statistics.median(float(r["cpu_us_per_tx"]) for r in sel),
                      statistics.median(int(r["shadows_skipped"]) for r in sel))
        ratio = med["current"][0] / med["baseline"][0] if med["baseline"][0] else float("nan")
        print(f"| {mode} | {proto} | {med['current'][0]:,.0f} | {med['baseline'][0]:,.0f} | {ratio:.2f}x "
              f"| {med['current'][1]:.1f} | {med['baseline'][1]:.1f} | {med['current'][2]:,.0f} | {med['baseline'][2]:,.0f} |")
PY
