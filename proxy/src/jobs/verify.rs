//! Verify and repair: proves that new holds what legacy holds, as the rules map it, and
//! fixes what differs.
//!
//! The table is compared chunk by chunk in key order: each side's row count and the sum of
//! its rows' hashes (`pgdual_rules::keyset_sql`), with both sessions under the same pinned
//! settings (the row-image settings, and legacy's time zone on both). A chunk whose digests
//! differ is narrowed to keys. Keys found differing may only be in flight (written in legacy,
//! not yet applied by the mirror): they are looked at again once the mirror has applied every
//! change that was in its backlog when they were found, and only those that still differ
//! count. Repair hands them to the row-image copy the mirror uses (upsert what legacy holds,
//! delete what it does not), under the copy lock, and looks at them once more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdual_config::VerifyConfig;
use pgdual_rules::keyset_sql::{self, Bounds};
use pgdual_rules::RuleSet;
use serde::Serialize;
use tokio_postgres::Client;
use tracing::info;

use super::state;
use super::table::{bound_params, key_of, JobError, Key, Pair, TablePlan};
use super::JobMetrics;
use crate::net::endpoint::Endpoints;

/// Most times differing keys are looked at again, each after the mirror caught up.
const MAX_LOOKS: usize = 6;
/// Longest wait for the mirror to apply what was in its backlog.
const MIRROR_WAIT: Duration = Duration::from_secs(30);
/// Keys per repair or re-check statement.
const KEYS_PER_STATEMENT: usize = 1000;

/// One verification of one table.
pub struct Verify {
    pub table: String,
    pub rules: Arc<RuleSet>,
    pub endpoints: Endpoints,
    pub settings: VerifyConfig,
    pub repair: bool,
    /// Put column values in the report's samples.
    pub show_values: bool,
    pub metrics: Arc<JobMetrics>,
}

/// A verification's result, in the manner of Vitess' VDiff.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub table: String,
    pub new_table: String,
    /// Rows in legacy, compared.
    pub rows_compared: u64,
    pub rows_in_new: u64,
    pub matching: u64,
    /// Present on both sides with different values.
    pub differing: u64,
    pub missing_in_new: u64,
    pub extra_in_new: u64,
    /// `matching` over the rows of either side, in percent.
    pub parity_percent: f64,
    /// Keys that differed when found and were equal once the mirror caught up.
    pub in_flight: u64,
    /// Keys still being written at every look: neither reported as differing nor counted as
    /// matching (verify again when writes to them pause).
    pub unsettled: u64,
    pub chunks: u64,
    pub chunks_differing: u64,
    /// The first differing keys, in key order.
    pub samples: Vec<Sample>,
    /// Keys handed to repair; none without `--repair`.
    pub repaired: Option<u64>,
    /// Keys still differing after repair.
    pub after_repair: Option<u64>,
    pub seconds: f64,
}

/// One differing key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// `(id)=(42)`.
    pub key: String,
    /// `differs`, `missing in new` or `extra in new`.
    pub kind: String,
    /// The first new column that differs (for `differs`).
    pub column: Option<String>,
    /// The column's text on each side, with `--show-values` only.
    pub legacy: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Differs,
    Missing,
    Extra,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Differs => "differs",
            Kind::Missing => "missing in new",
            Kind::Extra => "extra in new",
        }
    }
}

/// What one side holds for a key: the row's hash, and (when fetched) its column texts.
#[derive(Clone)]
struct Side {
    hash: i64,
    values: Vec<Option<String>>,
}

