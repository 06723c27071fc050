//! Backfill: copies the rows a table held before its dual-write began, in keyset chunks,
//! from the lowest key up to the highest key legacy held when the backfill began (rows
//! inserted later come through the mirror; a backfill chasing inserts would never end).
//!
//! Each chunk is one short statement on legacy (its own snapshot) and one upsert on the
//! target, under the table's copy lock taken shared, so a chunk's images are never written
//! after the mirror wrote later ones (README, "Backfill"). Chunks are sized to take about
//! `target_chunk_ms`, several are in flight over their own connections, and the job waits
//! while the mirror's backlog or a replica lags past its limits, retries transient failures
//! with backoff, and records after every chunk the key up to which everything is copied:
//! wherever it stops (a crash, `cancel`, `max_runtime`), the next run resumes there.
//!
//! This file holds the job (options, progress, start and end); [`chunks`] the chunk loop,
//! its sizing, retries and checkpoints; [`throttle`] what makes it wait.

mod chunks;
mod throttle;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgdual_config::BackfillConfig;
use pgdual_rules::ruleset::WriteMode;
use pgdual_rules::{capture_sql, RuleSet};
use serde::Serialize;
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::info;

use super::state;
use super::table::{JobError, Key, Pair, TablePlan};
use super::JobMetrics;
use crate::net::endpoint::Endpoints;
use chunks::{Run, FIRST_CHUNK_ROWS};
use throttle::{Probe, PROBE_WINDOW};

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows per chunk, fixed; `None` sizes chunks to `settings.target_chunk_ms`.
    pub batch_size: Option<u32>,
    /// Most rows per second, across all chunks in flight.
    pub rate: Option<u64>,
    /// Stop cleanly at a checkpoint after this long.
    pub max_runtime: Option<Duration>,
    /// Describe the plan; copy nothing, record nothing.
    pub dry_run: bool,
    /// Start again from the lowest key, even after a finished or interrupted backfill.
    pub restart: bool,
    pub settings: BackfillConfig,
    /// Holds each chunk between its read from legacy and its write to the target this long
    /// (tests use it to widen the window in which the mirror would race a chunk).
    pub hold_before_write: Option<Duration>,
}

/// What a user asks of a backfill (command-line flags, the API's JSON body); unset fields
/// take the `[backfill]` settings.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub batch_size: Option<u32>,
    pub target_chunk_ms: Option<u64>,
    pub concurrency: Option<usize>,
    pub rate: Option<u64>,
    pub max_runtime_s: Option<u64>,
    #[serde(default)]
    pub restart: bool,
    #[serde(default)]
    pub dry_run: bool,
}

impl Request {
    /// The run's options; an error names the field that is out of range.
    pub fn options(self, settings: &BackfillConfig) -> Result<Options, String> {
        let mut settings = settings.clone();
        if let Some(ms) = self.target_chunk_ms {
            if ms == 0 {
                return Err("target_chunk_ms: must be at least 1".into());
            }
            settings.target_chunk_ms = ms;
        }
        if let Some(n) = self.concurrency {
            if !(1..=64).contains(&n) {
                return Err("concurrency: must be between 1 and 64".into());
            }
            settings.concurrency = n;
        }
        if self.batch_size == Some(0) {
            return Err("batch_size: must be at least 1".into());
        }
        if self.rate == Some(0) {
            return Err("rate: must be at least 1 row per second".into());
        }
        if self.batch_size.is_some() && self.target_chunk_ms.is_some() {
            return Err("batch_size and target_chunk_ms: give one or the other".into());
        }
        Ok(Options {
            batch_size: self.batch_size,
            rate: self.rate,
            max_runtime: self.max_runtime_s.map(Duration::from_secs),
            dry_run: self.dry_run,
            restart: self.restart,
            settings,
            hold_before_write: None,
        })
    }
}

/// How a run ended (errors aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every row up to the end key is copied.
    Done,
    /// Stopped at a checkpoint (interrupted, `max_runtime`); the next run resumes.
    Stopped(String),
    /// Cancelled by an operator; the next run resumes.
    Cancelled,
    /// A dry run: what it would do.
    Planned(String),
}

/// What a running backfill shows: the command line's progress bar, `GET
/// /tables/{t}/backfill`, `/status`.
#[derive(Debug)]
pub struct Progress {
    pub table: String,
    state: Mutex<String>,
    rows_copied: AtomicU64,
    /// Rows copied by earlier runs of a resumed backfill.
    rows_before: AtomicU64,
    rows_estimate: AtomicU64,
    chunks: AtomicU64,
    chunk_rows: AtomicU64,
    throttled_ms: AtomicU64,
    started: Instant,
}

