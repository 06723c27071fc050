//! Dual-write: committed changes on mapped legacy tables reach the new schema as row images.
//!
//! Capture triggers (see `pgdual_rules::capture_sql`) record the keys of every committed
//! change in `pgdual.changes` on legacy, in the changing transaction. This worker takes
//! whole legacy transactions from that backlog in order, copies the rows' current images by
//! key to new (transformed by the rules) in one transaction, then deletes the backlog rows.
//! It runs on its own thread: nothing here can slow, block or fail a client session.
//! Transient failures retry with backoff and the backlog simply waits in legacy; a change
//! new refuses for good is written to the dead-letter file, counted, and skipped.

pub mod copy;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use pgdual_rules::capture_sql;
use pgdual_rules::ruleset::{TargetDatabase, WriteMode};
use pgdual_rules::RuleSet;
use serde_json::json;
use tokio::sync::watch;
use tokio_postgres::{Client, GenericClient};
use tracing::{debug, error, info, warn};

use crate::app::Shared;
use crate::control::catalog;
use crate::telemetry::redact;
use copy::{CopyError, CopyPlan};

/// Whole transactions from the front of the backlog of our tables (`$2`), at most about `$1`
/// changes. Another pgdual with the same rules waits on the row locks; one with other rules
/// never takes our tables' changes.
const TAKE_BATCH: &str = "SELECT id, tbl, keys::text FROM pgdual.changes \
    WHERE tbl = ANY($2) AND txid IN (SELECT txid FROM (SELECT txid FROM pgdual.changes \
        WHERE tbl = ANY($2) ORDER BY id LIMIT $1) AS f) \
    ORDER BY id FOR UPDATE";
const FORGET: &str = "DELETE FROM pgdual.changes WHERE id = ANY($1) \
    RETURNING extract(epoch FROM clock_timestamp() - at)::float8";
const BACKLOG: &str =
    "SELECT coalesce(max(id) - min(id) + 1, 0)::int8 FROM pgdual.changes WHERE tbl = ANY($1)";

struct Target {
    plan: CopyPlan,
    database: TargetDatabase,
    new_table: String,
}

/// One step of a batch: copy these keys of a table, or mirror a TRUNCATE. Keys stay the
/// JSON text legacy wrote, so no value passes through a lossy client-side type.
struct Op<'a> {
    tbl: &'a str,
    keys: Vec<&'a str>,
    truncate: bool,
}

impl Op<'_> {
    fn keys_array(&self) -> String {
        format!("[{}]", self.keys.join(","))
    }
}

#[derive(Debug, thiserror::Error)]
enum MirrorError {
    #[error("legacy: {0}")]
    Legacy(tokio_postgres::Error),
    #[error("new: {0}")]
    New(tokio_postgres::Error),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("connect: {0}")]
    Connect(String),
    #[error("the rules do not fit the databases, so nothing is captured yet:\n  - {}", .0.join("\n  - "))]
    Rules(Vec<String>),
    #[error("a target table's column types changed; reconnecting to learn them")]
    TypesChanged,
}

/// Errors worth retrying: the connection, serialization and deadlocks, resources,
/// shutdowns. Everything else (constraints, types, missing objects) is permanent.
fn transient(code: Option<&str>) -> bool {
    match code {
        None => true,
        Some(c) => {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|p| c.starts_with(p))
                || c == "55P03"
        }
    }
}

impl MirrorError {
    fn code(&self) -> Option<&str> {
        match self {
            MirrorError::Legacy(e) | MirrorError::New(e) => e.code().map(|c| c.code()),
            MirrorError::Copy(e) => e.code(),
            MirrorError::Connect(_) | MirrorError::Rules(_) | MirrorError::TypesChanged => None,
        }
    }

    fn is_transient(&self) -> bool {
        transient(self.code())
    }

