//! Statement analysis cost: a cache hit (the steady state for prepared and repeated
//! statements) against a miss (a full sqlparser parse).

use criterion::{criterion_group, criterion_main, Criterion};
use pgdual_rules::{analyze, AnalysisCache};
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

criterion_group!(benches, bench);
criterion_main!(benches);
