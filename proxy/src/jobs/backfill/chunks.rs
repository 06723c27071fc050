//! A backfill's chunk loop: chunks dispatched in key order over their own connections,
//! sized to the target time, retried with backoff, and checkpointed in order as they
//! complete.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdual_config::BackfillConfig;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::throttle::{over_limits, Probe};
use super::{Backfill, Ended};
use crate::jobs::state;
use crate::jobs::table::{JobError, Key, Pair, TablePlan};
use crate::mirror::jitter;
use crate::net::endpoint::Endpoints;

/// Chunk sizes the adaptive sizing stays within, in rows.
const MIN_CHUNK_ROWS: u32 = 100;
const MAX_CHUNK_ROWS: u32 = 100_000;
pub(super) const FIRST_CHUNK_ROWS: u32 = 1000;
/// How often a waiting job (paused, throttled) looks again.
const WAIT_STEP: Duration = Duration::from_millis(250);
/// How often a running job logs its progress.
const LOG_EVERY: Duration = Duration::from_secs(10);

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

/// Where the chunk loop stands: chunks dispatched, those done but not yet checkpointed
/// (by sequence), and how and why it ends.
#[derive(Default)]
struct Flow {
    seq: u64,
    next_commit: u64,
    done: BTreeMap<u64, (Key, u64)>,
    ending: Option<Ended>,
    error: Option<JobError>,
    all_dispatched: bool,
}

impl Flow {
    /// The first failure ends the job; later ones are dropped.
    fn fail(&mut self, e: JobError) {
        self.error.get_or_insert(e);
        self.ending.get_or_insert(Ended::Stopped("failed".into()));
    }
}

/// The state of one run's chunk loop.
pub(super) struct Run<'a> {
    pub(super) job: &'a Backfill,
    pub(super) plan: Arc<TablePlan>,
    pub(super) ctl: &'a Client,
    /// A connection to new, for its replicas' lag.
    pub(super) new_ctl: Option<Client>,
    pub(super) last: Key,
    /// Where the next chunk starts (exclusive).
    pub(super) next_lower: Option<Key>,
    pub(super) idle: Vec<Pair>,
    pub(super) size: u32,
    pub(super) started: Instant,
    pub(super) dispatched_rows: u64,
    pub(super) last_log: Instant,
    /// The latency probe, and its 90th percentile before the backfill began.
    pub(super) probe: Option<(Arc<Probe>, Duration)>,
    /// The rules' written tables: the mirror backlog the throttle counts.
    pub(super) mirrored: Vec<String>,
}

impl Run<'_> {
    /// Dispatches and collects chunks until the end, a stop or a failure; records the
    /// checkpoint as chunks complete in order.
    pub(super) async fn chunks(&mut self) -> (Ended, Option<JobError>) {
        let mut running: JoinSet<ChunkDone> = JoinSet::new();
        let mut flow = Flow::default();
        loop {
            self.dispatch(&mut running, &mut flow).await;
            let Some(joined) = running.join_next().await else {
                break;
            };
            match joined {
                Ok(done) => self.collect(done, &mut running, &mut flow).await,
                Err(_) => flow.fail(JobError::Refused("a chunk's task failed".into())),
            }
        }
        (flow.ending.unwrap_or(Ended::Done), flow.error)
    }

    /// Starts chunks until `concurrency` run, the last is out, or the job must stop.
    async fn dispatch(&mut self, running: &mut JoinSet<ChunkDone>, flow: &mut Flow) {
        let concurrency = self.job.options.settings.concurrency;
        while flow.ending.is_none() && !flow.all_dispatched && running.len() < concurrency {
            match self.before_chunk().await {
                Ok(Some(end)) => {
                    flow.ending = Some(end);
                    return;
                }
                Ok(None) => {}
                Err(e) => return flow.fail(e),
            }
            let chunk = match self.next_chunk(flow.seq).await {
                Ok(c) => c,
                Err(e) => return flow.fail(e),
            };
            flow.all_dispatched = chunk.upper == self.last;
            self.next_lower = Some(chunk.upper.clone());
            self.dispatched_rows += u64::from(chunk.rows);
            flow.seq += 1;
            let pair = self.idle.pop();
            self.spawn(running, pair, chunk, Duration::ZERO);
        }
    }

    /// Copies `chunk` in a task of its own, after `delay`.
    fn spawn(
        &self,
        running: &mut JoinSet<ChunkDone>,
        pair: Option<Pair>,
        chunk: Chunk,
        delay: Duration,
    ) {
        running.spawn(copy_chunk(
            self.plan.clone(),
            self.job.endpoints.clone(),
            pair,
            chunk,
            delay,
            self.job.options.hold_before_write,
        ));
    }

    /// A chunk's outcome: counted and checkpointed, retried after a transient failure, or
    /// the job's end after any other.
    async fn collect(&mut self, d: ChunkDone, running: &mut JoinSet<ChunkDone>, flow: &mut Flow) {
        let settings = &self.job.options.settings;
        match d.result {
            Ok(rows) => {
                self.chunk_copied(&d.chunk, rows, d.took);
                flow.done.insert(d.chunk.seq, (d.chunk.upper.clone(), rows));
                if let Some(p) = d.pair {
                    self.idle.push(p);
                }
                if let Err(e) = self.checkpoint(&mut flow.done, &mut flow.next_commit).await {
                    flow.fail(e);
                }
            }
            Err(e) if e.is_transient() && d.chunk.attempt < settings.max_retries => {
                let delay = backoff(settings, d.chunk.attempt);
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
                self.spawn(running, pair, chunk, delay);
            }
            Err(e) => {
                let e = match d.pair {
                    Some(p) if !e.is_transient() => self.name_the_key(&p, &d.chunk, e).await,
                    _ => e,
                };
                flow.fail(e);
            }
        }
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

    /// Why the backfill should wait now.
    async fn over_limits(&self) -> Result<Option<String>, JobError> {
        let s = &self.job.options.settings;
        let legacy = (self.ctl, self.mirrored.as_slice());
        over_limits(s, self.probe.as_ref(), legacy, self.new_ctl.as_ref()).await
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
