//! Backfill, verify and repair against real legacy and new servers: rows that pre-date
//! dual-write reach new exactly while clients write through pgdual, the copy never races the
//! mirror, a backfill pauses, resumes, cancels and throttles, and verification finds and
//! repairs every kind of drift.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdual::jobs::backfill::{Backfill, Ended, Progress, Request};
use pgdual::jobs::JobMetrics;
use pgdual::Proxy;
use pgdual_integration_tests::*;
use serde_json::{json, Value};

fn rules(t: &str, write: &str) -> String {
    format!(
        r#"
[[table]]
legacy = "public.{t}"
new = "{t}.customers"
keys = ["id"]
write = "{write}"
[table.columns]
customer_id = "id"
name = "upper(name)"
email = "email"
amount = "amount"
v = "v"
"#
    )
}

/// `t` in legacy with `rows` rows (before any capture) and its empty successor in new.
async fn create(t: &str, rows: i64) {
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t};
         CREATE TABLE {t} (id bigint PRIMARY KEY, name text NOT NULL, email text,
             amount numeric(12,2), v int NOT NULL DEFAULT 0);
         INSERT INTO {t} SELECT g, 'name ' || g, 'u' || g || '@x.org', g * 1.25, 0
             FROM generate_series(1, {rows}) g;
         ANALYZE {t};"
    ))
    .await
    .unwrap();
    let n = connect(new_db().port).await;
    n.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {t} CASCADE; CREATE SCHEMA {t};
         CREATE TABLE {t}.customers (customer_id bigint PRIMARY KEY,
             name text NOT NULL CHECK (name NOT LIKE '%FORBIDDEN%'), email text,
             amount numeric(12,2), v int NOT NULL)"
    ))
    .await
    .unwrap();
}

/// Row count and a digest of every row, computed independently of pgdual on each side.
async fn both_sides(t: &str) -> ((i64, String), (i64, String)) {
    let l = connect(legacy().port).await;
    let n = connect(new_db().port).await;
    let a = l
        .query_one(
            &format!(
                "SELECT count(*), md5(coalesce(string_agg(concat_ws('|', id, upper(name), email, \
                 amount, v), ',' ORDER BY id), '')) FROM {t}"
            ),
            &[],
        )
        .await
        .unwrap();
    let b = n
        .query_one(
            &format!(
                "SELECT count(*), md5(coalesce(string_agg(concat_ws('|', customer_id, name, email, \
                 amount, v), ',' ORDER BY customer_id), '')) FROM {t}.customers"
            ),
            &[],
        )
        .await
        .unwrap();
    ((a.get(0), a.get(1)), (b.get(0), b.get(1)))
}

