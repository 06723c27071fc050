//! No statement a client can send takes pgdual down, and the last wire differences are closed:
//! statements too deep or too long to analyse are relayed and answered exactly as legacy
//! answers them; a client that sends Terminate around its StartupMessage sees what PostgreSQL
//! shows it; BackendKeyData carries legacy's process ID.

use std::time::Duration;

use pgdual_integration_tests::*;
use tokio_postgres::SimpleQueryMessage;

fn joined(n: usize, item: impl Fn(usize) -> String, sep: &str) -> String {
    (1..=n).map(item).collect::<Vec<_>>().join(sep)
}

/// The statements that once aborted pgdual, and deeper relatives of each construct.
fn deep_statements() -> Vec<(&'static str, String)> {
    vec![
        (
            "50,000-term sum",
            format!("SELECT {}", joined(50_000, |i| i.to_string(), "+")),
        ),
        (
            // 200,000 terms take legacy itself minutes to plan; the analysis bounds are the
            // same at 20,000 (the unit tests check the longer text).
            "20,000-term OR chain",
            format!(
                "SELECT count(*) FROM hardening_t WHERE {}",
                joined(20_000, |i| format!("x = {i}"), " OR ")
            ),
        ),
        (
            "3,000 nested parentheses",
            format!("SELECT {}1{}", "(".repeat(3_000), ")".repeat(3_000)),
        ),
        (
            "CASE nesting",
            format!(
                "SELECT {}1{}",
                "CASE WHEN true THEN ".repeat(1_000),
                " END".repeat(1_000)
            ),
        ),
        (
            "ARRAY nesting",
            format!("SELECT {}1{}", "ARRAY[".repeat(1_000), "]".repeat(1_000)),
        ),
        (
            "nested function calls",
            format!("SELECT {}1{}", "abs(".repeat(1_000), ")".repeat(1_000)),
        ),
        ("cast chain", format!("SELECT 1{}", "::int".repeat(10_000))),
        (
            "20,000-arm UNION ALL",
            format!(
                "SELECT count(*) FROM ({}) u",
                joined(20_000, |i| format!("SELECT {i}"), " UNION ALL ")
            ),
        ),
    ]
}

/// What a client sees of a simple query: the rows as text, or the error's SQLSTATE and
/// message.
async fn simple(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()),
        Err(e) => Err(describe(&e)),
    }
}

