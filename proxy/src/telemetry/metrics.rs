//! Process metrics, rendered in the Prometheus text format for `/metrics`.
//!
//! Counters are plain atomics updated once per relayed chunk, not per message, so the relay
//! hot path pays a handful of uncontended `fetch_add`s. No global statics: one `Metrics` is
//! created per proxy and passed in, so tests can run several proxies in one process.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pgdual_rules::bounds::Exceeded;
use pgdual_rules::{AnalysisCache, StatementKind};

fn skipped_index(why: Exceeded) -> usize {
    match why {
        Exceeded::Length(_) => 0,
        Exceeded::Depth => 1,
    }
}

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something that is not the protocol, or over a limit.
    Client,
    /// Legacy was unreachable or its connection broke.
    Legacy,
    /// Inside pgdual (TLS setup, I/O to the client).
    Internal,
}

impl ErrorSource {
    const ALL: [ErrorSource; 3] = [
        ErrorSource::Client,
        ErrorSource::Legacy,
        ErrorSource::Internal,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Legacy => "legacy",
            ErrorSource::Internal => "internal",
        }
    }
}

/// Upper bounds of the added-latency histogram buckets, in seconds.
const LATENCY_BOUNDS: [f64; 14] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 1e-1, 1.0,
];

/// Upper bounds of the mirror-lag histogram buckets, in seconds.
const LAG_BOUNDS: [f64; 14] = [
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket histogram of durations.
pub struct Histogram {
    bounds: &'static [f64; 14],
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64; 14]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 14],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Buckets for the microseconds pgdual adds to a message.
    pub const fn latency() -> Self {
        Histogram::new(&LATENCY_BOUNDS)
    }

    /// Buckets for mirror lag, milliseconds to seconds.
    pub const fn lag() -> Self {
        Histogram::new(&LAG_BOUNDS)
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The dual-write mirror.
pub struct MirrorMetrics {
    /// 1 once the changelog and capture triggers are installed.
    pub ready: AtomicI64,
    /// The rules version whose triggers are installed.
    pub rules_version: AtomicI64,
    /// Batches applied to new, each one new transaction holding whole legacy transactions.
    pub batches_total: AtomicU64,
    /// Captured changes (row keys and TRUNCATE markers) consumed from the backlog.
    pub changes_total: AtomicU64,
    pub rows_upserted_total: AtomicU64,
    pub rows_deleted_total: AtomicU64,
    /// Transient failures (new or legacy unreachable, serialization) that were retried.
    pub retries_total: AtomicU64,
    /// Changes new refused for good, written to the dead-letter file.
    pub dead_letters_total: AtomicU64,
    /// Changes captured but not yet applied (approximate: the span of backlog ids).
    pub backlog: AtomicI64,
    /// Legacy change to new commit.
    pub lag: Histogram,
}

impl Default for MirrorMetrics {
    fn default() -> Self {
        MirrorMetrics {
            ready: AtomicI64::new(0),
            rules_version: AtomicI64::new(0),
            batches_total: AtomicU64::new(0),
            changes_total: AtomicU64::new(0),
            rows_upserted_total: AtomicU64::new(0),
            rows_deleted_total: AtomicU64::new(0),
            retries_total: AtomicU64::new(0),
            dead_letters_total: AtomicU64::new(0),
            backlog: AtomicI64::new(0),
            lag: Histogram::lag(),
        }
    }
}

pub struct Metrics {
    pub client_connections: AtomicI64,
    pub client_connections_total: AtomicU64,
    pub rejected_connections_total: AtomicU64,
    pub cancel_requests_total: AtomicU64,
    statements: [AtomicU64; StatementKind::ALL.len()],
    pub bytes_from_clients: AtomicU64,
    pub bytes_from_legacy: AtomicU64,
    errors: [AtomicU64; ErrorSource::ALL.len()],
    pub legacy_error_responses_total: AtomicU64,
    pub parse_failures_total: AtomicU64,
    /// Statements over the analysis bounds, never parsed: too long, too deep.
    analysis_skipped: [AtomicU64; 2],
    /// Time a chunk of bytes spends inside pgdual, from the read that completed it to the
    /// end of the write that forwarded it, in either direction.
    pub added_latency: Histogram,
    pub mirror: Arc<MirrorMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            client_connections: AtomicI64::new(0),
            client_connections_total: AtomicU64::new(0),
            rejected_connections_total: AtomicU64::new(0),
            cancel_requests_total: AtomicU64::new(0),
            statements: Default::default(),
            bytes_from_clients: AtomicU64::new(0),
            bytes_from_legacy: AtomicU64::new(0),
            errors: Default::default(),
            legacy_error_responses_total: AtomicU64::new(0),
            parse_failures_total: AtomicU64::new(0),
            analysis_skipped: Default::default(),
            added_latency: Histogram::latency(),
            mirror: Arc::default(),
        }
    }
}

impl Metrics {
    pub fn statement(&self, kind: StatementKind) {
        self.statements[kind.index()].fetch_add(1, Relaxed);
    }

    pub fn statements(&self, kind: StatementKind) -> u64 {
        self.statements[kind.index()].load(Relaxed)
    }

    /// Counts a statement that was over the analysis bounds.
    pub fn analysis_skipped(&self, why: Exceeded) {
        self.analysis_skipped[skipped_index(why)].fetch_add(1, Relaxed);
    }

