//! pgdual's proxy settings: the TOML file format, environment overrides and validation.
//!
//! Defaults live in one place (the `Default` impls below). `validate()` collects every
//! problem at once, each naming its field, so an operator fixes a file in one pass.
//! This crate does no I/O beyond reading the files it is asked to load: the config file and
//! the `password_file`s it names.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

/// Environment variables that override file settings, and the field each one sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PGDUAL_LISTEN", "listen"),
    ("PGDUAL_WORKERS", "workers"),
    ("PGDUAL_LEGACY_HOST", "legacy.host"),
    ("PGDUAL_LEGACY_PORT", "legacy.port"),
    ("PGDUAL_LEGACY_TLS", "legacy.tls"),
    ("PGDUAL_LEGACY_TLS_CA_FILE", "legacy.tls_ca_file"),
    ("PGDUAL_LEGACY_TLS_SERVER_NAME", "legacy.tls_server_name"),
    ("PGDUAL_LEGACY_USER", "legacy.user"),
    ("PGDUAL_LEGACY_PASSWORD", "legacy.password"),
    ("PGDUAL_LEGACY_PASSWORD_FILE", "legacy.password_file"),
    ("PGDUAL_LEGACY_DBNAME", "legacy.dbname"),
    ("PGDUAL_NEW_HOST", "new.host"),
    ("PGDUAL_NEW_PORT", "new.port"),
    ("PGDUAL_NEW_TLS", "new.tls"),
    ("PGDUAL_NEW_TLS_CA_FILE", "new.tls_ca_file"),
    ("PGDUAL_NEW_TLS_SERVER_NAME", "new.tls_server_name"),
    ("PGDUAL_NEW_USER", "new.user"),
    ("PGDUAL_NEW_PASSWORD", "new.password"),
    ("PGDUAL_NEW_PASSWORD_FILE", "new.password_file"),
    ("PGDUAL_NEW_DBNAME", "new.dbname"),
    ("PGDUAL_RULES_FILE", "rules_file"),
    ("PGDUAL_ADMIN_LISTEN", "admin.listen"),
    ("PGDUAL_ADMIN_TOKEN", "admin.token"),
    ("PGDUAL_LOG_LEVEL", "log.level"),
    ("PGDUAL_LOG_FORMAT", "log.format"),
    ("PGDUAL_MAX_MESSAGE_BYTES", "limits.max_message_bytes"),
    (
        "PGDUAL_MAX_CLIENT_CONNECTIONS",
        "limits.max_client_connections",
    ),
    ("PGDUAL_CONNECT_TIMEOUT_MS", "limits.connect_timeout_ms"),
    ("PGDUAL_DRAIN_TIMEOUT_MS", "limits.drain_timeout_ms"),
];

impl Config {
    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Reads and parses a file without validating it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Sets a field by its dotted name from a string, as env vars and CLI flags do.
    pub fn set(&mut self, field: &str, value: &str) -> Result<(), Problem> {
        let bad = |what: &str| Problem {
            field: field.to_string(),
            message: format!("{value:?} is not {what}"),
        };
        let num = |what| value.trim().parse::<u64>().map_err(|_| bad(what));
        match field {
            "listen" => self.listen = value.to_string(),
            "workers" => self.workers = num("a number")? as usize,
            "legacy.host" => self.legacy.host = value.to_string(),
            "legacy.port" => self.legacy.port = value.trim().parse().map_err(|_| bad("a port"))?,
            "legacy.tls" | "new.tls" => {
                let mode = from_name(value)
                    .ok_or_else(|| bad("one of disable, prefer, require, verify-full"))?;
                match field {
                    "legacy.tls" => self.legacy.tls = mode,
                    _ => self.new.tls = mode,
                }
            }
            "legacy.tls_ca_file" => self.legacy.tls_ca_file = Some(PathBuf::from(value)),
            "legacy.tls_server_name" => self.legacy.tls_server_name = Some(value.to_string()),
            "legacy.user" => self.legacy.user = value.to_string(),
            "legacy.password" => self.legacy.password = Some(value.to_string()),
            "legacy.password_file" => self.legacy.password_file = Some(PathBuf::from(value)),
            "legacy.dbname" => self.legacy.dbname = value.to_string(),
            "new.host" => self.new.host = value.to_string(),
            "new.port" => self.new.port = value.trim().parse().map_err(|_| bad("a port"))?,
            "new.tls_ca_file" => self.new.tls_ca_file = Some(PathBuf::from(value)),
            "new.tls_server_name" => self.new.tls_server_name = Some(value.to_string()),
            "new.user" => self.new.user = value.to_string(),
            "new.password" => self.new.password = Some(value.to_string()),
            "new.password_file" => self.new.password_file = Some(PathBuf::from(value)),
            "new.dbname" => self.new.dbname = value.to_string(),
            "rules_file" => self.rules_file = Some(PathBuf::from(value)),
            "admin.listen" => self.admin.listen = value.to_string(),
            "admin.token" => self.admin.token = Some(value.to_string()),
            "log.level" => self.log.level = value.to_string(),
            "log.format" => {
                self.log.format = from_name(value).ok_or_else(|| bad("one of text, json"))?
            }
            "limits.max_message_bytes" => self.limits.max_message_bytes = num("a byte count")?,
            "limits.max_client_connections" => {
                self.limits.max_client_connections = num("a number")? as usize
            }
            "limits.connect_timeout_ms" => self.limits.connect_timeout_ms = num("milliseconds")?,
            "limits.drain_timeout_ms" => self.limits.drain_timeout_ms = num("milliseconds")?,
            _ => {
                return Err(Problem {
                    field: field.to_string(),
                    message: "no such setting".into(),
                })
            }
        }
        Ok(())
    }

