//! Harness for the integration suites: pgdual started in-process per test on a free port, in
//! front of the servers `pgdual-testkit` shares per test binary. Everything that does not
//! need pgdual's own types lives in the testkit and is re-exported here.

use std::time::Duration;

pub use pgdual_testkit::*;

use pgdual::Proxy;
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
    c
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
