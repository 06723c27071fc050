//! pgdual's proxy settings: the TOML file format, environment overrides and validation.
//!
//! The settings and their defaults live here, in one place (the `Default` impls below);
//! [`sources`] reads them from the file, the environment and flags; [`validate`] collects
//! every problem at once, each naming its field, so an operator fixes a file in one pass.
//! This crate does no I/O beyond reading the files it is asked to load: the config file and
//! the `password_file`s it names.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

mod sources;
mod validate;

pub use sources::{read_password_file, ENV_OVERRIDES};

/// Everything `pgdual serve` needs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the proxy accepts PostgreSQL clients on. Default `127.0.0.1:6432`.
    pub listen: String,
    /// Number of relay worker threads, each with its own single-threaded runtime.
    /// Default 0, meaning one per available CPU.
    pub workers: usize,
    pub legacy: LegacyConfig,
    /// The new database, where rules with `database = "new"` write. Unset by default.
    pub new: NewConfig,
    /// The rules file mapping legacy tables to new ones. Unset by default (pure relay).
    pub rules_file: Option<PathBuf>,
    pub mirror: MirrorConfig,
    pub backfill: BackfillConfig,
    pub verify: VerifyConfig,
    pub reads: ReadsConfig,
    pub tls: ClientTlsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub limits: Limits,
}

/// The legacy database: the one on the critical path.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LegacyConfig {
    /// Host name or IP address; a value starting with `/` is a directory holding the Unix
    /// socket `.s.PGSQL.<port>`, as in libpq. Default `127.0.0.1`.
    pub host: String,
    /// Default 5432.
    pub port: u16,
    /// TLS to legacy, for client sessions and pgdual's own connections alike: `disable`
    /// (default), `prefer`, `require` (encrypt, no certificate check, as libpq's `require`)
    /// or `verify-full` (needs `tls_ca_file`).
    pub tls: TlsMode,
    /// PEM file with the CA certificate(s) that sign legacy's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// Name checked against legacy's certificate; default `host`.
    pub tls_server_name: Option<String>,
    /// pgdual's own connections to legacy (catalog checks, reading row images) use this
    /// role; client sessions always authenticate as themselves. Default `postgres`.
    pub user: String,
    /// Password for `user`; prefer `password_file` or `PGDUAL_LEGACY_PASSWORD` to writing it
    /// here. Never taken from the command line. Default: none.
    pub password: Option<String>,
    /// File holding the password for `user` (trailing newline trimmed); not with `password`.
    /// Default: none.
    pub password_file: Option<PathBuf>,
    /// Database for pgdual's own connections. Default `postgres`.
    pub dbname: String,
}

/// How committed writes on mapped tables are captured (see README, "Capture").
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Logical decoding when legacy allows it (`wal_level = logical`, a role that may
    /// replicate, keys covered by each table's replica identity), triggers otherwise.
    #[default]
    Auto,
    /// Logical decoding through a replication slot; the mirror waits, saying why, when
    /// legacy does not allow it.
    Logical,
    /// Capture triggers and a changelog table in legacy.
    Triggers,
}

/// How committed writes reach the new schema (see README, "Dual-write").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// `auto` (default), `logical` or `triggers`.
    pub capture: CaptureMode,
    /// Logical capture's replication slot in legacy. Default `pgdual`.
    pub slot: String,
    /// Logical capture's publication of the written tables in legacy. Default `pgdual`.
    pub publication: String,
    /// Warn when the slot retains more WAL than this many bytes. Default 1 GiB.
    pub slot_warn_bytes: u64,
    /// Install (and remove) the capture triggers on legacy for tables whose `write` is
    /// `on` (or `off`) when pgdual starts. Default true.
    pub install_triggers: bool,
    /// Most captured changes applied to new in one transaction. Default 1000.
    pub batch_size: u32,
    /// How often the backlog is checked when no session signals a commit. Default 200 ms.
    pub poll_interval_ms: u64,
    /// First retry delay after a transient failure; doubles up to `retry_max_ms`. Default 100.
    pub retry_initial_ms: u64,
    /// Default 10000.
    pub retry_max_ms: u64,
    /// Changes new refused for good (constraint violations, type errors) are appended here,
    /// one JSON object per line, mode 0600. Default `pgdual-dead-letters.jsonl`.
    pub dead_letter_file: PathBuf,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            capture: CaptureMode::Auto,
            slot: "pgdual".into(),
            publication: "pgdual".into(),
            slot_warn_bytes: 1 << 30,
            install_triggers: true,
            batch_size: 1000,
            poll_interval_ms: 200,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            dead_letter_file: PathBuf::from("pgdual-dead-letters.jsonl"),
        }
    }
}

