//! Dual-write under failure and concurrency: the new database stopped under load, pgdual
//! restarted with a backlog, and a random concurrent workload with rollbacks. After the
//! mirror drains, new must equal legacy transformed, row for row.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdual_integration_tests::*;

fn rules(table: &str) -> String {
    format!(
        r#"
[[table]]
legacy = "public.{table}"
new = "public.{table}_v2"
keys = ["id"]
write = "on"
[table.columns]
account_id = "id"
balance_cents = "(balance * 100)::bigint"
owner = "upper(owner)"
touched = "touched"
"#
    )
}

async fn create(table: &str, new: &PgCluster) {
    connect(legacy().port)
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id int PRIMARY KEY, balance numeric(12,2) NOT NULL,
                 owner text NOT NULL, touched timestamptz NOT NULL DEFAULT clock_timestamp())"
        ))
        .await
        .unwrap();
    connect(new.port)
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}_v2;
             CREATE TABLE {table}_v2 (account_id int PRIMARY KEY, balance_cents bigint NOT NULL,
                 owner text NOT NULL, touched timestamptz NOT NULL)"
        ))
        .await
        .unwrap();
}

fn views(table: &str) -> (String, String) {
    (
        format!(
            "SELECT concat_ws('|', id, (balance * 100)::bigint, upper(owner), touched) FROM {table} ORDER BY id"
        ),
        format!(
            "SELECT concat_ws('|', account_id, balance_cents, owner, touched) FROM {table}_v2 ORDER BY account_id"
        ),
    )
}

/// `clients` sessions running random transactions on keys 1..=keys until `until`:
/// inserts-or-updates, deletes, multi-row updates, a fifth of them rolled back.
/// Returns (committed, rolled back, client errors).
async fn workload(
    port: u16,
    table: &str,
    clients: usize,
    keys: i32,
    until: Instant,
) -> (u64, u64, u64) {
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (counts, table) = (counts.clone(), table.to_string());
        tasks.push(tokio::spawn(async move {
            let client = connect(port).await;
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1);
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            while Instant::now() < until {
                let k = next(keys as u64) as i32 + 1;
                let k2 = next(keys as u64) as i32 + 1;
                let amount = next(10_000) as f64 / 100.0;
                let body = match next(4) {
                    0 => format!(
                        "INSERT INTO {table} (id, balance, owner) VALUES ({k}, {amount}, 'o{c}') \
                         ON CONFLICT (id) DO UPDATE SET balance = {table}.balance + EXCLUDED.balance, touched = clock_timestamp()"
                    ),
                    1 => format!("DELETE FROM {table} WHERE id = {k}"),
                    2 => format!(
                        "UPDATE {table} SET balance = balance - 1, owner = 'moved{c}' WHERE id BETWEEN {} AND {}",
                        k.min(k2),
                        k.max(k2).min(k.min(k2) + 5)
                    ),
                    _ => format!(
                        "INSERT INTO {table} (id, balance, owner) VALUES ({k}, {amount}, 'n{c}') ON CONFLICT DO NOTHING; \
                         UPDATE {table} SET touched = clock_timestamp() WHERE id = {k2}"
                    ),
                };
                let rollback = next(5) == 0;
                let end = if rollback { "ROLLBACK" } else { "COMMIT" };
                match client.batch_execute(&format!("BEGIN; {body}; {end}")).await {
                    Ok(()) => counts[usize::from(rollback)].fetch_add(1, Relaxed),
                    // Deadlocks between overlapping updates are legacy's own answer, the
                    // same as without pgdual; they count as rolled back.
                    Err(e) if e.code().is_some_and(|c| c.code() == "40P01") => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        counts[1].fetch_add(1, Relaxed)
                    }
                    Err(e) => {
                        eprintln!("client error: {e}");
                        counts[2].fetch_add(1, Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        counts[0].load(Relaxed),
        counts[1].load(Relaxed),
        counts[2].load(Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_database_down_under_load_then_back_and_pgdual_restarted_with_a_backlog() {
    let t = "dwf_outage";
    let new = Arc::new(start_cluster().await);
    create(t, &new).await;
    let (p, dir) = proxy_with_rules(&rules(t), &new);
    wait_mirror_ready(&p).await;
    let port = p.local_addr().port();

    // Eight clients for six seconds; the new database is down from 1 s to 4 s.
    let until = Instant::now() + Duration::from_secs(6);
    let load = tokio::spawn(workload(port, t, 8, 200, until));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = new.clone();
    tokio::task::spawn_blocking(move || n.stop()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // With logical decoding the backlog is the WAL the slot holds past what was confirmed.
    let backlog_while_down = match capture_method() {
        CaptureMode::Logical => p.metrics().mirror.slot_behind_bytes.get(),
        _ => p.metrics().mirror.backlog.get(),
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = new.clone();
    tokio::task::spawn_blocking(move || n.start_server().unwrap())
        .await
        .unwrap();
    let (committed, _rolled_back, errors) = load.await.unwrap();
    assert_eq!(errors, 0, "clients never see the new side");
    assert!(committed > 100, "the workload ran: {committed}");
    assert!(
        backlog_while_down > 0,
        "changes waited in the backlog while new was down"
    );
    assert!(p.metrics().mirror.retries_total.get() > 0);
    let (lview, nview) = views(t);
    let rows = assert_converges(&new, &lview, &nview, 60).await;
    assert!(!rows.is_empty());

    // pgdual stops while new is down and writes keep coming (directly to legacy here, as
    // they would from any client); a new pgdual drains the backlog.
    let n = new.clone();
    tokio::task::spawn_blocking(move || n.stop()).await.unwrap();
    drop(p);
    let direct = connect(legacy().port).await;
    direct
        .batch_execute(&format!(
            "UPDATE {t} SET balance = balance + 1000; DELETE FROM {t} WHERE id % 7 = 0;
             INSERT INTO {t} (id, balance, owner) VALUES (100001, 1, 'late')"
        ))
        .await
        .unwrap();
    let n = new.clone();
    tokio::task::spawn_blocking(move || n.start_server().unwrap())
        .await
        .unwrap();
    let (p2, _dir2) = proxy_with_rules(&rules(t), &new);
    let rows = assert_converges(&new, &lview, &nview, 60).await;
    assert!(rows.iter().any(|r| r.contains("LATE")), "{rows:?}");
    assert_eq!(p2.metrics().mirror.dead_letters_total.get(), 0);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_random_transactions_converge_exactly() {
    let t = "dwf_random";
    create(t, new_db()).await;
    let (p, _dir) = proxy_with_rules(&rules(t), new_db());
    wait_mirror_ready(&p).await;
    let until = Instant::now() + Duration::from_secs(10);
    let (committed, rolled_back, errors) = workload(p.local_addr().port(), t, 16, 100, until).await;
    assert_eq!(errors, 0);
    assert!(committed >= 1000, "thousands of transactions: {committed}");
    assert!(rolled_back > 0);
    let (l, n) = views(t);
    assert_converges(new_db(), &l, &n, 60).await;
    assert_eq!(p.metrics().mirror.dead_letters_total.get(), 0);
}