async fn post(p: &Proxy, path: &str, body: Value) -> (u16, Value) {
    let (addr, path, body) = (p.admin_addr().unwrap(), path.to_string(), body.to_string());
    let (status, text) = tokio::task::spawn_blocking(move || http_post(addr, &path, &body))
        .await
        .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(p: &Proxy, path: &str) -> (u16, Value) {
    let (addr, path) = (p.admin_addr().unwrap(), path.to_string());
    let (status, text) = tokio::task::spawn_blocking(move || http_get(addr, &path, None))
        .await
        .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Rows of `t`'s successor in new.
async fn rows_in_new(t: &str) -> i64 {
    connect(new_db().port)
        .await
        .query_one(&format!("SELECT count(*) FROM {t}.customers"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Starts the backfill of `t` through the API with `body`.
async fn start(p: &Proxy, t: &str, body: Value) {
    let (status, answer) = post(p, &format!("/tables/public.{t}/backfill"), body).await;
    assert_eq!(status, 202, "{answer}");
}

/// Polls the backfill of `t` until its checkpoint's state is `state`.
async fn wait_state(p: &Proxy, t: &str, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get(p, &format!("/tables/public.{t}/backfill")).await;
        assert_eq!(status, 200, "{body}");
        if body["checkpoint"]["state"] == state {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "backfill of {t} never reached {state}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the mirror has applied every captured change of `t`.
async fn wait_drained(t: &str) {
    let l = connect(legacy().port).await;
    if capture_method() == CaptureMode::Logical {
        return wait_slots_confirm(&l).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = l
            .query_one(
                "SELECT count(*) FROM pgdual.changes WHERE tbl = $1",
                &[&format!("public.{t}")],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} changes never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The key up to which the backfill of `t` has copied, as legacy records it (0 before).
async fn cursor(l: &tokio_postgres::Client, t: &str) -> i64 {
    l.query_opt(
        "SELECT coalesce(cursor[1], '0')::int8 FROM pgdual.backfills WHERE tbl = $1",
        &[&format!("public.{t}")],
    )
    .await
    .ok()
    .flatten()
    .map_or(0, |r| r.get(0))
}

/// Clients writing through pgdual on the keys just ahead of the backfill's cursor (those
/// being copied): updates, deletes, re-inserts of deleted keys, and rows past the end key.
/// With `fixed_base`, keys are picked after it instead of after the cursor.
fn writers(
    p: &Proxy,
    t: &str,
    clients: usize,
    window: i64,
    fixed_base: Option<i64>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let hint = Arc::new(AtomicI64::new(fixed_base.unwrap_or(0)));
    let port = p.local_addr().port();
    let mut out = Vec::new();
    if fixed_base.is_none() {
        let (hint, stop, t) = (hint.clone(), stop.clone(), t.to_string());
        tokio::spawn(async move {
            let l = connect(legacy().port).await;
            while !stop.load(Relaxed) {
                hint.store(cursor(&l, &t).await, Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    for w in 0..clients {
        let (hint, stop, t) = (hint.clone(), stop.clone(), t.to_string());
        out.push(tokio::spawn(async move {
            let c = connect(port).await;
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            let mut rand = move |n: i64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n as u64) as i64
            };
            let mut writes = 0;
            while !stop.load(Relaxed) {
                let id = hint.load(Relaxed) + 1 + rand(window);
                let sql = match rand(10) {
                    0..=5 => format!("UPDATE {t} SET v = v + 1, amount = amount + 1 WHERE id = {id}"),
                    6 | 7 => format!("DELETE FROM {t} WHERE id = {id}"),
                    8 => format!(
                        "INSERT INTO {t} VALUES ({id}, 'back {id}', NULL, 0, 1) \
                         ON CONFLICT (id) DO UPDATE SET v = {t}.v + 1"
                    ),
                    _ => format!(
                        "INSERT INTO {t} VALUES ({}, 'late', 'late@x.org', 1, 0) ON CONFLICT DO NOTHING",
                        10_000_000 + rand(1_000_000)
                    ),
                };
                c.batch_execute(&sql).await.unwrap();
                writes += 1;
            }
            writes
        }));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_under_write_load_then_verify_proves_parity() {
    let t = "jobs_load";
    let rows = 200_000;
    create(t, rows).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "on"), new_db());
    wait_mirror_ready(&p).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(&p, t, 8, 3000, None, stop.clone());
    start(&p, t, json!({"concurrency": 4, "target_chunk_ms": 200})).await;
    let done = wait_state(&p, t, "done", Duration::from_secs(240)).await;
    stop.store(true, Relaxed);
    let mut writes = 0;
    for w in load {
        writes += w.await.unwrap();
    }
    assert!(writes > 100, "the load wrote only {writes} times");
    wait_drained(t).await;
    assert!(
        done["checkpoint"]["chunks"].as_i64().unwrap() > 10,
        "{done}"
    );
    let (l, n) = both_sides(t).await;
    assert_eq!(l, n, "legacy and new differ after the backfill");

    let (status, report) = post(&p, &format!("/tables/public.{t}/verify"), json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["parity_percent"], 100.0, "{report}");
    assert_eq!(report["rows_compared"], l.0, "{report}");
    for field in ["differing", "missing_in_new", "extra_in_new"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    let page = p.metrics().render();
    let table = format!("table=\"public.{t}\"");
    assert_eq!(
        metric(&page, &format!("pgdual_verify_parity_ratio{{{table}}}")),
        1.0
    );
    assert!(metric(&page, &format!("pgdual_backfill_rows_total{{{table}}}")) >= rows as f64 * 0.9);
}

/// The race the copy lock exists for: each chunk is held between its read from legacy and
/// its write to new while clients update exactly its keys and the mirror applies their
/// newer images. Were the chunk and the mirror independent, the held chunk would write its
/// older images last and those rows would stay stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_chunk_never_overwrites_a_newer_mirrored_image() {
    let t = "jobs_race";
    create(t, 20_000).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "on"), new_db());
    wait_mirror_ready(&p).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(&p, t, 4, 200, None, stop.clone());
    let mut config = config_for(legacy());
    config.new.host = "127.0.0.1".into();
    config.new.port = new_db().port;
    let mut options = Request {
        batch_size: Some(100),
        concurrency: Some(2),
        ..Request::default()
    }
    .options(&config.backfill)
    .unwrap();
    options.hold_before_write = Some(Duration::from_millis(30));
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let job = Backfill {
        table: format!("public.{t}"),
        rules: p.rules().load().rules.clone(),
        endpoints: pgdual::net::endpoint::Endpoints::from_config(&config).unwrap(),
        options,
        progress: Progress::new(t),
        metrics: JobMetrics::unexported(),
        log_values: false,
        stop: stop_rx,
    };
    assert_eq!(job.run().await.unwrap(), Ended::Done);
    stop.store(true, Relaxed);
    for w in load {
        w.await.unwrap();
    }
    wait_drained(t).await;
    let (l, n) = both_sides(t).await;
    assert_eq!(l, n, "a chunk wrote older images over newer ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel_through_the_api_and_a_new_run_resumes() {
    let t = "jobs_control";
    let rows = 40_000;
    create(t, rows).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "on"), new_db());
    wait_mirror_ready(&p).await;
    let path = format!("/tables/public.{t}/backfill");
    let (status, body) = post(&p, &path, json!({"batch_size": 500, "rate": 8000})).await;
    assert_eq!(status, 202, "{body}");
    // A second start while it runs is refused.
    let first = get(&p, &path).await.1;
    let (status, body) = post(&p, &path, json!({})).await;
    assert_eq!(status, 409, "{body}; the first: {first}");
    wait_state(&p, t, "running", Duration::from_secs(20)).await;

    let (status, _) = post(&p, &format!("{path}/pause"), json!({})).await;
    assert_eq!(status, 200);
    let paused = wait_state(&p, t, "paused", Duration::from_secs(20)).await;
    let at = paused["checkpoint"]["rows_copied"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = get(&p, &path).await.1;
    assert_eq!(
        still["checkpoint"]["rows_copied"], at,
        "copied while paused"
    );
    assert_eq!(still["progress"]["state"], "paused");

    let (status, _) = post(&p, &format!("{path}/resume"), json!({})).await;
    assert_eq!(status, 200);
    wait_state(&p, t, "running", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = post(&p, &format!("{path}/cancel"), json!({})).await;
    assert_eq!(status, 200);
    let cancelled = wait_state(&p, t, "cancelled", Duration::from_secs(20)).await;
    let copied = cancelled["checkpoint"]["rows_copied"].as_i64().unwrap();
    assert!(copied > at && copied < rows, "{cancelled}");

    // Started again, it goes on from its checkpoint: every row copied once.
    let (status, body) = post(&p, &path, json!({"batch_size": 5000})).await;
    assert_eq!(status, 202, "{body}");
    let done = wait_state(&p, t, "done", Duration::from_secs(60)).await;
    assert_eq!(done["checkpoint"]["rows_copied"], rows, "{done}");
    let (l, n) = both_sides(t).await;
    assert_eq!(l, n);
    let (status, body) = post(&p, "/tables/public.nope/backfill/pause", json!({})).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_the_limit_throttles_the_backfill_until_it_drains() {
    let t = "jobs_throttle";
    create(t, 5_000).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "on"), new_db());
    wait_mirror_ready(&p).await;
    // A backlog of the table the mirror cannot drain while this session holds the table's
    // copy lock (the mirror takes it for every batch).
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "SELECT pg_advisory_lock(hashtextextended('pgdual copy ' || 'public.{t}', 0)); \
         INSERT INTO pgdual.changes (tbl, keys) \
         SELECT 'public.{t}', jsonb_build_object('id', g) FROM generate_series(1, 500) g"
    ))
    .await
    .unwrap();
    let path = format!("/tables/public.{t}/backfill");
    // Limits come from [backfill]; this proxy's are the defaults, so ask a fresh one.
    drop(p);
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, rules(t, "on")).unwrap();
    let p = proxy_with(|c| {
        c.rules_file = Some(rules_path);
        c.new.host = "127.0.0.1".into();
        c.new.port = new_db().port;
        c.mirror.poll_interval_ms = 50;
        c.mirror.dead_letter_file = dir.path().join("dead.jsonl");
        c.backfill.max_backlog_rows = 100;
    });
    wait_mirror_ready(&p).await;
    let (status, body) = post(&p, &path, json!({})).await;
    assert_eq!(status, 202, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, body) = get(&p, &path).await;
    let state = body["progress"]["state"].as_str().unwrap().to_string();
    assert!(state.starts_with("throttled: mirror backlog"), "{body}");
    assert_eq!(body["progress"]["rows_copied"], 0, "{body}");
    let page = p.metrics().render();
    let throttled = metric(
        &page,
        &format!("pgdual_backfill_throttled_seconds_total{{table=\"public.{t}\"}}"),
    );
    assert!(throttled > 0.5, "throttled {throttled} s");

    l.batch_execute(&format!(
        "SELECT pg_advisory_unlock(hashtextextended('pgdual copy ' || 'public.{t}', 0))"
    ))
    .await
    .unwrap();
    wait_state(&p, t, "done", Duration::from_secs(30)).await;
    let (l, n) = both_sides(t).await;
    assert_eq!(l, n);
}

#[tokio::test]
async fn a_row_new_refuses_stops_the_backfill_and_names_its_key() {
    let t = "jobs_refused";
    create(t, 10_000).await;
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "UPDATE {t} SET name = 'forbidden' WHERE id = 4242"
    ))
    .await
    .unwrap();
    let (p, _dir) = proxy_with_rules(&rules(t, "on"), new_db());
    wait_mirror_ready(&p).await;
    start(&p, t, json!({"batch_size": 1000})).await;
    let failed = wait_state(&p, t, "failed", Duration::from_secs(30)).await;
    let error = failed["checkpoint"]["error"].as_str().unwrap();
    assert!(error.contains("key (id)=(4242)"), "{error}");
    assert!(error.contains("23514"), "{error}");
    // Everything before the refused chunk is copied and recorded.
    let copied = rows_in_new(t).await;
    assert!(copied >= 4000, "{copied}");
    assert!(!failed["progress"]["state"]
        .as_str()
        .unwrap()
        .contains("forbidden"));
}

#[tokio::test]
async fn backfill_is_refused_while_dual_write_is_off_and_a_dry_run_only_describes() {
    let t = "jobs_off";
    create(t, 100).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "off"), new_db());
    wait_mirror_ready(&p).await;
    let path = format!("/tables/public.{t}/backfill");
    let (status, body) = post(&p, &path, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("dual-write is not on"),
        "{body}"
    );
    let (status, body) = post(&p, &path, json!({"dry_run": true})).await;
    assert_eq!(status, 200, "{body}");
    let plan = body["plan"].as_str().unwrap();
    assert!(plan.contains("rows (estimate): 100"), "{plan}");
    let copied = rows_in_new(t).await;
    assert_eq!(copied, 0);
    let (status, body) = post(&p, &path, json!({"batch_size": 0})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("batch_size"));
    let (status, _) = post(&p, "/tables/public.nope/backfill", json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_changed_missing_and_extra_rows_and_repair_fixes_them() {
    let t = "jobs_drift";
    create(t, 20_000).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "on"), new_db());
    wait_mirror_ready(&p).await;
    start(&p, t, json!({})).await;
    wait_state(&p, t, "done", Duration::from_secs(60)).await;
    // Behind pgdual's back, in new.
    let n = connect(new_db().port).await;
    n.batch_execute(&format!(
        "UPDATE {t}.customers SET email = 'changed@x.org' WHERE customer_id = 777;
         DELETE FROM {t}.customers WHERE customer_id = 15000;
         INSERT INTO {t}.customers VALUES (99999999, 'EXTRA', NULL, 0, 0);"
    ))
    .await
    .unwrap();
    let path = format!("/tables/public.{t}/verify");
    let (status, report) = post(&p, &path, json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["differing"], 1, "{report}");
    assert_eq!(report["missing_in_new"], 1, "{report}");
    assert_eq!(report["extra_in_new"], 1, "{report}");
    assert!(report["parity_percent"].as_f64().unwrap() < 100.0);
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples[0]["key"], "(id)=(777)", "{report}");
    assert_eq!(samples[0]["column"], "email", "{report}");
    assert!(
        samples[0]["legacy"].is_null(),
        "values shown by default: {report}"
    );
    assert_eq!(samples[1]["key"], "(id)=(15000)");
    assert_eq!(samples[1]["kind"], "missing in new");
    assert_eq!(samples[2]["key"], "(id)=(99999999)");
    assert_eq!(samples[2]["kind"], "extra in new");
    let page = p.metrics().render();
    let table = format!("table=\"public.{t}\"");
    assert_eq!(
        metric(&page, &format!("pgdual_verify_differences{{{table}}}")),
        3.0
    );

    let (status, report) = post(&p, &path, json!({"repair": true})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["repaired"], 3, "{report}");
    assert_eq!(report["after_repair"], 0, "{report}");
    let (status, report) = post(&p, &path, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(report["parity_percent"], 100.0, "{report}");
    let (status, last) = get(&p, &path).await;
    assert_eq!(status, 200);
    assert_eq!(last, report);
    let (l, n) = both_sides(t).await;
    assert_eq!(l, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_while_verify_runs_are_not_reported() {
    let t = "jobs_inflight";
    create(t, 30_000).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "on"), new_db());
    wait_mirror_ready(&p).await;
    start(&p, t, json!({})).await;
    wait_state(&p, t, "done", Duration::from_secs(60)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(&p, t, 4, 30_000, Some(0), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut in_flight = 0;
    for _ in 0..3 {
        let (status, report) = post(&p, &format!("/tables/public.{t}/verify"), json!({})).await;
        assert_eq!(status, 200, "{report}");
        for field in ["differing", "missing_in_new", "extra_in_new"] {
            assert_eq!(report[field], 0, "{field}: {report}");
        }
        in_flight += report["in_flight"].as_u64().unwrap();
    }
    stop.store(true, Relaxed);
    for w in load {
        w.await.unwrap();
    }
    // Not a requirement, but the test only means something if writes were caught in flight.
    eprintln!("keys in flight when found: {in_flight}");
}

#[tokio::test]
async fn every_kind_of_value_and_a_composite_key_reach_parity() {
    let t = "jobs_values";
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t};
         CREATE TABLE {t} (region text, id int4, f8 float8, f4 real, n numeric, ts timestamptz,
             t timestamp, d date, iv interval, b bytea, j jsonb, js json, arr int[], tarr text[],
             u uuid, flag boolean, PRIMARY KEY (region, id));
         SET TimeZone = 'Asia/Kolkata';
         INSERT INTO {t} VALUES
           ('eu', 1, '-0', '-0', 0.000000000000000000001, '2024-03-31 02:30:00', '2024-03-31 02:30:00',
            '2024-02-29', '1 year 2 mons -3 days 04:05:06.789', '\\x00ff10', '{{\"b\": 1, \"a\": [1.50, null]}}',
            '{{\"b\": 1,  \"a\": 2}}', '{{1,NULL,3}}', '{{\"a b\",NULL,\"\",\"NULL\"}}',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true),
           ('eu', 2, 'NaN', 'Infinity', 123456789012345678901234567890.123456789, 'infinity', '-infinity',
            '0001-01-01 BC', '-1 day', '', 'null', 'null', '{{}}', '{{}}', NULL, false);
         SET TimeZone = 'America/St_Johns';
         INSERT INTO {t} VALUES
           ('us', 1, '-Infinity', '1.1754944e-38', -0.5, '1999-12-31 23:59:59.999999', NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           ('us', 2, 2.2250738585072014e-308, 3.4028235e38, 1e-20, '2038-01-19 03:14:08+00',
            '2038-01-19 03:14:08', '9999-12-31', '178000000 years', '\\x5c00', '{{\"\\u00e9\": \"\\\\\"}}',
            '[1, 2]', '{{-2147483648}}', '{{\"é\",\"\\\\\"}}', '00000000-0000-0000-0000-000000000000', NULL);
         INSERT INTO {t} SELECT 'zz', g, g / 3.0, g / 7.0, g / 11.0, now() - g * interval '1 min',
             NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM generate_series(1, 3000) g;"
    ))
    .await
    .unwrap();
    let cols = "region text, id int4, f8 float8, f4 real, n numeric, ts timestamptz, t timestamp, \
                d date, iv interval, b bytea, j jsonb, js json, arr int[], tarr text[], u uuid, flag boolean";
    let n = connect(new_db().port).await;
    n.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {t} CASCADE; CREATE SCHEMA {t};
         CREATE TABLE {t}.items ({cols}, PRIMARY KEY (region, id))"
    ))
    .await
    .unwrap();
    let names = [
        "region", "id", "f8", "f4", "n", "ts", "t", "d", "iv", "b", "j", "js", "arr", "tarr", "u",
        "flag",
    ];
    let columns: Vec<String> = names.iter().map(|c| format!("{c} = \"{c}\"")).collect();
    let rules = format!(
        "[[table]]\nlegacy = \"public.{t}\"\nnew = \"{t}.items\"\nkeys = [\"region\", \"id\"]\n\
         write = \"on\"\n[table.columns]\n{}\n",
        columns.join("\n")
    );
    let (p, _dir) = proxy_with_rules(&rules, new_db());
    wait_mirror_ready(&p).await;
    start(&p, t, json!({"batch_size": 700})).await;
    let done = wait_state(&p, t, "done", Duration::from_secs(60)).await;
    assert_eq!(done["checkpoint"]["rows_copied"], 3004, "{done}");
    let (status, report) = post(&p, &format!("/tables/public.{t}/verify"), json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["parity_percent"], 100.0, "{report}");
    assert_eq!(report["rows_compared"], 3004);
    // Independently of pgdual: every value's text, both sides under the same settings.
    let texts = |table: String| {
        format!(
            "SET extra_float_digits = 3; SET TimeZone = 'UTC'; SET bytea_output = 'hex'; \
             SELECT string_agg(x::text, E'\\n' ORDER BY region, id) FROM {table} AS x"
        )
    };
    let a = psql_rows(legacy().port, &texts(format!("public.{t}"))).await;
    let b = psql_rows(new_db().port, &texts(format!("{t}.items"))).await;
    assert_eq!(a, b);
    assert!(
        a.contains("-0") && a.contains("NaN") && a.contains("-Infinity"),
        "{a}"
    );
}

/// The last row of a psql run's output, unaligned.
async fn psql_rows(port: u16, sql: &str) -> String {
    let out = psql_to(port)
        .args(["-X", "-q", "-A", "-t", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
