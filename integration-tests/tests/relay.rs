//! tokio-postgres through pgdual: simple and extended protocol, binary parameters and
//! results, pipelining, errors mid-pipeline, cancel, COPY, notices and NOTIFY, large
//! messages, authentication methods.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use pgdual_integration_tests::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::AsyncMessage;

#[tokio::test]
async fn simple_and_extended_queries_with_binary_parameters() {
    let p = proxy();
    let c = connect(p.local_addr().port()).await;
    let rows = c
        .simple_query("SELECT 1 AS one, 'x' AS ex; SELECT 2")
        .await
        .unwrap();
    let values: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "2"]);

    // Extended protocol: parameters and results travel in binary.
    let row = c
        .query_one(
            "SELECT $1::int8 + 1, $2::text || '!', $3::float8 * 2, $4::bytea, $5::bool",
            &[&41i64, &"hi", &1.25f64, &vec![0u8, 255, 7], &true],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, f64>(2), 2.5);
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0u8, 255, 7]);
    assert!(row.get::<_, bool>(4));

    // A named prepared statement reused many times.
    let stmt = c.prepare("SELECT $1::int4 * 2").await.unwrap();
    for i in 0..50 {
        let r = c.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), i * 2);
    }
    assert!(p.metrics().statements(pgdual_rules::StatementKind::Read) >= 52);
}

#[tokio::test]
async fn pipelined_queries_and_an_error_mid_pipeline() {
    let p = proxy();
    let c = connect(p.local_addr().port()).await;
    let s1 = c.prepare("SELECT $1::int4").await.unwrap();
    let s2 = c.prepare("SELECT 1 / $1::int4").await.unwrap();
    // tokio-postgres sends these without waiting: one pipeline, three Syncs.
    let (a, b, d) = tokio::join!(
        c.query_one(&s1, &[&1i32]),
        c.query_one(&s2, &[&0i32]),
        c.query_one(&s1, &[&3i32]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(d.unwrap().get::<_, i32>(0), 3);

    let many: Vec<_> = (0..200i32)
        .map(|i| {
            let (c, s1) = (&c, &s1);
            async move { c.query_one(s1, &[&i]).await }
        })
        .collect();
    let results = futures_util::future::join_all(many).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().get::<_, i32>(0), i as i32);
    }
}

