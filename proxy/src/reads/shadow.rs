//! Shadow reads: a read legacy answers is also run on new, off the client's path, and the
//! two answers compared (as multisets, or in order when the query is ordered). Mismatches are
//! counted per table and sampled for the admin API, with values redacted unless
//! `reads.log_values`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgdual_rules::read_plan::KeyRef;
use pgdual_rules::{ReadPlan, RuleSet};
use tracing::{debug, warn};

use tokio::sync::mpsc::error::TrySendError;

use super::answer::NewAnswer;
use super::describe::Described;
use super::{CachedPlan, Fallback, Reads, Request, Sample, Settings, TableReads};
use crate::proto::backend::{columns, field_names, same_shape};

/// What legacy answered a shadowed read, captured as it went to the client.
#[derive(Debug, Default)]
pub struct Capture {
    pub row: Option<Bytes>,
    pub rows: Vec<Bytes>,
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

/// Counts (and samples) how new's answer to a shadowed read compares with legacy's.
pub(super) fn finish(
    reads: &Reads,
    job: ShadowJob,
    described: &Described,
    answer: Result<NewAnswer, Fallback>,
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
    let sample = sample(
        reads.log_values(),
        plan,
        &job,
        &new,
        diff,
        &described.params,
    );
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
fn compare(legacy: &Capture, new: &NewAnswer, ordered: bool) -> Option<Diff> {
    if !same_shape(legacy.row.as_deref().unwrap_or(&[]), new.row.as_deref()) {
        return Some(None);
    }
    let mut a: Vec<&Bytes> = legacy.rows.iter().collect();
    let mut b: Vec<&Bytes> = new.rows.iter().collect();
    if !ordered {
        a.sort();
        b.sort();
    }
    if a == b {
        return None;
    }
    if a.len() != b.len() {
        return Some(None);
    }
    let i = a.iter().zip(&b).position(|(x, y)| x != y)?;
    let (x, y) = (columns(a[i]), columns(b[i]));
    let col = x.iter().zip(&y).position(|(p, q)| p != q);
    Some(col.map(|c| (i, c)))
}

fn sample(
    show: bool,
    plan: &ReadPlan,
    job: &ShadowJob,
    new: &NewAnswer,
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
        let mut a: Vec<&Bytes> = job.capture.rows.iter().collect();
        let mut b: Vec<&Bytes> = new.rows.iter().collect();
        if !plan.ordered {
            a.sort();
            b.sort();
        }
        legacy_value = Some(redact(columns(a[row]).get(col).copied().flatten()));
        new_value = Some(redact(columns(b[row]).get(col).copied().flatten()));
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

    #[test]
    fn answers_compare_as_multisets_unless_ordered() {
        let row = Some(Bytes::from(row_description(&[("id", 23), ("email", 25)])));
        let legacy = Capture {
            row: row.clone(),
            rows: vec![
                data_row(&[Some("1"), Some("a")]),
                data_row(&[Some("2"), None]),
            ],
            complete: true,
            ..Default::default()
        };
        let new = |rows: Vec<Bytes>| NewAnswer {
            row: row.clone(),
            rows,
            complete: Bytes::new(),
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
}
