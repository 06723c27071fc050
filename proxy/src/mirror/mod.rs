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
use pgdual_rules::{RuleSet, TableName};
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::capture::logical::{self, LogicalSource};
use crate::capture::method::{self, Method};
use crate::capture::{triggers, CaptureStatus, ChangeSource, CommitSignal};
use crate::control::catalog;
use crate::control::rules_store::{RulesSnapshot, RulesStore};
use crate::net::endpoint::Endpoints;
use crate::proto::pgoutput;
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
    /// What `/status` shows of the capture.
    pub capture: Arc<CaptureStatus>,
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
        // The rules whose capture is in place (to remove what a reload drops), and how.
        let mut installed: Option<Installed> = None;
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
                    if e.needs_recheck() {
                        self.metrics.capture_ddl_total.inc();
                        installed = None;
                    }
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
        installed: &mut Option<Installed>,
    ) -> Result<(), MirrorError> {
        let (legacy, new) = self.clients().await?;
        let (method, checked_at) = match installed {
            Some((s, m, at)) if s.version == snapshot.version => (*m, *at),
            _ => {
                let previous = installed.as_ref().map(|(s, _, _)| &*s.rules);
                // Taken before the check: definition changes committed before it are in it.
                let at = logical::wal_insert_lsn(&legacy).await?;
                let m = self
                    .install(snapshot, previous, &legacy, new.as_ref())
                    .await?;
                *installed = Some((snapshot.clone(), m, at));
                (m, at)
            }
        };
        let targets = targets(&snapshot.rules, &legacy, new.as_ref()).await?;
        let rules = &snapshot.rules;
        match method {
            Method::Triggers => {
                if method::slot_exists(&legacy, &self.settings.slot).await? {
                    self.hand_over_from_logical(
                        (rules, checked_at),
                        &legacy,
                        new.as_ref(),
                        &targets,
                    )
                    .await?;
                }
                let mut worker = Worker {
                    source: triggers::TriggerSource::new(legacy, rules),
                    new: new.as_ref(),
                    targets: &targets,
                    mirror: self,
                    logical: false,
                };
                worker.serve(snapshot.version).await
            }
            Method::Logical if method::written_tables(rules).is_empty() => {
                // Nothing to capture (and no slot retaining WAL): wait for the rules.
                let mut changed = self.rules.subscribe();
                while self.rules.load().version == snapshot.version {
                    if changed.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                Ok(())
            }
            Method::Logical => {
                // A slot lost since the install (dropped, invalidated): say so, make it again.
                let slot = method::slot(&legacy, &self.settings.slot).await?;
                if slot.is_none_or(|s| s.wal_status == "lost")
                    && method::prepare(&legacy, rules, &self.settings)
                        .await?
                        .slot_lost
                {
                    self.metrics.slot_lost_total.inc();
                }
                if triggers::backlog(&legacy, rules).await? > 0 {
                    self.drain_triggers(rules, new.as_ref(), &targets).await?;
                }
                let source = self.logical_source(legacy, rules, checked_at).await?;
                let mut worker = Worker {
                    source,
                    new: new.as_ref(),
                    targets: &targets,
                    mirror: self,
                    logical: true,
                };
                worker.serve(snapshot.version).await
            }
        }
    }

    /// Legacy's and new's control-plane clients, under the copy's session settings.
    async fn clients(&self) -> Result<(Client, Option<Client>), MirrorError> {
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
        Ok((legacy, new))
    }

    /// The decoded stream of the capture slot, row images read over `legacy`.
    async fn logical_source(
        &self,
        legacy: Client,
        rules: &RuleSet,
        checked_at: u64,
    ) -> Result<LogicalSource, MirrorError> {
        let stream = self
            .endpoints
            .legacy
            .raw_session(&logical::STREAM_SETTINGS)
            .await
            .map_err(MirrorError::Connect)?;
        let s = &self.settings;
        let names = (s.slot.as_str(), s.publication.as_str());
        Ok(LogicalSource::start(legacy, stream, rules, names, checked_at).await?)
    }

    /// Switching from logical decoding to triggers: the triggers are in place; everything
    /// committed before now is in the slot, so the slot is drained up to here, then dropped
    /// with its publication. Changes both captured are applied twice, which changes nothing.
    async fn hand_over_from_logical(
        &self,
        (rules, checked_at): (&RuleSet, u64),
        legacy: &Client,
        new: Option<&Client>,
        targets: &HashMap<TableName, Target>,
    ) -> Result<(), MirrorError> {
        let (reader, _) = self.clients().await?;
        let mut worker = Worker {
            source: self.logical_source(reader, rules, checked_at).await?,
            new,
            targets,
            mirror: self,
            logical: true,
        };
        let through = worker.source.mark().await?;
        info!(
            through = %pgoutput::lsn_text(through),
            "switching to triggers: draining the capture slot first"
        );
        while worker.source.applied() < through {
            if worker.drain_once().await? == 0 {
                let _ = tokio::time::timeout(Duration::from_secs(1), worker.source.wait()).await;
            }
        }
        drop(worker);
        let s = &self.settings;
        method::drop_capture(legacy, &s.slot, &s.publication, true).await?;
        info!("switched to triggers: capture slot and publication dropped");
        Ok(())
    }

    /// Switching from triggers to logical decoding: the slot exists and the triggers are
    /// gone, so their backlog is all it will ever hold; apply it.
    async fn drain_triggers(
        &self,
        rules: &RuleSet,
        new: Option<&Client>,
        targets: &HashMap<TableName, Target>,
    ) -> Result<(), MirrorError> {
        let (reader, _) = self.clients().await?;
        let mut worker = Worker {
            source: triggers::TriggerSource::new(reader, rules),
            new,
            targets,
            mirror: self,
            logical: false,
        };
        let mut n = 0;
        loop {
            let took = worker.drain_once().await?;
            if took == 0 {
                break;
            }
            n += took;
        }
        info!(
            changes = n,
            "switched to logical decoding: the triggers' backlog is applied"
        );
        Ok(())
    }

    /// Checks the rules against the catalogs, chooses the capture method and puts it in
    /// place. A rule that does not fit the catalogs would dead-letter every change: nothing
    /// is captured until the rules and the databases agree.
    async fn install(
        &self,
        snapshot: &RulesSnapshot,
        previous: Option<&RuleSet>,
        legacy: &Client,
        new: Option<&Client>,
    ) -> Result<Method, MirrorError> {
        let rules = &snapshot.rules;
        let (problems, learned) = catalog::check_and_learn(rules, legacy, new).await;
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(MirrorError::Rules(list));
        }
        self.rules.learn_columns(snapshot.version, learned);
        let choice = method::choose(legacy, rules, &self.settings)
            .await
            .map_err(MirrorError::Legacy)?
            .map_err(MirrorError::Rules)?;
        info!(method = %choice.method, reason = %choice.reason, "capture method");
        let s = &self.settings;
        match choice.method {
            Method::Triggers => {
                triggers::install(legacy, rules, previous, s.install_triggers)
                    .await
                    .map_err(MirrorError::Legacy)?;
            }
            Method::Logical => {
                triggers::install(legacy, rules, previous, false)
                    .await
                    .map_err(MirrorError::Legacy)?;
                if method::written_tables(rules).is_empty() {
                    method::drop_capture(legacy, &s.slot, &s.publication, true).await?;
                } else if method::prepare(legacy, rules, s).await?.slot_lost {
                    self.metrics.slot_lost_total.inc();
                }
                // Only once the slot exists: every change from here on is decoded.
                triggers::remove(legacy, rules, previous)
                    .await
                    .map_err(MirrorError::Legacy)?;
            }
        }
        self.metrics
            .capture_logical
            .set((choice.method == Method::Logical) as i64);
        let method = choice.method;
        self.capture.method.store(Some(Arc::new(choice)));
        self.metrics.ready.set(1);
        self.metrics.rules_version.set(snapshot.version as i64);
        Ok(method)
    }

    /// Reads the slot's state for the gauges and `/status`; warns past the size limit. A
    /// slot gone or invalidated under a running stream is an error: the mirror starts
    /// again, and [`method::prepare`] says what was lost and makes the slot again.
    async fn check_slot(&self, legacy: &Client, warned: &mut bool) -> Result<(), MirrorError> {
        let slot = method::slot(legacy, &self.settings.slot)
            .await
            .map_err(MirrorError::Legacy)?;
        let lost = slot.as_ref().is_none_or(|s| s.wal_status == "lost");
        if let Some(s) = &slot {
            self.metrics.slot_retained_bytes.set(s.retained_bytes);
            self.metrics.slot_behind_bytes.set(s.behind_bytes);
            logical::warn_retained(s.retained_bytes, self.settings.slot_warn_bytes, warned);
        }
        self.capture.slot.store(slot.map(Arc::new));
        let gaps = method::gaps(legacy).await.map_err(MirrorError::Legacy)?;
        self.capture.gaps.store(Arc::new(gaps));
        if lost {
            return Err(MirrorError::Connect(format!(
                "the capture slot {} is gone or invalidated",
                self.settings.slot
            )));
        }
        Ok(())
    }

    /// Counts and logs an interruption; keeps the backlog gauge true while new is away (it
    /// is what operators watch).
    async fn interrupted(&self, rules: &RuleSet, e: MirrorError, delay: Duration) {
        self.metrics.retries_total.inc();
        if let Ok(c) = self.endpoints.legacy.client().await {
            if self.metrics.capture_logical.get() == 1 {
                let _ = self.check_slot(&c, &mut false).await;
            } else if let Ok(n) = triggers::backlog(&c, rules).await {
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
) -> Result<HashMap<TableName, Target>, MirrorError> {
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
        out.insert(r.legacy.clone(), target);
    }
    Ok(out)
}

/// The rules whose capture is in place, how, and legacy's WAL position taken just before
/// they were checked against its catalog.
type Installed = (Arc<RulesSnapshot>, Method, u64);

/// `d` plus up to a quarter of it, so that the retries of many processes spread out.
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos() as u64);
    d + Duration::from_nanos(nanos % (d.as_nanos() as u64 / 4 + 1))
}

