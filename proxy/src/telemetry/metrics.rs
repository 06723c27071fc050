//! Process metrics through the `prometheus` crate, rendered in the Prometheus text format
//! for `/metrics`.
//!
//! Every metric is registered in the proxy's own [`Registry`] (no global statics, so tests
//! can run several proxies in one process), and the parts hold the handles they update: an
//! `IntCounter` is one atomic add, cheap enough for the relay's hot path, which updates them
//! once per relayed chunk, not per message. Values kept elsewhere (the analysis cache's hits)
//! are read when the page is rendered, by a collector of their own. This is the one place
//! metrics are defined; another exporter (OpenTelemetry) reads the same registry.

use std::sync::Arc;
use std::time::Duration;

use pgdual_rules::bounds::Exceeded;
use pgdual_rules::{AnalysisCache, StatementKind};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Upper bounds of the added-latency histogram buckets, in seconds.
const LATENCY_BOUNDS: [f64; 14] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 1e-1, 1.0,
];

/// Upper bounds of the mirror-lag histogram buckets, in seconds.
const LAG_BOUNDS: [f64; 14] = [
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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

fn skipped_index(why: Exceeded) -> usize {
    match why {
        Exceeded::Length(_) => 0,
        Exceeded::Depth => 1,
    }
}

/// Registers metrics in one registry; a name registered twice is a programming error.
pub struct Registrar<'a>(&'a Registry);

impl<'a> Registrar<'a> {
    pub fn new(registry: &'a Registry) -> Registrar<'a> {
        Registrar(registry)
    }

    fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }

    /// A family of counters by `labels`.
    pub fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A family of counters of fractional amounts (seconds) by `labels`.
    pub fn float_counters(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        self.add(CounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A family of gauges by `labels`.
    pub fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A family of gauges of fractional values (ratios) by `labels`.
    pub fn float_gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A family of histograms by `labels`, with these bucket bounds (seconds).
    pub fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        bounds: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(bounds.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    fn histogram(&self, name: &str, help: &str, bounds: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(bounds.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }
}

/// Durations observed in seconds.
pub trait ObserveDuration {
    fn observe_duration(&self, d: Duration);
}

impl ObserveDuration for Histogram {
    fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// The dual-write mirror.
pub struct MirrorMetrics {
    /// 1 once the changelog and capture triggers are installed.
    pub ready: IntGauge,
    /// The rules version whose triggers are installed.
    pub rules_version: IntGauge,
    /// Batches applied to new, each one new transaction holding whole legacy transactions.
    pub batches_total: IntCounter,
    /// Captured changes (row keys and TRUNCATE markers) consumed from the backlog.
    pub changes_total: IntCounter,
    pub rows_upserted_total: IntCounter,
    pub rows_deleted_total: IntCounter,
    /// Transient failures (new or legacy unreachable, serialization) that were retried.
    pub retries_total: IntCounter,
    /// Changes new refused for good, written to the dead-letter file.
    pub dead_letters_total: IntCounter,
    /// Changes captured but not yet applied (approximate: the span of backlog ids).
    pub backlog: IntGauge,
    /// Legacy change to new commit.
    pub lag: Histogram,
    /// 1 while changes are captured by logical decoding, 0 with triggers.
    pub capture_logical: IntGauge,
    /// WAL legacy retains for the capture slot.
    pub slot_retained_bytes: IntGauge,
    /// WAL written since the position the mirror confirmed on the slot: its backlog.
    pub slot_behind_bytes: IntGauge,
    /// Times the capture slot was found gone or invalidated (changes lost).
    pub slot_lost_total: IntCounter,
    /// Definition changes of mapped legacy tables noticed while capturing.
    pub capture_ddl_total: IntCounter,
}

impl MirrorMetrics {
    fn register(r: &Registrar<'_>) -> Self {
        MirrorMetrics {
            ready: r.gauge(
                "pgdual_mirror_ready",
                "1 once capture triggers are installed on legacy.",
            ),
            rules_version: r.gauge(
                "pgdual_mirror_rules_version",
                "Rules version whose capture triggers are installed.",
            ),
            batches_total: r.counter(
                "pgdual_mirror_batches_total",
                "Batches applied to new, each one new transaction holding whole legacy \
                 transactions.",
            ),
            changes_total: r.counter(
                "pgdual_mirror_changes_total",
                "Captured changes consumed from the backlog.",
            ),
            rows_upserted_total: r.counter(
                "pgdual_mirror_rows_upserted_total",
                "Rows inserted or updated in new.",
            ),
            rows_deleted_total: r
                .counter("pgdual_mirror_rows_deleted_total", "Rows deleted from new."),
            retries_total: r.counter(
                "pgdual_mirror_retries_total",
                "Transient mirror failures retried with backoff.",
            ),
            dead_letters_total: r.counter(
                "pgdual_mirror_dead_letters_total",
                "Changes new refused for good, written to the dead-letter file.",
            ),
            backlog: r.gauge(
                "pgdual_mirror_backlog_changes",
                "Captured changes waiting in legacy (approximate).",
            ),
            lag: r.histogram(
                "pgdual_mirror_lag_seconds",
                "From a change on legacy to its row image committed in new.",
                &LAG_BOUNDS,
            ),
            capture_logical: r.gauge(
                "pgdual_capture_logical",
                "1 while changes are captured by logical decoding, 0 with triggers.",
            ),
            slot_retained_bytes: r.gauge(
                "pgdual_capture_slot_retained_bytes",
                "WAL legacy retains for the capture slot.",
            ),
            slot_behind_bytes: r.gauge(
                "pgdual_capture_slot_behind_bytes",
                "WAL written since the position the mirror confirmed on the capture slot.",
            ),
            slot_lost_total: r.counter(
                "pgdual_capture_slot_lost_total",
                "Times the capture slot was found gone or invalidated (changes lost).",
            ),
            capture_ddl_total: r.counter(
                "pgdual_capture_ddl_total",
                "Definition changes of mapped legacy tables noticed while capturing.",
            ),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub rejected_connections_total: IntCounter,
    pub cancel_requests_total: IntCounter,
    statements: [IntCounter; StatementKind::ALL.len()],
    pub bytes_from_clients: IntCounter,
    pub bytes_from_legacy: IntCounter,
    errors: [IntCounter; ErrorSource::ALL.len()],
    pub legacy_error_responses_total: IntCounter,
    pub parse_failures_total: IntCounter,
    /// Statements over the analysis bounds, never parsed: too long, too deep.
    analysis_skipped: [IntCounter; 2],
    /// Time a chunk of bytes spends inside pgdual, from the read that completed it to the
    /// end of the write that forwarded it, in either direction.
    pub added_latency: Histogram,
    pub mirror: Arc<MirrorMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Registry::new())
    }
}

impl Metrics {
    fn new(registry: Registry) -> Self {
        let r = Registrar(&registry);
        let statements = r.counters(
            "pgdual_statements_total",
            "Statements seen, by kind.",
            &["kind"],
        );
        let bytes = r.counters(
            "pgdual_relayed_bytes_total",
            "Bytes relayed, by direction.",
            &["direction"],
        );
        let errors = r.counters(
            "pgdual_errors_total",
            "Failures by where they came from.",
            &["source"],
        );
        let skipped = r.counters(
            "pgdual_analysis_skipped_total",
            "Statements over the analysis bounds, relayed unchanged without being parsed \
             (kind=unknown).",
            &["reason"],
        );
        Metrics {
            client_connections: r
                .gauge("pgdual_client_connections", "Client connections open now."),
            client_connections_total: r.counter(
                "pgdual_client_connections_total",
                "Client connections accepted.",
            ),
            rejected_connections_total: r.counter(
                "pgdual_rejected_connections_total",
                "Client connections refused over limits.max_client_connections.",
            ),
            cancel_requests_total: r.counter(
                "pgdual_cancel_requests_total",
                "CancelRequests received from clients.",
            ),
            statements: StatementKind::ALL.map(|k| statements.with_label_values(&[k.to_string()])),
            bytes_from_clients: bytes.with_label_values(&["client_to_legacy"]),
            bytes_from_legacy: bytes.with_label_values(&["legacy_to_client"]),
            errors: ErrorSource::ALL.map(|s| errors.with_label_values(&[s.as_str()])),
            legacy_error_responses_total: r.counter(
                "pgdual_legacy_error_responses_total",
                "ErrorResponses legacy sent to clients (relayed unchanged).",
            ),
            parse_failures_total: r.counter(
                "pgdual_parse_failures_total",
                "Statements sqlparser could not parse (relayed unchanged, kind=unknown).",
            ),
            analysis_skipped: [Exceeded::Length(0), Exceeded::Depth]
                .map(|why| skipped.with_label_values(&[why.reason()])),
            added_latency: r.histogram(
                "pgdual_added_latency_seconds",
                "Time bytes spend inside pgdual between the read that completes them and the \
                 end of the write that forwards them.",
                &LATENCY_BOUNDS,
            ),
            mirror: Arc::new(MirrorMetrics::register(&r)),
            registry: registry.clone(),
        }
    }

    /// Registers more metrics (the read router's families) in this proxy's registry.
    pub fn registrar(&self) -> Registrar<'_> {
        Registrar(&self.registry)
    }

    /// Exports the analysis cache's counters, read when the page is rendered.
    pub fn watch_cache(&self, cache: Arc<AnalysisCache>) {
        let _ = self.registry.register(Box::new(CacheCollector::new(cache)));
    }

    pub fn statement(&self, kind: StatementKind) {
        self.statements[kind.index()].inc();
    }

    pub fn statements(&self, kind: StatementKind) -> u64 {
        self.statements[kind.index()].get()
    }

    /// Counts a statement that was over the analysis bounds.
    pub fn analysis_skipped(&self, why: Exceeded) {
        self.analysis_skipped[skipped_index(why)].inc();
    }

    pub fn error(&self, source: ErrorSource) {
        self.errors[source as usize].inc();
    }

    pub fn errors(&self, source: ErrorSource) -> u64 {
        self.errors[source as usize].get()
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot render the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The analysis cache's hits, misses and size, as they are when collected.
struct CacheCollector {
    cache: Arc<AnalysisCache>,
    /// One collection at a time: each sets the values whole.
    collecting: std::sync::Mutex<()>,
    hits: IntCounter,
    misses: IntCounter,
    entries: IntGauge,
    descs: Vec<Desc>,
}

impl CacheCollector {
    fn new(cache: Arc<AnalysisCache>) -> Self {
        let hits = IntCounter::new(
            "pgdual_analysis_cache_hits_total",
            "Statement analyses served from the cache.",
        )
        .expect("valid metric");
        let misses = IntCounter::new(
            "pgdual_analysis_cache_misses_total",
            "Statement analyses that had to parse.",
        )
        .expect("valid metric");
        let entries = IntGauge::new(
            "pgdual_analysis_cache_entries",
            "SQL texts in the analysis cache.",
        )
        .expect("valid metric");
        let descs = [hits.desc(), misses.desc(), entries.desc()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        CacheCollector {
            cache,
            collecting: Default::default(),
            hits,
            misses,
            entries,
            descs,
        }
    }
}

impl Collector for CacheCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.collecting.lock();
        self.hits.reset();
        self.hits.inc_by(self.cache.hits());
        self.misses.reset();
        self.misses.inc_by(self.cache.misses());
        self.entries.set(self.cache.len() as i64);
        [
            self.hits.collect(),
            self.misses.collect(),
            self.entries.collect(),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_keeps_the_documented_names_and_labels() {
        let m = Metrics::default();
        m.statement(StatementKind::Read);
        m.bytes_from_clients.inc_by(7);
        m.added_latency.observe_duration(Duration::from_micros(3));
        m.mirror.dead_letters_total.inc();
        m.watch_cache(Arc::new(AnalysisCache::new(4)));
        let page = m.render();
        for line in [
            "# TYPE pgdual_statements_total counter",
            "pgdual_statements_total{kind=\"read\"} 1",
            "pgdual_relayed_bytes_total{direction=\"client_to_legacy\"} 7",
            "pgdual_added_latency_seconds_bucket{le=\"0.000005\"} 1",
            "pgdual_added_latency_seconds_count 1",
            "pgdual_mirror_dead_letters_total 1",
            "pgdual_analysis_cache_hits_total 0",
            "pgdual_analysis_skipped_total{reason=\"too_deep\"} 0",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in:\n{page}");
        }
    }
}