    pub fn error(&self, source: ErrorSource) {
        self.errors[source as usize].fetch_add(1, Relaxed);
    }

    pub fn errors(&self, source: ErrorSource) -> u64 {
        self.errors[source as usize].load(Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, cache: &AnalysisCache) -> String {
        let mut out = String::with_capacity(4096);
        let mut scalar = |name: &str, kind: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Relaxed) as i64;
        scalar(
            "pgdual_client_connections",
            "gauge",
            "Client connections open now.",
            self.client_connections.load(Relaxed),
        );
        scalar(
            "pgdual_client_connections_total",
            "counter",
            "Client connections accepted.",
            load(&self.client_connections_total),
        );
        scalar(
            "pgdual_rejected_connections_total",
            "counter",
            "Client connections refused over limits.max_client_connections.",
            load(&self.rejected_connections_total),
        );
        scalar(
            "pgdual_cancel_requests_total",
            "counter",
            "CancelRequests received from clients.",
            load(&self.cancel_requests_total),
        );
        scalar(
            "pgdual_legacy_error_responses_total",
            "counter",
            "ErrorResponses legacy sent to clients (relayed unchanged).",
            load(&self.legacy_error_responses_total),
        );
        scalar(
            "pgdual_parse_failures_total",
            "counter",
            "Statements sqlparser could not parse (relayed unchanged, kind=unknown).",
            load(&self.parse_failures_total),
        );
        scalar(
            "pgdual_analysis_cache_hits_total",
            "counter",
            "Statement analyses served from the cache.",
            cache.hits() as i64,
        );
        scalar(
            "pgdual_analysis_cache_misses_total",
            "counter",
            "Statement analyses that had to parse.",
            cache.misses() as i64,
        );
        scalar(
            "pgdual_analysis_cache_entries",
            "gauge",
            "SQL texts in the analysis cache.",
            cache.len() as i64,
        );
        let _ = writeln!(
            out,
            "# HELP pgdual_analysis_skipped_total Statements over the analysis bounds, relayed unchanged without being parsed (kind=unknown).\n\
             # TYPE pgdual_analysis_skipped_total counter"
        );
        for why in [Exceeded::Length(0), Exceeded::Depth] {
            let _ = writeln!(
                out,
                "pgdual_analysis_skipped_total{{reason=\"{}\"}} {}",
                why.reason(),
                load(&self.analysis_skipped[skipped_index(why)])
            );
        }
        let _ = writeln!(
            out,
            "# HELP pgdual_relayed_bytes_total Bytes relayed, by direction.\n\
             # TYPE pgdual_relayed_bytes_total counter\n\
             pgdual_relayed_bytes_total{{direction=\"client_to_legacy\"}} {}\n\
             pgdual_relayed_bytes_total{{direction=\"legacy_to_client\"}} {}",
            load(&self.bytes_from_clients),
            load(&self.bytes_from_legacy)
        );
        let _ = writeln!(
            out,
            "# HELP pgdual_statements_total Statements seen, by kind.\n\
             # TYPE pgdual_statements_total counter"
        );
        for kind in StatementKind::ALL {
            let _ = writeln!(
                out,
                "pgdual_statements_total{{kind=\"{kind}\"}} {}",
                self.statements(kind)
            );
        }
        let _ = writeln!(
            out,
            "# HELP pgdual_errors_total Failures by where they came from.\n\
             # TYPE pgdual_errors_total counter"
        );
        for source in ErrorSource::ALL {
            let _ = writeln!(
                out,
                "pgdual_errors_total{{source=\"{}\"}} {}",
                source.as_str(),
                self.errors(source)
            );
        }
        let m = &self.mirror;
        for (name, kind, help, value) in [
            ("pgdual_mirror_ready", "gauge", "1 once capture triggers are installed on legacy.", m.ready.load(Relaxed)),
            ("pgdual_mirror_rules_version", "gauge", "Rules version whose capture triggers are installed.", m.rules_version.load(Relaxed)),
            ("pgdual_mirror_batches_total", "counter", "Batches applied to new, each one new transaction holding whole legacy transactions.", load(&m.batches_total)),
            ("pgdual_mirror_changes_total", "counter", "Captured changes consumed from the backlog.", load(&m.changes_total)),
            ("pgdual_mirror_rows_upserted_total", "counter", "Rows inserted or updated in new.", load(&m.rows_upserted_total)),
            ("pgdual_mirror_rows_deleted_total", "counter", "Rows deleted from new.", load(&m.rows_deleted_total)),
            ("pgdual_mirror_retries_total", "counter", "Transient mirror failures retried with backoff.", load(&m.retries_total)),
            ("pgdual_mirror_dead_letters_total", "counter", "Changes new refused for good, written to the dead-letter file.", load(&m.dead_letters_total)),
            ("pgdual_mirror_backlog_changes", "gauge", "Captured changes waiting in legacy (approximate).", m.backlog.load(Relaxed)),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        m.lag.render(
            &mut out,
            "pgdual_mirror_lag_seconds",
            "From a change on legacy to its row image committed in new.",
        );
        self.added_latency.render(
            &mut out,
            "pgdual_added_latency_seconds",
            "Time bytes spend inside pgdual between the read that completes them and the end of the write that forwards them.",
        );
        out
    }
}
