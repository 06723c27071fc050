//! Dual-read through pgdual: reads of a mapped table answered by new (renamed columns, a
//! read-back transform), shadowed and compared, falling back to legacy whenever new cannot
//! answer, and modes flipped live under load, with clients seeing exactly what legacy says.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdual::app::Proxy;
use pgdual_integration_tests::*;
use pgdual_rules::TableName;
use tokio_postgres::SimpleQueryMessage;

/// Rules mapping legacy `public.<t>` to new `<t>.customers`, reads in `read` mode.
fn rules(t: &str, read: &str) -> String {
    format!(
        r#"
[[table]]
legacy = "public.{t}"
new = "{t}.customers"
keys = ["id"]
write = "on"
{read}
[table.columns]
customer_id = "id"
full_name = "first_name || ' ' || last_name"
email = "email"
created_at = "created_at"
score = "score"

[table.read_back]
first_name = "split_part(full_name, ' ', 1)"
last_name = "split_part(full_name, ' ', 2)"
"#
    )
}

async fn create(t: &str, new: &PgCluster) {
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "DROP TABLE IF EXISTS {t};
         CREATE TABLE {t} (id bigint PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL,
             email text, created_at timestamptz NOT NULL, score numeric(10,2));"
    ))
    .await
    .unwrap();
    let n = connect(new.port).await;
    n.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {t} CASCADE; CREATE SCHEMA {t};
         CREATE TABLE {t}.customers (customer_id bigint PRIMARY KEY, full_name text NOT NULL,
             email text, created_at timestamptz NOT NULL, score numeric(10,2));"
    ))
    .await
    .unwrap();
}

/// Inserts `n` rows through pgdual and waits until new has them all.
async fn fill(t: &str, port: u16, new: &PgCluster, n: i64) {
    let c = connect(port).await;
    c.batch_execute(&format!(
        "INSERT INTO {t} SELECT i, 'First' || i, 'Last' || i,
             CASE WHEN i % 5 = 0 THEN NULL ELSE 'user' || i || '@example.com' END,
             timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour', i * 1.25
         FROM generate_series(1, {n}) i"
    ))
    .await
    .unwrap();
    assert_converges(
        new,
        &format!("SELECT count(*)::text FROM {t}"),
        &format!("SELECT count(*)::text FROM {t}.customers"),
        30,
    )
    .await;
}

/// Every row of every result of a simple query, as text.
async fn simple(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = c.simple_query(sql).await.map_err(|e| e.to_string())?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).map(str::to_string))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .collect())
}

