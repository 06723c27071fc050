//! The way back never needs new: with reads on new and the new database stopped, moving a
//! table's reads back to legacy through the API, the CLI's request and a rules-file edit is
//! accepted, and reads keep working; moving one onto new is still refused, with the reason.

use std::time::{Duration, Instant};

use pgdual_integration_tests::*;
use pgdual_rules::ReadMode;

fn rule(t: &str) -> String {
    format!(
        r#"
[[table]]
legacy = "public.{t}"
new = "wb.{t}"
keys = ["id"]
write = "on"
read = "new"
[table.columns]
id = "id"
label = "upper(label)"

[table.read_back]
label = "lower(label)"
"#
    )
}

async fn create(tables: &[&str], new: &PgCluster) {
    let l = connect(legacy().port).await;
    let n = connect(new.port).await;
    n.batch_execute("CREATE SCHEMA IF NOT EXISTS wb")
        .await
        .unwrap();
    for t in tables {
        l.batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int PRIMARY KEY, label text);
             INSERT INTO {t} SELECT i, 'label' || i FROM generate_series(1, 5) i;"
        ))
        .await
        .unwrap();
        n.batch_execute(&format!(
            "CREATE TABLE wb.{t} (id int PRIMARY KEY, label text);
             INSERT INTO wb.{t} SELECT i, 'LABEL' || i FROM generate_series(1, 5) i;"
        ))
        .await
        .unwrap();
    }
}

fn read_mode(p: &pgdual::Proxy, t: &str) -> ReadMode {
    let table = pgdual_rules::ruleset::parse_table_name(&format!("public.{t}")).unwrap();
    p.rules().load().rules.table(&table).unwrap().read
}

/// Each table's rows through pgdual, as legacy has them.
async fn reads_work(port: u16, tables: &[&str]) {
    let via = connect(port).await;
    let direct = connect(legacy().port).await;
    for t in tables {
        let sql = format!("SELECT id, label FROM {t} ORDER BY id");
        let rows = |rows: Vec<tokio_postgres::Row>| -> Vec<(i32, String)> {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        assert_eq!(
            rows(via.query(&sql, &[]).await.unwrap()),
            rows(direct.query(&sql, &[]).await.unwrap()),
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_back_to_legacy_with_new_stopped_by_api_cli_and_file() {
    let tables = ["wb_api", "wb_cli", "wb_file"];
    let new = tokio::task::spawn_blocking(|| PgCluster::start(ClusterOptions::default()))
        .await
        .unwrap()
        .unwrap();
    create(&tables, &new).await;
    let text: String = tables.iter().map(|t| rule(t)).collect();
    let (p, dir) = proxy_with_rules(&text, &new);
    // The mirror has checked the rules against both catalogs.
    wait_mirror_ready(&p).await;
    let port = p.local_addr().port();
    let admin = p.admin_addr().unwrap();
    reads_work(port, &tables).await;

    tokio::task::spawn_blocking(move || new.stop())
        .await
        .unwrap();

    // The API.
    let (status, body) = tokio::task::spawn_blocking(move || {
        http_put(admin, "/tables/public.wb_api/read", r#"{"mode": "legacy"}"#)
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("reloaded"), "{body}");
    assert_eq!(read_mode(&p, "wb_api"), ReadMode::Legacy);
    reads_work(port, &tables).await;

    // The CLI (`pgdual flags set public.wb_cli read legacy` sends exactly this request).
    let addr = admin.to_string();
    tokio::task::spawn_blocking(move || {
        pgdual::cli::admin_client::set_read(&addr, None, "public.wb_cli", "legacy", None)
    })
    .await
    .unwrap()
    .expect("flags set accepted");
    assert_eq!(read_mode(&p, "wb_cli"), ReadMode::Legacy);
    reads_work(port, &tables).await;

    // The file, edited in place (the API's changes were written back to it).
    let path = dir.path().join("rules.toml");
    let current = std::fs::read_to_string(&path).unwrap();
    let edited =
        pgdual_rules::ruleset::set_read_mode(&current, "public.wb_file", ReadMode::Legacy, None)
            .unwrap();
    std::fs::write(&path, edited).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_mode(&p, "wb_file") != ReadMode::Legacy {
        assert!(Instant::now() < deadline, "the file edit was never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reads_work(port, &tables).await;

    // Towards new while new is down: refused, saying why, and the rules stay.
    let version = p.rules().load().version;
    let (status, body) = tokio::task::spawn_blocking(move || {
        http_put(admin, "/tables/public.wb_api/read", r#"{"mode": "new"}"#)
    })
    .await
    .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("cannot connect to new") && body.contains("public.wb_api"),
        "{body}"
    );
    assert_eq!(p.rules().load().version, version);
    assert_eq!(read_mode(&p, "wb_api"), ReadMode::Legacy);
    let addr = admin.to_string();
    let err = tokio::task::spawn_blocking(move || {
        pgdual::cli::admin_client::set_read(&addr, None, "public.wb_cli", "shadow", None)
    })
    .await
    .unwrap()
    .expect_err("shadow needs new");
    assert!(
        format!("{err:#}").contains("cannot connect to new"),
        "{err:#}"
    );
    reads_work(port, &tables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_back_to_legacy_after_a_start_with_new_already_down() {
    let tables = ["wb_start"];
    let new = tokio::task::spawn_blocking(|| PgCluster::start(ClusterOptions::default()))
        .await
        .unwrap()
        .unwrap();
    create(&tables, &new).await;
    let new = std::sync::Arc::new(new);
    let stopping = new.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    // pgdual starts with reads on new while new is down: its mirror cannot check the rules.
    let (p, _dir) = proxy_with_rules(&rule("wb_start"), &new);
    let port = p.local_addr().port();
    let admin = p.admin_addr().unwrap();
    reads_work(port, &tables).await;
    let (status, body) = tokio::task::spawn_blocking(move || {
        http_put(
            admin,
            "/tables/public.wb_start/read",
            r#"{"mode": "legacy"}"#,
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(read_mode(&p, "wb_start"), ReadMode::Legacy);
    reads_work(port, &tables).await;
}
