#!/usr/bin/env bash
# Write-heavy pgbench (TPC-B-like) on mapped tables, side by side in one run: PostgreSQL
# directly, through pgdual with mirroring off, through pgdual with only the capture triggers
# installed (their cost alone), and through pgdual with mirroring on, alternating rounds. For mirror-on rounds it also reports mirror lag (p50/p99 from the
# pgdual_mirror_lag_seconds histogram: the upper bound of the bucket) and whether the
# backlog was empty when pgbench ended.
#
#   benches/mirror-bench.sh [seconds-per-run] [rounds] [clients]
#
# pgbench_accounts, _tellers and _branches are mapped to new tables with renamed columns
# and one transform; pgbench_history has no key, so it is not mapped. Capture triggers exist
# only during mirror-on rounds: the other rounds run on a legacy without them.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
ROUNDS=${2:-3}
CLIENTS=${3:-8}
SCALE=${SCALE:-10}
NAME=mirror-bench
. benches/two-clusters.sh
OFF_PORT=$(free_port); ON_PORT=$(free_port); ADMIN=$(free_port)
psql_n "CREATE SCHEMA bank;
  CREATE TABLE bank.accounts (account_id int PRIMARY KEY, branch_id int, balance_cents bigint, filler char(84));
  CREATE TABLE bank.tellers (teller_id int PRIMARY KEY, branch_id int, balance_cents bigint, filler char(84));
  CREATE TABLE bank.branches (branch_id int PRIMARY KEY, balance_cents bigint, filler char(88));"

cat > "$WORK/rules.toml" <<'RULES'
[[table]]
legacy = "public.pgbench_accounts"
new = "bank.accounts"
keys = ["aid"]
write = "on"
columns = { account_id = "aid", branch_id = "bid", balance_cents = "abalance::bigint * 100", filler = "filler" }

[[table]]
legacy = "public.pgbench_tellers"
new = "bank.tellers"
keys = ["tid"]
write = "on"
columns = { teller_id = "tid", branch_id = "bid", balance_cents = "tbalance::bigint * 100", filler = "filler" }

[[table]]
legacy = "public.pgbench_branches"
new = "bank.branches"
keys = ["bid"]
write = "on"
columns = { branch_id = "bid", balance_cents = "bbalance::bigint * 100", filler = "filler" }
RULES
cat > "$WORK/on.toml" <<CONF
listen = "127.0.0.1:$ON_PORT"
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
DROP_TRIGGERS="DO \$\$ DECLARE t record; BEGIN
  FOR t IN SELECT tgname, tgrelid::regclass AS rel FROM pg_trigger WHERE tgname LIKE 'pgdual_capture_%' LOOP
    EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel); END LOOP; END \$\$"

"$PGDUAL" serve --listen "127.0.0.1:$OFF_PORT" --legacy-port "$L_PORT" --admin-listen "" --log-level warn &
PIDS+=($!)
sleep 1

metric() { curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
quantile() { # from the cumulative lag buckets: upper bound of the bucket holding quantile q
  curl -fsS "http://127.0.0.1:$ADMIN/metrics" | python3 -c '
import re, sys
q = float(sys.argv[1]); b = []
for l in sys.stdin:
    m = re.match(r"pgdual_mirror_lag_seconds_bucket\{le=\"([^\"]+)\"\} (\d+)", l)
    if m: b.append((m.group(1), int(m.group(2))))
total = b[-1][1] if b else 0
print(next((le for le, c in b if total and c >= q * total), "n/a"))' "$1"
}
tps() { awk '/^tps = /{print $3}'; }

echo "round,target,tps,latency_ms,lag_p50_s,lag_p99_s,backlog_at_end,drain_s"
for r in $(seq "$ROUNDS"); do
  for target in direct mirror_off triggers_only mirror_on; do
    case $target in
      direct) port=$L_PORT ;;
      mirror_off) port=$OFF_PORT ;;
      triggers_only)
        # The capture triggers' cost alone: installed, but no mirror running.
        port=$OFF_PORT
        "$PGDUAL" serve --config "$WORK/on.toml" &
        ON_PID=$!
        until [ "$(metric pgdual_mirror_ready 2>/dev/null)" = "1" ]; do sleep 0.1; done
        kill "$ON_PID"; wait "$ON_PID" 2>/dev/null || true ;;
      mirror_on)
        port=$ON_PORT
        "$PGDUAL" serve --config "$WORK/on.toml" &
        ON_PID=$!
        until [ "$(metric pgdual_mirror_ready 2>/dev/null)" = "1" ]; do sleep 0.1; done ;;
    esac
    out=$("$BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECS" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1)
    lat=$(awk '/^latency average = /{print $4}' <<<"$out")
    if [ $target = mirror_on ]; then
      backlog=$(metric pgdual_mirror_backlog_changes)
      start=$(date +%s.%N)
      until [ "$(psql_l 'SELECT count(*) FROM pgdual.changes')" = 0 ]; do sleep 0.1; done
      drain=$(python3 -c "import time; print(round(time.time() - $start, 2))")
      echo "$r,$target,$(tps <<<"$out"),$lat,$(quantile 0.5),$(quantile 0.99),$backlog,$drain"
      kill "$ON_PID"; wait "$ON_PID" 2>/dev/null || true
      psql_l "$DROP_TRIGGERS"
    else
      echo "$r,$target,$(tps <<<"$out"),$lat,,,,"
      if [ $target = triggers_only ]; then
        psql_l "$DROP_TRIGGERS"
        psql_l "TRUNCATE pgdual.changes"
      fi
    fi
  done
done
