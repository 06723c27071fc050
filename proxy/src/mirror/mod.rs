//! Dual-write: committed changes on mapped legacy tables reach their targets as row images.
//!
//! The mirror takes batches of whole legacy transactions from a [`ChangeSource`] (today the
//! capture triggers' backlog, [`crate::capture::triggers`]), copies the rows' current images
//! by key to their targets (transformed by the rules, [`copy`]) in one transaction on new, then
//! acknowledges the batch. It runs on its own thread: nothing here can slow, block or fail a
//! client session. Transient failures retry with backoff and the backlog simply waits in
//! legacy; a change the target refuses for good is written to the dead-letter file, counted,
//! and skipped. It follows the rules in force: a reload that turns a table's writes on or off
//! installs or removes its capture.

mod apply;
pub mod copy;
pub mod error;
pub mod watermark;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgdual_config::MirrorConfig;
use pgdual_rules::ruleset::TargetDatabase;
use pgdual_rules::RuleSet;
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::capture::{triggers, ChangeSource, CommitSignal};
use crate::control::catalog;
use crate::control::rules_store::{RulesSnapshot, RulesStore};
use crate::net::endpoint::Endpoints;
use crate::telemetry::metrics::{MirrorMetrics, ObserveDuration};
use apply::Target;
use copy::CopyPlan;
use error::MirrorError;
pub use watermark::Watermark;

/// What the mirror works with; nothing else reaches it.
pub struct Mirror {
    pub settings: MirrorConfig,
    /// Values may appear in the mirror's log lines (`reads.log_values`).
    pub log_values: bool,
    pub endpoints: Endpoints,
    pub rules: Arc<RulesStore>,
    pub metrics: Arc<MirrorMetrics>,
    pub watermark: Arc<Watermark>,
    pub commits: CommitSignal,
}

impl Mirror {
    /// Starts the mirror thread; it stops when `stop` turns true.
    pub fn start(
        self,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("pgdual-mirror".into())
            .spawn(move || {
                if let Some(rt) = crate::runtime::current_thread("mirror") {
                    rt.block_on(self.run(stop));
                }
            })
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let cfg = &self.settings;
        let mut delay = Duration::from_millis(cfg.retry_initial_ms);
        // The rules whose capture is in place, to remove what a reload drops.
        let mut installed: Option<Arc<RulesSnapshot>> = None;
        while !*stop.borrow() {
            let snapshot = self.rules.load();
            // Stopping must never wait on a connection attempt or a slow batch.
            let outcome = tokio::select! {
                r = self.attempt(&snapshot, &mut installed) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            match outcome {
                // The rules changed: take the new snapshot at once.
                Ok(()) => delay = Duration::from_millis(cfg.retry_initial_ms),
                Err(e) => {
                    self.interrupted(&snapshot.rules, e, delay).await;
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(delay)) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    delay = (delay * 2).min(Duration::from_millis(cfg.retry_max_ms));
                }
            }
        }
        info!("mirror stopped");
    }

    /// Connects, puts the capture of `snapshot` in place if it is not yet, and serves until
    /// the rules change or an error.
    async fn attempt(
        &self,
        snapshot: &Arc<RulesSnapshot>,
        installed: &mut Option<Arc<RulesSnapshot>>,
    ) -> Result<(), MirrorError> {
        let (legacy, new) = self
            .endpoints
            .clients()
            .await
            .map_err(MirrorError::Connect)?;
        copy::pin_session(&legacy)
            .await
            .map_err(MirrorError::Legacy)?;
        if let Some(n) = &new {
            copy::pin_session(n).await.map_err(MirrorError::New)?;
        }
        if installed.as_ref().map(|s| s.version) != Some(snapshot.version) {
            self.install(snapshot, installed.as_deref(), &legacy, new.as_ref())
                .await?;
            *installed = Some(snapshot.clone());
        }
        let targets = targets(&snapshot.rules, &legacy, new.as_ref()).await?;
        let mut worker = Worker {
            source: triggers::TriggerSource::new(legacy, &snapshot.rules),
            new,
            targets: &targets,
            mirror: self,
        };
        worker.serve(snapshot.version).await
    }

