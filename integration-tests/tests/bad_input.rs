//! Bad input and failures: every case gets a clear ErrorResponse with a SQLSTATE (or the
//! protocol's own answer), the connection closes, and pgdual keeps serving everyone else.

use std::time::{Duration, Instant};

use pgdual_integration_tests::*;

fn expect_fatal(c: &mut RawClient, code: &str) -> String {
    let msgs = c.read_until(b'E');
    let (tag, body) = msgs.last().expect("an answer");
    assert_eq!(*tag, b'E', "got {msgs:?}");
    assert_eq!(error_field(body, b'S').as_deref(), Some("FATAL"));
    assert_eq!(error_field(body, b'C').as_deref(), Some(code));
    assert!(c.closed(), "connection closed after the error");
    error_field(body, b'M').unwrap()
}

/// The proxy still relays a normal session.
async fn still_serves(port: u16) {
    let c = connect(port).await;
    let v: i32 = c.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

#[tokio::test]
async fn oversized_message_gets_54000_and_the_connection_closes() {
    let p = proxy_with(|c| c.limits.max_message_bytes = 64 * 1024);
    let port = p.local_addr().port();
    let mut c = RawClient::startup(port);
    let mut frame = vec![b'Q'];
    frame.extend_from_slice(&(1_000_000i32).to_be_bytes());
    frame.extend_from_slice(b"SELECT 1");
    c.send(&frame);
    let msg = expect_fatal(&mut c, "54000");
    assert!(msg.contains("over the limit of 65536 bytes"), "{msg}");
    // A query just under the limit still works.
    let under = connect(port).await;
    let sql = format!("SELECT length('{}')", "z".repeat(60 * 1024));
    let n: i32 = under.query_one(sql.as_str(), &[]).await.unwrap().get(0);
    assert_eq!(n, 60 * 1024);
    assert_eq!(
        p.metrics()
            .errors(pgdual::telemetry::metrics::ErrorSource::Client),
        1
    );
}

#[tokio::test]
async fn malformed_frames_get_08p01() {
    let p = proxy();
    let port = p.local_addr().port();
    // A length field shorter than itself.
    let mut c = RawClient::startup(port);
    c.send(&[b'Q', 0, 0, 0, 2]);
    expect_fatal(&mut c, "08P01");
    // A negative length.
    let mut c = RawClient::startup(port);
    c.send(&[b'P', 0xff, 0xff, 0xff, 0xf0]);
    expect_fatal(&mut c, "08P01");
    // A startup packet with an impossible length: closed without an answer, as PostgreSQL
    // does (relay_hardening.rs compares more of these with legacy directly).
    let mut c = RawClient::connect(port);
    c.send(&[0, 0, 0, 3, 1, 2, 3]);
    assert_eq!(c.read_message(), None);
    // A startup packet whose parameters are not terminated.
    let mut c = RawClient::connect(port);
    c.send(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r']);
    expect_fatal(&mut c, "08P01");
    // Data smuggled after an SSLRequest, ahead of the answer.
    let mut c = RawClient::connect(port);
    let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    bytes.extend(query("SELECT 1"));
    c.send(&bytes);
    expect_fatal(&mut c, "08P01");
    still_serves(port).await;
}

#[tokio::test]
async fn unknown_message_types_reach_legacy_which_answers() {
    let p = proxy();
    let mut c = RawClient::startup(p.local_addr().port());
    c.send(&message(b'!', b"junk"));
    let msgs = c.read_until(b'E');
    let (_, body) = msgs.last().unwrap();
    // The answer is legacy's own, exactly as a direct connection would get.
    assert_eq!(error_field(body, b'C').as_deref(), Some("08P01"));
    assert!(error_field(body, b'M')
        .unwrap()
        .contains("invalid frontend message type"));
}

#[tokio::test]
async fn ssl_and_gssenc_requests_are_answered_n_without_tls_configured() {
    let p = proxy();
    let port = p.local_addr().port();
    let mut c = RawClient::connect(port);
    c.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]); // GSSENCRequest
    assert_eq!(c.read_byte(), Some(b'N'));
    c.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]); // SSLRequest
    assert_eq!(c.read_byte(), Some(b'N'));
    c.send(&startup_message("postgres", "postgres"));
    let msgs = c.read_until(b'Z');
    assert_eq!(msgs.last().unwrap().0, b'Z');
}