/// The same through the extended protocol (Parse, Describe, Bind, Execute), rows as text.
async fn extended(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({sql}) q");
    match c.query(wrapped.as_str(), &[]).await {
        Ok(rows) => Ok(rows.iter().map(|r| vec![r.get(0)]).collect()),
        Err(e) => Err(describe(&e)),
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => format!("not a database error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_long_statements_are_relayed_and_answered_as_legacy_answers() {
    let p = proxy();
    let port = p.local_addr().port();
    let direct = connect(legacy().port).await;
    direct
        .batch_execute(
            "DROP TABLE IF EXISTS hardening_t; CREATE TABLE hardening_t (x int);
             INSERT INTO hardening_t SELECT generate_series(1, 100);",
        )
        .await
        .unwrap();
    let through = connect(port).await;
    // A second session that must live through all of it.
    let bystander = connect(port).await;
    let mut sent = 0.0;
    for (what, sql) in deep_statements() {
        let want = simple(&direct, &sql).await;
        assert_eq!(
            simple(&through, &sql).await,
            want,
            "{what}, simple protocol"
        );
        let want = extended(&direct, &sql).await;
        assert_eq!(
            extended(&through, &sql).await,
            want,
            "{what}, extended protocol"
        );
        // A statement is analysed when it runs: in the extended protocol, one whose Parse
        // legacy refused never does.
        sent += if want.is_ok() { 2.0 } else { 1.0 };
        let v: i32 = bystander.query_one("SELECT 7", &[]).await.unwrap().get(0);
        assert_eq!(v, 7, "pgdual still serves other sessions after {what}");
    }
    let page = http_get(p.admin_addr().unwrap(), "/metrics", None).1;
    let skipped = metric(&page, "pgdual_analysis_skipped_total{reason=\"too_long\"}")
        + metric(&page, "pgdual_analysis_skipped_total{reason=\"too_deep\"}");
    assert!(
        skipped >= sent,
        "every one counted as not analysed: {skipped} of {sent}"
    );
    assert!(metric(&page, "pgdual_statements_total{kind=\"unknown\"}") >= sent);
    // An ordinary statement is still analysed.
    through
        .simple_query("SELECT x FROM hardening_t WHERE x = 1")
        .await
        .unwrap();
    let page = http_get(p.admin_addr().unwrap(), "/metrics", None).1;
    assert!(metric(&page, "pgdual_statements_total{kind=\"read\"}") >= 1.0);
}

/// Every byte a server sends until it closes the connection, split into messages; the
/// secret of BackendKeyData is blanked (it is pgdual's own through pgdual).
fn everything_until_close(port: u16, writes: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
    let mut c = RawClient::connect(port);
    for w in writes {
        c.send(w);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = Vec::new();
    while let Some((tag, mut body)) = c.read_message() {
        if tag == b'K' {
            body[4..].fill(0);
        }
        if tag == b'S' {
            continue; // ParameterStatus values (e.g. application_name) are not the point
        }
        out.push((tag, body));
    }
    out
}

fn pids(msgs: &[(u8, Vec<u8>)]) -> Vec<i32> {
    msgs.iter()
        .filter(|(t, _)| *t == b'K')
        .map(|(_, b)| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn terminate_around_the_startup_message_is_handled_as_postgres_does() {
    let p = proxy();
    let (proxy_port, legacy_port) = (p.local_addr().port(), legacy().port);
    let startup = startup_message("postgres", "postgres");
    let terminate = message(b'X', &[]);
    let together: Vec<u8> = [startup.clone(), terminate.clone()].concat();
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("StartupMessage and Terminate in one write", vec![together]),
        (
            "StartupMessage, then Terminate",
            vec![startup.clone(), terminate.clone()],
        ),
        // node-postgres `connect(); end()`: the Terminate is queued before the socket
        // connects, so it goes out first.
        (
            "Terminate, then StartupMessage",
            vec![terminate.clone(), startup.clone()],
        ),
        ("Terminate alone", vec![terminate]),
        ("a length of 3", vec![vec![0, 0, 0, 3, 1, 2, 3]]),
        ("a length over 10,000", vec![vec![0, 1, 0, 0, 0, 3, 0, 0]]),
        (
            "a CancelRequest of the wrong length",
            vec![vec![0, 0, 0, 10, 0x04, 0xd2, 0x16, 0x2e, 0, 0]],
        ),
    ];
    for (what, writes) in cases {
        let direct = everything_until_close(legacy_port, &writes);
        let mut through = everything_until_close(proxy_port, &writes);
        // Each connection is its own backend: only the process IDs may differ.
        assert_eq!(pids(&direct).len(), pids(&through).len(), "{what}");
        for (tag, body) in through.iter_mut() {
            if *tag == b'K' {
                body[..4].copy_from_slice(&pids(&direct)[0].to_be_bytes());
            }
        }
        assert_eq!(through, direct, "{what}");
    }
    // None of it counted as a session gone wrong, and pgdual still serves.
    let mut c = RawClient::startup(proxy_port);
    c.send(&query("SELECT 1"));
    assert!(c.read_until(b'Z').iter().any(|(t, _)| *t == b'D'));
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[test]
fn backend_key_data_carries_legacys_pid_and_notifications_match_it() {
    let p = proxy();
    let mut c = RawClient::connect(p.local_addr().port());
    c.send(&startup_message("postgres", "postgres"));
    let msgs = c.read_until(b'Z');
    let (_, key) = msgs
        .iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData");
    let told = i32_at(key, 0);
    c.send(&query(
        "LISTEN hardening; NOTIFY hardening, 'hi'; SELECT pg_backend_pid()",
    ));
    let msgs = c.read_until(b'Z');
    let (_, row) = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    let pid: i32 = String::from_utf8_lossy(&row[6..]).parse().unwrap();
    assert_eq!(pid, told, "pg_backend_pid() is the PID the client was told");
    let (_, note) = msgs
        .iter()
        .find(|(t, _)| *t == b'A')
        .expect("NotificationResponse");
    assert_eq!(
        i32_at(note, 0),
        told,
        "own notification carries the told PID"
    );
    // Tools that act on the told PID reach the right backend.
    let mut admin = RawClient::startup(legacy().port);
    admin.send(&query(&format!("SELECT pg_terminate_backend({told})")));
    let msgs = admin.read_until(b'Z');
    let (_, row) = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert_eq!(&row[6..], b"t", "the told PID is a real legacy backend");
    let msgs = c.read_until(b'E');
    let (_, err) = msgs.last().expect("terminated");
    assert_eq!(error_field(err, b'C').as_deref(), Some("57P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_session_among_several() {
    let p = proxy();
    let port = p.local_addr().port();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(port).await);
    }
    let victim = clients[2].cancel_token();
    let mut running = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        running.push(tokio::spawn(async move {
            let sql = if i == 2 {
                "SELECT pg_sleep(30)"
            } else {
                "SELECT pg_sleep(1.5)"
            };
            c.simple_query(sql).await.map_err(|e| describe(&e))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim.cancel_query(tokio_postgres::NoTls).await.unwrap();
    for (i, r) in running.into_iter().enumerate() {
        let r = r.await.unwrap();
        if i == 2 {
            let err = r.expect_err("cancelled");
            assert!(err.starts_with("57014"), "{err}");
        } else {
            assert!(r.is_ok(), "session {i} was not the one cancelled: {r:?}");
        }
    }
}
