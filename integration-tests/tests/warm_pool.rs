//! The warm pool: with a table's reads routed to new, every worker keeps
//! `reads.pool_min_idle` connections to new open before any client reads, and replaces the
//! ones new closes, off the client's path; with reads on legacy it opens none.

use std::time::{Duration, Instant};

use pgdual_integration_tests::*;

const RULES: &str = r#"
[[table]]
legacy = "public.warm_items"
new = "public.warm_items"
keys = ["id"]
read = "READ"
[table.columns]
id = "id"
"#;

/// pgdual's connections to `new`, the mirror's own included.
fn pooled(new: &PgCluster) -> usize {
    new.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgdual' \
         AND backend_type = 'client backend'",
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_keeps_its_floor_of_connections_to_new_and_replaces_closed_ones() {
    let new = start_cluster().await;
    for c in [legacy(), &new] {
        c.psql("DROP TABLE IF EXISTS warm_items; CREATE TABLE warm_items (id int PRIMARY KEY);")
            .unwrap();
    }
    let start = |read: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, RULES.replace("READ", read)).unwrap();
        let p = proxy_with(|c| {
            c.rules_file = Some(path);
            c.new.host = "127.0.0.1".into();
            c.new.port = new.port;
            c.workers = 2;
            c.reads.pool_min_idle = 3;
            c.mirror.dead_letter_file = dir.path().join("dead.jsonl");
        });
        (p, dir)
    };

    // Reads on legacy: nothing is opened ahead; the mirror's own client is all there is.
    let (p, _dir) = start("legacy");
    wait_mirror_ready(&p).await;
    std::thread::sleep(Duration::from_millis(1500));
    let mirror = pooled(&new);
    assert!(
        mirror <= 1,
        "no reads routed to new, no pool: {mirror} connections"
    );
    drop(p);
    wait_until("the first pgdual's connections closed", || {
        pooled(&new) == 0
    });

    // Reads on new: 2 workers x 3 on top of the mirror's, before any client read anything.
    let (p, _dir) = start("new");
    let floor = mirror + 6;
    wait_until("the workers opened their floor", || pooled(&new) >= floor);
    assert_eq!(
        p.reads().all_tables().len(),
        0,
        "no read has been routed yet"
    );

    // New closes them (a restart, an idle timeout): the pool notices and opens new ones. (The
    // mirror's own client finds out at its next change to apply, so it is not counted here.)
    new.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'pgdual' AND pid <> pg_backend_pid()",
    )
    .unwrap();
    wait_until("closed connections were replaced", || pooled(&new) >= 6);

    // And a read through pgdual is answered by new on one of them.
    let c = connect(p.local_addr().port()).await;
    legacy().psql("INSERT INTO warm_items VALUES (1)").unwrap();
    new.psql("INSERT INTO warm_items VALUES (1)").unwrap();
    wait_legacy_columns(&p).await;
    let rows = c
        .query("SELECT id FROM warm_items WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(pooled(&new) >= 6, "the floor holds while reads use it");
}