    /// Applies `PGDUAL_*` overrides from the given environment; returns the bad ones.
    pub fn apply_env<I, K, V>(&mut self, vars: I) -> Vec<Problem>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut problems = Vec::new();
        for (k, v) in vars {
            if let Some((_, field)) = ENV_OVERRIDES.iter().find(|(name, _)| *name == k.as_ref()) {
                if let Err(mut p) = self.set(field, v.as_ref()) {
                    p.field = format!("{} (from {})", p.field, k.as_ref());
                    problems.push(p);
                }
            }
        }
        problems
    }

    /// Every problem with this configuration; empty when it is usable.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: String| {
            out.push(Problem {
                field: field.into(),
                message,
            })
        };
        self.connection_problems(&mut bad);
        self.job_problems(&mut bad);
        self.identity_problems(&mut bad);
        self.surface_problems(&mut bad);
        out
    }

    /// Addresses, TLS and passwords of the listener, legacy and new.
    fn connection_problems(&self, bad: &mut impl FnMut(&str, String)) {
        if self.listen.parse::<SocketAddr>().is_err() {
            bad(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:6432", self.listen),
            );
        }
        if self.legacy.host.trim().is_empty() {
            bad("legacy.host", "must not be empty".into());
        }
        if self.legacy.port == 0 {
            bad("legacy.port", "must be between 1 and 65535".into());
        }
        let endpoints = [
            (
                "legacy",
                &self.legacy.host,
                self.legacy.tls,
                &self.legacy.tls_ca_file,
            ),
            ("new", &self.new.host, self.new.tls, &self.new.tls_ca_file),
        ];
        for (name, host, tls, ca_file) in endpoints {
            if tls == TlsMode::VerifyFull && ca_file.is_none() {
                bad(
                    &format!("{name}.tls_ca_file"),
                    format!("is required when {name}.tls = \"verify-full\""),
                );
            }
            if host.starts_with('/') && tls != TlsMode::Disable {
                bad(
                    &format!("{name}.tls"),
                    "TLS is not used over a Unix socket; set it to \"disable\"".into(),
                );
            }
        }
        let passwords = [
            ("legacy", &self.legacy.password, &self.legacy.password_file),
            ("new", &self.new.password, &self.new.password_file),
        ];
        for (name, password, file) in passwords {
            if password.is_some() && file.is_some() {
                bad(
                    &format!("{name}.password"),
                    format!("set either {name}.password or {name}.password_file, not both"),
                );
            }
        }
    }

    /// The read router and the mirror.
    fn job_problems(&self, bad: &mut impl FnMut(&str, String)) {
        if self.reads.timeout_ms == 0 {
            bad("reads.timeout_ms", "must be at least 1".into());
        }
        if self.reads.max_result_bytes == 0 {
            bad("reads.max_result_bytes", "must be at least 1".into());
        }
        if self.reads.shadow_concurrency == 0 {
            bad("reads.shadow_concurrency", "must be at least 1".into());
        }
        if self.reads.pool_min_idle > MAX_POOL_MIN_IDLE {
            bad(
                "reads.pool_min_idle",
                format!(
                    "must be at most {MAX_POOL_MIN_IDLE} (the idle connections a worker keeps)"
                ),
            );
        }
        let b = &self.backfill;
        for (field, value) in [
            ("backfill.target_chunk_ms", b.target_chunk_ms),
            ("backfill.concurrency", b.concurrency as u64),
            ("backfill.retry_initial_ms", b.retry_initial_ms),
            ("verify.chunk_rows", self.verify.chunk_rows as u64),
        ] {
            if value == 0 {
                bad(field, "must be at least 1".into());
            }
        }
        if !(b.max_latency_ratio == 0.0 || b.max_latency_ratio >= 1.0) {
            bad(
                "backfill.max_latency_ratio",
                "must be 0 (off) or at least 1".into(),
            );
        }
        if b.concurrency > 64 {
            bad("backfill.concurrency", "must be at most 64".into());
        }
        if b.retry_max_ms < b.retry_initial_ms {
            bad(
                "backfill.retry_max_ms",
                "must be at least backfill.retry_initial_ms".into(),
            );
        }
        for (field, name) in [
            ("mirror.slot", &self.mirror.slot),
            ("mirror.publication", &self.mirror.publication),
        ] {
            let plain = name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if name.is_empty() || name.len() > 63 || !plain {
                bad(
                    field,
                    format!("{name:?}: use 1 to 63 lower-case letters, digits and underscores"),
                );
            }
        }
        if self.mirror.batch_size == 0 {
            bad("mirror.batch_size", "must be at least 1".into());
        }
        if self.mirror.poll_interval_ms == 0 {
            bad("mirror.poll_interval_ms", "must be at least 1".into());
        }
        if self.mirror.retry_initial_ms == 0
            || self.mirror.retry_max_ms < self.mirror.retry_initial_ms
        {
            bad(
                "mirror.retry_max_ms",
                "must be at least mirror.retry_initial_ms, which must be at least 1".into(),
            );
        }
    }

    /// Who pgdual connects as, and where.
    fn identity_problems(&self, bad: &mut impl FnMut(&str, String)) {
        if !self.new.host.is_empty() && self.new.port == 0 {
            bad("new.port", "must be between 1 and 65535".into());
        }
        for (field, value) in [
            ("legacy.user", &self.legacy.user),
            ("legacy.dbname", &self.legacy.dbname),
            ("new.user", &self.new.user),
            ("new.dbname", &self.new.dbname),
        ] {
            if value.trim().is_empty() {
                bad(field, "must not be empty".into());
            }
        }
    }

    /// Client TLS, the admin API, logging and limits.
    fn surface_problems(&self, bad: &mut impl FnMut(&str, String)) {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => bad("tls.key_file", "is required with tls.cert_file".into()),
            (None, Some(_)) => bad("tls.cert_file", "is required with tls.key_file".into()),
            _ => {}
        }
        if !self.admin.listen.is_empty() {
            match self.admin.listen.parse::<SocketAddr>() {
                Err(_) => bad(
                    "admin.listen",
                    format!(
                        "{:?} is not an address like 127.0.0.1:9187 (or \"\" to disable)",
                        self.admin.listen
                    ),
                ),
                Ok(addr) if !addr.ip().is_loopback() && self.admin.token.is_none() => bad(
                    "admin.token",
                    format!("is required because admin.listen {addr} is not a loopback address"),
                ),
                Ok(_) => {}
            }
        }
        if self.admin.token.as_deref() == Some("") {
            bad("admin.token", "must not be empty".into());
        }
        if self.log.level.trim().is_empty() {
            bad("log.level", "must not be empty".into());
        }
        if self.limits.max_message_bytes < 1024 {
            bad(
                "limits.max_message_bytes",
                "must be at least 1024".to_string(),
            );
        }
        if self.limits.max_message_bytes > POSTGRES_MAX_MESSAGE_BYTES {
            bad(
                "limits.max_message_bytes",
                format!("must be at most {POSTGRES_MAX_MESSAGE_BYTES} (PostgreSQL's limit)"),
            );
        }
        if self.limits.max_client_connections == 0 {
            bad("limits.max_client_connections", "must be at least 1".into());
        }
        if self.limits.connect_timeout_ms == 0 {
            bad("limits.connect_timeout_ms", "must be at least 1".into());
        }
    }

    /// Reads each `password_file` into its `password` and clears the file setting, so that
    /// connections look at `password` alone. Call after validation (which refuses both set).
    /// A trailing newline is trimmed; an unreadable or empty file is a problem naming its
    /// field. Returns warnings: a file that group or others may read is used (secrets mounted
    /// by Kubernetes or Docker are 0644 or 0444 by default) but reported.
    pub fn read_password_files(&mut self, origin: &str) -> Result<Vec<String>, ConfigError> {
        let (mut problems, mut warnings) = (Vec::new(), Vec::new());
        let endpoints = [
            (
                "legacy",
                &mut self.legacy.password,
                &mut self.legacy.password_file,
            ),
            ("new", &mut self.new.password, &mut self.new.password_file),
        ];
        for (name, password, file) in endpoints {
            let Some(path) = file.take() else { continue };
            let field = format!("{name}.password_file");
            match read_password_file(&path) {
                Ok((secret, warning)) => {
                    *password = Some(secret);
                    warnings.extend(warning.map(|w| format!("{field}: {w}")));
                }
                Err(message) => problems.push(Problem { field, message }),
            }
        }
        if problems.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            })
        }
    }

    /// `Ok` when usable, else every problem; `origin` names where the settings came from.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            })
        }
    }
}

/// A password file's content without its trailing newline, and a warning when group or
/// others may read it; an error says which file and why, never what it holds.
pub fn read_password_file(path: &Path) -> Result<(String, Option<String>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    let mut warning = None;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
        if mode & 0o044 != 0 {
            warning = Some(format!(
                "{} may be read by group or others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    Ok((secret.to_string(), warning))
}

/// An enum setting from its name as the file spells it (the same serde names), for flags and
/// environment overrides.
fn from_name<T: serde::de::DeserializeOwned>(value: &str) -> Option<T> {
    use serde::de::IntoDeserializer;
    let name: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        value.into_deserializer();
    T::deserialize(name).ok()
}

#[cfg(test)]
mod tests;
