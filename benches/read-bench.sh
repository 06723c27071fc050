#!/usr/bin/env bash
# Select-only pgbench (-S: SELECT abalance FROM pgbench_accounts WHERE aid = :aid) on a mapped
# table, side by side in one run: PostgreSQL directly, and through one pgdual whose read mode
# for the table is legacy, shadow at 100 %, then new at 100 % (set through the admin API
# between runs), alternating rounds, in simple and prepared protocol.
#
#   benches/read-bench.sh [seconds-per-run] [rounds] [clients]
#
# pgbench_accounts maps to bank.accounts in the new database with renamed columns and a
# transformed balance (cents), read back by `abalance = "(balance_cents / 100)::int"`.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
ROUNDS=${2:-3}
CLIENTS=${3:-16}
SCALE=${SCALE:-10}
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release -q -p pgdual
PGDUAL=$PWD/target/release/pgdual

WORK=$(mktemp -d /tmp/pgdual-read-bench-XXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
L_PORT=$(free_port); N_PORT=$(free_port); P_PORT=$(free_port); ADMIN=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in legacy new; do "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/$d" -m fast stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for d in legacy new; do
  port=$([ $d = legacy ] && echo "$L_PORT" || echo "$N_PORT")
  "${AS[@]}" "$BIN/initdb" -D "$WORK/$d" -U postgres -A trust --no-sync >/dev/null
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/$d" -l "$WORK/$d.log" -w -o \
    "-p $port -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200 -c shared_buffers=256MB" \
    start >/dev/null
done
psql_l() { "$BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$L_PORT" -U postgres -c "$1"; }
psql_n() { "$BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$N_PORT" -U postgres -c "$1"; }
"$BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$L_PORT" -U postgres postgres >/dev/null 2>&1
psql_n "CREATE SCHEMA bank;
  CREATE TABLE bank.accounts (account_id int PRIMARY KEY, branch_id int, balance_cents bigint, filler char(84));"
psql_l "COPY (SELECT aid, bid, abalance::bigint * 100, filler FROM pgbench_accounts) TO STDOUT" |
  "$BIN/psql" -X -q -h 127.0.0.1 -p "$N_PORT" -U postgres -c "COPY bank.accounts FROM STDIN"
psql_n "VACUUM ANALYZE bank.accounts"

cat > "$WORK/rules.toml" <<'RULES'
[[table]]
legacy = "public.pgbench_accounts"
new = "bank.accounts"
keys = ["aid"]
write = "off"
read = "legacy"
columns = { account_id = "aid", branch_id = "bid", balance_cents = "abalance::bigint * 100", filler = "filler" }
read_back = { abalance = "(balance_cents / 100)::int" }
RULES
cat > "$WORK/pgdual.toml" <<CONF
listen = "127.0.0.1:$P_PORT"
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
[reads]
shadow_concurrency = 16
[log]
level = "warn"
CONF
"$PGDUAL" serve --config "$WORK/pgdual.toml" &
PIDS+=($!)
until curl -fsS "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1; do sleep 0.1; done

set_mode() {
  curl -fsS -X PUT -d "{\"mode\": \"$1\", \"percent\": 100}" \
    "http://127.0.0.1:$ADMIN/tables/public.pgbench_accounts/read" >/dev/null
}
counter() { curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

echo "round,protocol,target,tps,latency_ms,new_answers,fallbacks,shadow_compared,shadow_skipped"
for r in $(seq "$ROUNDS"); do
  for proto in simple prepared; do
    for target in direct legacy shadow new; do
      port=$P_PORT
      case $target in
        direct) port=$L_PORT ;;
        *) set_mode "$target" ;;
      esac
      new0=$(counter 'pgdual_reads_total{table="public.pgbench_accounts",route="new"}'); new0=${new0:-0}
      out=$("$BIN/pgbench" -n -S -M "$proto" -c "$CLIENTS" -j 2 -T "$SECS" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1)
      tps=$(awk '/^tps = /{print $3}' <<<"$out")
      lat=$(awk '/^latency average = /{print $4}' <<<"$out")
      status=$(curl -fsS "http://127.0.0.1:$ADMIN/status")
      read -r fb cmp skip < <(python3 -c '
import json, sys
r = json.load(sys.stdin)["reads"].get("public.pgbench_accounts", {})
print(sum(r.get("fallbacks", {}).values()), r.get("shadow_matches", 0) + r.get("shadow_mismatches", 0), r.get("shadow_skipped", 0))' <<<"$status")
      new1=$(counter 'pgdual_reads_total{table="public.pgbench_accounts",route="new"}'); new1=${new1:-0}
      echo "$r,$proto,$target,$tps,$lat,$((new1 - new0)),$fb,$cmp,$skip"
    done
  done
done
