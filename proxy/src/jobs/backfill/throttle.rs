//! What makes a backfill wait: legacy answering slower than before it began (a latency
//! probe on a connection of its own), the mirror's backlog, and replicas' lag.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgdual_config::BackfillConfig;
use tokio_postgres::Client;

use crate::jobs::table::JobError;

/// How often the latency probe asks legacy, and over how long its percentile is taken.
const PROBE_EVERY: Duration = Duration::from_millis(25);
pub(super) const PROBE_WINDOW: Duration = Duration::from_secs(1);
/// A probe this much slower than before the backfill is noise, whatever the ratio.
const PROBE_FLOOR: Duration = Duration::from_millis(1);

/// Legacy's answer time to a trivial query, sampled on a connection of its own while the
/// backfill runs: when the backfill's work slows legacy, clients feel it the same way.
#[derive(Default)]
pub(super) struct Probe {
    samples: Mutex<std::collections::VecDeque<(Instant, Duration)>>,
}

impl Probe {
    /// Samples until the task is aborted.
    pub(super) async fn run(self: Arc<Probe>, legacy: Client) {
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
    pub(super) fn p90(&self) -> Option<Duration> {
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

/// Why the backfill should wait now: legacy slower than at the start (`probe`: the probe and
/// its 90th percentile before), the mirror's backlog of `tables` (the rules' written tables:
/// changes other rules left in the backlog are not this mirror's), or a replica's lag.
pub(super) async fn over_limits(
    s: &BackfillConfig,
    probe: Option<&(Arc<Probe>, Duration)>,
    (ctl, tables): (&Client, &[String]),
    new_ctl: Option<&Client>,
) -> Result<Option<String>, JobError> {
    if let Some((probe, base)) = probe {
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
    let row = ctl
        .query_one(LEGACY_PRESSURE, &[&tables])
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
    if let Some(n) = new_ctl {
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

/// The mirror's backlog in legacy and the replay lag of legacy's replicas: the triggers'
/// backlog of the tables in `$1` (changes, age of the oldest in ms) or, with logical decoding, as its age the lag
/// the capture stream reports (its `application_name` is `pgdual-capture`, not a replica);
/// and the largest replay lag of the real replicas (ms; 0 without replicas or without the
/// right to see them).
const LEGACY_PRESSURE: &str = "SELECT \
    coalesce((SELECT max(id) - min(id) + 1 FROM pgdual.changes WHERE tbl = ANY($1)), 0)::int8, \
    greatest( \
      coalesce((SELECT extract(epoch FROM clock_timestamp() - at) * 1000 FROM pgdual.changes \
        WHERE tbl = ANY($1) ORDER BY id LIMIT 1), 0), \
      coalesce((SELECT extract(epoch FROM max(replay_lag)) * 1000 FROM pg_catalog.pg_stat_replication \
        WHERE application_name = 'pgdual-capture'), 0))::float8, \
    coalesce((SELECT extract(epoch FROM max(replay_lag)) * 1000 FROM pg_catalog.pg_stat_replication \
      WHERE application_name IS DISTINCT FROM 'pgdual-capture'), 0)::float8";
const REPLICA_LAG: &str = "SELECT coalesce((SELECT extract(epoch FROM max(replay_lag)) * 1000 \
    FROM pg_catalog.pg_stat_replication), 0)::float8";
