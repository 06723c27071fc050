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

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgdual_config::BackfillConfig;
use pgdual_rules::ruleset::WriteMode;
use pgdual_rules::{capture_sql, RuleSet};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::state;
use super::table::{JobError, Key, Pair, TablePlan};
use super::JobMetrics;
use crate::mirror::jitter;
use crate::net::endpoint::Endpoints;

/// Chunk sizes the adaptive sizing stays within, in rows.
const MIN_CHUNK_ROWS: u32 = 100;
const MAX_CHUNK_ROWS: u32 = 100_000;
const FIRST_CHUNK_ROWS: u32 = 1000;
/// How often a waiting job (paused, throttled) looks again.
const WAIT_STEP: Duration = Duration::from_millis(250);
/// How often a running job logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(10);

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

/// How often the latency probe asks legacy, and over how long its percentile is taken.
const PROBE_EVERY: Duration = Duration::from_millis(25);
const PROBE_WINDOW: Duration = Duration::from_secs(1);
/// A probe this much slower than before the backfill is noise, whatever the ratio.
const PROBE_FLOOR: Duration = Duration::from_millis(1);

/// Legacy's answer time to a trivial query, sampled on a connection of its own while the
/// backfill runs: when the backfill's work slows legacy, clients feel it the same way.
#[derive(Default)]
struct Probe {
    samples: Mutex<std::collections::VecDeque<(Instant, Duration)>>,
}