/// Rows of an extended-protocol query (binary results), rendered as text per column type.
async fn extended(
    c: &tokio_postgres::Client,
    sql: &str,
    id: i64,
) -> Result<Vec<(i64, String, String, Option<String>)>, String> {
    let rows = c.query(sql, &[&id]).await.map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Reads of `t` counted on `route`; a table not read yet has no sample.
fn reads(p: &Proxy, t: &str, route: &str) -> f64 {
    let page = p.metrics().render();
    let name = format!("pgdual_reads_total{{table=\"public.{t}\",route=\"{route}\"}}");
    sample(&page, &name).unwrap_or(0.0)
}

/// `public.<t>`.
fn public(t: &str) -> TableName {
    TableName {
        schema: "public".into(),
        name: t.into(),
    }
}

fn fallbacks(p: &Proxy, t: &str) -> u64 {
    p.reads()
        .all_tables()
        .iter()
        .filter(|(name, _)| *name == public(t))
        .map(|(_, r)| r.fallbacks.iter().map(|f| f.get()).sum::<u64>())
        .sum()
}

/// Waits until the mirror has checked the rules and learned legacy's columns.
async fn ready(p: &Proxy) {
    wait_mirror_ready(p).await;
    wait_legacy_columns(p).await;
}

/// A pgdual answering reads of `t` from new, `rows` rows mirrored there: the proxy, its
/// rules directory and its port.
async fn serving_from_new(t: &str, rows: i64) -> (Proxy, tempfile::TempDir, u16) {
    let new = new_db();
    create(t, new).await;
    let (p, dir) = proxy_with_rules(&rules(t, "read = \"new\""), new);
    ready(&p).await;
    let port = p.local_addr().port();
    fill(t, port, new, rows).await;
    (p, dir, port)
}

const SIMPLE_READS: &[&str] = &[
    "SELECT id, first_name, last_name, email FROM {t} WHERE id = 3",
    "SELECT * FROM {t} WHERE id = 7",
    "SELECT * FROM {t} WHERE id = 123456",
    "SELECT email, created_at, score FROM {t} ORDER BY id",
    "SELECT count(*), sum(score) FROM {t} WHERE email LIKE 'user1%'",
    "SELECT first_name AS f, u.last_name FROM {t} u WHERE u.id > 15 ORDER BY f DESC",
    "SELECT upper(last_name) FROM {t} WHERE id IN (1, 2, 3) ORDER BY 1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mode_answers_exactly_what_legacy_would_in_both_protocols() {
    let t = "dr_new";
    let (p, _dir, port) = serving_from_new(t, 20).await;
    // A fresh connection: the one that wrote reads its own writes from legacy until the
    // mirror has them.
    let via = connect(port).await;
    let direct = connect(legacy().port).await;
    let before = reads(&p, t, "new");
    for sql in SIMPLE_READS {
        let sql = sql.replace("{t}", t);
        assert_eq!(
            simple(&via, &sql).await.unwrap(),
            simple(&direct, &sql).await.unwrap(),
            "{sql}"
        );
    }
    let ext = format!("SELECT id, first_name, last_name, email FROM {t} WHERE id = $1");
    // Prepared once, executed many times (Bind/Execute/Sync on a named statement).
    let stmt = via.prepare(&ext).await.unwrap();
    for id in 1..=20i64 {
        let a = via.query(&stmt, &[&id]).await.unwrap();
        let b = direct.query(&ext, &[&id]).await.unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.get::<_, String>(1), y.get::<_, String>(1));
            assert_eq!(x.get::<_, Option<String>>(3), y.get::<_, Option<String>>(3));
        }
    }
    let served = reads(&p, t, "new") - before;
    assert_eq!(
        served,
        (SIMPLE_READS.len() + 20) as f64,
        "every read was answered by new; fallbacks: {}",
        p.metrics().render()
    );
    assert_eq!(fallbacks(&p, t), 0);
    // Where those reads' time went: on new and in pgdual, one observation each per read.
    let page = p.metrics().render();
    let spent = |part: &str, what: &str| {
        metric(
            &page,
            &format!("pgdual_read_seconds_{part}{{route=\"new\",spent_in=\"{what}\"}}"),
        )
    };
    assert!(spent("count", "new") >= served, "{page}");
    assert_eq!(spent("count", "new"), spent("count", "pgdual"));
    assert!(
        spent("sum", "new") > 0.0 && spent("sum", "pgdual") > 0.0,
        "{page}"
    );
    // One-shot statements (prepared, executed, closed by the driver): the close goes to
    // legacy behind the read, so a read that arrives while legacy still owes its answer is
    // relayed there; either way the answer is legacy's.
    let one_shot = connect(port).await;
    for id in [1i64, 5, 9, 999] {
        assert_eq!(
            extended(&one_shot, &ext, id).await.unwrap(),
            extended(&direct, &ext, id).await.unwrap()
        );
    }
    assert!(
        reads(&p, t, "new") - before > served,
        "one-shot reads reach new too"
    );
    assert_eq!(fallbacks(&p, t), 0);

    // psql's output through pgdual is byte for byte what legacy gives.
    for sql in SIMPLE_READS.iter().take(4) {
        let sql = sql.replace("{t}", t);
        let run = |port: u16| {
            let out = psql_to(port).args(["-c", &sql]).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        assert_eq!(
            String::from_utf8(run(port)).unwrap(),
            String::from_utf8(run(legacy().port)).unwrap()
        );
    }
    assert_eq!(fallbacks(&p, t), 0);

    // Reads that must stay on legacy do, and still answer rightly.
    let before = reads(&p, t, "new");
    for sql in [
        "SELECT id FROM {t} WHERE id = 1 FOR UPDATE",
        "SELECT id, random() < 2 FROM {t} WHERE id = 1",
    ] {
        let sql = sql.replace("{t}", t);
        assert_eq!(simple(&via, &sql).await.unwrap().len(), 1, "{sql}");
    }
    via.batch_execute(&format!("BEGIN; SELECT * FROM {t} WHERE id = 2; COMMIT"))
        .await
        .unwrap();
    assert_eq!(reads(&p, t, "new"), before, "none of those went to new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mode_with_the_new_database_stopped_is_served_by_legacy() {
    let t = "dr_down";
    let new = Arc::new(start_cluster().await);
    create(t, &new).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "read = \"new\""), &new);
    ready(&p).await;
    let port = p.local_addr().port();
    fill(t, port, &new, 10).await;
    let n = new.clone();
    tokio::task::spawn_blocking(move || n.stop()).await.unwrap();
    let via = connect(port).await;
    let direct = connect(legacy().port).await;
    let before = reads(&p, t, "new");
    for round in 0..3 {
        for sql in SIMPLE_READS {
            let sql = sql.replace("{t}", t);
            assert_eq!(
                simple(&via, &sql).await.unwrap(),
                simple(&direct, &sql).await.unwrap(),
                "round {round}: {sql}"
            );
        }
        let ext = format!("SELECT id, first_name, last_name, email FROM {t} WHERE id = $1");
        assert_eq!(
            extended(&via, &ext, 4).await.unwrap(),
            extended(&direct, &ext, 4).await.unwrap()
        );
    }
    assert_eq!(reads(&p, t, "new"), before, "new answered nothing");
    // Reads that arrived while legacy still owed the driver's statement close went to
    // legacy directly; every other one was a fallback, for new being unavailable.
    let fell_back = fallbacks(&p, t);
    assert!(fell_back >= 2 * SIMPLE_READS.len() as u64, "{fell_back}");
    let unavailable = p
        .reads()
        .table(&public(t))
        .fallback(pgdual::reads::Fallback::Unavailable);
    assert_eq!(unavailable, fell_back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_counts_and_samples_a_row_corrupted_in_new_while_clients_get_legacy() {
    let t = "dr_shadow";
    let new = new_db();
    create(t, new).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "read = \"shadow\""), new);
    ready(&p).await;
    let port = p.local_addr().port();
    fill(t, port, new, 10).await;
    corrupt_row_2_in_new(t, new).await;
    let via = connect(port).await;
    let table = p.reads().table(&public(t));
    for id in 1..=5 {
        let rows = simple(
            &via,
            &format!("SELECT first_name, last_name FROM {t} WHERE id = {id}"),
        )
        .await
        .unwrap();
        assert_eq!(
            rows,
            [[Some(format!("First{id}")), Some(format!("Last{id}"))]],
            "the client gets legacy's answer"
        );
    }
    let ext = format!("SELECT id, first_name, last_name, email FROM {t} WHERE id = $1");
    assert_eq!(extended(&via, &ext, 2).await.unwrap()[0].1, "First2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while table.shadow_matches.get() + table.shadow_mismatches.get() < 6 {
        assert!(
            Instant::now() < deadline,
            "shadow reads were never compared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(table.shadow_mismatches.get(), 2, "id 2, in both protocols");
    assert_eq!(table.shadow_matches.get(), 4);
    assert_eq!(table.shadow_errors.get(), 0);
    // The comparisons ran on the shadow thread, not on the workers relaying clients.
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(threads.iter().any(|c| c == "pgdual-shadow"), "{threads:?}");
    // Each comparison's time is recorded once it is done, on new and in pgdual.
    let shadow_times = |what: &str| {
        sample(
            &p.metrics().render(),
            &format!("pgdual_read_seconds_count{{route=\"shadow\",spent_in=\"{what}\"}}"),
        )
        .unwrap_or(0.0)
    };
    while shadow_times("new") < 6.0 || shadow_times("pgdual") < 6.0 {
        assert!(
            Instant::now() < deadline,
            "shadow read times were never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, body) = http_get(p.admin_addr().unwrap(), "/reads/mismatches", None);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The simple-protocol read's sample (shadow comparisons finish in any order).
    let sample = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["fingerprint"].as_str().unwrap().contains("id = ?"))
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(sample["column"], "first_name", "{body}");
    assert_eq!(
        sample["legacy_value"], "<redacted>",
        "values are redacted by default"
    );
    assert_eq!(sample["key"], "<redacted>");
    assert!(!body.contains("Mallory"), "{body}");
    let (_, status) = http_get(p.admin_addr().unwrap(), "/status", None);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let rate = v["reads"][format!("public.{t}")]["shadow_match_rate"]
        .as_f64()
        .unwrap();
    assert!((rate - 4.0 / 6.0).abs() < 1e-9, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_read_settings_are_rejected_with_reasons_and_the_old_rules_serve() {
    let t = "dr_invalid";
    let new = new_db();
    create(t, new).await;
    let (p, dir) = proxy_with_rules(&rules(t, "read = \"new\""), new);
    ready(&p).await;
    let admin = p.admin_addr().unwrap();
    let version = p.rules().load().version;
    let path = format!("/tables/public.{t}/read");
    for (body, reason) in [
        (r#"{"mode": "sideways"}"#, "sideways"),
        (r#"{"mode": "new", "percent": 150}"#, "percent"),
        (r#"{"mode": "new", "pct": 5}"#, "pct"),
        ("not json", "expected"),
    ] {
        let (code, answer) = http_put(admin, &path, body);
        assert_eq!(code, 422, "{body}: {answer}");
        assert!(answer.contains(reason), "{body}: {answer}");
        assert!(answer.contains("rejected"), "{answer}");
    }
    let (code, answer) = http_put(admin, "/tables/public.nope/read", r#"{"mode": "new"}"#);
    assert_eq!(code, 404, "{answer}");
    // A read-back that does not run on new, through the whole-set endpoint.
    let bad = rules(t, "read = \"new\"").replace(
        "split_part(full_name, ' ', 2)",
        "split_part(fullname, ' ', 2)",
    );
    let (code, answer) = http_put(admin, "/rules", &bad);
    assert_eq!(code, 422, "{answer}");
    assert!(answer.contains("read_back.last_name"), "{answer}");
    // And through the file.
    std::fs::write(
        dir.path().join("rules.toml"),
        rules(t, "read = \"new\"\nread_percent = 150"),
    )
    .unwrap();
    let outcome = p.rules().reload_file().await;
    let text = format!("{outcome:?}");
    assert!(
        text.contains("read_percent: 150 is not a percentage"),
        "{text}"
    );
    assert_eq!(p.rules().load().version, version, "the old rules stay");
    // Still serving reads from new.
    let port = p.local_addr().port();
    fill(t, port, new, 3).await;
    let via = connect(port).await;
    let before = reads(&p, t, "new");
    simple(&via, &format!("SELECT email FROM {t} WHERE id = 1"))
        .await
        .unwrap();
    assert_eq!(reads(&p, t, "new"), before + 1.0);
}

/// Sixteen clients read and write for twenty seconds while the table's read mode changes
/// every few hundred milliseconds, through the API and through edits of the rules file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_flipped_under_load_cost_clients_nothing() {
    let t = "dr_flip";
    let new = new_db();
    create(t, new).await;
    let (p, dir) = proxy_with_rules(&rules(t, "read = \"legacy\""), new);
    ready(&p).await;
    let port = p.local_addr().port();
    const ROWS: i64 = 320;
    fill(t, port, new, ROWS).await;
    let until = Instant::now() + Duration::from_secs(20);
    let errors = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..16i64 {
        let (errors, wrong, done) = (errors.clone(), wrong.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let c = connect(port).await;
            let check = |ok: bool, what: String| {
                if !ok {
                    wrong.fetch_add(1, Relaxed);
                    eprintln!("wrong answer: {what}");
                }
            };
            let mut n = 0i64;
            while Instant::now() < until {
                n += 1;
                // A static row: its names never change.
                let id = 1 + (n * 7 + i * 13) % (ROWS / 2);
                let own = ROWS / 2 + 1 + i * 10 + n % 10;
                let outcome: Result<(), String> = async {
                    // Half the clients only read (simple and extended protocol), so their
                    // reads are routed; the others write, which pins their reads to legacy
                    // until the mirror has caught up.
                    if i % 4 == 0 {
                        let rows = simple(
                            &c,
                            &format!("SELECT first_name, last_name FROM {t} WHERE id = {id}"),
                        )
                        .await?;
                        check(
                            rows == [[Some(format!("First{id}")), Some(format!("Last{id}"))]],
                            format!("{id}: {rows:?}"),
                        );
                    } else if i % 4 == 1 {
                        let rows = extended(
                            &c,
                            &format!(
                                "SELECT id, first_name, last_name, email FROM {t} WHERE id = $1"
                            ),
                            id,
                        )
                        .await?;
                        check(
                            rows.len() == 1
                                && rows[0].1 == format!("First{id}")
                                && rows[0].2 == format!("Last{id}"),
                            format!("{id}: {rows:?}"),
                        );
                    } else {
                        // Write one of this client's own rows, then read it back.
                        let email = format!("c{i}-{n}@example.com");
                        c.execute(
                            &format!("UPDATE {t} SET email = $1 WHERE id = {own}"),
                            &[&email],
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        let rows =
                            simple(&c, &format!("SELECT email FROM {t} WHERE id = {own}")).await?;
                        check(
                            rows == [[Some(email.clone())]],
                            format!("own row {own}: {rows:?} != {email}"),
                        );
                    }
                    Ok(())
                }
                .await;
                match outcome {
                    Ok(()) => done.fetch_add(1, Relaxed),
                    Err(e) => {
                        eprintln!("client error: {e}");
                        errors.fetch_add(1, Relaxed)
                    }
                };
            }
        }));
    }
    let admin = p.admin_addr().unwrap();
    let file = dir.path().join("rules.toml");
    let modes = [
        ("new", 100),
        ("shadow", 100),
        ("legacy", 100),
        ("new", 50),
        ("shadow", 30),
        ("new", 100),
    ];
    let mut flips = 0;
    while Instant::now() < until {
        let (mode, percent) = modes[flips % modes.len()];
        if flips % 2 == 0 {
            let (code, answer) = tokio::task::spawn_blocking(move || {
                http_put(
                    admin,
                    "/tables/public.dr_flip/read",
                    &format!(r#"{{"mode": "{mode}", "percent": {percent}}}"#),
                )
            })
            .await
            .unwrap();
            assert_eq!(code, 200, "{answer}");
        } else {
            std::fs::write(
                &file,
                rules(t, &format!("read = \"{mode}\"\nread_percent = {percent}")),
            )
            .unwrap();
        }
        flips += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(errors.load(Relaxed), 0, "no client saw an error");
    assert_eq!(wrong.load(Relaxed), 0, "every answer was right");
    assert!(
        done.load(Relaxed) > 500,
        "the load ran: {}",
        done.load(Relaxed)
    );
    assert!(flips >= 40, "{flips} flips");
    eprintln!(
        "{} reads on legacy, {} on new, {} shadowed, {} fallbacks, {flips} flips, {} rounds",
        reads(&p, t, "legacy"),
        reads(&p, t, "new"),
        reads(&p, t, "shadow"),
        fallbacks(&p, t),
        done.load(Relaxed)
    );
    assert!(reads(&p, t, "new") > 100.0, "new answered reads");
    assert!(reads(&p, t, "shadow") > 100.0, "reads were shadowed");
    assert!(p.rules().load().version > 20, "the flips took effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_log_values_a_sample_shows_a_binary_key_decoded() {
    let t = "dr_sample_key";
    let new = new_db();
    create(t, new).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, rules(t, "read = \"shadow\"")).unwrap();
    let p = proxy_with(|c| {
        c.rules_file = Some(path);
        c.new.host = "127.0.0.1".into();
        c.new.port = new.port;
        c.mirror.poll_interval_ms = 50;
        c.mirror.dead_letter_file = dir.path().join("dead.jsonl");
        c.reads.log_values = true;
    });
    ready(&p).await;
    let port = p.local_addr().port();
    fill(t, port, new, 3).await;
    corrupt_row_2_in_new(t, new).await;
    let via = connect(port).await;
    // tokio-postgres sends the bigint parameter in binary: 8 bytes, not the text "2".
    let ext = format!("SELECT id, first_name, last_name, email FROM {t} WHERE id = $1");
    assert_eq!(extended(&via, &ext, 2).await.unwrap()[0].1, "First2");
    let table = p.reads().table(&public(t));
    let deadline = Instant::now() + Duration::from_secs(10);
    while table.shadow_mismatches.get() < 1 {
        assert!(Instant::now() < deadline, "the mismatch was never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = http_get(p.admin_addr().unwrap(), "/reads/mismatches", None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sample = &v["samples"][0];
    assert_eq!(sample["key"], "2", "{body}");
    assert_eq!(sample["legacy_value"], "First2", "{body}");
}

/// Changes customer 2 in new behind pgdual's back, so shadow reads of it mismatch.
async fn corrupt_row_2_in_new(t: &str, new: &PgCluster) {
    connect(new.port)
        .await
        .batch_execute(&format!(
            "UPDATE {t}.customers SET full_name = 'Mallory Last2' WHERE customer_id = 2"
        ))
        .await
        .unwrap();
}

/// Columns of every kind a literal may be compared with, mapped with `id` renamed.
const LIT_RULES: &str = r#"
[[table]]
legacy = "public.lit"
new = "lit.items"
keys = ["id"]
write = "on"
read = "new"
[table.columns]
item_id = "id"
name = "name"
code = "code"
price = "price"
qty = "qty"
ratio = "ratio"
ts = "ts"
day = "day"
dur = "dur"
tags = "tags"
flag = "flag"
email = "email"
"#;

const LIT_COLUMNS: &str = "name text, code char(5), price numeric(10,2), qty int, ratio float8, \
     ts timestamptz, day date, dur interval, tags text[], flag bool, email text";

/// Literal shapes a simple query may carry, each with whether new must answer it (the
/// others stay on legacy by the planner's rules). Every one must answer as legacy does.
const LITERAL_SHAPES: &[(&str, bool)] = &[
    ("SELECT * FROM lit WHERE id = 3", true),
    ("SELECT * FROM lit WHERE id = -3", true),
    (
        "SELECT id FROM lit WHERE qty = -2147483648 OR qty = 2147483647",
        true,
    ),
    (
        "SELECT id FROM lit WHERE id = 3000000000 OR id < -9223372036854775807",
        true,
    ),
    ("SELECT id FROM lit WHERE price = 12.50", true),
    (
        "SELECT id FROM lit WHERE price > 1e1 AND price < 2.5E1 ORDER BY id",
        true,
    ),
    (
        "SELECT id, ratio FROM lit WHERE ratio < -0.5 OR ratio = .25 ORDER BY id",
        true,
    ),
    ("SELECT id FROM lit WHERE qty = 3.0", true),
    ("SELECT id FROM lit WHERE qty = 99999999999999999999", true),
    ("SELECT id FROM lit WHERE name = 'it''s'", true),
    ("SELECT id FROM lit WHERE name = E'it\\'s'", true),
    ("SELECT id FROM lit WHERE name = $$it's$$", true),
    ("SELECT id FROM lit WHERE name = $q$O'Neil 'x'$q$", true),
    ("SELECT id FROM lit WHERE name LIKE 'it%' ORDER BY id", true),
    ("SELECT id FROM lit WHERE name = U&'d\\0061t'", true),
    ("SELECT id, code FROM lit WHERE code = 'ab'", true),
    ("SELECT id, code FROM lit WHERE code = 'ab   '", true),
    ("SELECT id FROM lit WHERE email IS NULL ORDER BY id", true),
    ("SELECT id FROM lit WHERE email = NULL", true),
    (
        "SELECT id FROM lit WHERE coalesce(email, 'none') = 'none' ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM lit WHERE ts > '2024-01-01 10:00:00+02' ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM lit WHERE ts > '2024-01-01'::timestamptz ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM lit WHERE ts < timestamptz '2024-01-01 05:00' ORDER BY id",
        true,
    ),
    ("SELECT id FROM lit WHERE day = '2024-01-03'", true),
    ("SELECT id FROM lit WHERE day = DATE '2024-01-03'", true),
    (
        "SELECT id FROM lit WHERE ts > '2024-01-01'::timestamptz + INTERVAL '1 day' ORDER BY id",
        true,
    ),
    ("SELECT id FROM lit WHERE dur > '1 hour' ORDER BY id", true),
    (
        "SELECT id FROM lit WHERE dur >= INTERVAL '90 minutes' ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM lit WHERE dur = '1 day 02:00'::interval",
        true,
    ),
    ("SELECT id FROM lit WHERE tags = '{a,b}' ORDER BY id", true),
    (
        "SELECT id FROM lit WHERE tags @> ARRAY['b'] ORDER BY id",
        true,
    ),
    ("SELECT id FROM lit WHERE 'c' = ANY(tags) ORDER BY id", true),
    (
        "SELECT id FROM lit WHERE id = ANY('{1,2,3}') ORDER BY id",
        true,
    ),
    ("SELECT id FROM lit WHERE tags = '{}'::text[]", true),
    ("SELECT id FROM lit WHERE flag = 'true' ORDER BY id", true),
    (
        "SELECT id FROM lit WHERE flag = true AND id IN (1, 2, 3, 4) ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM lit WHERE id BETWEEN 2 AND 5 ORDER BY id",
        true,
    ),
    ("SELECT id, name FROM lit ORDER BY 2, 1 LIMIT 3", true),
    ("SELECT id FROM lit ORDER BY id LIMIT 2 OFFSET 1", true),
    (
        "SELECT id FROM lit ORDER BY id FETCH FIRST 2 ROWS ONLY",
        true,
    ),
    (
        "SELECT id, 'x' AS tag, 1.50 AS n, -1, NULL FROM lit WHERE id = 2",
        true,
    ),
    ("SELECT id, 'x' FROM lit WHERE id = 3", true),
    (
        "SELECT id::numeric(10,2), price::numeric(6,1) FROM lit WHERE id = 2",
        true,
    ),
    ("SELECT id FROM lit WHERE price = 1.5::numeric(10,2)", true),
    (
        "SELECT count(*), flag FROM lit WHERE price * 2 > 10 GROUP BY 2 ORDER BY 2",
        true,
    ),
    ("SELECT id FROM lit WHERE name || '!' = 'bob!'", true),
    (
        "SELECT id FROM lit WHERE length(name) > 3 AND substr(name, 1, 2) = 'it' ORDER BY id",
        true,
    ),
    (
        "SELECT id FROM lit WHERE qty::int8 + 1 = 3 OR qty::int8 - -1 = 4 ORDER BY id",
        true,
    ),
    ("SELECT id FROM lit WHERE ratio = 1e-3", true),
    ("SELECT id FROM lit WHERE ratio::text = '-0'", true),
    (
        "SELECT id FROM lit WHERE email = 'user1@example.com' /* 'x' 5 */ -- 7\n",
        true,
    ),
];

/// Each literal shape through pgdual in new mode answers exactly as legacy does, new answers
/// the ones it can, and a workload of interpolated literals is planned once per shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_shapes_answer_as_legacy_in_new_mode_and_plan_once_per_shape() {
    let new = new_db();
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "DROP TABLE IF EXISTS lit; CREATE TABLE lit (id bigint PRIMARY KEY, {LIT_COLUMNS})"
    ))
    .await
    .unwrap();
    connect(new.port)
        .await
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS lit CASCADE; CREATE SCHEMA lit;
             CREATE TABLE lit.items (item_id bigint PRIMARY KEY, {LIT_COLUMNS})"
        ))
        .await
        .unwrap();
    let (p, _dir) = proxy_with_rules(LIT_RULES, new);
    ready(&p).await;
    let port = p.local_addr().port();
    connect(port)
        .await
        .batch_execute(
            "INSERT INTO lit VALUES
             (1, 'it''s', 'ab', 12.50, -2147483648, -0.75, '2024-01-01 07:00+00', '2024-01-03',
              '1 day 02:00', '{a,b}', true, NULL),
             (2, 'itself', 'abc', 5.00, 2, .25, '2024-01-02 00:00+00', '2024-01-04', '90 minutes',
              '{b,c}', false, 'user1@example.com'),
             (3, 'bob', 'ab   ', 20.00, 3, 1e-3, '2023-12-31 23:00+00', '2024-01-03', '30 minutes',
              '{}', true, 'none'),
             (4, 'dat', NULL, 7.25, 2147483647, -0.0, '2024-01-05 12:00+00', NULL, '2 hours', NULL,
              NULL, 'x@example.com'),
             (3000000000, 'O''Neil ''x''', 'zz', 0.01, 0, 0.5, '2024-01-01 05:00+00', '2024-01-01',
              '0', '{c}', false, NULL)",
        )
        .await
        .unwrap();
    assert_converges(
        new,
        "SELECT count(*)::text FROM lit",
        "SELECT count(*)::text FROM lit.items",
        30,
    )
    .await;
    let via = connect(port).await;
    let direct = connect(legacy().port).await;
    let mut stayed = Vec::new();
    for (sql, routed) in LITERAL_SHAPES {
        let before = reads(&p, "lit", "new");
        let got = simple(&via, sql).await;
        let want = simple(&direct, sql).await;
        assert_eq!(got, want, "{sql}");
        assert!(want.is_ok(), "{sql}: {want:?}");
        if reads(&p, "lit", "new") == before && *routed {
            stayed.push(*sql);
        }
        assert_eq!(fallbacks(&p, "lit"), 0, "{sql} fell back");
    }
    assert!(stayed.is_empty(), "new did not answer: {stayed:#?}");

    // An application interpolating its values: one shape, many texts, one plan.
    let (shapes, texts) = p.reads().plan_counts();
    let before = reads(&p, "lit", "new");
    for i in 0..50 {
        let sql = format!(
            "SELECT id, name FROM lit WHERE id = {} AND name <> 'n{i}''s'",
            i % 5 + 1
        );
        assert_eq!(
            simple(&via, &sql).await,
            simple(&direct, &sql).await,
            "{sql}"
        );
    }
    assert_eq!(reads(&p, "lit", "new") - before, 50.0);
    assert_eq!(
        p.reads().plan_counts(),
        (shapes + 1, texts),
        "one plan for the shape"
    );
    assert_eq!(fallbacks(&p, "lit"), 0);

    // Sessions started with other date styles share new's pooled connections: a date
    // literal means what the session's DateStyle says, and prints as it says.
    let sql = "SELECT id, ts, day FROM lit WHERE day < '04/01/2024' AND ts > '01/01/2024 06:00' ORDER BY id";
    for style in ["ISO, DMY", "SQL, MDY", "German, DMY", "ISO, MDY"] {
        let run = |port: u16| {
            let out = psql_to(port)
                .env("PGDATESTYLE", style)
                .args(["-c", sql])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let before = reads(&p, "lit", "new");
        assert_eq!(run(port), run(legacy().port), "{style}");
        assert_eq!(
            reads(&p, "lit", "new"),
            before + 1.0,
            "new answered under {style}"
        );
    }
    assert_eq!(fallbacks(&p, "lit"), 0);
}

/// Parse, Bind, Describe, Execute and Sync of the unnamed statement in one batch (libpq's
/// PQexecParams, pgbench -M extended, tokio-postgres' typed queries): new answers it as
/// legacy would, and a later Bind of the unnamed statement without a Parse still reaches the
/// statement the client parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_batches_are_answered_by_new_as_legacy_would() {
    use tokio_postgres::types::Type;

    let t = "dr_unnamed";
    let (p, _dir, port) = serving_from_new(t, 20).await;
    let via = connect(port).await;
    let direct = connect(legacy().port).await;

    // tokio-postgres: one batch per query, the unnamed statement, binary parameters and
    // results.
    let sql = format!("SELECT id, first_name, email, score::text FROM {t} WHERE id = $1");
    let before = reads(&p, t, "new");
    for id in [1i64, 5, 20, 21] {
        let row = |r: &tokio_postgres::Row| -> (i64, String, Option<String>, Option<String>) {
            (r.get(0), r.get(1), r.get(2), r.get(3))
        };
        let a = via.query_typed(&sql, &[(&id, Type::INT8)]).await.unwrap();
        let b = direct
            .query_typed(&sql, &[(&id, Type::INT8)])
            .await
            .unwrap();
        assert_eq!(
            a.iter().map(row).collect::<Vec<_>>(),
            b.iter().map(row).collect::<Vec<_>>()
        );
    }
    assert_eq!(reads(&p, t, "new") - before, 4.0, "new answered every one");
    assert_eq!(fallbacks(&p, t), 0);

    // The same by hand: the batch, then a Bind of the unnamed statement alone, which legacy
    // can only answer if it has the statement the client parsed.
    let mut raw = tokio::task::spawn_blocking(move || RawClient::startup(port))
        .await
        .unwrap();
    let parse = {
        let mut b = vec![0u8];
        b.extend_from_slice(format!("SELECT first_name FROM {t} WHERE id = $1").as_bytes());
        b.extend_from_slice(&[0, 0, 0]);
        message(b'P', &b)
    };
    let bind = |id: &str| {
        let mut b = vec![0u8, 0, 0, 0, 0, 1];
        b.extend_from_slice(&(id.len() as i32).to_be_bytes());
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(&[0, 0]);
        message(b'B', &b)
    };
    let describe = message(b'D', b"P\0");
    let execute = message(b'E', &[0, 0, 0, 0, 0]);
    let sync = message(b'S', b"");
    let before = reads(&p, t, "new");
    let batch = [parse, bind("7"), describe, execute.clone(), sync.clone()].concat();
    let rebind = [bind("9"), execute, sync].concat();
    let (first, second) = tokio::task::spawn_blocking(move || {
        raw.send(&batch);
        let first = raw.read_until(b'Z');
        raw.send(&rebind);
        (first, raw.read_until(b'Z'))
    })
    .await
    .unwrap();
    let tags = |m: &[(u8, Vec<u8>)]| m.iter().map(|(t, _)| *t as char).collect::<String>();
    assert_eq!(tags(&first), "12TDCZ", "{first:?}");
    assert!(first[3].1.ends_with(b"First7"), "{first:?}");
    assert_eq!(reads(&p, t, "new") - before, 1.0, "new answered the batch");
    assert_eq!(tags(&second), "2DCZ", "no stray ParseComplete: {second:?}");
    assert!(second[1].1.ends_with(b"First9"), "{second:?}");

    // pgbench -M extended through pgdual: new answers its reads.
    let script = _dir.path().join("read.sql");
    std::fs::write(
        &script,
        format!("\\set id random(1, 20)\nSELECT first_name, email FROM {t} WHERE id = :id;\n"),
    )
    .unwrap();
    for mode in ["extended", "simple"] {
        let before = reads(&p, t, "new");
        let out = std::process::Command::new(legacy().bin_dir().join("pgbench"))
            .args([
                "-n",
                "-M",
                mode,
                "-c",
                "2",
                "-t",
                "50",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .arg("-p")
            .arg(port.to_string())
            .arg("-f")
            .arg(&script)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            reads(&p, t, "new") - before,
            100.0,
            "-M {mode}: new answered every read"
        );
    }
    assert_eq!(fallbacks(&p, t), 0);
}
