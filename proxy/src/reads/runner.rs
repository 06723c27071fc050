//! The shadow thread: shadowed reads run on new off the workers that relay clients, on a
//! thread of their own with its own connections to new. `reads.shadow_concurrency` tasks
//! each take what the queue holds (up to [`MAX_BATCH`] reads) and send it to new in one
//! write, one Sync per read, so a busy shadow costs a round trip per batch rather than per
//! read. The queue holds `shadow_concurrency × MAX_BATCH` reads; a read that finds it full is
//! skipped, so memory stays bounded however slow new is.

use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::{self, Receiver, Sender};
use tracing::{debug, warn};

use super::answer::{align_settings, request_frames, settle_prepare, Preparing};
use super::counters::Routed;
use super::describe::{describe, Described};
use super::shadow::{finish, Answered, ShadowJob};
use super::{Fallback, Reads, Request};
use crate::net::conn::{BackendConn, BackendError, Target};
use crate::net::pool;
use crate::proto::backend::error_fields;
use crate::proto::codec::Frame;

/// Most shadowed reads sent to new in one round trip.
pub const MAX_BATCH: usize = 16;

/// Starts the shadow thread for `reads`; returns its queue. If the thread cannot start, the
/// queue is closed and shadowed reads are counted as skipped.
pub(super) fn start(reads: &Arc<Reads>) -> Sender<ShadowJob> {
    let tasks = reads.settings.shadow_concurrency.max(1);
    let (tx, rx) = mpsc::channel(tasks * MAX_BATCH);
    let weak = Arc::downgrade(reads);
    let spawned = std::thread::Builder::new()
        .name("pgdual-shadow".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return warn!(error = %e, "cannot start the shadow runtime"),
            };
            let rx = Rc::new(tokio::sync::Mutex::new(rx));
            let local = tokio::task::LocalSet::new();
            for _ in 0..tasks {
                local.spawn_local(take_batches(weak.clone(), rx.clone()));
            }
            rt.block_on(local);
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the shadow thread; shadowed reads are skipped");
    }
    tx
}

/// Takes batches off the queue and runs them, until the reads are dropped.
async fn take_batches(reads: Weak<Reads>, rx: Rc<tokio::sync::Mutex<Receiver<ShadowJob>>>) {
    loop {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        let Some(reads) = reads.upgrade() else { return };
        run_batch(&reads, batch).await;
    }
}

/// Describes each read (cached), then runs the reads that share a target and settings in
/// one round trip each, and compares.
async fn run_batch(reads: &Reads, jobs: Vec<ShadowJob>) {
    let started = Instant::now();
    let mut ready = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let plan = job.plan.clone();
        let Ok(plan) = &*plan else { continue };
        match describe(reads, plan, &job.request).await {
            Ok(d) => {
                // Without a Describe in the client's request, legacy sent no RowDescription.
                if job.capture.row.is_none() {
                    job.capture.row = d.row.clone();
                }
                ready.push((job, d));
            }
            Err(()) => finish(reads, job, &[], Err(Fallback::Describe)),
        }
    }
    while let Some((first, _)) = ready.first() {
        let target = target_of(reads, first);
        let settings = first.settings.clone();
        let (group, rest): (Vec<_>, Vec<_>) = ready.into_iter().partition(|(job, _)| {
            same_target(target_of(reads, job), target) && job.settings == settings
        });
        ready = rest;
        let mut on_new = Duration::ZERO;
        let answers = match target {
            Some(target) => run_group(reads, target, &group, &mut on_new).await,
            None => group.iter().map(|_| Err(Fallback::Unavailable)).collect(),
        };
        let total = started.elapsed();
        for ((job, described), answer) in group.into_iter().zip(answers) {
            finish(reads, job, &described.params, answer);
            reads.families.times.observe(Routed::Shadow, total, on_new);
        }
    }
}

fn target_of<'a>(reads: &'a Reads, job: &ShadowJob) -> Option<&'a Target> {
    match &*job.plan {
        Ok(plan) => reads.targets.for_plan(plan, &job.rules),
        Err(_) => None,
    }
}

