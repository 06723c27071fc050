//! The migration's jobs around the relay: [`backfill`] copies the rows a table held before
//! its dual-write began, [`verify`] proves that new holds what legacy holds and repairs what
//! differs. Both walk the table in key order ([`table`]), write through the same row-image
//! copy as the mirror under its copy lock (`crate::mirror::copy`), and keep their state in
//! legacy ([`state`]), so they run from the command line or inside `pgdual serve` alike.

pub mod backfill;
pub mod state;
pub mod table;
pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgdual_config::{BackfillConfig, VerifyConfig};
use prometheus::{CounterVec, GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec};
use tokio::sync::watch;

use crate::control::rules_store::RulesStore;
use crate::net::endpoint::Endpoints;
use crate::telemetry::metrics::Registrar;
use backfill::{Backfill, Options, Progress, ProgressView};
use table::{JobError, TablePlan};
use verify::Verify;

/// Upper bounds of the chunk-time histogram buckets, in seconds.
const CHUNK_BOUNDS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The jobs' metrics, by table.
pub struct JobMetrics {
    pub backfill_rows: IntCounterVec,
    pub backfill_chunks: IntCounterVec,
    pub backfill_chunk_seconds: HistogramVec,
    pub backfill_throttled_seconds: CounterVec,
    pub backfill_rows_left: IntGaugeVec,
    pub verify_parity: GaugeVec,
    pub verify_differences: IntGaugeVec,
}

impl JobMetrics {
    pub fn register(r: &Registrar<'_>) -> Arc<JobMetrics> {
        Arc::new(JobMetrics {
            backfill_rows: r.counters(
                "pgdual_backfill_rows_total",
                "Rows a backfill copied from legacy to new.",
                &["table"],
            ),
            backfill_chunks: r.counters(
                "pgdual_backfill_chunks_total",
                "Chunks a backfill copied.",
                &["table"],
            ),
            backfill_chunk_seconds: r.histograms(
                "pgdual_backfill_chunk_seconds",
                "Time to copy one chunk (read from legacy, write to new).",
                &["table"],
                &CHUNK_BOUNDS,
            ),
            backfill_throttled_seconds: r.float_counters(
                "pgdual_backfill_throttled_seconds_total",
                "Time a backfill waited for the mirror's backlog or replicas to catch up.",
                &["table"],
            ),
            backfill_rows_left: r.gauges(
                "pgdual_backfill_rows_left",
                "Rows a running backfill has still to copy (estimate from the planner's \
                 statistics).",
                &["table"],
            ),
            verify_parity: r.float_gauges(
                "pgdual_verify_parity_ratio",
                "Share of rows equal in legacy and new at the last verification (1 = parity).",
                &["table"],
            ),
            verify_differences: r.gauges(
                "pgdual_verify_differences",
                "Rows that differed at the last verification and persisted after the \
                 mirror caught up (before any repair).",
                &["table"],
            ),
        })
    }

    /// Metrics kept by a job run outside `pgdual serve` (the command line), unexported.
    pub fn unexported() -> Arc<JobMetrics> {
        let registry = prometheus::Registry::new();
        JobMetrics::register(&Registrar::new(&registry))
    }
}

/// The jobs a `pgdual serve` runs for its admin API: each backfill on a thread of its own,
/// verifications on the caller's runtime.
pub struct Jobs {
    pub endpoints: Endpoints,
    pub rules: Arc<RulesStore>,
    pub backfill: BackfillConfig,
    pub verify: VerifyConfig,
    pub metrics: Arc<JobMetrics>,
    pub log_values: bool,
    /// Turns true at shutdown: running backfills stop at their next checkpoint.
    pub stop: watch::Receiver<bool>,
    /// The backfills this process started, by legacy table (finished ones stay, to show
    /// how they ended).
    backfills: Mutex<HashMap<String, Arc<Progress>>>,
}

/// A backfill's progress registered before its job runs: failed when dropped still armed.
struct Reserved(Option<Arc<Progress>>);

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.fail("the start was abandoned before the backfill ran");
        }
    }
}

