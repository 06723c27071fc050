//! The raw wire-protocol client of `pgdual::net::conn` (and its pool) against real PostgreSQL servers.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pgdual::net::conn::Target;
use pgdual::net::conn::{BackendConn, BackendError};
use pgdual::net::pool;
use pgdual::net::tls::TlsTarget;
use pgdual::proto::codec::Frame;
use pgdual::proto::{backend, frontend};
use pgdual_integration_tests::{
    legacy, new_db, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER,
};

const T: Duration = Duration::from_secs(10);

async fn conn_as(
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<BackendConn, BackendError> {
    let tls = TlsTarget::disabled();
    BackendConn::connect("127.0.0.1", port, user, password, "postgres", &tls, T).await
}

fn tags(frames: &[Frame]) -> String {
    frames.iter().map(|f| f.tag as char).collect()
}

/// The text values of a DataRow body.
fn row_values(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(body[at..at + len as usize].to_vec()));
            at += len as usize;
        }
    }
    out
}

async fn simple(conn: &mut BackendConn, sql: &str) -> Vec<Frame> {
    conn.round_trip(&frontend::query_frame(sql), 1 << 20, T)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn backend_pid(conn: &mut BackendConn) -> i32 {
    let frames = simple(conn, "SELECT pg_backend_pid()").await;
    let d = frames.iter().find(|f| f.tag == b'D').expect("a row");
    let v = row_values(&d.body)[0].clone().unwrap();
    String::from_utf8(v).unwrap().parse().unwrap()
}

fn target(port: u16) -> Target {
    Target {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: None,
        dbname: "postgres".into(),
        tls: TlsTarget::disabled(),
        tls_config: None,
        connect_timeout: T,
    }
}

#[tokio::test]
async fn connects_with_trust_and_keeps_parameters() {
    for port in [legacy().port, new_db().port] {
        let mut c = conn_as(port, "postgres", None).await.expect("trust");
        assert!(!c.is_broken());
        assert_eq!(c.parameter("application_name"), Some("pgdual"));
        assert!(c.parameter("server_version").is_some());
        assert_eq!(c.transaction_status(), b'I');
        assert_eq!(backend_pid(&mut c).await, c.backend_pid());
    }
}

#[tokio::test]
async fn connects_over_a_unix_socket() {
    let dir = legacy().socket_dir().to_str().unwrap().to_string();
    let mut c = BackendConn::connect(
        &dir,
        legacy().port,
        "postgres",
        None,
        "postgres",
        &TlsTarget::disabled(),
        T,
    )
    .await
    .expect("unix socket");
    assert_eq!(tags(&simple(&mut c, "SELECT 1").await), "TDCZ");
}

#[tokio::test]
async fn authenticates_with_md5_and_scram() {
    let port = legacy().port;
    let mut c = conn_as(port, MD5_USER, Some(MD5_PASSWORD))
        .await
        .expect("md5");
    let frames = simple(&mut c, "SELECT current_user").await;
    assert_eq!(
        row_values(&frames[1].body)[0].as_deref(),
        Some(MD5_USER.as_bytes())
    );

    let mut c = conn_as(port, SCRAM_USER, Some(SCRAM_PASSWORD))
        .await
        .expect("scram");
    let frames = simple(&mut c, "SELECT current_user").await;
    assert_eq!(
        row_values(&frames[1].body)[0].as_deref(),
        Some(SCRAM_USER.as_bytes())
    );
}

#[tokio::test]
async fn wrong_or_missing_password_is_an_auth_error_naming_the_user() {
    let port = legacy().port;
    for user in [MD5_USER, SCRAM_USER] {
        for password in [Some("wrong"), None] {
            match conn_as(port, user, password).await {
                Err(BackendError::Auth(msg)) => {
                    assert!(msg.contains(user), "{msg}");
                    assert!(!msg.contains("wrong"), "no password in: {msg}");
                }
                other => panic!("{user} with {password:?}: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error_naming_the_address() {
    let port = pgdual_integration_tests::free_port().unwrap();
    match conn_as(port, "postgres", None).await {
        Err(e @ BackendError::Connect(_)) => {
            assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // A database that does not exist is refused at startup.
    let err = BackendConn::connect(
        "127.0.0.1",
        legacy().port,
        "postgres",
        None,
        "nope",
        &TlsTarget::disabled(),
        T,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, BackendError::Connect(m) if m.contains("3D000")),
        "{err}"
    );
}

#[tokio::test]
async fn simple_query_frames_in_order() {
    let mut c = conn_as(new_db().port, "postgres", None).await.unwrap();
    let frames = simple(&mut c, "SELECT 1 AS a, 'x'::text AS b").await;
    assert_eq!(tags(&frames), "TDCZ");
    assert_eq!(
        row_values(&frames[1].body),
        vec![Some(b"1".to_vec()), Some(b"x".to_vec())]
    );
    assert_eq!(&frames[2].body[..], b"SELECT 1\0");
    assert_eq!(&frames[3].body[..], b"I");
    // Frames pass through unchanged: re-encoding gives valid wire bytes.
    let mut wire = BytesMut::new();
    frames[2].write_to(&mut wire);
    assert_eq!(&wire[..], b"C\0\0\0\x0dSELECT 1\0");
}

#[tokio::test]
async fn server_errors_are_frames_and_the_connection_stays_usable() {
    let mut c = conn_as(new_db().port, "postgres", None).await.unwrap();
    let frames = simple(&mut c, "SELECT FROM no_such_table").await;
    assert_eq!(tags(&frames), "EZ");
    let (code, message) = backend::error_fields(&frames[0].body);
    assert_eq!(code, "42P01");
    assert!(message.contains("no_such_table"), "{message}");
    assert!(!c.is_broken());
    assert_eq!(tags(&simple(&mut c, "SELECT 1").await), "TDCZ");

    // An extended-protocol error skips to Sync.
    let mut req = frontend::parse_frame("", "SELEC 1", &[]);
    req.extend_from_slice(&frontend::bind_frame("", "", &[0, 0, 0, 0, 0, 0]));
    req.extend_from_slice(&frontend::execute_frame("", 0));
    req.extend_from_slice(&frontend::sync_frame());
    let frames = c.round_trip(&req, 1 << 20, T).await.unwrap();
    assert_eq!(tags(&frames), "EZ");
    assert_eq!(backend::error_fields(&frames[0].body).0, "42601");
    assert_eq!(tags(&simple(&mut c, "SELECT 1").await), "TDCZ");
}

#[tokio::test]
async fn extended_query_with_binary_results() {
    let mut c = conn_as(new_db().port, "postgres", None).await.unwrap();
    // One text parameter "41", one binary result column.
    let mut rest = BytesMut::new();
    rest.put_i16(1);
    rest.put_i16(0);
    rest.put_i16(1);
    rest.put_i32(2);
    rest.put_slice(b"41");
    rest.put_i16(1);
    rest.put_i16(1);
    let mut req = frontend::parse_frame("s1", "SELECT $1::int4 + 1 AS n", &[23]);
    req.extend_from_slice(&frontend::bind_frame("", "s1", &rest));
    req.extend_from_slice(&frontend::describe_frame(b'P', ""));
    req.extend_from_slice(&frontend::execute_frame("", 0));
    req.extend_from_slice(&frontend::sync_frame());
    let frames = c.round_trip(&req, 1 << 20, T).await.unwrap();
    assert_eq!(tags(&frames), "12TDCZ");
    assert_eq!(
        row_values(&frames[3].body),
        vec![Some(42i32.to_be_bytes().to_vec())]
    );
    // RowDescription says binary (format code 1, the last two bytes of the field).
    let t = &frames[2].body;
    assert_eq!(&t[t.len() - 2..], &[0, 1]);
    assert_eq!(&frames[4].body[..], b"SELECT 1\0");

    // The named statement is reusable with a re-targeted Bind.
    let mut req = frontend::bind_frame("p", "s1", &rest);
    req.extend_from_slice(&frontend::execute_frame("p", 0));
    req.extend_from_slice(&frontend::sync_frame());
    assert_eq!(tags(&c.round_trip(&req, 1 << 20, T).await.unwrap()), "2DCZ");
}

#[tokio::test]
async fn too_large_answers_leave_the_connection_usable() {
    let mut c = conn_as(new_db().port, "postgres", None).await.unwrap();
    for sql in [
        "SELECT repeat('x', 200000)",
        "SELECT g FROM generate_series(1, 20000) g",
    ] {
        match c.round_trip(&frontend::query_frame(sql), 10_000, T).await {
            Err(BackendError::TooLarge(n)) => assert!(n > 10_000, "{n}"),
            other => panic!("{sql}: {other:?}"),
        }
        assert!(!c.is_broken());
        let frames = simple(&mut c, "SELECT 7").await;
        assert_eq!(tags(&frames), "TDCZ");
        assert_eq!(row_values(&frames[1].body), vec![Some(b"7".to_vec())]);
    }
}

#[tokio::test]
async fn notices_are_dropped_and_parameter_status_is_tracked() {
    let mut c = conn_as(new_db().port, "postgres", None).await.unwrap();
    let frames = simple(
        &mut c,
        "DO $$ BEGIN RAISE NOTICE 'hello'; END $$; SET TimeZone TO 'Asia/Tokyo'",
    )
    .await;
    assert_eq!(tags(&frames), "CCZ");
    assert_eq!(c.parameter("TimeZone"), Some("Asia/Tokyo"));
}

#[tokio::test]
async fn copy_from_stdin_is_refused_and_the_connection_stays_usable() {
    let mut c = conn_as(new_db().port, "postgres", None).await.unwrap();
    simple(&mut c, "CREATE TEMP TABLE t (a int)").await;
    let frames = simple(&mut c, "COPY t FROM STDIN").await;
    assert_eq!(tags(&frames), "EZ");
    assert_eq!(tags(&simple(&mut c, "SELECT 1").await), "TDCZ");
}

#[tokio::test]
async fn bad_requests_are_refused_without_breaking_the_connection() {
    let mut c = conn_as(new_db().port, "postgres", None).await.unwrap();
    let no_sync = frontend::parse_frame("", "SELECT 1", &[]);
    assert!(matches!(
        c.round_trip(&no_sync, 1 << 20, T).await,
        Err(BackendError::Protocol(_))
    ));
    assert!(!c.is_broken());
    assert_eq!(tags(&simple(&mut c, "SELECT 1").await), "TDCZ");
}

#[tokio::test]
async fn timeout_breaks_the_connection() {
    let mut c = conn_as(new_db().port, "postgres", None).await.unwrap();
    let r = c
        .round_trip(
            &frontend::query_frame("SELECT pg_sleep(3)"),
            1 << 20,
            Duration::from_millis(200),
        )
        .await;
    assert!(matches!(r, Err(BackendError::Timeout)), "{r:?}");
    assert!(c.is_broken());
    assert!(c
        .round_trip(&frontend::query_frame("SELECT 1"), 1 << 20, T)
        .await
        .is_err());
}

#[tokio::test]
async fn pool_reuses_idle_connections() {
    let target = target(new_db().port);
    let mut c = pool::checkout(&target).await.unwrap();
    let pid = backend_pid(&mut c).await;
    pool::checkin(&target, c);
    assert_eq!(pool::idle_count(&target), 1);

    let mut c = pool::checkout(&target).await.unwrap();
    assert_eq!(pool::idle_count(&target), 0);
    assert_eq!(backend_pid(&mut c).await, pid, "same backend after checkin");

    // A connection left in a transaction is not pooled.
    simple(&mut c, "BEGIN").await;
    assert_eq!(c.transaction_status(), b'T');
    pool::checkin(&target, c);
    assert_eq!(pool::idle_count(&target), 0);
    let mut c = pool::checkout(&target).await.unwrap();
    assert_ne!(backend_pid(&mut c).await, pid);

    // One the server has closed meanwhile is not handed out again.
    let pid = backend_pid(&mut c).await;
    pool::checkin(&target, c);
    let mut killer = conn_as(new_db().port, "postgres", None).await.unwrap();
    simple(
        &mut killer,
        &format!("SELECT pg_terminate_backend({pid}, 5000)"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = pool::checkout(&target).await.unwrap();
    assert_ne!(backend_pid(&mut c).await, pid);

    // At most MAX_IDLE_PER_KEY idle connections per target.
    let mut all = vec![c];
    for _ in 0..pool::MAX_IDLE_PER_KEY + 2 {
        all.push(pool::checkout(&target).await.unwrap());
    }
    for c in all {
        pool::checkin(&target, c);
    }
    assert_eq!(pool::idle_count(&target), pool::MAX_IDLE_PER_KEY);
}