fn same_target(a: Option<&Target>, b: Option<&Target>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// What new sent back for one read of a batch, digested as it arrived.
#[derive(Default)]
struct Digest {
    answer: Answered,
    /// Bytes of DataRow received (past the limit, rows are no longer digested).
    size: usize,
    parsed: bool,
    error: Option<Bytes>,
}

/// Runs `group` on one connection to `target` in one round trip, digesting each read's rows
/// as they arrive: each read's answer, in order.
async fn run_group(
    reads: &Reads,
    target: &Target,
    group: &[(ShadowJob, Arc<Described>)],
    on_new: &mut Duration,
) -> Vec<Result<Answered, Fallback>> {
    let all = |why: Fallback| group.iter().map(|_| Err(why)).collect();
    if reads.health.is_down() {
        return all(Fallback::Unavailable);
    }
    let started = Instant::now();
    let mut conn = match pool::checkout(target).await {
        Ok(c) => c,
        Err(e) => {
            *on_new += started.elapsed();
            let retry_after = Duration::from_millis(reads.settings.retry_after_ms);
            if reads.health.failed(retry_after) {
                warn!(error = %e, "new is unreachable; reads fall back to legacy");
            }
            return all(Fallback::Unavailable);
        }
    };
    let mut digests: Vec<Digest> = group.iter().map(|_| Digest::default()).collect();
    let result = exchange(reads, &mut conn, group, &mut digests).await;
    *on_new += started.elapsed();
    let prepares = match result {
        Ok(prepares) => prepares,
        Err(why) => {
            pool::checkin(target, conn);
            return all(why);
        }
    };
    let out = group
        .iter()
        .zip(prepares)
        .zip(digests)
        .map(|(((job, _), prepare), d)| settle(reads, &mut conn, job, prepare, d))
        .collect();
    pool::checkin(target, conn);
    out
}

/// Sends every read of `group` in one write and digests the answers into `digests`: the
/// statements each read was preparing, or why the whole group falls back.
async fn exchange(
    reads: &Reads,
    conn: &mut BackendConn,
    group: &[(ShadowJob, Arc<Described>)],
    digests: &mut [Digest],
) -> Result<Vec<Preparing>, Fallback> {
    let (timeout, max) = (reads.timeout(), reads.settings.max_result_bytes);
    let sent = async {
        align_settings(
            conn,
            &group[0].0.settings,
            timeout,
            reads.settings.log_values,
        )
        .await?;
        let mut out = BytesMut::new();
        let mut batch = Vec::new();
        let mut prepares = Vec::with_capacity(group.len());
        for (job, described) in group {
            let Ok(plan) = &*job.plan else {
                return Err(BackendError::Protocol("a shadow without a plan".into()));
            };
            let request = &job.request;
            prepares.push(request_frames(
                conn, plan, request, described, &mut out, &mut batch,
            ));
        }
        let mut at = 0;
        let mut visit = |f: Frame| {
            let Some(d) = digests.get_mut(at) else { return };
            match f.tag {
                b'1' => d.parsed = true,
                b'T' => d.answer.row = Some(f.body),
                b'D' => {
                    d.size += f.body.len();
                    if d.size <= max {
                        d.answer.rows.push(&f.body);
                    }
                }
                b'E' => d.error = Some(f.body),
                b'Z' => at += 1,
                _ => {}
            }
        };
        conn.round_trip_visit(&out, max.saturating_mul(group.len()), timeout, &mut visit)
            .await?;
        Ok((prepares, at))
    };
    match sent.await {
        Ok((prepares, answered)) => {
            reads.health.answered();
            if answered == group.len() {
                Ok(prepares)
            } else {
                Err(Fallback::Error)
            }
        }
        Err(e) => {
            debug!(error = %e, "shadow reads failed on new");
            Err(match e {
                BackendError::TooLarge(_) => Fallback::TooLarge,
                BackendError::Protocol(_) => Fallback::Error,
                _ => Fallback::Unavailable,
            })
        }
    }
}

/// One read's answer from its digest, after recording the statement it prepared (a shape
/// new refused to prepare is planned per text from then on).
fn settle(
    reads: &Reads,
    conn: &mut BackendConn,
    job: &ShadowJob,
    prepare: Preparing,
    d: Digest,
) -> Result<Answered, Fallback> {
    if let Ok(plan) = &*job.plan {
        let refused = settle_prepare(conn, &plan.sql, prepare, d.parsed, d.error.is_some());
        if let (
            true,
            Request::Simple {
                lifted: Some(l), ..
            },
        ) = (refused, &job.request)
        {
            reads.keep_literals(l);
        }
    }
    match d.error {
        Some(body) => {
            let (code, message) = error_fields(&body);
            let log_values = reads.settings.log_values;
            let message = crate::telemetry::redact::server_message(&code, &message, log_values);
            debug!(code, message, "new answered a shadowed read with an error");
            Err(Fallback::Error)
        }
        None if d.size > reads.settings.max_result_bytes => Err(Fallback::TooLarge),
        None => Ok(d.answer),
    }
}
