//! Shadow reads: a read legacy answers is also run on new, off the client's path, and the
//! two answers compared (as multisets, or in order when the query is ordered). Mismatches are
//! counted per table and sampled for the admin API, with values redacted unless
//! `reads.log_values`.
//!
//! Neither answer is held whole: each side's rows are digested as they arrive (a hash per
//! row), and the rows themselves are kept only while both fit in [`KEPT_BYTES`], which is
//! what a mismatch's sample needs to name the column and values.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgdual_rules::read_plan::KeyRef;
use pgdual_rules::{ReadPlan, RuleSet};
use tracing::{debug, warn};

use tokio::sync::mpsc::error::TrySendError;

use super::{CachedPlan, Fallback, Reads, Request, Sample, Settings, TableReads};
use crate::proto::backend::{columns, field_names, same_shape};

/// Rows kept as they are for a mismatch's sample, per answer; past this only their hashes.
pub const KEPT_BYTES: usize = 64 * 1024;

/// An answer's rows as a comparison needs them: a hash of each, and the rows themselves
/// while they fit in [`KEPT_BYTES`].
#[derive(Debug)]
pub struct Rows {
    hashes: Vec<u64>,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// Every row is in `kept`.
    whole: bool,
}

impl Default for Rows {
    fn default() -> Self {
        Rows {
            hashes: Vec::new(),
            kept: Vec::new(),
            kept_bytes: 0,
            whole: true,
        }
    }
}