    /// Checks the rules against the catalogs and installs their capture. A rule that does
    /// not fit the catalogs would dead-letter every change: nothing is captured until the
    /// rules and the databases agree.
    async fn install(
        &self,
        snapshot: &RulesSnapshot,
        previous: Option<&RulesSnapshot>,
        legacy: &Client,
        new: Option<&Client>,
    ) -> Result<(), MirrorError> {
        let (problems, learned) = catalog::check_and_learn(&snapshot.rules, legacy, new).await;
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(MirrorError::Rules(list));
        }
        self.rules.learn_columns(snapshot.version, learned);
        triggers::install(
            legacy,
            &snapshot.rules,
            previous.map(|p| &*p.rules),
            self.settings.install_triggers,
        )
        .await
        .map_err(MirrorError::Legacy)?;
        self.metrics.ready.set(1);
        self.metrics.rules_version.set(snapshot.version as i64);
        Ok(())
    }

    /// Counts and logs an interruption; keeps the backlog gauge true while new is away (it
    /// is what operators watch).
    async fn interrupted(&self, rules: &RuleSet, e: MirrorError, delay: Duration) {
        self.metrics.retries_total.inc();
        if let Ok(c) = self.endpoints.legacy.client().await {
            if let Ok(n) = triggers::backlog(&c, rules).await {
                self.metrics.backlog.set(n);
            }
        }
        let error = e.for_log(self.log_values);
        warn!(
            error,
            retry_in_ms = delay.as_millis() as u64,
            "mirror interrupted; the backlog waits in legacy"
        );
    }
}

/// The targets of `rules`, each copy plan casting to its table's column types as the
/// database holding it has them now.
async fn targets(
    rules: &RuleSet,
    legacy: &Client,
    new: Option<&Client>,
) -> Result<HashMap<String, Target>, MirrorError> {
    let mut out = HashMap::new();
    for r in rules.tables() {
        let plan = match (r.database, new) {
            (TargetDatabase::Legacy, _) => CopyPlan::learn(r, legacy, legacy).await?,
            (TargetDatabase::New, Some(n)) => CopyPlan::learn(r, legacy, n).await?,
            // Nothing to learn from: applying a change of this table fails and says why.
            (TargetDatabase::New, None) => CopyPlan::new(r, Default::default(), Default::default()),
        };
        let target = Target {
            plan,
            database: r.database,
            new_table: r.new.to_string(),
        };
        out.insert(r.legacy.to_string(), target);
    }
    Ok(out)
}

/// `d` plus up to a quarter of it, so that the retries of many processes spread out.
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos() as u64);
    d + Duration::from_nanos(nanos % (d.as_nanos() as u64 / 4 + 1))
}

struct Worker<'a, S> {
    source: S,
    new: Option<Client>,
    targets: &'a HashMap<String, Target>,
    mirror: &'a Mirror,
}

impl<S: ChangeSource> Worker<'_, S>
where
    MirrorError: From<S::Error>,
{
    /// Drains the source whenever a session signals a commit, the rules change or the poll
    /// interval passes, until an error or until the rules in force are no longer `version`
    /// (the caller stops it by dropping the future).
    async fn serve(&mut self, version: u64) -> Result<(), MirrorError> {
        let m = self.mirror;
        let poll = Duration::from_millis(m.settings.poll_interval_ms);
        let mut rules_changed = m.rules.subscribe();
        loop {
            if m.rules.load().version != version {
                return Ok(());
            }
            // Every change committed before this instant is in the backlog the loop takes.
            let started = m.watermark.now();
            while self.drain_once().await? > 0 {}
            m.watermark.mirrored(started);
            m.metrics.backlog.set(self.source.backlog().await?);
            tokio::select! {
                _ = m.commits.rung() => {}
                _ = rules_changed.changed() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Applies one batch; returns how many changes it took.
    async fn drain_once(&mut self) -> Result<usize, MirrorError> {
        let m = self.mirror;
        let changes = self
            .source
            .next_batch(m.settings.batch_size as usize)
            .await?;
        if changes.is_empty() {
            return Ok(0);
        }
        let ops = apply::group(&changes);
        let legacy = self.source.legacy();
        match apply::apply(legacy, self.new.as_ref(), self.targets, &ops).await {
            Ok((upserted, deleted)) => {
                m.metrics.rows_upserted_total.inc_by(upserted);
                m.metrics.rows_deleted_total.inc_by(deleted);
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                // Casts to column types new no longer has would dead-letter every change:
                // learn the types again and retry instead.
                if apply::stale_plans(self.targets, self.new.as_ref(), legacy).await? {
                    return Err(MirrorError::TypesChanged);
                }
                debug!(
                    error = e.for_log(m.log_values),
                    "batch refused; isolating the failing changes"
                );
                for op in &ops {
                    let dead = apply::isolate(
                        legacy,
                        self.new.as_ref(),
                        self.targets,
                        &m.settings.dead_letter_file,
                        op,
                    )
                    .await?;
                    m.metrics.dead_letters_total.inc_by(dead);
                }
            }
        }
        for lag in self.source.acknowledge().await? {
            m.metrics.lag.observe_duration(lag);
        }
        m.metrics.batches_total.inc();
        m.metrics.changes_total.inc_by(changes.len() as u64);
        Ok(changes.len())
    }
}
