//! Capture by logical decoding, what only it has: choosing the method, the slot and the
//! publication kept in step with the rules, a slot lost behind pgdual's back, a table's
//! definition changed while capturing, switching methods under load, read-your-writes by
//! WAL position. (The dual-write suites run again under it as `*_logical`.)

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdual::Proxy;
use pgdual_integration_tests::*;
use serde_json::Value;

fn rules(t: &str, key: &str) -> String {
    format!(
        r#"
[[table]]
legacy = "public.{t}"
new = "{t}.items"
keys = ["{key}"]
write = "on"
read = "new"
[table.columns]
id = "id"
code = "code"
label = "upper(label)"
n = "n"
"#
    )
}

async fn create(t: &str) {
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t};
         CREATE TABLE {t} (id bigint PRIMARY KEY, code text NOT NULL UNIQUE, label text, n int NOT NULL DEFAULT 0)"
    ))
    .await
    .unwrap();
    let n = connect(new_db().port).await;
    n.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {t} CASCADE; CREATE SCHEMA {t};
         CREATE TABLE {t}.items (id bigint PRIMARY KEY, code text NOT NULL UNIQUE, label text, n int NOT NULL)"
    ))
    .await
    .unwrap();
}

fn views(t: &str) -> (String, String) {
    (
        format!("SELECT concat_ws('|', id, code, upper(label), n) FROM {t} ORDER BY id"),
        format!("SELECT concat_ws('|', id, code, label, n) FROM {t}.items ORDER BY id"),
    )
}

/// pgdual mirroring `rules` with `capture`, its slot named after the rules (so the next
/// pgdual with the same rules streams on from it).
fn pgdual(rules: &str, capture: CaptureMode) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, rules).unwrap();
    let p = proxy_with(|c| {
        c.rules_file = Some(path);
        c.new.host = "127.0.0.1".into();
        c.new.port = new_db().port;
        c.mirror.poll_interval_ms = 50;
        c.mirror.retry_initial_ms = 50;
        c.mirror.retry_max_ms = 500;
        c.mirror.dead_letter_file = dir.path().join("dead.jsonl");
        c.mirror.capture = capture;
        (c.mirror.slot, c.mirror.publication) = capture_names(rules);
    });
    (p, dir)
}

async fn status(p: &Proxy) -> Value {
    let addr = p.admin_addr().unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || http_get(addr, "/status", None))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn one(sql: &str) -> String {
    text_rows(legacy().port, sql)
        .await
        .into_iter()
        .next()
        .unwrap_or_default()
}

async fn triggers_on(t: &str) -> String {
    one(&format!(
        "SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'public.{t}'::regclass \
         AND tgname LIKE 'pgdual_capture_%'"
    ))
    .await
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writers straight to legacy (as any client would, with or without pgdual in between):
/// inserts, updates, deletes and re-inserts over a small key range, until `stop`.
fn writers(t: &str, n: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<i64>> {
    let next = Arc::new(AtomicI64::new(0));
    (0..n)
        .map(|w| {
            let (t, stop, next) = (t.to_string(), stop.clone(), next.clone());
            tokio::spawn(async move {
                let c = connect(legacy().port).await;
                let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ (w as u64 + 7);
                let mut rand = move |m: u64| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % m) as i64
                };
                let mut done = 0;
                while !stop.load(Relaxed) {
                    let id = rand(300);
                    let sql = match rand(4) {
                        0 => format!(
                            "INSERT INTO {t} (id, code, label) VALUES ({id}, 'c{id}', 'l{id}') \
                             ON CONFLICT (id) DO UPDATE SET n = {t}.n + 1"
                        ),
                        1 => format!("DELETE FROM {t} WHERE id = {id}"),
                        2 => format!(
                            "BEGIN; UPDATE {t} SET n = n + 1, label = label || 'x' WHERE id = {id}; \
                             UPDATE {t} SET n = n + 1 WHERE id = {}; COMMIT",
                            (id + 1) % 300
                        ),
                        _ => {
                            let k = next.fetch_add(1, Relaxed) + 1000;
                            format!("INSERT INTO {t} (id, code) VALUES ({k}, 'k{k}')")
                        }
                    };
                    if let Err(e) = c.batch_execute(&sql).await {
                        // Legacy's own answers to racing writers: two updating the same two
                        // rows in opposite order, or two inserting one id at once (its
                        // `code` collides before ON CONFLICT (id) can take over).
                        let code = e.code().map(|c| c.code().to_string());
                        assert!(
                            matches!(code.as_deref(), Some("40P01" | "23505")),
                            "{e}"
                        );
                        let _ = c.batch_execute("ROLLBACK").await;
                    }
                    done += 1;
                }
                done
            })
        })
        .collect()
}