/// Why a backfill did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a backfill of {0} is running here")]
    Running(String),
    #[error(transparent)]
    Preflight(JobError),
    #[error("cannot start the backfill thread: {0}")]
    Thread(std::io::Error),
    #[error("the jobs' state is unusable after a panic")]
    Poisoned,
}

impl Jobs {
    pub fn new(
        endpoints: Endpoints,
        rules: Arc<RulesStore>,
        config: &pgdual_config::Config,
        metrics: Arc<JobMetrics>,
        stop: watch::Receiver<bool>,
    ) -> Jobs {
        Jobs {
            endpoints,
            rules,
            backfill: config.backfill.clone(),
            verify: config.verify.clone(),
            metrics,
            log_values: config.reads.log_values,
            stop,
            backfills: Mutex::new(HashMap::new()),
        }
    }

    /// The legacy table `table` names in the rules in force.
    pub fn table(&self, table: &str) -> Result<String, JobError> {
        Ok(TablePlan::rule(&self.rules.load().rules, table)?
            .legacy
            .to_string())
    }

    /// A backfill run of `table` with `options` (progress not yet registered).
    pub fn backfill(&self, table: &str, options: Options) -> Backfill {
        Backfill {
            table: table.to_string(),
            rules: self.rules.load().rules.clone(),
            endpoints: self.endpoints.clone(),
            options,
            progress: Progress::new(table),
            metrics: self.metrics.clone(),
            log_values: self.log_values,
            stop: self.stop.clone(),
        }
    }

    /// Starts a backfill on a thread of its own once its preflight passed: refused
    /// ([`StartError::Running`]) while one of the table runs here, which is checked (and the
    /// table taken) before the preflight, so that no preflight ever competes with a running
    /// job for the table's claim in legacy.
    pub async fn start_backfill(&self, job: Backfill) -> Result<Arc<Progress>, StartError> {
        let progress = job.progress.clone();
        {
            let mut running = self.backfills.lock().map_err(|_| StartError::Poisoned)?;
            if let Some(p) = running.get(&job.table) {
                if !p.view().is_finished() {
                    return Err(StartError::Running(job.table.clone()));
                }
            }
            running.insert(job.table.clone(), progress.clone());
        }
        // Whatever ends this start before the job's thread runs (a refused preflight, the
        // request dropped while it waits, no thread) leaves the table free again.
        let mut reserved = Reserved(Some(progress.clone()));
        if let Err(e) = job.preflight().await {
            progress.fail(&e.for_log(job.log_values));
            reserved.0 = None;
            return Err(StartError::Preflight(e));
        }
        std::thread::Builder::new()
            .name("pgdual-backfill".into())
            .spawn(move || {
                if let Some(rt) = crate::runtime::current_thread("backfill") {
                    let log_values = job.log_values;
                    let table = job.table.clone();
                    if let Err(e) = rt.block_on(job.run()) {
                        tracing::warn!(table, error = e.for_log(log_values), "backfill failed");
                    }
                }
            })
            .map_err(StartError::Thread)?;
        reserved.0 = None;
        Ok(progress)
    }

    /// The progress of the backfill of `table` this process ran last.
    pub fn progress(&self, table: &str) -> Option<ProgressView> {
        let running = self.backfills.lock().ok()?;
        running.get(table).map(|p| p.view())
    }

    /// Every backfill this process ran, by table.
    pub fn all_progress(&self) -> Vec<ProgressView> {
        let Ok(running) = self.backfills.lock() else {
            return vec![];
        };
        let mut out: Vec<ProgressView> = running.values().map(|p| p.view()).collect();
        out.sort_by(|a, b| a.table.cmp(&b.table));
        out
    }

    /// A verification of `table`.
    pub fn verify(&self, table: &str, repair: bool) -> Verify {
        Verify {
            table: table.to_string(),
            rules: self.rules.load().rules.clone(),
            endpoints: self.endpoints.clone(),
            settings: self.verify.clone(),
            repair,
            show_values: self.log_values,
            metrics: self.metrics.clone(),
        }
    }
}