#[tokio::test]
async fn too_many_clients_get_53300() {
    let p = proxy_with(|c| c.limits.max_client_connections = 2);
    let port = p.local_addr().port();
    let a = connect(port).await;
    let b = connect(port).await;
    let err = connect_as(port, "postgres", None)
        .await
        .expect_err("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    drop(a);
    // The slot frees once the session has closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect_as(port, "postgres", None).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
    drop(b);
}

#[tokio::test]
async fn legacy_unreachable_gets_08001_naming_it_and_recovery_needs_no_restart() {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(ClusterOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let p = pgdual::Proxy::start(config_for(&cluster)).unwrap();
    let port = p.local_addr().port();
    still_serves(port).await;
    cluster.stop();
    let err = connect_as(port, "postgres", None)
        .await
        .expect_err("refused");
    let db = err
        .as_db_error()
        .expect("an ErrorResponse, not a dropped connection");
    assert_eq!(db.code().code(), "08001");
    assert!(
        db.message()
            .contains(&format!("127.0.0.1:{}", cluster.port)),
        "{}",
        db.message()
    );
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_server().unwrap();
        cluster
    })
    .await
    .unwrap();
    still_serves(port).await;
    drop(cluster);
}

#[tokio::test]
async fn legacy_going_away_mid_session_gets_an_error_not_a_hang() {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(ClusterOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let p = pgdual::Proxy::start(config_for(&cluster)).unwrap();
    let c = connect(p.local_addr().port()).await;
    c.simple_query("SELECT 1").await.unwrap();
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), c.simple_query("SELECT 1"))
        .await
        .expect("no hang")
        .unwrap_err();
    // Legacy's own FATAL (57P01, fast shutdown) or a closed connection: never a hang.
    assert!(
        err.code().is_some_and(|c| c.code() == "57P01") || err.is_closed(),
        "{err}"
    );
}

#[tokio::test]
async fn client_vanishing_mid_query_releases_its_legacy_backend() {
    let p = proxy();
    let mut c = RawClient::startup(p.local_addr().port());
    c.send(&query("SELECT pg_sleep(60) /* vanishing-client */"));
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE query LIKE '%vanishing-client%' AND pid <> pg_backend_pid()";
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if legacy().psql(running).unwrap() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend count never became {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    tokio::task::spawn_blocking(move || wait_for("1"))
        .await
        .unwrap();
    drop(c);
    tokio::task::spawn_blocking(move || wait_for("0"))
        .await
        .unwrap();
    still_serves(p.local_addr().port()).await;
}

#[tokio::test]
async fn function_call_and_terminate_are_relayed() {
    let p = proxy();
    let mut c = RawClient::startup(p.local_addr().port());
    // FunctionCall of int4abs (OID 1397) with one text argument, text result.
    let mut body = 1397i32.to_be_bytes().to_vec();
    body.extend_from_slice(&1i16.to_be_bytes()); // one format code
    body.extend_from_slice(&0i16.to_be_bytes()); // text
    body.extend_from_slice(&1i16.to_be_bytes()); // one argument
    body.extend_from_slice(&2i32.to_be_bytes());
    body.extend_from_slice(b"-5");
    body.extend_from_slice(&0i16.to_be_bytes()); // text result
    c.send(&message(b'F', &body));
    let msgs = c.read_until(b'Z');
    let (tag, value) = &msgs[0];
    assert_eq!(*tag, b'V', "{msgs:?}");
    assert_eq!(&value[4..], b"5");
    c.send(&message(b'X', b""));
    assert!(c.closed(), "Terminate closes the connection");
}