    /// The error for the log: no row values unless `show_values` (see [`crate::telemetry::redact`]).
    fn for_log(&self, show_values: bool) -> String {
        match self {
            MirrorError::Legacy(e) => format!("legacy: {}", redact::pg_error(e, show_values)),
            MirrorError::New(e) => format!("new: {}", redact::pg_error(e, show_values)),
            MirrorError::Copy(CopyError::Legacy { table, source }) => format!(
                "reading {table} from legacy: {}",
                redact::pg_error(source, show_values)
            ),
            MirrorError::Copy(CopyError::New { table, source }) => format!(
                "writing {table} in new: {}",
                redact::pg_error(source, show_values)
            ),
            other => other.to_string(),
        }
    }
}

/// Starts the mirror thread. It follows the rules in force: a reload that turns a table's
/// writes on or off installs or removes its capture triggers.
pub fn start(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pgdual-mirror".into())
        .spawn(move || {
            if let Some(rt) = crate::runtime::current_thread("mirror") {
                rt.block_on(run(shared, stop));
            }
        })
}

/// The tables of `rules` as the backlog names them.
fn table_names(rules: &RuleSet) -> Vec<String> {
    rules
        .tables()
        .iter()
        .map(|r| r.legacy.to_string())
        .collect()
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

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let cfg = &shared.config.mirror;
    let mut delay = Duration::from_millis(cfg.retry_initial_ms);
    // The rules whose triggers are in place, to remove what a reload drops.
    let mut installed: Option<Arc<crate::control::rules_store::RulesSnapshot>> = None;
    while !*stop.borrow() {
        let snapshot = shared.rules.load();
        let tables = table_names(&snapshot.rules);
        let attempt = async {
            let (legacy, new) = catalog::connect_both(&shared.config)
                .await
                .map_err(MirrorError::Connect)?;
            copy::pin_session(&legacy)
                .await
                .map_err(MirrorError::Legacy)?;
            if let Some(n) = &new {
                copy::pin_session(n).await.map_err(MirrorError::New)?;
            }
            if installed.as_ref().map(|s| s.version) != Some(snapshot.version) {
                // A rule that does not fit the catalogs would dead-letter every change:
                // refuse to capture until the rules and the databases agree.
                let (problems, learned) =
                    catalog::check_and_learn(&snapshot.rules, &legacy, new.as_ref()).await;
                if !problems.is_empty() {
                    let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                    return Err(MirrorError::Rules(list));
                }
                shared.rules.learn_columns(snapshot.version, learned);
                shared.reads.forget_plans();
                let previous = installed.as_ref().map(|s| s.rules.clone());
                install(
                    &legacy,
                    &snapshot.rules,
                    previous.as_deref(),
                    cfg.install_triggers,
                )
                .await?;
                installed = Some(snapshot.clone());
                shared.metrics.mirror.ready.store(1, Relaxed);
                shared
                    .metrics
                    .mirror
                    .rules_version
                    .store(snapshot.version as i64, Relaxed);
            }
            let targets = targets(&snapshot.rules, &legacy, new.as_ref()).await?;
            let mut worker = Worker {
                legacy,
                new,
                targets: &targets,
                tables: tables.iter().map(String::as_str).collect(),
                shared: &shared,
            };
            worker.serve(snapshot.version).await
        };
        // Stopping must never wait on a connection attempt or a slow batch.
        let outcome = tokio::select! {
            r = attempt => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match outcome {
            // The rules changed: take the new snapshot at once.
            Ok(()) => delay = Duration::from_millis(cfg.retry_initial_ms),
            Err(e) => {
                shared.metrics.mirror.retries_total.fetch_add(1, Relaxed);
                // Keep the backlog gauge true while new is away: it is what operators watch.
                let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
                if let Some(n) = backlog(&shared, &tables).await {
                    shared.metrics.mirror.backlog.store(n, Relaxed);
                }
                let error = e.for_log(shared.config.reads.log_values);
                warn!(
                    error,
                    retry_in_ms = delay.as_millis() as u64,
                    "mirror interrupted; the backlog waits in legacy"
                );
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

/// The backlog size, read over a short-lived connection to legacy.
async fn backlog(shared: &Shared, tables: &[&str]) -> Option<i64> {
    let c = catalog::connect_legacy(&shared.config).await.ok()?;
    c.query_one(BACKLOG, &[&tables])
        .await
        .ok()
        .map(|r| r.get(0))
}

fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos() as u64);
    d + Duration::from_nanos(nanos % (d.as_nanos() as u64 / 4 + 1))
}

/// Creates the changelog and the capture triggers of `write = "on"` tables; removes them
/// from tables whose writes are off, and from tables `previous` had that `rules` dropped
/// (whose pending backlog is dropped too: no rule says where it would go).
async fn install(
    legacy: &Client,
    rules: &RuleSet,
    previous: Option<&RuleSet>,
    triggers: bool,
) -> Result<(), MirrorError> {
    legacy
        .batch_execute(capture_sql::INSTALL_SCHEMA)
        .await
        .map_err(MirrorError::Legacy)?;
    if !triggers {
        return Ok(());
    }
    for rule in rules.tables() {
        let sql = match rule.write {
            WriteMode::On => capture_sql::install_capture(rule),
            WriteMode::Off => capture_sql::remove_capture(rule),
        };
        legacy
            .batch_execute(&sql)
            .await
            .map_err(MirrorError::Legacy)?;
        info!(table = %rule.legacy, write = ?rule.write, "capture triggers set");
    }
    for gone in previous.iter().flat_map(|p| p.tables()) {
        if rules.table(&gone.legacy).is_none() {
            legacy
                .batch_execute(&capture_sql::remove_capture(gone))
                .await
                .map_err(MirrorError::Legacy)?;
            let dropped = legacy
                .execute(
                    "DELETE FROM pgdual.changes WHERE tbl = $1",
                    &[&gone.legacy.to_string()],
                )
                .await
                .map_err(MirrorError::Legacy)?;
            warn!(table = %gone.legacy, dropped, "rule removed: capture stopped, its backlog dropped");
        }
    }
    Ok(())
}

struct Worker<'a> {
    legacy: Client,
    new: Option<Client>,
    targets: &'a HashMap<String, Target>,
    /// The legacy tables of `targets`, as the backlog names them.
    tables: Vec<&'a str>,
    shared: &'a Shared,
}

impl Worker<'_> {
    /// Drains the backlog whenever a session signals a commit or the poll interval passes,
    /// until an error or until the rules in force are no longer `version` (the caller stops
    /// it by dropping the future).
    async fn serve(&mut self, version: u64) -> Result<(), MirrorError> {
        let poll = Duration::from_millis(self.shared.config.mirror.poll_interval_ms);
        loop {
            if self.shared.rules.load().version != version {
                return Ok(());
            }
            // Every change committed before this instant is in the backlog the loop takes.
            let started = self.shared.reads.now();
            while self.drain_once().await? > 0 {}
            self.shared.reads.mirrored(started);
            let backlog: i64 = self
                .legacy
                .query_one(BACKLOG, &[&self.tables])
                .await
                .map_err(MirrorError::Legacy)?
                .get(0);
            self.shared.metrics.mirror.backlog.store(backlog, Relaxed);
            tokio::select! {
                _ = self.shared.mirror_nudge.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Applies one batch; returns how many changes it took.
    async fn drain_once(&mut self) -> Result<usize, MirrorError> {
        let batch = self.shared.config.mirror.batch_size as i64;
        let tables = &self.tables;
        let mut legacy_tx = self
            .legacy
            .transaction()
            .await
            .map_err(MirrorError::Legacy)?;
        let rows = legacy_tx
            .query(TAKE_BATCH, &[&batch, &tables])
            .await
            .map_err(MirrorError::Legacy)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let changes: Vec<(String, Option<String>)> =
            rows.iter().map(|r| (r.get(1), r.get(2))).collect();
        let ops = group(&changes);
        let m = &self.shared.metrics.mirror;
        match apply(&mut legacy_tx, self.new.as_ref(), self.targets, &ops).await {
            Ok((upserted, deleted)) => {
                m.rows_upserted_total.fetch_add(upserted, Relaxed);
                m.rows_deleted_total.fetch_add(deleted, Relaxed);
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                // Casts to column types new no longer has would dead-letter every change:
                // learn the types again and retry instead.
                if stale_plans(self.targets, self.new.as_ref(), &legacy_tx).await? {
                    return Err(MirrorError::TypesChanged);
                }
                let error = e.for_log(self.shared.config.reads.log_values);
                debug!(error, "batch refused; isolating the failing changes");
                for op in &ops {
                    isolate(
                        &mut legacy_tx,
                        self.new.as_ref(),
                        self.targets,
                        self.shared,
                        op,
                    )
                    .await?;
                }
            }
        }
        let lags = legacy_tx
            .query(FORGET, &[&ids])
            .await
            .map_err(MirrorError::Legacy)?;
        legacy_tx.commit().await.map_err(MirrorError::Legacy)?;
        for lag in lags {
            m.lag
                .observe(Duration::from_secs_f64(lag.get::<_, f64>(0).max(0.0)));
        }
        m.batches_total.fetch_add(1, Relaxed);
        m.changes_total.fetch_add(ids.len() as u64, Relaxed);
        Ok(ids.len())
    }
}

/// Whether any target table's column types changed since its plan was made.
async fn stale_plans(
    targets: &HashMap<String, Target>,
    new: Option<&Client>,
    legacy_tx: &tokio_postgres::Transaction<'_>,
) -> Result<bool, MirrorError> {
    for t in targets.values() {
        let stale = match (t.database, new) {
            (TargetDatabase::Legacy, _) => t.plan.is_stale(legacy_tx, legacy_tx).await?,
            (TargetDatabase::New, Some(n)) => t.plan.is_stale(legacy_tx, n).await?,
            (TargetDatabase::New, None) => false,
        };
        if stale {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Applies an op key by key; what new refuses for good goes to the dead-letter file.
async fn isolate(
    legacy_tx: &mut tokio_postgres::Transaction<'_>,
    new: Option<&Client>,
    targets: &HashMap<String, Target>,
    shared: &Shared,
    op: &Op<'_>,
) -> Result<(), MirrorError> {
    let singles: Vec<Op> = if op.truncate {
        vec![Op {
            tbl: op.tbl,
            keys: vec![],
            truncate: true,
        }]
    } else {
        op.keys
            .iter()
            .map(|k| Op {
                tbl: op.tbl,
                keys: vec![*k],
                truncate: false,
            })
            .collect()
    };
    for single in singles {
        match apply(legacy_tx, new, targets, std::slice::from_ref(&single)).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => dead_letter(shared, &single, &e),
        }
    }
    Ok(())
}

fn dead_letter(shared: &Shared, op: &Op<'_>, e: &MirrorError) {
    shared
        .metrics
        .mirror
        .dead_letters_total
        .fetch_add(1, Relaxed);
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let record = json!({
        "at_unix": when,
        "table": op.tbl,
        "keys": op.keys.first().and_then(|k| serde_json::value::RawValue::from_string(k.to_string()).ok()),
        "truncate": op.truncate,
        "sqlstate": e.code(),
        "error": e.to_string(),
    });
    warn!(table = op.tbl, sqlstate = e.code(), "change dead-lettered");
    let path = &shared.config.mirror.dead_letter_file;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            writeln!(f, "{record}")?;
            f.sync_data()
        });
    if let Err(err) = written {
        error!(error = %err, path = %path.display(), "cannot write the dead-letter file");
    }
}

/// Changes of one table become one op, whatever other tables' changes lie between them: a
/// row image is the row's state now, so the order of keys does not matter. Only a TRUNCATE
/// splits a table's keys, into those before it and those after.
fn group(changes: &[(String, Option<String>)]) -> Vec<Op<'_>> {
    let mut ops: Vec<Op> = Vec::new();
    let mut open: HashMap<&str, (usize, HashSet<&str>)> = HashMap::new();
    for (tbl, keys) in changes {
        match keys.as_deref() {
            Some(k) => {
                let (at, seen) = open.entry(tbl).or_insert_with(|| {
                    ops.push(Op {
                        tbl,
                        keys: vec![],
                        truncate: false,
                    });
                    (ops.len() - 1, HashSet::new())
                });
                // jsonb prints one key one way, so equal text is the same key.
                if seen.insert(k) {
                    ops[*at].keys.push(k);
                }
            }
            None => {
                open.remove(tbl.as_str());
                ops.push(Op {
                    tbl,
                    keys: vec![],
                    truncate: true,
                });
            }
        }
    }
    ops
}

/// Applies ops: new-database targets in one transaction on new, legacy-schema targets in a
/// savepoint of the batch's legacy transaction. Returns rows upserted and deleted.
async fn apply(
    legacy_tx: &mut tokio_postgres::Transaction<'_>,
    new: Option<&Client>,
    targets: &HashMap<String, Target>,
    ops: &[Op<'_>],
) -> Result<(u64, u64), MirrorError> {
    let sp = legacy_tx
        .savepoint("pgdual_apply")
        .await
        .map_err(MirrorError::Legacy)?;
    let uses_new = ops.iter().any(|op| {
        targets
            .get(op.tbl)
            .is_some_and(|t| t.database == TargetDatabase::New)
    });
    let new = match (uses_new, new) {
        (false, _) => None,
        (true, Some(c)) => Some(c),
        (true, None) => {
            return Err(MirrorError::Connect(
                "a rule writes to the new database but no [new] database is configured".into(),
            ))
        }
    };
    if let Some(c) = new {
        c.batch_execute("BEGIN").await.map_err(MirrorError::New)?;
    }
    let result = apply_ops(&sp, new, targets, ops).await;
    if let Some(c) = new {
        match &result {
            Ok(_) => c.batch_execute("COMMIT").await.map_err(MirrorError::New)?,
            Err(_) => {
                let _ = c.batch_execute("ROLLBACK").await;
            }
        }
    }
    let counts = result?;
    sp.commit().await.map_err(MirrorError::Legacy)?;
    Ok(counts)
}

async fn apply_ops(
    sp: &tokio_postgres::Transaction<'_>,
    new: Option<&Client>,
    targets: &HashMap<String, Target>,
    ops: &[Op<'_>],
) -> Result<(u64, u64), MirrorError> {
    let (mut up, mut del) = (0, 0);
    for op in ops {
        // A table with no rule any more (the rules changed): its backlog is skipped.
        let Some(t) = targets.get(op.tbl) else {
            warn!(table = op.tbl, "changes for a table without a rule skipped");
            continue;
        };
        let keys = op.keys_array();
        let out = match (t.database, new) {
            (TargetDatabase::Legacy, _) if op.truncate => {
                truncate(sp, &t.new_table)
                    .await
                    .map_err(MirrorError::Legacy)?;
                continue;
            }
            (TargetDatabase::New, Some(c)) if op.truncate => {
                truncate(c, &t.new_table).await.map_err(MirrorError::New)?;
                continue;
            }
            (TargetDatabase::Legacy, _) => t.plan.copy(sp, sp, &keys).await?,
            (TargetDatabase::New, Some(c)) => t.plan.copy(sp, c, &keys).await?,
            (TargetDatabase::New, None) => continue,
        };
        up += out.upserted;
        del += out.deleted;
    }
    Ok((up, del))
}

async fn truncate<C: GenericClient>(c: &C, table: &str) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!("TRUNCATE {table}")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_group_per_table_split_only_by_truncate() {
        let c = |t: &str, k: Option<&str>| (t.to_string(), k.map(str::to_string));
        let changes = vec![
            c("a", Some("{\"id\": 1}")),
            c("b", Some("{\"id\": 9}")),
            c("a", Some("{\"id\": 2}")),
            c("a", Some("{\"id\": 1}")),
            c("a", None),
            c("b", Some("{\"id\": 8}")),
            c("a", Some("{\"id\": 3}")),
        ];
        let ops = group(&changes);
        let shape: Vec<(&str, bool, Vec<&str>)> = ops
            .iter()
            .map(|o| (o.tbl, o.truncate, o.keys.clone()))
            .collect();
        assert_eq!(
            shape,
            [
                ("a", false, vec!["{\"id\": 1}", "{\"id\": 2}"]),
                ("b", false, vec!["{\"id\": 9}", "{\"id\": 8}"]),
                ("a", true, vec![]),
                ("a", false, vec!["{\"id\": 3}"]),
            ]
        );
        assert_eq!(ops[0].keys_array(), "[{\"id\": 1},{\"id\": 2}]");
    }
}
