//! Harness for the integration suites: pgdual started in-process per test on a free port, in
//! front of the servers `pgdual-testkit` shares per test binary. Everything that does not
//! need pgdual's own types lives in the testkit and is re-exported here.

use std::time::Duration;

pub use pgdual_testkit::*;

use pgdual::Proxy;
pub use pgdual_config::CaptureMode;
use pgdual_config::Config;

/// A config for pgdual in front of `cluster`, on free ports, one worker.
pub fn config_for(cluster: &PgCluster) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        workers: 1,
        ..Config::default()
    };
    c.admin.listen = "127.0.0.1:0".into();
    c.legacy.port = cluster.port;
    c.limits.connect_timeout_ms = 3000;
    // Suites run many servers and clients on few cores: the backfill's latency probe would
    // pause it for the other tests' load.
    c.backfill.max_latency_ratio = 0.0;
    c.mirror.capture = capture_method();
    c
}

/// The slot and publication names of a pgdual mirroring `rules`.
pub fn capture_names(rules: &str) -> (String, String) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rules.hash(&mut h);
    let name = format!("pgdual_{:016x}", h.finish());
    (name.clone(), name)
}

/// The capture method this test binary runs with: logical decoding for suites whose
/// binary is named `*_logical` (which include another suite's tests to run them again that
/// way), triggers for the others (the shared legacy allows both).
pub fn capture_method() -> CaptureMode {
    let exe = std::env::current_exe().unwrap_or_default();
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // Cargo names test binaries `<name>-<hash>`.
    let stem = name.rsplit_once('-').map_or(name, |(s, _)| s);
    if stem.ends_with("_logical") {
        CaptureMode::Logical
    } else {
        CaptureMode::Triggers
    }
}

/// pgdual in front of the shared legacy server, with `tweak` applied to its config.
pub fn proxy_with(tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut c = config_for(legacy());
    tweak(&mut c);
    Proxy::start(c).expect("start pgdual")
}

pub fn proxy() -> Proxy {
    proxy_with(|_| {})
}

/// A field of an ErrorResponse body (`C` for SQLSTATE, `M` for the message).
pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    pgdual::proto::backend::error_field(body, field)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// pgdual with dual-write: `rules` written to a file, the new database at `new`, a fast
/// poll, and the dead-letter file in the returned directory.
pub fn proxy_with_rules(rules: &str, new: &PgCluster) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, rules).expect("write rules");
    let p = proxy_with(|c| {
        c.rules_file = Some(path);
        c.new.host = "127.0.0.1".into();
        c.new.port = new.port;
        c.mirror.poll_interval_ms = 50;
        c.mirror.retry_initial_ms = 50;
        c.mirror.retry_max_ms = 500;
        c.mirror.dead_letter_file = dir.path().join("dead.jsonl");
        // Tests share legacy, each with its own tables: each rules file its own slot (a
        // pgdual started again with the same rules streams on from the same slot).
        (c.mirror.slot, c.mirror.publication) = capture_names(rules);
    });
    (p, dir)
}

/// Waits until pgdual's mirror has installed its capture triggers.
pub async fn wait_mirror_ready(p: &Proxy) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ready = &p.metrics().mirror.ready;
    while ready.get() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "mirror never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the mirror has checked the rules and learned the first table's legacy
/// columns, which reads on new need.
pub async fn wait_legacy_columns(p: &Proxy) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while p.rules().load().rules.tables()[0].legacy_columns.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "legacy columns never learned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changes the mirror dead-lettered so far.
pub fn dead_letters(p: &Proxy) -> u64 {
    p.metrics().mirror.dead_letters_total.get()
}

/// Waits until every capture slot being streamed from has confirmed legacy's WAL position
/// as of now: the mirrors applied every change committed before this call.
pub async fn wait_slots_confirm(legacy: &tokio_postgres::Client) {
    let lsn: String = legacy
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let behind: i64 = legacy
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_type = 'logical' \
                 AND confirmed_flush_lsn < $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if behind == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{behind} capture slots never confirmed {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