#[tokio::test]
async fn transactions_keep_their_semantics() {
    let p = proxy();
    let c = connect(p.local_addr().port()).await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS tx_t (id int primary key)")
        .await
        .unwrap();
    c.batch_execute("TRUNCATE tx_t").await.unwrap();
    c.batch_execute("BEGIN; INSERT INTO tx_t VALUES (1); ROLLBACK")
        .await
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO tx_t VALUES (2)")
        .await
        .unwrap();
    let err = c
        .batch_execute("INSERT INTO tx_t VALUES (2)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("INSERT INTO tx_t VALUES (3)")
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM tx_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn cancel_reaches_the_right_query_on_legacy() {
    let p = proxy();
    let port = p.local_addr().port();
    let c = connect(port).await;
    let other = connect(port).await;
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let sleeping = c.simple_query("SELECT pg_sleep(30)");
    let other_sleep = other.simple_query("SELECT pg_sleep(1.5)");
    let (err, other_ok) = tokio::join!(sleeping, other_sleep);
    canceller.await.unwrap().unwrap();
    assert_eq!(err.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
    assert!(
        other_ok.is_ok(),
        "the other session's query was not cancelled"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(p.metrics().cancel_requests_total.get(), 1);
    // The cancelled session is still usable.
    let v: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

#[tokio::test]
async fn copy_in_and_out_in_text_csv_and_binary() {
    let p = proxy();
    let c = connect(p.local_addr().port()).await;
    c.batch_execute("DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t (id int, name text)")
        .await
        .unwrap();
    for (format, data) in [
        ("text", "1\talpha\n2\tbeta\n".to_string()),
        ("csv", "3,\"gam,ma\"\n4,delta\n".to_string()),
    ] {
        let sink = c
            .copy_in(&format!("COPY copy_t FROM STDIN WITH (FORMAT {format})"))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from(data)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 2);
    }
    // Binary COPY round trip: out from the table, back in.
    let out = c
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT WITH (FORMAT binary)")
        .await
        .unwrap();
    let binary: Vec<Bytes> = out.try_collect().await.unwrap();
    let sink = c
        .copy_in("COPY copy_t FROM STDIN WITH (FORMAT binary)")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for chunk in binary {
        sink.send(chunk).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 4);

    let out = c
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id, name) TO STDOUT WITH (FORMAT csv)")
        .await
        .unwrap();
    let text: Vec<Bytes> = out.try_collect().await.unwrap();
    let text = String::from_utf8(text.concat()).unwrap();
    assert_eq!(
        text,
        "1,alpha\n1,alpha\n2,beta\n2,beta\n3,\"gam,ma\"\n3,\"gam,ma\"\n4,delta\n4,delta\n"
    );

    // One CopyData message far larger than a read buffer streams through whole.
    let sink = c.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let long = "w".repeat(3 << 20);
    sink.send(Bytes::from(format!("5\t{long}\n")))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    let len: i32 = c
        .query_one("SELECT length(name) FROM copy_t WHERE id = 5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len, 3 << 20);
    c.batch_execute("DELETE FROM copy_t WHERE id = 5")
        .await
        .unwrap();

    // A COPY that fails mid-stream leaves the session usable.
    let sink = c.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    let n: i64 = c
        .query_one("SELECT count(*) FROM copy_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 8);
}

#[tokio::test]
async fn notices_and_notifications_arrive() {
    let p = proxy();
    let port = p.local_addr().port();
    let (listener, mut conn) =
        tokio_postgres::connect(&conn_str(port, "postgres", None), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    listener.batch_execute("LISTEN pgdual_chan").await.unwrap();
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from legacy'; END $$")
        .await
        .unwrap();
    let notifier = connect(port).await;
    notifier
        .batch_execute("NOTIFY pgdual_chan, 'payload-1'")
        .await
        .unwrap();
    let mut notice = None;
    let mut notification = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while notice.is_none() || notification.is_none() {
        // Any traffic makes the listener read pending notifications.
        let _ = listener.simple_query("SELECT 1").await;
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(AsyncMessage::Notice(n))) => notice = Some(n.message().to_string()),
            Ok(Some(AsyncMessage::Notification(n))) => {
                notification = Some((n.channel().to_string(), n.payload().to_string()))
            }
            Ok(Some(_)) => {}
            _ => panic!("timed out: notice {notice:?}, notification {notification:?}"),
        }
    }
    assert_eq!(notice.unwrap(), "hello from legacy");
    assert_eq!(
        notification.unwrap(),
        ("pgdual_chan".into(), "payload-1".into())
    );
}

#[tokio::test]
async fn very_large_queries_and_results() {
    let p = proxy();
    let c = connect(p.local_addr().port()).await;
    // A 4 MB query text and a 16 MB single value, plus a long stream of rows.
    let literal = "y".repeat(4 << 20);
    let sql = format!("SELECT length('{literal}')");
    let n: i32 = c.query_one(sql.as_str(), &[]).await.unwrap().get(0);
    assert_eq!(n, 4 << 20);
    let big: String = c
        .query_one("SELECT repeat('x', 16 * 1024 * 1024)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 16 << 20);
    let rows = c
        .query(
            "SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 100_000);
    assert_eq!(rows[99_999].get::<_, i32>(0), 100_000);
}

#[tokio::test]
async fn md5_and_scram_authentication_pass_through() {
    let p = proxy();
    let port = p.local_addr().port();
    for (user, password) in [(MD5_USER, MD5_PASSWORD), (SCRAM_USER, SCRAM_PASSWORD)] {
        let c = connect_as(port, user, Some(password)).await.unwrap();
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
        let err = connect_as(port, user, Some("wrong"))
            .await
            .expect_err("wrong password refused");
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}: {err}"
        );
    }
}

#[tokio::test]
async fn unix_socket_to_legacy() {
    let dir = legacy().socket_dir().display().to_string();
    let p = proxy_with(|c| c.legacy.host = dir);
    let c = connect(p.local_addr().port()).await;
    // Over a Unix socket legacy sees no client address.
    let addr: Option<String> = c
        .query_one("SELECT inet_client_addr()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(addr, None);
}

#[tokio::test]
async fn named_portals_fetch_in_batches_inside_a_transaction() {
    let p = proxy();
    let mut c = connect(p.local_addr().port()).await;
    let tx = c.transaction().await.unwrap();
    let stmt = tx
        .prepare("SELECT g FROM generate_series(1, $1::int4) g")
        .await
        .unwrap();
    // A named portal executed with a row limit: PortalSuspended between batches.
    let portal = tx.bind(&stmt, &[&25i32]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        if rows.is_empty() {
            break;
        }
        seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    tx.commit().await.unwrap();
}

#[test]
fn parse_and_flush_answer_before_sync() {
    let p = proxy();
    let mut c = RawClient::startup(p.local_addr().port());
    // Parse a named statement, then Flush: ParseComplete arrives without a Sync.
    c.send(&message(b'P', b"flushed\0SELECT 1\0\0\0"));
    c.send(&message(b'H', b""));
    assert_eq!(c.read_message().map(|m| m.0), Some(b'1'));
    // Describe, Bind, Execute, Close and Sync on the same statement.
    let mut pipeline = message(b'D', b"Sflushed\0");
    pipeline.extend(message(b'B', b"\0flushed\0\0\0\0\0\0\0"));
    pipeline.extend(message(b'E', b"\0\0\0\0\0"));
    pipeline.extend(message(b'C', b"Sflushed\0"));
    pipeline.extend(message(b'S', b""));
    c.send(&pipeline);
    let tags: Vec<u8> = c.read_until(b'Z').into_iter().map(|m| m.0).collect();
    assert_eq!(tags, b"tT2DC3Z".to_vec());
}
