//! What routed reads did, per legacy table: who answered, why a read fell back or stayed
//! on legacy, how shadow comparisons came out, and samples of the comparisons that differed.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec};
use serde::Serialize;

use crate::telemetry::metrics::{ObserveDuration, Registrar};

/// Upper bounds of the read-time histogram buckets, in seconds.
const READ_BOUNDS: [f64; 14] = [
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
];

/// Where the time of a read routed to new, or shadowed on new, goes: on new (the pooled
/// connection, settings and the round trip) and in pgdual itself (the rest: describing,
/// checking and assembling the answer, comparing). A `new` read's client waits for both; a
/// shadow runs after the client has its answer.
pub struct ReadTimes {
    new_in_pgdual: Histogram,
    new_on_new: Histogram,
    shadow_in_pgdual: Histogram,
    shadow_on_new: Histogram,
}

/// How a read was routed, for [`ReadTimes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    New,
    Shadow,
}

impl ReadTimes {
    fn register(r: &Registrar<'_>) -> ReadTimes {
        let family = r.histograms(
            "pgdual_read_seconds",
            "Time of reads routed to new (answered or fallen back) or shadowed on new, by \
             where it was spent: on new (connection, settings, round trip) or in pgdual (the \
             rest).",
            &["route", "spent_in"],
            &READ_BOUNDS,
        );
        let h = |route, spent_in| family.with_label_values(&[route, spent_in]);
        ReadTimes {
            new_in_pgdual: h("new", "pgdual"),
            new_on_new: h("new", "new"),
            shadow_in_pgdual: h("shadow", "pgdual"),
            shadow_on_new: h("shadow", "new"),
        }
    }

    /// One read that took `total`, `on_new` of it on new.
    pub fn observe(&self, route: Routed, total: Duration, on_new: Duration) {
        let (pgdual, new) = match route {
            Routed::New => (&self.new_in_pgdual, &self.new_on_new),
            Routed::Shadow => (&self.shadow_in_pgdual, &self.shadow_on_new),
        };
        pgdual.observe_duration(total.saturating_sub(on_new));
        new.observe_duration(on_new);
    }
}

/// Why a read meant for new was answered by legacy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// New answered with an error.
    Error,
    /// New could not be reached, broke off, or took longer than `reads.timeout_ms`.
    Unavailable,
    /// New's columns differ from legacy's in number or type.
    Shape,
    /// No rows, and the rule has `fallback_on_empty`.
    Empty,
    /// The result is over `reads.max_result_bytes`.
    TooLarge,
    /// Legacy could not describe the statement.
    Describe,
}

impl Fallback {
    pub const ALL: [Fallback; 6] = [
        Fallback::Error,
        Fallback::Unavailable,
        Fallback::Shape,
        Fallback::Empty,
        Fallback::TooLarge,
        Fallback::Describe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Error => "error",
            Fallback::Unavailable => "unavailable",
            Fallback::Shape => "shape",
            Fallback::Empty => "empty",
            Fallback::TooLarge => "too_large",
            Fallback::Describe => "describe",
        }
    }
}

/// Why a read that new or a shadow could have taken stayed on legacy because of the
/// client's role (the `reason` of `pgdual_reads_kept_on_legacy_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptForRole {
    /// The role lacks SELECT on a table or column the read touches.
    Privilege,
    /// The role's privileges were being looked up.
    PrivilegeUnchecked,
    /// A table the read touches has row-level security on legacy.
    RowSecurity,
    /// The session may have changed its role.
    Role,
}

impl KeptForRole {
    pub const ALL: [KeptForRole; 4] = [
        KeptForRole::Privilege,
        KeptForRole::PrivilegeUnchecked,
        KeptForRole::RowSecurity,
        KeptForRole::Role,
    ];

