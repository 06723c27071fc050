#!/usr/bin/env bash
# Select-only pgbench (-S: SELECT abalance FROM pgbench_accounts WHERE aid = :aid) on a mapped
# table, side by side in one run: PostgreSQL directly, and through one pgdual whose read mode
# for the table is legacy, shadow at 10 % (and 100 %), then new at 100 % (set through the
# admin API between runs), alternating rounds, in the simple, extended and prepared
# protocols, with pgdual's CPU time per read (utime + stime from /proc) beside the TPS.
# The `literal` workload is what psycopg2, Ruby's pg or PHP's PDO with emulated prepares
# send: simple queries with their values interpolated, numbers and a quoted string.
#
#   benches/read-bench.sh [seconds-per-run] [rounds] [clients]
#   PIN=1 benches/read-bench.sh ...   # new on CPU 1; legacy, pgdual and pgbench on CPU 0
#   WORKLOADS="simple literal" TARGETS="legacy new" benches/read-bench.sh ...
#
# pgbench_accounts maps to bank.accounts in the new database with renamed columns and a
# transformed balance (cents), read back by `abalance = "(balance_cents / 100)::int"`.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
ROUNDS=${2:-3}
CLIENTS=${3:-16}
SCALE=${SCALE:-10}
NAME=read-bench
CLIENT_PIN=()
if [ "${PIN:-}" = 1 ]; then LEGACY_CPUS=0; NEW_CPUS=1; CLIENT_PIN=(taskset -c 0); fi
. benches/two-clusters.sh
P_PORT=$(free_port); ADMIN=$(free_port)
. benches/mapped-accounts.sh
pgdual_config "$WORK" "$P_PORT" "$ADMIN"
"${CLIENT_PIN[@]}" "$PGDUAL" serve --config "$WORK/pgdual.toml" &
PGDUAL_PID=$!
PIDS+=($!)
until curl -fsS "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1; do sleep 0.1; done

set_mode() { # mode percent
  curl -fsS -X PUT -d "{\"mode\": \"$1\", \"percent\": ${2:-100}}" \
    "http://127.0.0.1:$ADMIN/tables/public.pgbench_accounts/read" >/dev/null
}
# The literal workload: pgbench's simple protocol puts each variable's value into the text.
cat > "$WORK/literal.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set bid random(1, :scale)
SELECT abalance, bid FROM pgbench_accounts WHERE aid = :aid AND bid <= :bid + 10 AND filler <> 'x:bid';
SQL
# Samples print their labels in name order.
counter() { curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {s += $2} END {print s + 0}'; }
T='table="public.pgbench_accounts"'
# pgdual's CPU time so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PGDUAL_PID/stat"; }

echo "round,workload,target,tps,latency_ms,new_answers,fallbacks,shadow_compared,shadow_skipped,pgdual_cpu_us_per_read"
for r in $(seq "$ROUNDS"); do
  for workload in ${WORKLOADS:-simple extended prepared literal}; do
    case $workload in
      literal) args=(-M simple -f "$WORK/literal.sql" -D scale="$SCALE") ;;
      *) args=(-S -M "$workload") ;;
    esac
    for target in ${TARGETS:-direct legacy shadow10 shadow new}; do
      port=$P_PORT
      case $target in
        direct) port=$L_PORT ;;
        shadow10) set_mode shadow 10 ;;
        *) set_mode "$target" ;;
      esac
      before=($(counter "pgdual_reads_total{route=\"new\",$T}") \
              $(curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk '/^pgdual_read_fallbacks_total/ {s += $2} END {print s + 0}') \
              $(counter "pgdual_shadow_reads_total{outcome=\"match\",$T}") \
              $(counter "pgdual_shadow_reads_total{outcome=\"mismatch\",$T}") \
              $(counter "pgdual_shadow_reads_total{outcome=\"skipped\",$T}"))
      ticks=$(cpu_ticks)
      out=$("${CLIENT_PIN[@]}" "$BIN/pgbench" -n "${args[@]}" -c "$CLIENTS" -j 2 -T "$SECS" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1)
      tps=$(awk '/^tps = /{print $3}' <<<"$out")
      lat=$(awk '/^latency average = /{print $4}' <<<"$out")
      tx=$(awk '/^number of transactions actually processed:/{print $6}' <<<"$out")
      cpu=$(python3 -c "print(f'{($(cpu_ticks) - $ticks) * 1e6 / $(getconf CLK_TCK) / max(${tx:-0}, 1):.1f}')")
      [ "$target" = direct ] && cpu=-
      after=($(counter "pgdual_reads_total{route=\"new\",$T}") \
             $(curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk '/^pgdual_read_fallbacks_total/ {s += $2} END {print s + 0}') \
             $(counter "pgdual_shadow_reads_total{outcome=\"match\",$T}") \
             $(counter "pgdual_shadow_reads_total{outcome=\"mismatch\",$T}") \
             $(counter "pgdual_shadow_reads_total{outcome=\"skipped\",$T}"))
      d() { echo $(( ${after[$1]} - ${before[$1]} )); }
      echo "$r,$workload,$target,$tps,$lat,$(d 0),$(d 1),$(( $(d 2) + $(d 3) )) ($(d 3) mismatched),$(d 4),$cpu"
    done
  done
done
curl -fsS "http://127.0.0.1:$ADMIN/status" | python3 -c '
import json, sys
r = json.load(sys.stdin)["reads"].get("public.pgbench_accounts", {})
print("fallbacks by reason:", r.get("fallbacks"), file=sys.stderr)'