impl Verify {
    pub async fn run(self) -> Result<Report, JobError> {
        let started = Instant::now();
        let rule = TablePlan::rule(&self.rules, &self.table)?;
        let pair = Pair::open(&self.endpoints, rule.database).await?;
        state::install(&pair.legacy).await?;
        let began = state::legacy_now(&pair.legacy).await?;
        pin_time_zone(&pair).await?;
        let plan = TablePlan::learn(rule, &pair).await?;
        let mut scan = Scan::default();
        let mut lower: Option<Key> = None;
        loop {
            let upper = plan
                .chunk_end(&pair.legacy, lower.as_ref(), None, self.settings.chunk_rows)
                .await?;
            self.compare_chunk(&plan, &pair, lower.as_ref(), upper.as_ref(), &mut scan)
                .await?;
            match upper {
                Some(u) => lower = Some(u),
                None => break,
            }
        }
        let found = scan.suspects.len() as u64;
        let (persisting, unsettled) = self
            .recheck(&plan, &pair, std::mem::take(&mut scan.suspects))
            .await?;
        let mut report = self.report(&plan, &scan, &persisting, (found, unsettled), started);
        if self.repair && !persisting.is_empty() {
            let keys: Vec<Key> = persisting.keys().cloned().collect();
            for batch in keys.chunks(KEYS_PER_STATEMENT) {
                plan.repair(&pair, &keys_json(&plan, batch)).await?;
            }
            let left = self.look_again(&plan, &pair, &keys).await?;
            report.repaired = Some(keys.len() as u64);
            report.after_repair = Some(left.len() as u64);
            info!(table = %plan.name, repaired = keys.len(), left = left.len(), "verify repaired differing rows");
        }
        report.seconds = started.elapsed().as_secs_f64();
        let json = serde_json::to_value(&report).unwrap_or_default();
        state::save_report(&pair.legacy, &plan.name, &json).await?;
        let at_parity =
            report.after_repair.unwrap_or(persisting.len() as u64) == 0 && unsettled == 0;
        if at_parity {
            // A gap in the capture before this verify began is closed now.
            state::close_capture_gap(&pair.legacy, &plan.name, &began).await?;
        }
        let t = [plan.name.as_str()];
        self.metrics
            .verify_parity
            .with_label_values(&t)
            .set(report.parity_percent / 100.0);
        self.metrics
            .verify_differences
            .with_label_values(&t)
            .set(persisting.len() as i64);
        info!(
            table = %plan.name,
            rows = report.rows_compared,
            parity_percent = report.parity_percent,
            differing = report.differing,
            missing_in_new = report.missing_in_new,
            extra_in_new = report.extra_in_new,
            "verify finished"
        );
        Ok(report)
    }

    /// Compares one chunk's digests; narrows a differing chunk to keys.
    async fn compare_chunk(
        &self,
        plan: &TablePlan,
        pair: &Pair,
        lower: Option<&Key>,
        upper: Option<&Key>,
        scan: &mut Scan,
    ) -> Result<(), JobError> {
        let b = Bounds {
            lower: lower.is_some(),
            upper: upper.is_some(),
        };
        let params = bound_params(lower, upper);
        let legacy_sql =
            keyset_sql::legacy_digest(&plan.rule, &plan.legacy_types, &plan.verify_types, b);
        let new_sql = keyset_sql::new_digest(&plan.rule, &plan.new_types, b);
        let (l, n) = tokio::join!(
            pair.legacy.query_one(&legacy_sql, &params),
            pair.target.query_one(&new_sql, &params)
        );
        let (l, n) = (l.map_err(JobError::Legacy)?, n.map_err(JobError::New)?);
        let (l_rows, n_rows): (i64, i64) = (l.get(0), n.get(0));
        scan.chunks += 1;
        scan.legacy_rows += l_rows as u64;
        scan.new_rows += n_rows as u64;
        if l_rows == n_rows && l.get::<_, String>(1) == n.get::<_, String>(1) {
            return Ok(());
        }
        scan.chunks_differing += 1;
        let legacy_sql =
            keyset_sql::legacy_hashes(&plan.rule, &plan.legacy_types, &plan.verify_types, b);
        let new_sql = keyset_sql::new_hashes(&plan.rule, &plan.new_types, b);
        let (l, n) = tokio::join!(
            pair.legacy.query(&legacy_sql, &params),
            pair.target.query(&new_sql, &params)
        );
        let (l, n) = (l.map_err(JobError::Legacy)?, n.map_err(JobError::New)?);
        let k = plan.key_len();
        let legacy: HashMap<Key, i64> = l.iter().map(|r| (key_of(r, k), r.get(k))).collect();
        let new: HashMap<Key, i64> = n.iter().map(|r| (key_of(r, k), r.get(k))).collect();
        for (key, h) in &legacy {
            if new.get(key) != Some(h) {
                scan.suspects.push(key.clone());
            }
        }
        for key in new.keys() {
            if !legacy.contains_key(key) {
                scan.suspects.push(key.clone());
            }
        }
        Ok(())
    }