impl Rows {
    /// Digests one DataRow body.
    pub fn push(&mut self, row: &[u8]) {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hasher::write(&mut h, row);
        self.hashes.push(std::hash::Hasher::finish(&h));
        if self.whole && self.kept_bytes + row.len() <= KEPT_BYTES {
            self.kept_bytes += row.len();
            self.kept.push(Bytes::copy_from_slice(row));
        } else if self.whole {
            self.whole = false;
            self.kept = Vec::new();
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The rows, when every one was kept.
    fn all(&self) -> Option<&[Bytes]> {
        self.whole.then_some(&self.kept[..])
    }
}

/// What new answered a shadowed read, digested.
#[derive(Debug, Default)]
pub struct Answered {
    pub row: Option<Bytes>,
    pub rows: Rows,
}

/// What legacy answered a shadowed read, digested as it went to the client.
#[derive(Debug, Default)]
pub struct Capture {
    pub row: Option<Bytes>,
    pub rows: Rows,
    pub bytes: usize,
    /// Over the size limit, streamed, or an error: nothing to compare.
    pub spoiled: bool,
    pub complete: bool,
}

/// A shadowed read waiting for legacy's answer.
#[derive(Debug)]
pub struct ShadowJob {
    pub plan: CachedPlan,
    pub rules: Arc<RuleSet>,
    pub request: Request,
    pub settings: Settings,
    pub capture: Capture,
}

/// Hands a shadowed read to the shadow thread (see [`super::runner`]); the client has its
/// answer. A read that finds the queue full is counted as skipped.
pub fn spawn_shadow(reads: Arc<Reads>, job: ShadowJob) {
    let Ok(plan) = &*job.plan else { return };
    let skipped = |t: &TableReads| {
        t.shadow_skipped.inc();
    };
    if job.capture.spoiled || !job.capture.complete {
        return reads.count(plan, skipped);
    }
    if let Err(e) = reads.shadow_queue().try_send(job) {
        let job = match e {
            TrySendError::Full(job) | TrySendError::Closed(job) => job,
        };
        if let Ok(plan) = &*job.plan {
            reads.count(plan, skipped);
        }
    }
}

/// Counts (and samples) how new's answer to a shadowed read compares with legacy's;
/// `param_types` (legacy's) decode a binary key in a sample.
pub(super) fn finish(
    reads: &Reads,
    job: ShadowJob,
    param_types: &[u32],
    answer: Result<Answered, Fallback>,
) {
    let plan = job.plan.clone();
    let Ok(plan) = &*plan else { return };
    let new = match answer {
        Ok(new) => new,
        Err(why) => {
            debug!(reason = why.as_str(), "shadow read failed on new");
            return reads.count(plan, |t| {
                t.shadow_errors.inc();
            });
        }
    };
    let Some(diff) = compare(&job.capture, &new, plan.ordered) else {
        return reads.count(plan, |t| {
            t.shadow_matches.inc();
        });
    };
    reads.count(plan, |t| {
        t.shadow_mismatches.inc();
    });
    let sample = sample(reads.log_values(), plan, &job, &new, diff, param_types);
    warn!(
        tables = ?sample.tables,
        fingerprint = %sample.fingerprint,
        key = ?sample.key,
        column = ?sample.column,
        legacy_rows = sample.legacy_rows,
        new_rows = sample.new_rows,
        "shadow read differs between legacy and new"
    );
    reads.sample(sample);
}

/// Where two answers first differ: (row index in comparison order, column index).
type Diff = Option<(usize, usize)>;

/// `None` when the answers are equal (as multisets, or in order when the query is ordered).
/// Where they differ is known when both kept their rows.
fn compare(legacy: &Capture, new: &Answered, ordered: bool) -> Option<Diff> {
    if !same_shape(legacy.row.as_deref().unwrap_or(&[]), new.row.as_deref()) {
        return Some(None);
    }
    if legacy.rows.len() != new.rows.len() {
        return Some(None);
    }
    let (mut a, mut b) = (legacy.rows.hashes.clone(), new.rows.hashes.clone());
    if !ordered {
        a.sort_unstable();
        b.sort_unstable();
    }
    if a == b {
        return None;
    }
    let (Some(a), Some(b)) = (legacy.rows.all(), new.rows.all()) else {
        return Some(None);
    };
    let (a, b) = (in_order(a, ordered), in_order(b, ordered));
    let i = a.iter().zip(&b).position(|(x, y)| x != y)?;
    let (x, y) = (columns(a[i]), columns(b[i]));
    let col = x.iter().zip(&y).position(|(p, q)| p != q);
    Some(col.map(|c| (i, c)))
}

/// Rows in comparison order: as they came when ordered, sorted otherwise.
fn in_order(rows: &[Bytes], ordered: bool) -> Vec<&Bytes> {
    let mut v: Vec<&Bytes> = rows.iter().collect();
    if !ordered {
        v.sort();
    }
    v
}

fn sample(
    show: bool,
    plan: &ReadPlan,
    job: &ShadowJob,
    new: &Answered,
    diff: Diff,
    param_types: &[u32],
) -> Sample {
    let redact = |v: Option<&[u8]>| -> String {
        if show {
            v.map_or("NULL".into(), |v| String::from_utf8_lossy(v).into_owned())
        } else {
            "<redacted>".into()
        }
    };
    let key = plan.key.as_ref().map(|keys| {
        keys.iter()
            .map(|k| match k {
                KeyRef::Literal(v) => redact(Some(v.as_bytes())),
                // Binary-format parameters decoded by their type, not shown as raw bytes.
                KeyRef::Param(n) => {
                    let text = job.request.param(*n).map(|raw| {
                        let ty = param_types.get(n.wrapping_sub(1)).copied().unwrap_or(0);
                        crate::telemetry::redact::param_text(&raw, job.request.param_binary(*n), ty)
                    });
                    redact(text.as_deref().map(str::as_bytes))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    let (mut column, mut legacy_value, mut new_value) = (None, None, None);
    if let Some((row, col)) = diff {
        let names = job
            .capture
            .row
            .as_deref()
            .map(field_names)
            .unwrap_or_default();
        column = names.get(col).cloned();
        // A diff with a column comes only from kept rows.
        if let (Some(a), Some(b)) = (job.capture.rows.all(), new.rows.all()) {
            let (a, b) = (in_order(a, plan.ordered), in_order(b, plan.ordered));
            legacy_value = Some(redact(columns(a[row]).get(col).copied().flatten()));
            new_value = Some(redact(columns(b[row]).get(col).copied().flatten()));
        }
    }
    Sample {
        at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        tables: plan.tables.iter().map(|t| t.to_string()).collect(),
        fingerprint: pgdual_rules::fingerprint(job.request.sql()),
        key,
        legacy_rows: job.capture.rows.len(),
        new_rows: new.rows.len(),
        column,
        legacy_value,
        new_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::backend::tests::row_description;
    use bytes::{BufMut, BytesMut};

    fn data_row(vals: &[Option<&str>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(vals.len() as i16);
        for v in vals {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
            }
        }
        b.freeze()
    }

    fn rows(list: &[Bytes]) -> Rows {
        let mut r = Rows::default();
        for row in list {
            r.push(row);
        }
        r
    }

    #[test]
    fn answers_compare_as_multisets_unless_ordered() {
        let row = Some(Bytes::from(row_description(&[("id", 23), ("email", 25)])));
        let legacy = Capture {
            row: row.clone(),
            rows: rows(&[
                data_row(&[Some("1"), Some("a")]),
                data_row(&[Some("2"), None]),
            ]),
            complete: true,
            ..Default::default()
        };
        let new = |list: Vec<Bytes>| Answered {
            row: row.clone(),
            rows: rows(&list),
        };
        let swapped = new(vec![
            data_row(&[Some("2"), None]),
            data_row(&[Some("1"), Some("a")]),
        ]);
        assert_eq!(compare(&legacy, &swapped, false), None);
        assert!(compare(&legacy, &swapped, true).is_some());
        let changed = new(vec![
            data_row(&[Some("1"), Some("b")]),
            data_row(&[Some("2"), None]),
        ]);
        assert_eq!(compare(&legacy, &changed, true), Some(Some((0, 1))));
        assert_eq!(compare(&legacy, &new(vec![]), false), Some(None));
    }

    #[test]
    fn large_answers_compare_by_their_hashes_alone() {
        let big = |n: usize, last: &str| {
            let mut list: Vec<Bytes> = (0..n)
                .map(|i| data_row(&[Some(&format!("{i:0>100}"))]))
                .collect();
            list.push(data_row(&[Some(last)]));
            rows(&list)
        };
        let n = KEPT_BYTES / 100 + 10;
        let a = big(n, "x");
        assert!(a.all().is_none(), "past the budget only hashes are kept");
        assert!(a.kept.is_empty() && a.len() == n + 1);
        let row = Some(Bytes::from(row_description(&[("v", 25)])));
        let legacy = Capture {
            row: row.clone(),
            rows: a,
            complete: true,
            ..Default::default()
        };
        let same = Answered {
            row: row.clone(),
            rows: big(n, "x"),
        };
        let other = Answered {
            row,
            rows: big(n, "y"),
        };
        assert_eq!(compare(&legacy, &same, true), None);
        assert_eq!(
            compare(&legacy, &other, false),
            Some(None),
            "differs, column unknown"
        );
    }
}