/// Copying the rows a table held before its dual-write began (see README, "Backfill").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillConfig {
    /// Chunks are sized so that each takes about this long. Default 500 ms.
    pub target_chunk_ms: u64,
    /// Chunks copied at once, each over its own pair of connections. Default 2.
    pub concurrency: usize,
    /// Pause while the mirror's backlog holds more changes than this. Default 50000.
    pub max_backlog_rows: i64,
    /// Pause while the oldest change in the mirror's backlog is older than this. Default
    /// 10000 ms.
    pub max_backlog_age_ms: u64,
    /// Pause while a replica of legacy or of new replays later than this
    /// (`pg_stat_replication.replay_lag`). Default 10000 ms.
    pub max_replica_lag_ms: u64,
    /// First retry delay after a transient failure; doubles, with jitter, up to
    /// `retry_max_ms`. Default 100 ms.
    pub retry_initial_ms: u64,
    /// Default 10000 ms.
    pub retry_max_ms: u64,
    /// Transient failures of one chunk in a row before the backfill stops (resumable).
    /// Default 10.
    pub max_retries: u32,
    /// Pause while legacy answers a probe (`SELECT 1`, every 25 ms) this many times slower
    /// at the 90th percentile of the last second than before the backfill began, and more
    /// than 1 ms slower: the clients' latency is what the backfill must not spend. 0 turns
    /// the probe off. Default 1.2.
    pub max_latency_ratio: f64,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            target_chunk_ms: 500,
            concurrency: 2,
            max_backlog_rows: 50_000,
            max_backlog_age_ms: 10_000,
            max_replica_lag_ms: 10_000,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            max_retries: 10,
            max_latency_ratio: 1.2,
        }
    }
}

/// Comparing legacy and new (see README, "Verify and repair").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Legacy rows per compared chunk. Default 10000.
    pub chunk_rows: u32,
    /// Differing keys listed in a report. Default 20.
    pub report_keys: usize,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            chunk_rows: 10_000,
            report_keys: 20,
        }
    }
}

/// Reads routed to new (`read = "new"` or `"shadow"` in the rules).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReadsConfig {
    /// Longest a read may take on new before legacy answers instead. Default 1000 ms.
    pub timeout_ms: u64,
    /// Largest result (bytes) answered by new or compared in shadow; larger reads fall back
    /// to legacy or skip the comparison. Default 1 MiB.
    pub max_result_bytes: usize,
    /// Shadow reads running on new at once; a read finding no free slot is not compared
    /// (counted as skipped). Default 8.
    pub shadow_concurrency: usize,
    /// After new could not be reached, answer from legacy without trying new for this long.
    /// Default 1000 ms.
    pub retry_after_ms: u64,
    /// Put key and column values in mismatch samples and logs. Default false (redacted).
    pub log_values: bool,
    /// Idle connections to new each worker keeps open while some table's reads are routed
    /// there, opened ahead of need and checked off the client's path (0: open on demand
    /// only). Default 4.
    pub pool_min_idle: usize,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        ReadsConfig {
            timeout_ms: 1000,
            max_result_bytes: 1 << 20,
            shadow_concurrency: 8,
            retry_after_ms: 1000,
            log_values: false,
            pool_min_idle: 4,
        }
    }
}

/// Largest `reads.pool_min_idle`: the idle connections a worker keeps per database.
pub const MAX_POOL_MIN_IDLE: usize = 32;