    /// The suspects that differ for good, with both sides' rows. Each look waits for the
    /// mirror to apply everything committed before it began, then reads new and then legacy.
    /// A key still differing whose legacy row stayed the same since the look before is drift:
    /// every write to it was committed before this look's mark, so new has applied it. A key
    /// whose legacy row changed between two looks is being written: it is looked at again,
    /// and if it keeps changing it is counted as unsettled (the second value), neither
    /// reported nor matching. A look for which the mirror did not catch up in time decides
    /// nothing.
    async fn recheck(
        &self,
        plan: &TablePlan,
        pair: &Pair,
        mut suspects: Vec<Key>,
    ) -> Result<(HashMap<Key, (Option<Side>, Option<Side>)>, u64), JobError> {
        let mut drift = HashMap::new();
        // Legacy's row hash (`None`: no row) at the last look, of the keys that differed.
        let mut before: HashMap<Key, Option<i64>> = HashMap::new();
        for _ in 0..MAX_LOOKS {
            if suspects.is_empty() {
                break;
            }
            let mark = mirror_mark(&pair.legacy, &plan.name).await?;
            let caught_up = wait_for_mirror(&pair.legacy, &plan.name, mark).await?;
            let now = self.look_again(plan, pair, &suspects).await?;
            suspects.clear();
            let mut moved = HashMap::new();
            for (key, (legacy, new)) in now {
                let hash = legacy.as_ref().map(|s| s.hash);
                if caught_up && before.get(&key) == Some(&hash) {
                    drift.insert(key, (legacy, new));
                } else {
                    suspects.push(key.clone());
                    moved.insert(key, hash);
                }
            }
            before = moved;
            if !caught_up {
                // Another look would wait as long again.
                break;
            }
        }
        if !suspects.is_empty() {
            info!(
                table = %plan.name,
                keys = suspects.len(),
                "verify: rows that kept changing while looked at are left unsettled"
            );
        }
        Ok((drift, suspects.len() as u64))
    }