struct Worker<'a, S> {
    source: S,
    new: Option<&'a Client>,
    targets: &'a HashMap<TableName, Target>,
    mirror: &'a Mirror,
    /// The source is the capture slot: its state is checked now and then.
    logical: bool,
}

/// How often a running logical capture reads its slot's state.
const SLOT_CHECK_EVERY: Duration = Duration::from_secs(5);

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
        // (instant, position): every change committed before the instant lies at or before
        // the position; once the source applied it, sessions may read their writes on new.
        // One at a time: a new mark (a query on legacy for logical capture) is taken only
        // once the last one is passed, so a busy mirror does not pay one per round.
        let mut mark: Option<(u64, u64)> = None;
        let mut slot_checked: Option<std::time::Instant> = None;
        let mut warned = false;
        loop {
            if m.rules.load().version != version {
                return Ok(());
            }
            if mark.is_none() {
                let started = m.watermark.now();
                mark = Some((started, self.source.mark().await?));
            }
            while self.drain_once().await? > 0 {}
            if let Some((at, position)) = mark {
                if position <= self.source.applied() {
                    m.watermark.mirrored(at);
                    mark = None;
                }
            }
            m.metrics.backlog.set(self.source.backlog().await?);
            if self.logical && slot_checked.is_none_or(|t| t.elapsed() >= SLOT_CHECK_EVERY) {
                m.check_slot(self.source.legacy(), &mut warned).await?;
                slot_checked = Some(std::time::Instant::now());
            }
            tokio::select! {
                _ = m.commits.rung() => {}
                _ = rules_changed.changed() => {}
                _ = tokio::time::sleep(poll) => {}
                r = self.source.wait() => r?,
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
        match apply::apply(legacy, self.new, self.targets, &ops).await {
            Ok((upserted, deleted)) => {
                m.metrics.rows_upserted_total.inc_by(upserted);
                m.metrics.rows_deleted_total.inc_by(deleted);
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                // Casts to column types new no longer has would dead-letter every change:
                // learn the types again and retry instead.
                if apply::stale_plans(self.targets, self.new, legacy).await? {
                    return Err(MirrorError::TypesChanged);
                }
                debug!(
                    error = e.for_log(m.log_values),
                    "batch refused; isolating the failing changes"
                );
                for op in &ops {
                    let dead = apply::isolate(
                        legacy,
                        self.new,
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
