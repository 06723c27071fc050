//! The testkit on its own: a cluster starts, answers psql and tokio-postgres, stops and
//! starts again on its port, and leaves nothing behind when dropped; the byte and page
//! helpers produce what the protocol and Prometheus define.

use pgdual_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_answers_restarts_and_is_removed_when_dropped() {
    let cluster = start_cluster().await;
    let dir = cluster.socket_dir().to_path_buf();
    assert_eq!(cluster.psql("SELECT 40 + 2").unwrap(), "42");
    assert_eq!(text_rows(cluster.port, "SELECT 'x'").await, ["x"]);
    let out = psql_to(cluster.port)
        .args(["-A", "-t", "-c", "SELECT current_user"])
        .output()
        .unwrap();
    assert_eq!(output_text(&out).trim(), "postgres");

    cluster.stop();
    assert!(connect_as(cluster.port, "postgres", None).await.is_err());
    cluster.start_server().unwrap();
    assert_eq!(text_rows(cluster.port, "SELECT 'back'").await, ["back"]);

    drop(cluster);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn startup_and_query_messages_follow_the_protocol() {
    let startup = startup_message("u", "d");
    assert_eq!(&startup[..4], &(startup.len() as i32).to_be_bytes());
    assert_eq!(&startup[4..8], &196_608i32.to_be_bytes());
    assert_eq!(&startup[8..], b"user\0u\0database\0d\0\0");
    assert_eq!(query("SELECT 1"), b"Q\0\0\0\x0dSELECT 1\0");
}

#[test]
fn metric_reads_plain_and_labelled_samples() {
    let page = "# TYPE a counter\na 3\na{k=\"v\"} 4.5\nab 9\n";
    assert_eq!(metric(page, "a"), 3.0);
    assert_eq!(metric(page, "a{k=\"v\"}"), 4.5);
}

#[test]
fn conn_str_quotes_the_password() {
    assert_eq!(
        conn_str(5, "u", Some("it's")),
        "host=127.0.0.1 port=5 user=u dbname=postgres password='it\\'s'"
    );
}
