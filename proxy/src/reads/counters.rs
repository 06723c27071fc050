//! What routed reads did, per legacy table: who answered, why a read fell back or stayed
//! on legacy, how shadow comparisons came out, and samples of the comparisons that differed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

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

/// Read counters of one legacy table.
#[derive(Debug, Default)]
pub struct TableReads {
    pub legacy: AtomicU64,
    pub new: AtomicU64,
    pub shadow: AtomicU64,
    pub fallbacks: [AtomicU64; Fallback::ALL.len()],
    /// Reads kept on legacy for the client's role, by [`KeptForRole`].
    pub kept_for_role: [AtomicU64; KeptForRole::ALL.len()],
    pub shadow_matches: AtomicU64,
    pub shadow_mismatches: AtomicU64,
    pub shadow_errors: AtomicU64,
    pub shadow_skipped: AtomicU64,
}

impl TableReads {
    pub fn fallback(&self, why: Fallback) -> u64 {
        self.fallbacks[why as usize].load(Relaxed)
    }

    /// Matches over compared reads, when any were compared.
    pub fn match_rate(&self) -> Option<f64> {
        let m = self.shadow_matches.load(Relaxed);
        let n = m + self.shadow_mismatches.load(Relaxed);
        (n > 0).then(|| m as f64 / n as f64)
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

/// Per-table read counters in the Prometheus text format.
pub fn render(tables: Vec<(String, Arc<TableReads>)>) -> String {
    use std::fmt::Write;
    let tables: Vec<(String, Arc<TableReads>)> = tables
        .into_iter()
        .map(|(t, r)| (t.replace('\\', "\\\\").replace('"', "\\\""), r))
        .collect();
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: &mut dyn Iterator<Item = (String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    family(
        "pgdual_reads_total",
        "Reads of tables with routing rules, by the side that answered (legacy, new) or shadow.",
        &mut tables.iter().flat_map(|(t, r)| {
            [
                ("legacy", &r.legacy),
                ("new", &r.new),
                ("shadow", &r.shadow),
            ]
            .map(|(m, v)| (format!("table=\"{t}\",route=\"{m}\""), v.load(Relaxed)))
        }),
    );
    family(
        "pgdual_read_fallbacks_total",
        "Reads meant for new that legacy answered, by reason.",
        &mut tables.iter().flat_map(|(t, r)| {
            Fallback::ALL.map(|f| {
                (
                    format!("table=\"{t}\",reason=\"{}\"", f.as_str()),
                    r.fallback(f),
                )
            })
        }),
    );
    family(
        "pgdual_reads_kept_on_legacy_total",
        "Reads new or a shadow would have taken that legacy answered alone because of the \
             client's role: privilege (no SELECT on a table or column read), privilege_unchecked \
             (the role's privileges were being looked up), rls (row-level security), role (the \
             session changed its role).",
        &mut tables.iter().flat_map(|(t, r)| {
            KeptForRole::ALL.map(|k| {
                (
                    format!("table=\"{t}\",reason=\"{}\"", k.as_str()),
                    r.kept_for_role[k as usize].load(Relaxed),
                )
            })
        }),
    );
    family(
        "pgdual_shadow_reads_total",
        "Shadow comparisons by outcome (match, mismatch, error on new, skipped).",
        &mut tables.iter().flat_map(|(t, r)| {
            [
                ("match", &r.shadow_matches),
                ("mismatch", &r.shadow_mismatches),
                ("error", &r.shadow_errors),
                ("skipped", &r.shadow_skipped),
            ]
            .map(|(o, v)| (format!("table=\"{t}\",outcome=\"{o}\""), v.load(Relaxed)))
        }),
    );
    out
}