async fn stop_writers(stop: Arc<AtomicBool>, w: Vec<tokio::task::JoinHandle<i64>>) -> i64 {
    stop.store(true, Relaxed);
    let mut n = 0;
    for h in w {
        n += h.await.unwrap();
    }
    n
}

#[tokio::test]
async fn logical_decoding_is_chosen_where_legacy_allows_it_and_status_says_why() {
    let t = "cl_auto";
    create(t).await;
    let r = rules(t, "id");
    let (slot, publication) = capture_names(&r);
    let (p, _dir) = pgdual(&r, CaptureMode::Auto);
    wait_mirror_ready(&p).await;
    let s = status(&p).await;
    assert_eq!(s["mirror"]["capture"]["method"], "logical", "{s}");
    assert!(
        s["mirror"]["capture"]["reason"]
            .as_str()
            .unwrap()
            .contains("auto"),
        "{s}"
    );
    assert_eq!(p.metrics().mirror.capture_logical.get(), 1);
    assert_eq!(
        triggers_on(t).await,
        "0",
        "no trigger in the clients' statements"
    );
    assert_eq!(
        one(&format!(
            "SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = '{publication}'"
        ))
        .await,
        t
    );
    assert_eq!(
        one(&format!(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await,
        "pgoutput"
    );
    let c = connect(p.local_addr().port()).await;
    c.batch_execute(&format!(
        "INSERT INTO {t} (id, code, label) VALUES (1, 'a', 'one'), (2, 'b', 'two');
         UPDATE {t} SET id = 3 WHERE id = 2;
         TRUNCATE {t};
         INSERT INTO {t} (id, code, label) VALUES (4, 'd', 'four')"
    ))
    .await
    .unwrap();
    let (lv, nv) = views(t);
    let rows = assert_converges(new_db(), &lv, &nv, 30).await;
    assert_eq!(rows, ["4|d|FOUR|0"]);
    wait_until(
        "the slot's state in /status",
        Duration::from_secs(10),
        || async { status(&p).await["mirror"]["slot"]["wal_status"].is_string() },
    )
    .await;
    let page = p.metrics().render();
    assert!(metric(&page, "pgdual_capture_slot_retained_bytes") > 0.0);

    // Every table's write off: the slot and the publication go, so no WAL is retained.
    let addr = p.admin_addr().unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || {
        http_put(
            addr,
            &format!("/tables/public.{t}/write"),
            r#"{"mode": "off"}"#,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_until("slot dropped", Duration::from_secs(20), || async {
        one(&format!(
            "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await
            == "0"
    })
    .await;
    assert_eq!(
        one(&format!(
            "SELECT count(*)::text FROM pg_publication WHERE pubname = '{publication}'"
        ))
        .await,
        "0"
    );
}

#[tokio::test]
async fn a_key_the_replica_identity_does_not_cover_keeps_triggers_or_stops_logical_with_a_reason() {
    let t = "cl_identity";
    create(t).await;
    // Keyed by `code`: a decoded delete would only carry `id`, the primary key.
    let r = rules(t, "code");
    let (p, _dir) = pgdual(&r, CaptureMode::Auto);
    wait_mirror_ready(&p).await;
    let s = status(&p).await;
    assert_eq!(s["mirror"]["capture"]["method"], "triggers", "{s}");
    let reason = s["mirror"]["capture"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("public.{t}")) && reason.contains("replica identity"),
        "{reason}"
    );
    assert_eq!(triggers_on(t).await, "4");
    drop(p);

    let (p, _dir) = pgdual(&r, CaptureMode::Logical);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(p.metrics().mirror.ready.get(), 0, "nothing captured");
    // Fixed the way the reason says: the mirror goes on by itself.
    connect(legacy().port)
        .await
        .batch_execute(&format!(
            "ALTER TABLE {t} REPLICA IDENTITY USING INDEX {t}_code_key"
        ))
        .await
        .unwrap();
    wait_mirror_ready(&p).await;
    assert_eq!(p.metrics().mirror.capture_logical.get(), 1);
    assert_eq!(triggers_on(t).await, "0", "the triggers were removed");
    let c = connect(p.local_addr().port()).await;
    c.batch_execute(&format!(
        "INSERT INTO {t} (id, code, label) VALUES (1, 'a', 'x'), (2, 'b', 'y');
         UPDATE {t} SET code = 'c' WHERE code = 'b'; DELETE FROM {t} WHERE code = 'a'"
    ))
    .await
    .unwrap();
    let (lv, nv) = views(t);
    assert_eq!(assert_converges(new_db(), &lv, &nv, 30).await, ["2|c|Y|0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_behind_pgdual_is_reported_made_again_and_a_backfill_and_verify_close_the_gap(
) {
    let t = "cl_lost";
    create(t).await;
    let r = rules(t, "id");
    let (slot, _) = capture_names(&r);
    let (p, _dir) = pgdual(&r, CaptureMode::Logical);
    wait_mirror_ready(&p).await;
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "INSERT INTO {t} (id, code) SELECT g, 'c' || g FROM generate_series(1, 100) g"
    ))
    .await
    .unwrap();
    let (lv, nv) = views(t);
    assert_converges(new_db(), &lv, &nv, 30).await;

    // Someone ends the stream and drops the slot; writes go on meanwhile.
    let mut dropped = false;
    for _ in 0..100 {
        let _ = l
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
            ))
            .await;
        l.batch_execute(&format!("UPDATE {t} SET n = n + 1 WHERE id % 10 = 0"))
            .await
            .unwrap();
        if l.batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .await
            .is_ok()
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped, "could not drop the slot");
    l.batch_execute(&format!(
        "UPDATE {t} SET label = 'while gone' WHERE id <= 50"
    ))
    .await
    .unwrap();

    wait_until("the loss is counted", Duration::from_secs(20), || async {
        p.metrics().mirror.slot_lost_total.get() >= 1
    })
    .await;
    wait_until(
        "/status names the table",
        Duration::from_secs(20),
        || async {
            status(&p).await["mirror"]["needs_backfill"][0]["table"] == format!("public.{t}")
        },
    )
    .await;
    assert_eq!(
        one(&format!(
            "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await,
        "1",
        "the slot was made again"
    );
    // Writes after the new slot flow again.
    l.batch_execute(&format!(
        "INSERT INTO {t} (id, code) VALUES (1000, 'after')"
    ))
    .await
    .unwrap();

    // The operator backfills and verifies; the gap closes.
    let addr = p.admin_addr().unwrap();
    let path = format!("/tables/public.{t}/backfill");
    let (code, body) = tokio::task::spawn_blocking(move || http_post(addr, &path, "{}"))
        .await
        .unwrap();
    assert_eq!(code, 202, "{body}");
    wait_until("backfill done", Duration::from_secs(60), || async {
        let path = format!("/tables/public.{t}/backfill");
        let (_, body) = tokio::task::spawn_blocking(move || http_get(addr, &path, None))
            .await
            .unwrap();
        body.contains("\"done\"")
    })
    .await;
    let rows = assert_converges(new_db(), &lv, &nv, 30).await;
    assert!(rows.iter().any(|r| r.contains("WHILE GONE")), "{rows:?}");
    let path = format!("/tables/public.{t}/verify");
    let (code, body) = tokio::task::spawn_blocking(move || http_post(addr, &path, "{}"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["parity_percent"], 100.0, "{report}");
    wait_until("the gap is closed", Duration::from_secs(20), || async {
        status(&p).await["mirror"]["needs_backfill"] == serde_json::json!([])
    })
    .await;
}

/// pgdual capturing `t` by logical decoding, a client session through it, and one row
/// written and mirrored.
async fn streaming_one_row(t: &str) -> (Proxy, tempfile::TempDir, tokio_postgres::Client) {
    create(t).await;
    let (p, dir) = pgdual(&rules(t, "id"), CaptureMode::Logical);
    wait_mirror_ready(&p).await;
    let c = connect(p.local_addr().port()).await;
    c.batch_execute(&format!(
        "INSERT INTO {t} (id, code, label) VALUES (1, 'a', 'x')"
    ))
    .await
    .unwrap();
    let (lv, nv) = views(t);
    assert_converges(new_db(), &lv, &nv, 30).await;
    (p, dir, c)
}

/// New's rows of `t` (`id|n`) once the mirror has stopped (or retries) and a moment passed.
async fn rows_once_stopped(p: &Proxy, t: &str) -> Vec<String> {
    wait_until("the mirror stops", Duration::from_secs(20), || async {
        p.metrics().mirror.ready.get() == 0 || p.metrics().mirror.retries_total.get() > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    text_rows(
        new_db().port,
        &format!("SELECT concat_ws('|', id, n) FROM {t}.items ORDER BY id"),
    )
    .await
}

/// Renames `title` back to `label`: the rules fit again and new ends as legacy, the update
/// made under the other name included.
async fn undo_rename_and_converge(c: &tokio_postgres::Client, t: &str) {
    c.batch_execute(&format!("ALTER TABLE {t} RENAME COLUMN title TO label"))
        .await
        .unwrap();
    let (lv, nv) = views(t);
    assert_eq!(
        assert_converges(new_db(), &lv, &nv, 30).await,
        ["1|a|X|5", "2|b|Y|0"]
    );
}

#[tokio::test]
async fn a_definition_changed_while_capturing_is_noticed_checked_and_mirroring_goes_on() {
    let t = "cl_ddl";
    let (p, _dir, c) = streaming_one_row(t).await;
    let (lv, nv) = views(t);
    c.batch_execute(&format!(
        "ALTER TABLE {t} ADD COLUMN extra text; INSERT INTO {t} (id, code, label, extra) VALUES (2, 'b', 'y', 'e')"
    ))
    .await
    .unwrap();
    assert_eq!(
        assert_converges(new_db(), &lv, &nv, 30).await,
        ["1|a|X|0", "2|b|Y|0"]
    );
    assert!(p.metrics().mirror.capture_ddl_total.get() >= 1);

    // A change the rules cannot follow: nothing is mirrored wrong, the slot keeps the rest.
    c.batch_execute(&format!(
        "ALTER TABLE {t} RENAME COLUMN label TO title; UPDATE {t} SET n = 5 WHERE id = 1"
    ))
    .await
    .unwrap();
    assert_eq!(
        rows_once_stopped(&p, t).await,
        ["1|0", "2|0"],
        "nothing applied under a stale rule"
    );
    undo_rename_and_converge(&c, t).await;
}

/// Two definition changes streamed together, the second one the rules cannot follow until it
/// is undone. Once it is, the mirror restarts from the first: that transaction must be
/// applied before the mirror stops at the second (stopping at once would stream the first
/// again after every restart and stop at the second before applying it, for ever).
#[tokio::test]
async fn two_definition_changes_in_a_row_are_mirrored_up_to_the_second_then_past_it() {
    let t = "cl_ddl2";
    let (p, _dir, c) = streaming_one_row(t).await;
    // Both transactions in one write, so the stream hands them over together.
    c.batch_execute(&format!(
        "BEGIN; ALTER TABLE {t} ADD COLUMN extra text; \
         INSERT INTO {t} (id, code, label, extra) VALUES (2, 'b', 'y', 'e'); COMMIT; \
         BEGIN; ALTER TABLE {t} RENAME COLUMN label TO title; UPDATE {t} SET n = 5 WHERE id = 1; COMMIT"
    ))
    .await
    .unwrap();
    assert_eq!(
        rows_once_stopped(&p, t).await,
        ["1|0"],
        "nothing applied under a stale rule"
    );
    undo_rename_and_converge(&c, t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_triggers_to_logical_and_back_under_load_loses_nothing() {
    let t = "cl_switch";
    create(t).await;
    let r = rules(t, "id");
    let (slot, _) = capture_names(&r);
    let (p, _d1) = pgdual(&r, CaptureMode::Triggers);
    wait_mirror_ready(&p).await;
    // Writes from before any capture would need a backfill: start once it is in place.
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(t, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(p); // the triggers stay: writes meanwhile wait in their backlog

    let (p, _d2) = pgdual(&r, CaptureMode::Logical);
    wait_mirror_ready(&p).await;
    assert_eq!(p.metrics().mirror.capture_logical.get(), 1);
    assert_eq!(triggers_on(t).await, "0");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(p); // the slot stays: writes meanwhile wait in it

    let (p, _d3) = pgdual(&r, CaptureMode::Triggers);
    wait_mirror_ready(&p).await;
    wait_until(
        "slot dropped after the hand-over",
        Duration::from_secs(30),
        || async {
            one(&format!(
                "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await
                == "0"
        },
    )
    .await;
    assert_eq!(triggers_on(t).await, "4");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let writes = stop_writers(stop, load).await;
    assert!(writes > 200, "the load wrote only {writes} times");
    let (lv, nv) = views(t);
    let rows = assert_converges(new_db(), &lv, &nv, 60).await;
    assert!(rows.len() > 100, "{}", rows.len());
    assert_eq!(dead_letters(&p), 0);
}

#[tokio::test]
async fn a_session_reads_its_own_write_then_reads_move_to_new_once_mirrored() {
    let t = "cl_ryw";
    create(t).await;
    let r = rules(t, "id");
    let (p, _dir) = pgdual(&r, CaptureMode::Logical);
    wait_mirror_ready(&p).await;
    wait_legacy_columns(&p).await;
    let c = connect(p.local_addr().port()).await;
    let reads = |route: &str| {
        sample(
            &p.metrics().render(),
            &format!("pgdual_reads_total{{table=\"public.{t}\",route=\"{route}\"}}"),
        )
        .unwrap_or(0.0)
    };
    for i in 0..20 {
        c.batch_execute(&format!(
            "INSERT INTO {t} (id, code, label) VALUES ({i}, 'c{i}', 'l{i}')"
        ))
        .await
        .unwrap();
        // At once: the write is seen, from wherever it is answered.
        let row = c
            .query_one(&format!("SELECT code FROM {t} WHERE id = {i}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), format!("c{i}"));
    }
    let before = reads("new");
    wait_until(
        "a read answered by new",
        Duration::from_secs(10),
        || async {
            c.query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 20
                && reads("new") > before
        },
    )
    .await;
}
