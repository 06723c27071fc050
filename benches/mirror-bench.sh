#!/usr/bin/env bash
# Write-heavy pgbench (TPC-B-like) on mapped tables, side by side in one run, rounds
# alternating: PostgreSQL directly; through pgdual with mirroring off; through pgdual
# mirroring with capture triggers; through pgdual mirroring with logical decoding. For each:
# TPS, legacy's CPU time per transaction (all of legacy's processes, from /proc: the new
# server, pgdual and pgbench share these CPUs, so TPS alone mixes in their work), and for the
# mirroring rounds the mirror lag p50/p99 (upper bounds of the pgdual_mirror_lag_seconds
# buckets) and how long the mirror took to catch up once pgbench ended.
#
#   benches/mirror-bench.sh [seconds-per-run] [rounds] [clients]
#
# Legacy runs with wal_level = logical in every round (LEGACY_EXTRA adds settings, e.g.
# "-c synchronous_commit=on": with commits not flushed at once, decoding waits for the WAL
# writer). pgbench_accounts, _tellers and
# _branches are mapped to new tables with renamed columns and one transform;
# pgbench_history has no key, so it is not mapped. Capture exists only during the mirroring
# rounds: triggers are dropped, and the slot and publication are dropped, after each.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
ROUNDS=${2:-3}
CLIENTS=${3:-8}
SCALE=${SCALE:-10}
NAME=mirror-bench
LEGACY_OPTS="-c wal_level=logical ${LEGACY_EXTRA:-}"
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
for capture in triggers logical; do
cat > "$WORK/$capture.toml" <<CONF
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
capture = "$capture"
dead_letter_file = "$WORK/dead.jsonl"
[log]
level = "warn"
CONF
done
DROP_TRIGGERS="DO \$\$ DECLARE t record; BEGIN
  FOR t IN SELECT tgname, tgrelid::regclass AS rel FROM pg_trigger WHERE tgname LIKE 'pgdual_capture_%' LOOP
    EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel); END LOOP; END \$\$"

"$PGDUAL" serve --listen "127.0.0.1:$OFF_PORT" --legacy-port "$L_PORT" --admin-listen "" --log-level warn &
PIDS+=($!)
sleep 1

# CPU seconds legacy's processes have used: the postmaster, its children that ended (which
# it reaped: cutime, cstime) and those alive now.
TICK=$(getconf CLK_TCK)
LEGACY_PID=$(head -1 "$WORK/legacy/postmaster.pid")
legacy_cpu() {
  python3 - "$LEGACY_PID" "$TICK" <<'PY'
import os, sys
root, tick = sys.argv[1], int(sys.argv[2])
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()
total = 0
f = stat(root)
total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
for pid in os.listdir("/proc"):
    if not pid.isdigit() or pid == root:
        continue
    try:
        f = stat(pid)
    except OSError:
        continue
    if f[1] == root:
        total += int(f[11]) + int(f[12])
print(total / tick)
PY
}
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
caught_up() { # the mirror has applied everything committed before now
  case $1 in
    triggers) [ "$(psql_l 'SELECT count(*) FROM pgdual.changes')" = 0 ] ;;
    logical) [ "$(psql_l "SELECT confirmed_flush_lsn >= '$2'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'pgdual'")" = t ] ;;
  esac
}

echo "round,target,tps,legacy_cpu_ms_per_tx,lag_p50_s,lag_p99_s,catch_up_s"
for r in $(seq "$ROUNDS"); do
  for target in direct mirror_off triggers logical; do
    case $target in
      direct) port=$L_PORT ;;
      mirror_off) port=$OFF_PORT ;;
      triggers|logical)
        port=$ON_PORT
        "$PGDUAL" serve --config "$WORK/$target.toml" &
        ON_PID=$!
        until [ "$(metric pgdual_mirror_ready 2>/dev/null)" = "1" ]; do sleep 0.1; done ;;
    esac
    before=$(legacy_cpu)
    out=$("$BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECS" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1)
    tps=$(awk '/^tps = /{print $3}' <<<"$out")
    txs=$(awk '/^number of transactions actually processed/{print $6}' <<<"$out")
    if [ "$target" = triggers ] || [ "$target" = logical ]; then
      lsn=$(psql_l "SELECT pg_current_wal_insert_lsn()")
      start=$(date +%s.%N)
      until caught_up "$target" "$lsn"; do sleep 0.05; done
      catch=$(python3 -c "import time; print(round(time.time() - $start, 2))")
      after=$(legacy_cpu)
      lag="$(quantile 0.5),$(quantile 0.99),$catch"
      kill "$ON_PID"; wait "$ON_PID" 2>/dev/null || true
      psql_l "$DROP_TRIGGERS"
      psql_l "TRUNCATE pgdual.changes"
      "$PGDUAL" capture drop --force --config "$WORK/$target.toml" >/dev/null
    else
      after=$(legacy_cpu)
      lag=",,"
    fi
    cpu=$(python3 -c "print(round(($after - $before) * 1000 / $txs, 3))")
    echo "$r,$target,$tps,$cpu,$lag"
  done
done