    /// Of `keys`, those whose rows differ now, with both sides' rows.
    async fn look_again(
        &self,
        plan: &TablePlan,
        pair: &Pair,
        keys: &[Key],
    ) -> Result<HashMap<Key, (Option<Side>, Option<Side>)>, JobError> {
        let legacy_sql =
            keyset_sql::legacy_rows_by_keys(&plan.rule, &plan.legacy_types, &plan.verify_types);
        let new_sql = keyset_sql::new_rows_by_keys(&plan.rule, &plan.new_types);
        let k = plan.key_len();
        let side = |r: &tokio_postgres::Row| {
            (
                key_of(r, k),
                Side {
                    values: r.get(k),
                    hash: r.get(k + 1),
                },
            )
        };
        let mut out = HashMap::new();
        for batch in keys.chunks(KEYS_PER_STATEMENT) {
            let json = keys_json(plan, batch);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&json];
            // New first: whatever new holds by then legacy committed before it is read.
            let n = pair.target.query(&new_sql, &params).await;
            let n = n.map_err(JobError::New)?;
            let l = pair.legacy.query(&legacy_sql, &params).await;
            let l = l.map_err(JobError::Legacy)?;
            let mut legacy: HashMap<Key, Side> = l.iter().map(side).collect();
            let mut new: HashMap<Key, Side> = n.iter().map(side).collect();
            for key in batch {
                let (a, b) = (legacy.remove(key), new.remove(key));
                let same = match (&a, &b) {
                    (Some(x), Some(y)) => x.hash == y.hash,
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    out.insert(key.clone(), (a, b));
                }
            }
        }
        Ok(out)
    }

    fn report(
        &self,
        plan: &TablePlan,
        scan: &Scan,
        persisting: &HashMap<Key, (Option<Side>, Option<Side>)>,
        (found, unsettled): (u64, u64),
        started: Instant,
    ) -> Report {
        let mut counts: HashMap<Kind, u64> = HashMap::new();
        let mut samples: Vec<(Key, Sample)> = Vec::new();
        for (key, (l, n)) in persisting {
            let kind = match (l, n) {
                (Some(_), Some(_)) => Kind::Differs,
                (Some(_), None) => Kind::Missing,
                _ => Kind::Extra,
            };
            *counts.entry(kind).or_default() += 1;
            samples.push((key.clone(), self.sample(plan, key, kind, l, n)));
        }
        samples.sort_by(|a, b| compare_keys(&a.0, &b.0));
        samples.truncate(self.settings.report_keys);
        let count = |k| counts.get(&k).copied().unwrap_or(0);
        let (differing, missing, extra) = (
            count(Kind::Differs),
            count(Kind::Missing),
            count(Kind::Extra),
        );
        let matching = scan
            .legacy_rows
            .saturating_sub(differing + missing + unsettled);
        let universe = scan.legacy_rows + extra;
        Report {
            table: plan.name.clone(),
            new_table: plan.rule.new.to_string(),
            rows_compared: scan.legacy_rows,
            rows_in_new: scan.new_rows,
            matching,
            differing,
            missing_in_new: missing,
            extra_in_new: extra,
            parity_percent: if universe == 0 {
                100.0
            } else {
                matching as f64 * 100.0 / universe as f64
            },
            in_flight: found.saturating_sub(persisting.len() as u64 + unsettled),
            unsettled,
            chunks: scan.chunks,
            chunks_differing: scan.chunks_differing,
            samples: samples.into_iter().map(|(_, s)| s).collect(),
            repaired: None,
            after_repair: None,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn sample(
        &self,
        plan: &TablePlan,
        key: &Key,
        kind: Kind,
        l: &Option<Side>,
        n: &Option<Side>,
    ) -> Sample {
        let mut sample = Sample {
            key: format!(
                "({})=({})",
                plan.rule.legacy_keys.join(", "),
                key.join(", ")
            ),
            kind: kind.as_str().into(),
            column: None,
            legacy: None,
            new: None,
        };
        if let (Some(l), Some(n)) = (l, n) {
            if let Some(i) = (0..l.values.len()).find(|&i| l.values.get(i) != n.values.get(i)) {
                sample.column = plan.rule.columns.get(i).map(|c| c.new.clone());
                if self.show_values {
                    sample.legacy = Some(show(l.values.get(i)));
                    sample.new = Some(show(n.values.get(i)));
                }
            }
        }
        sample
    }
}

/// A column's text as the report shows it.
fn show(v: Option<&Option<String>>) -> String {
    match v {
        Some(Some(t)) => t.clone(),
        _ => "NULL".into(),
    }
}

/// Keys in the order of their texts, numbers by value (a display order; legacy's own order
/// is the table's).
fn compare_keys(a: &Key, b: &Key) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x.parse::<f64>(), y.parse::<f64>()) {
            (Ok(p), Ok(q)) => p.partial_cmp(&q).unwrap_or(std::cmp::Ordering::Equal),
            _ => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

#[derive(Default)]
struct Scan {
    chunks: u64,
    chunks_differing: u64,
    legacy_rows: u64,
    new_rows: u64,
    suspects: Vec<Key>,
}

/// The keys as the JSON array of legacy key objects the by-key statements take.
fn keys_json(plan: &TablePlan, keys: &[Key]) -> String {
    serde_json::Value::Array(keys.iter().map(|k| plan.key_object(k)).collect()).to_string()
}

/// Both sessions read and print times in legacy's time zone (the one the mirror's
/// transforms see).
async fn pin_time_zone(pair: &Pair) -> Result<(), JobError> {
    let tz: String = pair
        .legacy
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .map_err(JobError::Legacy)?
        .get(0);
    pair.target
        .execute("SELECT set_config('TimeZone', $1, false)", &[&tz])
        .await
        .map_err(JobError::New)
        .map(drop)
}

/// How far the mirror must get before a re-check: the newest change of the table in the
/// triggers' backlog, or legacy's WAL position when a capture slot decodes the table.
#[derive(Debug, Clone)]
enum Mark {
    Backlog(i64),
    Wal(String),
}

/// `$1`'s capture slots (pgdual's, publishing the table) that have not confirmed `$2`.
const SLOT_BEHIND: &str = "SELECT EXISTS (SELECT 1 FROM pgdual.capture_slots s \
    JOIN pg_catalog.pg_replication_slots r ON r.slot_name = s.slot \
    JOIN pg_catalog.pg_publication_tables p ON p.pubname = s.publication \
    WHERE pg_catalog.format('%I.%I', p.schemaname, p.tablename)::pg_catalog.regclass \
          = $1::text::pg_catalog.regclass \
      AND coalesce(r.wal_status, '') <> 'lost' \
      AND coalesce(r.confirmed_flush_lsn, '0/0') < $2::text::pg_lsn)";

/// Where the mirror stands for `table` now; `None` when nothing captures it (or the
/// capture's tables are not ours to read).
async fn mirror_mark(legacy: &Client, table: &str) -> Result<Option<Mark>, JobError> {
    let row = legacy
        .query_one(
            "SELECT CASE WHEN pg_catalog.to_regclass('pgdual.changes') IS NULL THEN NULL \
             ELSE (SELECT max(id) FROM pgdual.changes WHERE tbl = $1) END, \
             CASE WHEN pg_catalog.to_regclass('pgdual.capture_slots') IS NULL THEN NULL \
             ELSE pg_catalog.pg_current_wal_insert_lsn()::text END",
            &[&table],
        )
        .await;
    let (backlog, wal): (Option<i64>, Option<String>) = match row {
        Ok(r) => (r.get(0), r.get(1)),
        // The backlog table exists but is not ours to read: nothing to wait for.
        Err(e) if e.code().map(|c| c.code()) == Some("42501") => return Ok(None),
        Err(e) => return Err(JobError::Legacy(e)),
    };
    if let Some(id) = backlog {
        return Ok(Some(Mark::Backlog(id)));
    }
    let Some(lsn) = wal else {
        return Ok(None);
    };
    // Only when a slot decodes the table: otherwise there is nothing to wait for.
    match legacy.query_one(SLOT_BEHIND, &[&table, &lsn]).await {
        Ok(r) if r.get::<_, bool>(0) => Ok(Some(Mark::Wal(lsn))),
        Ok(_) => Ok(None),
        Err(e) if e.code().map(|c| c.code()) == Some("42501") => Ok(None),
        Err(e) => Err(JobError::Legacy(e)),
    }
}

/// Waits until the mirror applied every change of `table` up to `mark` (at most
/// [`MIRROR_WAIT`]); `false` when it did not get there in time.
async fn wait_for_mirror(
    legacy: &Client,
    table: &str,
    mark: Option<Mark>,
) -> Result<bool, JobError> {
    let Some(mark) = mark else {
        return Ok(true);
    };
    let deadline = Instant::now() + MIRROR_WAIT;
    while Instant::now() < deadline {
        let row =
            match &mark {
                Mark::Backlog(id) => legacy
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pgdual.changes WHERE tbl = $1 AND id <= $2)",
                        &[&table, id],
                    )
                    .await,
                Mark::Wal(lsn) => legacy.query_one(SLOT_BEHIND, &[&table, lsn]).await,
            };
        let pending: bool = row.map_err(JobError::Legacy)?.get(0);
        if !pending {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    info!(
        table,
        "verify: the mirror did not catch up in time; what differs is left unsettled"
    );
    Ok(false)
}

impl Report {
    /// The report as the command line prints it.
    pub fn text(&self) -> String {
        let mut out = format!(
            "verify {} -> {}\n  rows compared (legacy): {}   rows in new: {}\n  matching: {}   \
             differing: {}   missing in new: {}   extra in new: {}\n  parity: {}%\n",
            self.table,
            self.new_table,
            self.rows_compared,
            self.rows_in_new,
            self.matching,
            self.differing,
            self.missing_in_new,
            self.extra_in_new,
            format_percent(self.parity_percent),
        );
        out.push_str(&format!(
            "  chunks: {} ({} differed); in flight when found, equal once the mirror caught up: {}\n",
            self.chunks, self.chunks_differing, self.in_flight
        ));
        if self.unsettled > 0 {
            out.push_str(&format!(
                "  still being written at every look, not compared: {} (verify again when \
                 writes to them pause)\n",
                self.unsettled
            ));
        }
        if !self.samples.is_empty() {
            out.push_str(&format!(
                "  differing keys (first {}):\n",
                self.samples.len()
            ));
            for s in &self.samples {
                out.push_str(&format!("    {}  {}", s.key, s.kind));
                if let Some(c) = &s.column {
                    out.push_str(&format!(" in column {c}"));
                }
                if let (Some(l), Some(n)) = (&s.legacy, &s.new) {
                    out.push_str(&format!(": legacy {l:?}, new {n:?}"));
                }
                out.push('\n');
            }
        }
        if let (Some(r), Some(left)) = (self.repaired, self.after_repair) {
            out.push_str(&format!(
                "  repaired: {r} keys; still differing after repair: {left}\n"
            ));
        }
        out.push_str(&format!("  took {:.1} s\n", self.seconds));
        out
    }
}

/// A percentage with enough digits to tell 99.9999 from 100.
fn format_percent(p: f64) -> String {
    if p >= 100.0 {
        return "100".into();
    }
    // Never rounds up to 100: 99.99999 shows as 99.9999.
    let s = format!("{:.4}", (p * 10_000.0).floor() / 10_000.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