    pub fn of(why: pgdual_rules::route::Why) -> Option<KeptForRole> {
        use pgdual_rules::route::Why;
        match why {
            Why::Privilege => Some(KeptForRole::Privilege),
            Why::PrivilegeUnchecked => Some(KeptForRole::PrivilegeUnchecked),
            Why::RowSecurity => Some(KeptForRole::RowSecurity),
            Why::Role => Some(KeptForRole::Role),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeptForRole::Privilege => "privilege",
            KeptForRole::PrivilegeUnchecked => "privilege_unchecked",
            KeptForRole::RowSecurity => "rls",
            KeptForRole::Role => "role",
        }
    }
}

/// Read counters of one legacy table: children of the [`Families`], so they are on
/// `/metrics` under the table's name.
#[derive(Debug)]
pub struct TableReads {
    pub legacy: IntCounter,
    pub new: IntCounter,
    pub shadow: IntCounter,
    pub fallbacks: [IntCounter; Fallback::ALL.len()],
    /// Reads kept on legacy for the client's role, by [`KeptForRole`].
    pub kept_for_role: [IntCounter; KeptForRole::ALL.len()],
    pub shadow_matches: IntCounter,
    pub shadow_mismatches: IntCounter,
    pub shadow_errors: IntCounter,
    pub shadow_skipped: IntCounter,
}

impl TableReads {
    pub fn fallback(&self, why: Fallback) -> u64 {
        self.fallbacks[why as usize].get()
    }

    /// Matches over compared reads, when any were compared.
    pub fn match_rate(&self) -> Option<f64> {
        let m = self.shadow_matches.get();
        let n = m + self.shadow_mismatches.get();
        (n > 0).then(|| m as f64 / n as f64)
    }
}

/// The metric families of routed reads, labelled by table.
pub struct Families {
    /// Where routed reads spend their time.
    pub times: ReadTimes,
    reads: IntCounterVec,
    fallbacks: IntCounterVec,
    kept: IntCounterVec,
    shadow: IntCounterVec,
}

impl Families {
    pub fn register(r: &Registrar<'_>) -> Families {
        Families {
            times: ReadTimes::register(r),
            reads: r.counters(
                "pgdual_reads_total",
                "Reads of tables with routing rules, by the side that answered (legacy, new) \
                 or shadow.",
                &["table", "route"],
            ),
            fallbacks: r.counters(
                "pgdual_read_fallbacks_total",
                "Reads meant for new that legacy answered, by reason.",
                &["table", "reason"],
            ),
            kept: r.counters(
                "pgdual_reads_kept_on_legacy_total",
                "Reads new or a shadow would have taken that legacy answered alone because of \
                 the client's role: privilege (no SELECT on a table or column read), \
                 privilege_unchecked (the role's privileges were being looked up), rls \
                 (row-level security), role (the session changed its role).",
                &["table", "reason"],
            ),
            shadow: r.counters(
                "pgdual_shadow_reads_total",
                "Shadow comparisons by outcome (match, mismatch, error on new, skipped).",
                &["table", "outcome"],
            ),
        }
    }

    /// The counters of `table` (created at zero on first use).
    pub fn table(&self, table: &str) -> TableReads {
        let reads = |route| self.reads.with_label_values(&[table, route]);
        let shadow = |outcome| self.shadow.with_label_values(&[table, outcome]);
        TableReads {
            legacy: reads("legacy"),
            new: reads("new"),
            shadow: reads("shadow"),
            fallbacks: Fallback::ALL
                .map(|f| self.fallbacks.with_label_values(&[table, f.as_str()])),
            kept_for_role: KeptForRole::ALL
                .map(|k| self.kept.with_label_values(&[table, k.as_str()])),
            shadow_matches: shadow("match"),
            shadow_mismatches: shadow("mismatch"),
            shadow_errors: shadow("error"),
            shadow_skipped: shadow("skipped"),
        }
    }
}

/// A shadow comparison that differed.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub tables: Vec<String>,
    /// The statement with its literals replaced by `?`.
    pub fingerprint: String,
    /// The pinned key value (redacted unless `reads.log_values`).
    pub key: Option<String>,
    pub legacy_rows: usize,
    pub new_rows: usize,
    /// The first column whose values differ, when both sides have the same columns.
    pub column: Option<String>,
    pub legacy_value: Option<String>,
    pub new_value: Option<String>,
}
