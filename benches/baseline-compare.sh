#!/usr/bin/env bash
# pgdual against another build of itself (say, the last release), side by side in one run:
# select-only pgbench (-S) on a mapped table through two pgdual processes in front of the
# same legacy and new servers, the table's reads in legacy, shadow (100 %) and new (100 %)
# mode, in the simple, extended and prepared protocols, rounds alternating the two builds.
# Besides TPS it reads each pgdual's CPU time from /proc (utime + stime) around every run:
# the two databases share this machine's CPUs, so CPU per transaction is the figure that
# isolates pgdual's own cost.
#
#   BASELINE=/path/to/old/pgdual benches/baseline-compare.sh [seconds-per-run] [rounds] [clients]
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
psql_n "CREATE SCHEMA bank;
  CREATE TABLE bank.accounts (account_id int PRIMARY KEY, branch_id int, balance_cents bigint, filler char(84));"
psql_l "COPY (SELECT aid, bid, abalance::bigint * 100, filler FROM pgbench_accounts) TO STDOUT" |
  "$BIN/psql" -X -q -h 127.0.0.1 -p "$N_PORT" -U postgres -c "COPY bank.accounts FROM STDIN"
psql_n "VACUUM ANALYZE bank.accounts"

declare -A PORT ADMIN PID
start() { # name binary
  local dir="$WORK/$1"
  mkdir -p "$dir"
  PORT[$1]=$(free_port); ADMIN[$1]=$(free_port)
  cat > "$dir/rules.toml" <<'RULES'
[[table]]
legacy = "public.pgbench_accounts"
new = "bank.accounts"
keys = ["aid"]
write = "off"
read = "legacy"
columns = { account_id = "aid", branch_id = "bid", balance_cents = "abalance::bigint * 100", filler = "filler" }
read_back = { abalance = "(balance_cents / 100)::int" }
RULES
  cat > "$dir/pgdual.toml" <<CONF
listen = "127.0.0.1:${PORT[$1]}"
rules_file = "$dir/rules.toml"
[legacy]
port = $L_PORT
[new]
host = "127.0.0.1"
port = $N_PORT
[admin]
listen = "127.0.0.1:${ADMIN[$1]}"
[mirror]
dead_letter_file = "$dir/dead.jsonl"
[reads]
shadow_concurrency = 16
[log]
level = "warn"
CONF
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

echo "mode,protocol,round,build,tps,transactions,cpu_us_per_tx" > "$OUT"
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, PostgreSQL $("$BIN/postgres" --version | awk '{print $3}')"
for mode in legacy shadow new; do
  set_mode "$mode"
  for proto in simple extended prepared; do
    for r in $(seq "$ROUNDS"); do
      for b in current baseline; do
        before=$(cpu_ticks "${PID[$b]}")
        out=$("$BIN/pgbench" -n -S -M "$proto" -c "$CLIENTS" -j 2 -T "$SECS" -h 127.0.0.1 \
              -p "${PORT[$b]}" -U postgres postgres 2>&1)
        after=$(cpu_ticks "${PID[$b]}")
        tps=$(awk '/^tps = /{print $3}' <<<"$out")
        tx=$(awk '/^number of transactions actually processed:/{print $6}' <<<"$out")
        cpu=$(python3 -c "print(f'{($after - $before) * 1e6 / $(getconf CLK_TCK) / max(${tx:-0}, 1):.1f}')")
        echo "$mode,$proto,$r,$b,${tps:-0},${tx:-0},$cpu" | tee -a "$OUT"
      done
    done
  done
done

echo
echo "median over $ROUNDS rounds of ${SECS}s at -c $CLIENTS (TPS; pgdual CPU µs per transaction)"
python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("| mode | protocol | current | baseline | current / baseline TPS | CPU µs/tx current | CPU µs/tx baseline |")
print("|---|---|---|---|---|---|---|")
for mode in ["legacy", "shadow", "new"]:
    for proto in ["simple", "extended", "prepared"]:
        med = {}
        for b in ["current", "baseline"]:
            sel = [r for r in rows if (r["mode"], r["protocol"], r["build"]) == (mode, proto, b)]
            med[b] = (statistics.median(float(r["tps"]) for r in sel),
                      statistics.median(float(r["cpu_us_per_tx"]) for r in sel))
        ratio = med["current"][0] / med["baseline"][0] if med["baseline"][0] else float("nan")
        print(f"| {mode} | {proto} | {med['current'][0]:,.0f} | {med['baseline'][0]:,.0f} | {ratio:.2f}x "
              f"| {med['current'][1]:.1f} | {med['baseline'][1]:.1f} |")
PY