impl Probe {
    /// Samples until the task is aborted.
    async fn run(self: Arc<Probe>, legacy: Client) {
        loop {
            let t = Instant::now();
            if legacy.simple_query("SELECT 1").await.is_err() {
                return;
            }
            if let Ok(mut s) = self.samples.lock() {
                s.push_back((t, t.elapsed()));
                while s
                    .front()
                    .is_some_and(|(at, _)| at.elapsed() > PROBE_WINDOW * 5)
                {
                    s.pop_front();
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// The 90th percentile of the last [`PROBE_WINDOW`].
    fn p90(&self) -> Option<Duration> {
        let s = self.samples.lock().ok()?;
        let mut recent: Vec<Duration> = s
            .iter()
            .filter(|(at, _)| at.elapsed() <= PROBE_WINDOW)
            .map(|(_, d)| *d)
            .collect();
        if recent.len() < 5 {
            return None;
        }
        recent.sort_unstable();
        Some(recent[recent.len() * 9 / 10])
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

/// A chunk: the keys `(lower, upper]`, the `seq`-th dispatched.
#[derive(Clone)]
struct Chunk {
    seq: u64,
    lower: Option<Key>,
    upper: Key,
    rows: u32,
    attempt: u32,
}

struct ChunkDone {
    chunk: Chunk,
    pair: Option<Pair>,
    result: Result<u64, JobError>,
    took: Duration,
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

/// The state of one run's chunk loop.
struct Run<'a> {
    job: &'a Backfill,
    plan: Arc<TablePlan>,
    ctl: &'a Client,
    /// A connection to new, for its replicas' lag.
    new_ctl: Option<Client>,
    last: Key,
    /// Where the next chunk starts (exclusive).
    next_lower: Option<Key>,
    idle: Vec<Pair>,
    size: u32,
    started: Instant,
    dispatched_rows: u64,
    last_log: Instant,
    /// The latency probe, and its 90th percentile before the backfill began.
    probe: Option<(Arc<Probe>, Duration)>,
}

impl Run<'_> {
    /// Dispatches and collects chunks until the end, a stop or a failure; records the
    /// checkpoint as chunks complete in order.
    async fn chunks(&mut self) -> (Ended, Option<JobError>) {
        let o = &self.job.options;
        let mut running: JoinSet<ChunkDone> = JoinSet::new();
        let mut seq = 0u64;
        let mut next_commit = 0u64;
        let mut done: BTreeMap<u64, (Key, u64)> = BTreeMap::new();
        let mut ending: Option<Ended> = None;
        let mut error: Option<JobError> = None;
        let mut all_dispatched = false;
        loop {
            while ending.is_none() && !all_dispatched && running.len() < o.settings.concurrency {
                match self.before_chunk().await {
                    Ok(Some(end)) => {
                        ending = Some(end);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        error = Some(e);
                        ending = Some(Ended::Stopped("failed".into()));
                        break;
                    }
                }
                let chunk = match self.next_chunk(seq).await {
                    Ok(c) => c,
                    Err(e) => {
                        error = Some(e);
                        ending = Some(Ended::Stopped("failed".into()));
                        break;
                    }
                };
                all_dispatched = chunk.upper == self.last;
                self.next_lower = Some(chunk.upper.clone());
                self.dispatched_rows += u64::from(chunk.rows);
                seq += 1;
                let pair = self.idle.pop();
                running.spawn(copy_chunk(
                    self.plan.clone(),
                    self.job.endpoints.clone(),
                    pair,
                    chunk,
                    Duration::ZERO,
                    o.hold_before_write,
                ));
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let Ok(d) = joined else {
                error.get_or_insert(JobError::Refused("a chunk's task failed".into()));
                ending.get_or_insert(Ended::Stopped("failed".into()));
                continue;
            };
            match d.result {
                Ok(rows) => {
                    self.chunk_copied(&d.chunk, rows, d.took);
                    done.insert(d.chunk.seq, (d.chunk.upper.clone(), rows));
                    if let Some(p) = d.pair {
                        self.idle.push(p);
                    }
                    if let Err(e) = self.checkpoint(&mut done, &mut next_commit).await {
                        error.get_or_insert(e);
                        ending.get_or_insert(Ended::Stopped("failed".into()));
                    }
                }
                Err(e) if e.is_transient() && d.chunk.attempt < o.settings.max_retries => {
                    let delay = backoff(&o.settings, d.chunk.attempt);
                    warn!(
                        table = %self.plan.name,
                        error = e.for_log(self.job.log_values),
                        attempt = d.chunk.attempt + 1,
                        retry_in_ms = delay.as_millis() as u64,
                        "backfill chunk failed; retrying"
                    );
                    let mut chunk = d.chunk;
                    chunk.attempt += 1;
                    let pair = d
                        .pair
                        .filter(|p| !p.legacy.is_closed() && !p.target.is_closed());
                    running.spawn(copy_chunk(
                        self.plan.clone(),
                        self.job.endpoints.clone(),
                        pair,
                        chunk,
                        delay,
                        o.hold_before_write,
                    ));
                }
                Err(e) => {
                    let e = match d.pair {
                        Some(p) if !e.is_transient() => self.name_the_key(&p, &d.chunk, e).await,
                        _ => e,
                    };
                    error.get_or_insert(e);
                    ending.get_or_insert(Ended::Stopped("failed".into()));
                }
            }
        }
        (ending.unwrap_or(Ended::Done), error)
    }

    /// The next chunk: `size` keys from where the last one ended, or up to the end key.
    async fn next_chunk(&mut self, seq: u64) -> Result<Chunk, JobError> {
        let end = self
            .plan
            .chunk_end(
                self.ctl,
                self.next_lower.as_ref(),
                Some(&self.last),
                self.size,
            )
            .await?;
        Ok(Chunk {
            seq,
            lower: self.next_lower.clone(),
            upper: end.unwrap_or_else(|| self.last.clone()),
            rows: self.size,
            attempt: 0,
        })
    }

    /// What must happen before the next chunk: stop (signal, `max_runtime`, cancel), wait
    /// (pause, throttle, rate).
    async fn before_chunk(&mut self) -> Result<Option<Ended>, JobError> {
        let job = self.job;
        let name = &self.plan.name;
        loop {
            if *job.stop.borrow() {
                return Ok(Some(Ended::Stopped("interrupted".into())));
            }
            if job
                .options
                .max_runtime
                .is_some_and(|m| self.started.elapsed() >= m)
            {
                return Ok(Some(Ended::Stopped("max_runtime reached".into())));
            }
            match state::pending_request(self.ctl, name).await?.as_deref() {
                Some("cancel") => return Ok(Some(Ended::Cancelled)),
                Some("pause") => {
                    if job.progress.view().state != "paused" {
                        job.progress.set_state("paused");
                        state::set_state(self.ctl, name, "paused", None).await?;
                        info!(table = %name, "backfill paused");
                    }
                    self.wait().await;
                    continue;
                }
                _ => {}
            }
            if let Some(why) = self.over_limits().await? {
                job.progress.set_state(format!("throttled: {why}"));
                let waited = self.wait().await;
                job.progress
                    .throttled_ms
                    .fetch_add(waited.as_millis() as u64, Relaxed);
                job.metrics
                    .backfill_throttled_seconds
                    .with_label_values(&[name])
                    .inc_by(waited.as_secs_f64());
                continue;
            }
            break;
        }
        if job.progress.view().state != "running" {
            job.progress.set_state("running");
            state::set_state(self.ctl, name, "running", None).await?;
        }
        if let Some(rate) = job.options.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.dispatched_rows as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(None)
    }

    /// Sleeps one step (or less, when asked to stop); returns how long.
    async fn wait(&self) -> Duration {
        let t = Instant::now();
        let mut stop = self.job.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(WAIT_STEP) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        t.elapsed()
    }

    /// Why the backfill should wait now: the mirror's backlog, or a replica's lag.
    async fn over_limits(&self) -> Result<Option<String>, JobError> {
        let s = &self.job.options.settings;
        if let Some((probe, base)) = &self.probe {
            if let Some(now) = probe.p90() {
                let limit = base.mul_f64(s.max_latency_ratio).max(*base + PROBE_FLOOR);
                if now > limit {
                    return Ok(Some(format!(
                        "legacy answers in {:.2} ms (p90), {:.2} ms before the backfill",
                        now.as_secs_f64() * 1000.0,
                        base.as_secs_f64() * 1000.0
                    )));
                }
            }
        }
        let row = self
            .ctl
            .query_one(LEGACY_PRESSURE, &[])
            .await
            .map_err(JobError::Legacy)?;
        let (rows, age_ms, lag_ms): (i64, f64, f64) = (row.get(0), row.get(1), row.get(2));
        if rows > s.max_backlog_rows {
            return Ok(Some(format!(
                "mirror backlog {rows} changes > {}",
                s.max_backlog_rows
            )));
        }
        if age_ms > s.max_backlog_age_ms as f64 {
            return Ok(Some(format!(
                "oldest change in the mirror's backlog {age_ms:.0} ms > {}",
                s.max_backlog_age_ms
            )));
        }
        if lag_ms > s.max_replica_lag_ms as f64 {
            return Ok(Some(format!(
                "a replica of legacy lags {lag_ms:.0} ms > {}",
                s.max_replica_lag_ms
            )));
        }
        if let Some(n) = &self.new_ctl {
            let lag: f64 = n
                .query_one(REPLICA_LAG, &[])
                .await
                .map_err(JobError::New)?
                .get(0);
            if lag > s.max_replica_lag_ms as f64 {
                return Ok(Some(format!(
                    "a replica of new lags {lag:.0} ms > {}",
                    s.max_replica_lag_ms
                )));
            }
        }
        Ok(None)
    }

    /// Counts a copied chunk and sizes the next one to the target time.
    fn chunk_copied(&mut self, chunk: &Chunk, rows: u64, took: Duration) {
        let job = self.job;
        let table = [self.plan.name.as_str()];
        job.metrics
            .backfill_rows
            .with_label_values(&table)
            .inc_by(rows);
        job.metrics.backfill_chunks.with_label_values(&table).inc();
        job.metrics
            .backfill_chunk_seconds
            .with_label_values(&table)
            .observe(took.as_secs_f64());
        let p = &job.progress;
        p.rows_copied.fetch_add(rows, Relaxed);
        p.chunks.fetch_add(1, Relaxed);
        let v = p.view();
        job.metrics
            .backfill_rows_left
            .with_label_values(&table)
            .set(v.rows_estimate.saturating_sub(v.rows_copied) as i64);
        if job.options.batch_size.is_none() && rows * 2 >= u64::from(chunk.rows) {
            let target = job.options.settings.target_chunk_ms as f64;
            let factor = (target / (took.as_secs_f64() * 1000.0).max(1.0)).clamp(0.5, 2.0);
            self.size =
                ((f64::from(chunk.rows) * factor) as u32).clamp(MIN_CHUNK_ROWS, MAX_CHUNK_ROWS);
        }
        p.chunk_rows.store(u64::from(self.size), Relaxed);
        if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            info!(
                table = %self.plan.name,
                rows_copied = v.rows_copied,
                rows_estimate = v.rows_estimate,
                rows_per_second = v.rows_per_second as u64,
                chunk_rows = self.size,
                "backfill progress"
            );
        }
    }

    /// Records the key up to which every chunk is copied.
    async fn checkpoint(
        &mut self,
        done: &mut BTreeMap<u64, (Key, u64)>,
        next: &mut u64,
    ) -> Result<(), JobError> {
        let (mut cursor, mut rows, mut chunks) = (None, 0i64, 0i64);
        while let Some((key, n)) = done.remove(next) {
            cursor = Some(key);
            rows += n as i64;
            chunks += 1;
            *next += 1;
        }
        match cursor {
            Some(c) => state::advance(self.ctl, &self.plan.name, &c, rows, chunks).await,
            None => Ok(()),
        }
    }

    /// A chunk the target refused for good: narrows it to the first row it refuses, so
    /// the error names that key.
    async fn name_the_key(&self, pair: &Pair, chunk: &Chunk, e: JobError) -> JobError {
        let mut lower = chunk.lower.clone();
        let upper = chunk.upper.clone();
        let mut rows = chunk.rows.max(1);
        // Halve the range until one row is left, keeping the half that fails.
        while rows > 1 {
            let half = rows / 2;
            let Ok(mid) = self
                .plan
                .chunk_end(self.ctl, lower.as_ref(), Some(&upper), half)
                .await
            else {
                return e;
            };
            let Some(mid) = mid else {
                rows = half;
                continue;
            };
            match self.plan.copy_range(pair, lower.as_ref(), &mid, None).await {
                Ok(_) => {
                    lower = Some(mid);
                    rows -= half;
                }
                Err(_) => rows = half,
            }
        }
        let Ok(Some(key)) = self
            .plan
            .chunk_end(self.ctl, lower.as_ref(), Some(&upper), 1)
            .await
        else {
            return e;
        };
        match self.plan.copy_range(pair, lower.as_ref(), &key, None).await {
            Err(refused) => JobError::Refused(format!(
                "new refused the row with key ({})=({}): {}",
                self.plan.rule.legacy_keys.join(", "),
                key.join(", "),
                refused.for_log(self.job.log_values)
            )),
            Ok(_) => e,
        }
    }
}

/// Copies one chunk over `pair` (opened when `None`), after `delay`.
async fn copy_chunk(
    plan: Arc<TablePlan>,
    endpoints: Endpoints,
    pair: Option<Pair>,
    chunk: Chunk,
    delay: Duration,
    hold: Option<Duration>,
) -> ChunkDone {
    tokio::time::sleep(delay).await;
    let pair = match pair {
        Some(p) => p,
        None => match Pair::open(&endpoints, plan.rule.database).await {
            Ok(p) => p,
            Err(e) => {
                return ChunkDone {
                    chunk,
                    pair: None,
                    result: Err(e),
                    took: Duration::ZERO,
                }
            }
        },
    };
    let t = Instant::now();
    let result = plan
        .copy_range(&pair, chunk.lower.as_ref(), &chunk.upper, hold)
        .await;
    ChunkDone {
        chunk,
        pair: Some(pair),
        result,
        took: t.elapsed(),
    }
}

fn backoff(s: &BackfillConfig, attempt: u32) -> Duration {
    let ms = s
        .retry_initial_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(s.retry_max_ms);
    jitter(Duration::from_millis(ms))
}

/// The mirror's backlog (changes, age of the oldest in ms) and the largest replay lag of
/// legacy's replicas (ms; 0 without replicas or without the right to see them).
/// The triggers' backlog (rows, age of the oldest), and the replay lag of legacy's replicas.
/// With logical decoding the backlog's age is the lag the capture stream reports (its
/// `application_name` is `pgdual-capture`), which is not a replica.
const LEGACY_PRESSURE: &str = "SELECT \
    coalesce((SELECT max(id) - min(id) + 1 FROM pgdual.changes), 0)::int8, \
    greatest( \
      coalesce((SELECT extract(epoch FROM clock_timestamp() - at) * 1000 FROM pgdual.changes \
        ORDER BY id LIMIT 1), 0), \
      coalesce((SELECT extract(epoch FROM max(replay_lag)) * 1000 FROM pg_catalog.pg_stat_replication \
        WHERE application_name = 'pgdual-capture'), 0))::float8, \
    coalesce((SELECT extract(epoch FROM max(replay_lag)) * 1000 FROM pg_catalog.pg_stat_replication \
      WHERE application_name IS DISTINCT FROM 'pgdual-capture'), 0)::float8";
const REPLICA_LAG: &str = "SELECT coalesce((SELECT extract(epoch FROM max(replay_lag)) * 1000 \
    FROM pg_catalog.pg_stat_replication), 0)::float8";

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
