//! The servers a test binary shares: one legacy and one new PostgreSQL, started on first use
//! and stopped and removed when the binary exits, whether its tests passed or not.

use std::sync::OnceLock;

use crate::cluster::{ClusterOptions, PgCluster};

pub const MD5_USER: &str = "md5user";
pub const MD5_PASSWORD: &str = "md5 pass'word";
pub const SCRAM_USER: &str = "scramuser";
pub const SCRAM_PASSWORD: &str = "scr@m-pass";

static LEGACY: OnceLock<PgCluster> = OnceLock::new();
static NEW: OnceLock<PgCluster> = OnceLock::new();

extern "C" fn stop_clusters_at_exit() {
    for c in [LEGACY.get(), NEW.get()].into_iter().flatten() {
        c.stop();
        let _ = std::fs::remove_dir_all(c.socket_dir());
    }
}

/// Stops the shared servers when the test binary exits, whatever the tests did: statics
/// are never dropped, so `PgCluster`'s own `Drop` does not run for them.
fn stop_at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registering a plain extern "C" function with no captured state.
    ONCE.call_once(|| unsafe {
        libc::atexit(stop_clusters_at_exit);
    });
}

/// The new database shared by every test of this binary (a second, separate server).
pub fn new_db() -> &'static PgCluster {
    NEW.get_or_init(|| {
        let c = PgCluster::start(ClusterOptions::default()).expect("start new PostgreSQL");
        stop_at_exit();
        c
    })
}

/// The legacy server shared by every test of this binary: roles for md5 and SCRAM
/// authentication, and `pg_hba.conf` rules that demand them; `wal_level = logical`, so
/// capture by logical decoding can run.
pub fn legacy() -> &'static PgCluster {
    LEGACY.get_or_init(|| {
        let opts = ClusterOptions {
            hba: vec![
                format!("host all {MD5_USER} 127.0.0.1/32 md5"),
                format!("host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256"),
            ],
            settings: vec![("wal_level".into(), "logical".into())],
        };
        let c = PgCluster::start(opts).expect("start legacy PostgreSQL");
        stop_at_exit();
        c.psql(&format!(
            "SET password_encryption = 'md5';
             CREATE ROLE {MD5_USER} LOGIN PASSWORD '{}';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';",
            MD5_PASSWORD.replace('\'', "''")
        ))
        .expect("create roles");
        c
    })
}

/// A cluster of the test's own (default options), started off the async runtime's threads.
pub async fn start_cluster() -> PgCluster {
    tokio::task::spawn_blocking(|| PgCluster::start(ClusterOptions::default()))
        .await
        .expect("the cluster start did not panic")
        .expect("start PostgreSQL")
}
