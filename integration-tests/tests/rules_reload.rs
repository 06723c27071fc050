//! Rules change while pgdual runs: through the admin API (validated whole, written back to
//! the file) and by editing the file; a rejected set leaves the old one in force, and the
//! mirror follows each accepted version (installing and removing capture triggers).

use std::time::{Duration, Instant};

use pgdual_integration_tests::*;

fn rule(table: &str, write: &str) -> String {
    format!(
        "[[table]]\nlegacy = \"public.{table}\"\nnew = \"public.{table}_v2\"\nkeys = [\"id\"]\n\
         write = \"{write}\"\n[table.columns]\nid = \"id\"\nlabel = \"upper(label)\"\n"
    )
}

async fn create(table: &str) {
    connect(legacy().port)
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, label text)"
        ))
        .await
        .unwrap();
    connect(new_db().port)
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}_v2; CREATE TABLE {table}_v2 (id int PRIMARY KEY, label text)"
        ))
        .await
        .unwrap();
}

async fn triggers(table: &str) -> String {
    text_rows(
        legacy().port,
        &format!(
            "SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'public.{table}'::regclass \
             AND tgname LIKE 'pgdual_capture_%'"
        ),
    )
    .await
    .remove(0)
}

/// Waits until the mirror has installed the triggers of rules `version`.
async fn mirror_at(p: &pgdual::Proxy, version: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = &p.metrics().mirror.rules_version;
    while v.get() != version {
        assert!(
            Instant::now() < deadline,
            "mirror never reached rules version {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `PUT /rules` off the async runtime (the helper blocks).
async fn put(admin: std::net::SocketAddr, body: String) -> (u16, serde_json::Value) {
    let (status, text) = tokio::task::spawn_blocking(move || http_put(admin, "/rules", &body))
        .await
        .unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_are_validated_whole_written_back_and_followed_by_the_mirror() {
    let (a, b) = ("rr_api_a", "rr_api_b");
    create(a).await;
    create(b).await;
    let (p, dir) = proxy_with_rules(&rule(a, "on"), new_db());
    mirror_at(&p, 1).await;
    assert_eq!(triggers(a).await, "4");
    let admin = p.admin_addr().unwrap();

    // Invalid: a broken expression and a table that is not schema-qualified. Rejected with
    // every reason; version 1 stays.
    let bad = rule(a, "on").replace("upper(label)", "upper(label")
        + &rule("nope", "on").replace("public.nope\"\nnew", "nope\"\nnew");
    let (status, body) = put(admin, bad).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["outcome"], "rejected");
    assert_eq!(body["version"], 1);
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("columns.label"), "{reasons}");
    assert!(reasons.contains("table[1] (nope).legacy"), "{reasons}");

    // Valid offline but not against the catalog: rejected too.
    let misfit = rule(a, "on").replace("label = \"upper(label)\"", "title = \"upper(label)\"");
    let (status, body) = put(admin, misfit).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reasons"]
            .to_string()
            .contains("has no column \\\"title\\\""),
        "{body}"
    );

    // Accepted: a's writes off, b's on. Written back to the file; the mirror follows.
    let next = rule(a, "off") + &rule(b, "on");
    let (status, body) = put(admin, next.clone()).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("reloaded")),
        "{body}"
    );
    assert_eq!(body["version"], 2);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rules.toml")).unwrap(),
        next
    );
    mirror_at(&p, 2).await;
    assert_eq!(triggers(a).await, "0");
    assert_eq!(triggers(b).await, "4");
    let c = connect(p.local_addr().port()).await;
    c.batch_execute(&format!("INSERT INTO {b} VALUES (1, 'mirrored')"))
        .await
        .unwrap();
    assert_converges(
        new_db(),
        &format!("SELECT id || upper(label) FROM {b} ORDER BY id"),
        &format!("SELECT id || label FROM {b}_v2 ORDER BY id"),
        20,
    )
    .await;
    // The same text again changes nothing.
    let (status, body) = put(admin, next).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("unchanged")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_file_reloads_it_and_a_bad_edit_is_rejected() {
    let (a, b) = ("rr_file_a", "rr_file_b");
    create(a).await;
    create(b).await;
    let (p, dir) = proxy_with_rules(&rule(a, "on"), new_db());
    mirror_at(&p, 1).await;
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, "this is not toml [").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        p.rules().load().version,
        1,
        "a bad edit leaves the rules in force"
    );
    std::fs::write(&path, rule(a, "on") + &rule(b, "on")).unwrap();
    mirror_at(&p, 2).await;
    assert_eq!(triggers(b).await, "4");
    let (_, body) = http_get(p.admin_addr().unwrap(), "/rules", None);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["tables"].as_array().unwrap().len(), 2);
}