/// The new database: pgdual connects to it with its own role.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NewConfig {
    /// Host name, IP address, or Unix socket directory. Empty (default) means not configured.
    pub host: String,
    /// Default 5432.
    pub port: u16,
    /// TLS for pgdual's connections to new, as `legacy.tls`: `disable` (default), `prefer`,
    /// `require` or `verify-full` (needs `tls_ca_file`).
    pub tls: TlsMode,
    /// PEM file with the CA certificate(s) that sign new's certificate. Default: none.
    pub tls_ca_file: Option<PathBuf>,
    /// Name checked against new's certificate; default `host`.
    pub tls_server_name: Option<String>,
    /// Default `postgres`.
    pub user: String,
    /// Prefer `password_file` or `PGDUAL_NEW_PASSWORD` to writing it here. Default: none.
    pub password: Option<String>,
    /// File holding the password for `user` (trailing newline trimmed); not with `password`.
    /// Default: none.
    pub password_file: Option<PathBuf>,
    /// Default `postgres`.
    pub dbname: String,
}

impl Default for NewConfig {
    fn default() -> Self {
        NewConfig {
            host: String::new(),
            port: 5432,
            tls: TlsMode::Disable,
            tls_ca_file: None,
            tls_server_name: None,
            user: "postgres".into(),
            password: None,
            password_file: None,
            dbname: "postgres".into(),
        }
    }
}

/// TLS from pgdual to a server, with libpq's `sslmode` meanings: `prefer` falls back to
/// plaintext when the server answers `N`, `require` encrypts without checking the
/// certificate, `verify-full` checks it against a CA and the server name.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

/// The former name of [`TlsMode`], when only legacy had it.
pub type LegacyTlsMode = TlsMode;

impl TlsMode {
    /// The setting's value as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// TLS offered to clients. With no certificate configured, SSLRequest is answered `N`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// PEM certificate chain. Default: none (TLS not offered).
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP API (`/healthz`, `/readyz`, `/metrics`).
    /// Default `127.0.0.1:9187`; an empty string disables it.
    pub listen: String,
    /// Bearer token; required when `listen` is not a loopback address.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `pgdual=debug`. Default `info`.
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest protocol message accepted from a client, in bytes. Larger ones get
    /// SQLSTATE 54000 and the connection is closed. Default 1073741823, PostgreSQL's own limit.
    pub max_message_bytes: u64,
    /// Client connections served at once; more get SQLSTATE 53300. Default 1000.
    pub max_client_connections: usize,
    /// Time allowed to connect to legacy, and for a client to send its startup message.
    /// Default 5000 ms.
    pub connect_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long open sessions may run before they are closed.
    /// Default 30000 ms.
    pub drain_timeout_ms: u64,
}

/// PostgreSQL refuses allocations of 1 GiB and more; so do we by default.
pub const POSTGRES_MAX_MESSAGE_BYTES: u64 = (1 << 30) - 1;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:6432".into(),
            workers: 0,
            legacy: LegacyConfig::default(),
            new: NewConfig::default(),
            rules_file: None,
            mirror: MirrorConfig::default(),
            backfill: BackfillConfig::default(),
            verify: VerifyConfig::default(),
            reads: ReadsConfig::default(),
            tls: ClientTlsConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            limits: Limits::default(),
        }
    }
}

impl Default for LegacyConfig {
    fn default() -> Self {
        LegacyConfig {
            host: "127.0.0.1".into(),
            port: 5432,
            tls: TlsMode::Disable,
            tls_ca_file: None,
            tls_server_name: None,
            user: "postgres".into(),
            password: None,
            password_file: None,
            dbname: "postgres".into(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9187".into(),
            token: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: POSTGRES_MAX_MESSAGE_BYTES,
            max_client_connections: 1000,
            connect_timeout_ms: 5000,
            drain_timeout_ms: 30_000,
        }
    }
}

/// One thing wrong with a configuration, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{} problem(s) in {origin}:\n{}", problems.len(), list(problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
