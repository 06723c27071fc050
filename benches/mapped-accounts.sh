# Sourced after two-clusters.sh by the read benchmarks: copies pgbench_accounts into new as
# bank.accounts (renamed columns, the balance in cents) and defines `pgdual_config DIR PORT
# ADMIN`, which writes DIR/rules.toml (the table mapped, reads on legacy, writes off, the
# balance read back) and DIR/pgdual.toml for a pgdual on PORT with its admin API on ADMIN.
psql_n "CREATE SCHEMA bank;
  CREATE TABLE bank.accounts (account_id int PRIMARY KEY, branch_id int, balance_cents bigint, filler char(84));"
psql_l "COPY (SELECT aid, bid, abalance::bigint * 100, filler FROM pgbench_accounts) TO STDOUT" |
  "$BIN/psql" -X -q -h 127.0.0.1 -p "$N_PORT" -U postgres -c "COPY bank.accounts FROM STDIN"
psql_n "VACUUM ANALYZE bank.accounts"

pgdual_config() { # dir port admin
  mkdir -p "$1"
  cat > "$1/rules.toml" <<'RULES'
[[table]]
legacy = "public.pgbench_accounts"
new = "bank.accounts"
keys = ["aid"]
write = "off"
read = "legacy"
columns = { account_id = "aid", branch_id = "bid", balance_cents = "abalance::bigint * 100", filler = "filler" }
read_back = { abalance = "(balance_cents / 100)::int" }
RULES
  cat > "$1/pgdual.toml" <<CONF
listen = "127.0.0.1:$2"
rules_file = "$1/rules.toml"
[legacy]
port = $L_PORT
[new]
host = "127.0.0.1"
port = $N_PORT
[admin]
listen = "127.0.0.1:$3"
[mirror]
dead_letter_file = "$1/dead.jsonl"
[reads]
shadow_concurrency = 16
[log]
level = "warn"
CONF
}