/// A snapshot of [`Progress`], as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressView {
    pub table: String,
    /// `starting`, `running`, `throttled: <why>`, `paused`, or how it ended.
    pub state: String,
    pub rows_copied: u64,
    /// Rows the table holds, from the planner's statistics.
    pub rows_estimate: u64,
    pub chunks: u64,
    /// Rows per chunk now.
    pub chunk_rows: u64,
    pub rows_per_second: f64,
    /// Seconds left at the current rate; none until it is known.
    pub eta_seconds: Option<f64>,
    pub throttled_seconds: f64,
    pub elapsed_seconds: f64,
}

impl ProgressView {
    /// Whether the run has ended (done, stopped, cancelled, failed, or a dry run).
    pub fn is_finished(&self) -> bool {
        !(self.state == "starting"
            || self.state == "running"
            || self.state == "paused"
            || self.state.starts_with("throttled"))
    }
}

impl Progress {
    pub fn new(table: &str) -> Arc<Progress> {
        Arc::new(Progress {
            table: table.to_string(),
            state: Mutex::new("starting".into()),
            rows_copied: AtomicU64::new(0),
            rows_before: AtomicU64::new(0),
            rows_estimate: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            chunk_rows: AtomicU64::new(0),
            throttled_ms: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Ends the progress with a failure before the job ran (its preflight refused it, or
    /// the start was abandoned).
    pub fn fail(&self, why: &str) {
        self.set_state(format!("failed: {why}"));
    }

    fn set_state(&self, s: impl Into<String>) {
        if let Ok(mut g) = self.state.lock() {
            *g = s.into();
        }
    }

    pub fn view(&self) -> ProgressView {
        let elapsed = self.started.elapsed().as_secs_f64();
        let copied = self.rows_copied.load(Relaxed);
        let total = self.rows_before.load(Relaxed) + copied;
        let estimate = self.rows_estimate.load(Relaxed).max(total);
        let rate = if elapsed > 0.0 {
            copied as f64 / elapsed
        } else {
            0.0
        };
        ProgressView {
            table: self.table.clone(),
            state: self.state.lock().map(|s| s.clone()).unwrap_or_default(),
            rows_copied: total,
            rows_estimate: estimate,
            chunks: self.chunks.load(Relaxed),
            chunk_rows: self.chunk_rows.load(Relaxed),
            rows_per_second: rate,
            eta_seconds: (rate > 0.0).then(|| (estimate - total) as f64 / rate),
            throttled_seconds: self.throttled_ms.load(Relaxed) as f64 / 1000.0,
            elapsed_seconds: elapsed,
        }
    }
}

/// One backfill run of one table.
pub struct Backfill {
    pub table: String,
    pub rules: Arc<RuleSet>,
    pub endpoints: Endpoints,
    pub options: Options,
    pub progress: Arc<Progress>,
    pub metrics: Arc<JobMetrics>,
    /// Key values may appear in log lines.
    pub log_values: bool,
    /// Turns true to stop at the next checkpoint (Ctrl-C, shutdown).
    pub stop: watch::Receiver<bool>,
}

impl Backfill {
    /// Runs to the end, a checkpoint or an error; the state in legacy says which.
    pub async fn run(self) -> Result<Ended, JobError> {
        let result = self.run_inner().await;
        let ended = match &result {
            Ok(Ended::Done) => "done".to_string(),
            Ok(Ended::Stopped(why)) => format!("stopped: {why}"),
            Ok(Ended::Cancelled) => "cancelled".into(),
            Ok(Ended::Planned(_)) => "dry run".into(),
            Err(e) => format!("failed: {}", e.for_log(self.log_values)),
        };
        self.progress.set_state(ended);
        result
    }

    /// What a start checks before anything runs (the admin API answers with it at once):
    /// the rule, legacy, dual-write on, no backfill of the table running anywhere.
    pub async fn preflight(&self) -> Result<(), JobError> {
        let (rule, ctl) = self.control().await?;
        if !self.options.dry_run {
            state::release(&ctl, "backfill", &rule.legacy.to_string()).await?;
        }
        Ok(())
    }

    /// The rule and a legacy session holding the right to run this backfill (released when
    /// it ends), after checking that the table's capture is in place.
    async fn control(&self) -> Result<(pgdual_rules::TableRule, Client), JobError> {
        let rule = TablePlan::rule(&self.rules, &self.table)?;
        let name = rule.legacy.to_string();
        let ctl = self
            .endpoints
            .legacy
            .client()
            .await
            .map_err(JobError::Connect)?;
        state::install(&ctl).await.map_err(refused_install)?;
        if self.options.dry_run {
            return Ok((rule, ctl));
        }
        if !state::try_claim(&ctl, "backfill", &name).await? {
            return Err(JobError::Refused(format!(
                "a backfill of {name} is already running (in this or another pgdual); \
                 pause or cancel it there, or wait for it"
            )));
        }
        if !capture_installed(&ctl, &rule).await? {
            return Err(JobError::Refused(format!(
                "dual-write is not on for {name}: neither its capture trigger nor a capture \
                 slot publishing it is in legacy, so writes made during the backfill would \
                 never reach new. Set write = \"on\" \
                 (`pgdual flags set {name} write on`) and let pgdual install it first"
            )));
        }
        Ok((rule, ctl))
    }

    async fn run_inner(&self) -> Result<Ended, JobError> {
        let (rule, ctl) = self.control().await?;
        let name = rule.legacy.to_string();
        let pair = Pair::open(&self.endpoints, rule.database).await?;
        let plan = Arc::new(TablePlan::learn(rule, &pair).await?);
        let estimate = rows_estimate(&ctl, &name).await?;
        self.progress.rows_estimate.store(estimate, Relaxed);
        let checkpoint = state::load(&ctl, &name).await?;
        let resume = checkpoint
            .filter(|c| !self.options.restart && c.state != "done" && c.last_key.is_some());
        let (last, cursor) = match &resume {
            Some(c) => (c.last_key.clone().unwrap_or_default(), c.cursor.clone()),
            None => match plan.last_key(&ctl).await? {
                Some(last) => (last, None),
                None => {
                    return self.empty_table(&ctl, &name).await;
                }
            },
        };
        if self.options.dry_run {
            return Ok(Ended::Planned(self.describe(&plan, estimate, &resume)));
        }
        match &resume {
            Some(c) => {
                self.progress
                    .rows_before
                    .store(c.rows_copied.max(0) as u64, Relaxed);
                state::set_state(&ctl, &name, "running", None).await?;
                info!(table = %name, rows_copied = c.rows_copied, chunks = c.chunks, "backfill resumes from its checkpoint");
            }
            None => {
                state::begin(&ctl, &name, &last).await?;
                info!(table = %name, rows_estimate = estimate, "backfill starts");
            }
        }
        if cursor.as_ref() == Some(&last) {
            state::set_state(&ctl, &name, "done", None).await?;
            return Ok(Ended::Done);
        }
        let new_ctl = match plan.rule.database {
            pgdual_rules::ruleset::TargetDatabase::New => Some(pair.target),
            pgdual_rules::ruleset::TargetDatabase::Legacy => None,
        };
        let mut run = Run {
            job: self,
            plan,
            ctl: &ctl,
            new_ctl,
            last,
            next_lower: cursor,
            idle: vec![],
            size: self.options.batch_size.unwrap_or(FIRST_CHUNK_ROWS),
            started: Instant::now(),
            dispatched_rows: 0,
            last_log: Instant::now(),
            probe: None,
            mirrored: crate::capture::method::written_tables(&self.rules),
        };
        let probing = self.start_probe().await?;
        run.probe = probing.as_ref().map(|(p, base, _)| (p.clone(), *base));
        let (ended, error) = run.chunks().await;
        if let Some((_, _, task)) = probing {
            task.abort();
        }
        let (word, message) = match (&ended, &error) {
            (_, Some(e)) => ("failed", Some(e.for_log(self.log_values))),
            (Ended::Done, None) => ("done", None),
            (Ended::Cancelled, None) => ("cancelled", None),
            (Ended::Stopped(why), None) => ("stopped", Some(why.clone())),
            (Ended::Planned(_), None) => ("stopped", None),
        };
        state::set_state(&ctl, &name, word, message.as_deref()).await?;
        let v = self.progress.view();
        info!(table = %name, state = word, rows_copied = v.rows_copied, chunks = v.chunks, "backfill ended");
        match error {
            Some(e) => Err(e),
            None => Ok(ended),
        }
    }

    /// Starts the latency probe and takes its baseline (one window, before any copying);
    /// none when `max_latency_ratio` is 0.
    async fn start_probe(
        &self,
    ) -> Result<Option<(Arc<Probe>, Duration, tokio::task::JoinHandle<()>)>, JobError> {
        if self.options.settings.max_latency_ratio == 0.0 {
            return Ok(None);
        }
        let legacy = self
            .endpoints
            .legacy
            .client()
            .await
            .map_err(JobError::Connect)?;
        let probe = Arc::new(Probe::default());
        let task = tokio::spawn(probe.clone().run(legacy));
        tokio::time::sleep(PROBE_WINDOW).await;
        let base = probe.p90().unwrap_or(Duration::ZERO);
        info!(table = %self.table, p90_us = base.as_micros() as u64, "backfill: legacy's answer time before copying");
        Ok(Some((probe, base, task)))
    }

    async fn empty_table(&self, ctl: &Client, name: &str) -> Result<Ended, JobError> {
        if self.options.dry_run {
            return Ok(Ended::Planned(format!(
                "{name} is empty in legacy: nothing to copy"
            )));
        }
        state::begin(ctl, name, &Key::new()).await?;
        state::set_state(ctl, name, "done", None).await?;
        Ok(Ended::Done)
    }

    fn describe(
        &self,
        plan: &TablePlan,
        estimate: u64,
        resume: &Option<state::Checkpoint>,
    ) -> String {
        let o = &self.options;
        let sizing = match o.batch_size {
            Some(n) => format!("{n} rows per chunk"),
            None => format!(
                "chunks sized to about {} ms (first {FIRST_CHUNK_ROWS} rows)",
                o.settings.target_chunk_ms
            ),
        };
        let from = match resume {
            Some(c) => format!(
                "resume after {} rows already copied ({} chunks, state {})",
                c.rows_copied, c.chunks, c.state
            ),
            None => "start from the lowest key".into(),
        };
        format!(
            "backfill {} -> {} ({}):\n  rows (estimate): {estimate}\n  key: ({})\n  {from}, up to \
             the highest key legacy holds now\n  {sizing}, {} in flight{}\n  waits while the \
             mirror's backlog passes {} changes or {} ms, or a replica lags over {} ms\n  \
             each chunk reads: {}",
            plan.name,
            plan.rule.new,
            match plan.rule.database {
                pgdual_rules::ruleset::TargetDatabase::New => "new database",
                pgdual_rules::ruleset::TargetDatabase::Legacy => "legacy database",
            },
            plan.rule.legacy_keys.join(", "),
            o.settings.concurrency,
            o.rate
                .map(|r| format!(", at most {r} rows/s"))
                .unwrap_or_default(),
            o.settings.max_backlog_rows,
            o.settings.max_backlog_age_ms,
            o.settings.max_replica_lag_ms,
            pgdual_rules::keyset_sql::read_range(
                &plan.rule,
                &plan.legacy_types,
                pgdual_rules::keyset_sql::Bounds {
                    lower: true,
                    upper: true
                }
            ),
        )
    }
}

/// Whether the capture trigger of `rule` is on its legacy table.
async fn capture_installed(ctl: &Client, rule: &pgdual_rules::TableRule) -> Result<bool, JobError> {
    if rule.write != WriteMode::On {
        return Ok(false);
    }
    let row = ctl
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger \
             WHERE tgrelid = $1::text::pg_catalog.regclass \
               AND tgfoid = pg_catalog.to_regproc($2) AND tgenabled <> 'D'), \
             pg_catalog.to_regclass('pgdual.capture_slots') IS NOT NULL",
            &[&rule.legacy.to_string(), &capture_sql::function_name(rule)],
        )
        .await
        .map_err(JobError::Legacy)?;
    let (trigger, slots): (bool, bool) = (row.get(0), row.get(1));
    if trigger || !slots {
        return Ok(trigger);
    }
    // Logical decoding: a live slot of pgdual's whose publication holds the table.
    let row = ctl
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pgdual.capture_slots s \
               JOIN pg_catalog.pg_replication_slots r \
                 ON r.slot_name = s.slot AND coalesce(r.wal_status, '') <> 'lost' \
               JOIN pg_catalog.pg_publication_tables p ON p.pubname = s.publication \
              WHERE p.schemaname = $1 AND p.tablename = $2)",
            &[&rule.legacy.schema, &rule.legacy.name],
        )
        .await
        .map_err(JobError::Legacy)?;
    Ok(row.get(0))
}

/// The planner's estimate of a table's rows.
async fn rows_estimate(ctl: &Client, table: &str) -> Result<u64, JobError> {
    let row = ctl
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_catalog.pg_class \
             WHERE oid = $1::text::pg_catalog.regclass",
            &[&table],
        )
        .await
        .map_err(JobError::Legacy)?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Creating the state tables needs CREATE on legacy's database or the `pgdual` schema.
fn refused_install(e: JobError) -> JobError {
    match e {
        JobError::Legacy(pg) if pg.code().map(|c| c.code()) == Some("42501") => {
            JobError::Refused(format!(
                "legacy refused creating pgdual's job tables (pgdual.backfills, \
                 pgdual.verifications): {pg}; legacy.user needs CREATE on the pgdual schema"
            ))
        }
        other => other,
    }
}
