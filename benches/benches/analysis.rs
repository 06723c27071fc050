//! Statement analysis cost: a cache hit (the steady state for prepared and repeated
//! statements) against a miss (the bounds check, then a full sqlparser parse), and what a
//! statement over the bounds costs (the check alone, never a parse), and planning a read
//! for new (parse, checks and rewrite: what every distinct simple-protocol text costs when
//! its table's reads are routed).

use criterion::{criterion_group, criterion_main, Criterion};
use pgdual_rules::{analyze, bounds, AnalysisCache};
use std::hint::black_box;

const STATEMENTS: &[(&str, &str)] = &[
    (
        "point_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ),
    (
        "tpcb_update",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    ),
    (
        "join",
        "SELECT u.id, u.email, o.total FROM users u JOIN orders o ON o.user_id = u.id \
         WHERE u.created_at > now() - interval '1 day' ORDER BY o.total DESC LIMIT 50",
    ),
    (
        "upsert",
        "INSERT INTO users (id, email, name) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name",
    ),
];

fn bench(c: &mut Criterion) {
    let cache = AnalysisCache::new(1000);
    for (name, sql) in STATEMENTS {
        cache.get(sql);
        c.bench_function(&format!("analysis/hit/{name}"), |b| {
            b.iter(|| cache.get(black_box(sql)))
        });
        c.bench_function(&format!("analysis/miss/{name}"), |b| {
            b.iter(|| analyze(black_box(sql)))
        });
    }
}

/// Statements refused by the bounds: their cost must be linear in their length.
fn refused(c: &mut Criterion) {
    let terms = |n: usize, f: &dyn Fn(usize) -> String, sep: &str| {
        (1..=n).map(f).collect::<Vec<_>>().join(sep)
    };
    let cases = [
        (
            "sum_50000_terms_289kb",
            format!("SELECT {}", terms(50_000, &|i| i.to_string(), "+")),
        ),
        (
            "or_chain_5000_terms_59kb",
            format!(
                "SELECT count(*) FROM t WHERE {}",
                terms(5_000, &|i| format!("x = {i}"), " OR ")
            ),
        ),
        (
            "parens_3000_deep_6kb",
            format!("SELECT {}1{}", "(".repeat(3_000), ")".repeat(3_000)),
        ),
    ];
    for (name, sql) in &cases {
        assert!(bounds::check(sql).is_err(), "{name} is refused");
        c.bench_function(&format!("analysis/refused/{name}"), |b| {
            b.iter(|| analyze(black_box(sql)))
        });
    }
    for (name, sql) in STATEMENTS {
        c.bench_function(&format!("analysis/bounds_check/{name}"), |b| {
            b.iter(|| bounds::check(black_box(sql)))
        });
    }
}

/// The read benchmark's mapping: `pgbench_accounts` to `bank.accounts`, renamed columns, the
/// balance read back from cents.
const READ_RULES: &str = r#"
[[table]]
legacy = "public.pgbench_accounts"
new = "bank.accounts"
keys = ["aid"]
read = "new"
columns = { account_id = "aid", branch_id = "bid", balance_cents = "abalance::bigint * 100", filler = "filler" }
read_back = { abalance = "(balance_cents / 100)::int" }
"#;

fn plan(c: &mut Criterion) {
    let mut rules = pgdual_rules::parse_rules(READ_RULES, "rules.toml").expect("rules");
    let table = pgdual_rules::ruleset::parse_table_name("public.pgbench_accounts").expect("name");
    let columns = ["aid", "bid", "abalance", "filler"]
        .map(String::from)
        .to_vec();
    rules.set_legacy_columns(&table, columns);
    for (name, sql) in [
        (
            "point_select_literal",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4217",
        ),
        (
            "point_select_param",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        ),
    ] {
        c.bench_function(&format!("plan/{name}"), |b| {
            b.iter(|| pgdual_rules::plan_read(black_box(sql), &rules))
        });
    }
}

criterion_group!(benches, bench, refused, plan);
criterion_main!(benches);
