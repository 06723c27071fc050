//! Capture by triggers: the triggers of `pgdual_rules::capture_sql` record the key of every
//! change of a `write = "on"` table in `pgdual.changes`, in the changing transaction, so a
//! change is in the backlog exactly when it committed.
//!
//! A batch is taken inside a legacy transaction that locks its backlog rows (another pgdual
//! with the same rules waits; one with other rules never takes our tables' changes); the row
//! images are read in that same transaction, and acknowledging deletes the rows and commits.
//! A batch that is not acknowledged (an error, a dropped connection) stays in the backlog.

use std::collections::HashMap;
use std::time::Duration;

use pgdual_rules::capture_sql;
use pgdual_rules::ruleset::WriteMode;
use pgdual_rules::sql::ident::parse_table_name;
use pgdual_rules::{RuleSet, TableName};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{Change, ChangeSource};

/// Whole transactions from the front of the backlog of our tables (`$2`), at most about `$1`
/// changes.
const TAKE_BATCH: &str = "SELECT id, tbl, keys::text FROM pgdual.changes \
    WHERE tbl = ANY($2) AND txid IN (SELECT txid FROM (SELECT txid FROM pgdual.changes \
        WHERE tbl = ANY($2) ORDER BY id LIMIT $1) AS f) \
    ORDER BY id FOR UPDATE";
const FORGET: &str = "DELETE FROM pgdual.changes WHERE id = ANY($1) \
    RETURNING extract(epoch FROM clock_timestamp() - at)::float8";
const BACKLOG: &str =
    "SELECT coalesce(max(id) - min(id) + 1, 0)::int8 FROM pgdual.changes WHERE tbl = ANY($1)";

/// The trigger backlog of the tables of one rules version, read over one legacy connection.
pub struct TriggerSource {
    legacy: Client,
    /// The legacy tables, as the backlog names them.
    tables: Vec<String>,
    /// Each of `tables` by that name.
    names: HashMap<String, TableName>,
    /// Backlog rows of the batch taken and not yet acknowledged.
    taken: Vec<i64>,
}

impl TriggerSource {
    pub fn new(legacy: Client, rules: &RuleSet) -> TriggerSource {
        TriggerSource {
            legacy,
            tables: table_names(rules),
            names: rules
                .tables()
                .iter()
                .map(|r| (r.legacy.to_string(), r.legacy.clone()))
                .collect(),
            taken: Vec::new(),
        }
    }

    /// The table a backlog row names. Batches are taken for `tables` only, so the name is
    /// one of them; any other is read as the name it prints (a table without a rule, whose
    /// changes the applier skips with a warning).
    fn table(&self, printed: &str) -> TableName {
        self.names.get(printed).cloned().unwrap_or_else(|| {
            parse_table_name(printed).unwrap_or_else(|_| TableName {
                schema: String::new(),
                name: printed.to_string(),
            })
        })
    }
}

impl ChangeSource for TriggerSource {
    type Error = tokio_postgres::Error;

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Change>, Self::Error> {
        self.legacy.batch_execute("BEGIN").await?;
        let rows = self
            .legacy
            .query(TAKE_BATCH, &[&(max as i64), &self.tables])
            .await?;
        if rows.is_empty() {
            self.legacy.batch_execute("COMMIT").await?;
            return Ok(Vec::new());
        }
        self.taken = rows.iter().map(|r| r.get(0)).collect();
        Ok(rows
            .iter()
            .map(|r| Change {
                table: self.table(r.get(1)),
                keys: r.get(2),
            })
            .collect())
    }

    fn legacy(&self) -> &Client {
        &self.legacy
    }

    async fn acknowledge(&mut self) -> Result<Vec<Duration>, Self::Error> {
        let lags = self.legacy.query(FORGET, &[&self.taken]).await?;
        self.legacy.batch_execute("COMMIT").await?;
        self.taken.clear();
        Ok(lags
            .iter()
            .map(|r| Duration::from_secs_f64(r.get::<_, f64>(0).max(0.0)))
            .collect())
    }

    async fn backlog(&self) -> Result<i64, Self::Error> {
        Ok(self
            .legacy
            .query_one(BACKLOG, &[&self.tables])
            .await?
            .get(0))
    }

    /// A change is in the backlog from its commit on: a drain that found nothing has
    /// applied everything committed before it began.
    async fn mark(&mut self) -> Result<u64, Self::Error> {
        Ok(0)
    }

    fn applied(&self) -> u64 {
        u64::MAX
    }

    /// The backlog says nothing when it grows: commit signals and the poll wake the mirror.
    async fn wait(&mut self) -> Result<(), Self::Error> {
        std::future::pending().await
    }
}

/// The tables of `rules` as the backlog names them.
fn table_names(rules: &RuleSet) -> Vec<String> {
    rules
        .tables()
        .iter()
        .map(|r| r.legacy.to_string())
        .collect()
}

/// The backlog size of `rules`' tables, read over `legacy`.
pub async fn backlog(legacy: &Client, rules: &RuleSet) -> Result<i64, tokio_postgres::Error> {
    Ok(legacy
        .query_one(BACKLOG, &[&table_names(rules)])
        .await?
        .get(0))
}

/// Creates the changelog and the capture triggers of `write = "on"` tables; removes them
/// from tables whose writes are off, and from tables `previous` had that `rules` dropped
/// (whose pending backlog is dropped too: no rule says where it would go). Without
/// `triggers` (`mirror.install_triggers = false`) only the changelog is created.
pub async fn install(
    legacy: &Client,
    rules: &RuleSet,
    previous: Option<&RuleSet>,
    triggers: bool,
) -> Result<(), tokio_postgres::Error> {
    legacy.batch_execute(capture_sql::INSTALL_SCHEMA).await?;
    if !triggers {
        return Ok(());
    }
    for rule in rules.tables() {
        let sql = match rule.write {
            WriteMode::On => capture_sql::install_capture(rule),
            WriteMode::Off => capture_sql::remove_capture(rule),
        };
        legacy.batch_execute(&sql).await?;
        info!(table = %rule.legacy, write = ?rule.write, "capture triggers set");
    }
    for gone in previous.iter().flat_map(|p| p.tables()) {
        if rules.table(&gone.legacy).is_none() {
            legacy
                .batch_execute(&capture_sql::remove_capture(gone))
                .await?;
            let dropped = legacy
                .execute(
                    "DELETE FROM pgdual.changes WHERE tbl = $1",
                    &[&gone.legacy.to_string()],
                )
                .await?;
            warn!(table = %gone.legacy, dropped, "rule removed: capture stopped, its backlog dropped");
        }
    }
    Ok(())
}

/// Removes the capture triggers of every table of `rules` and of `previous` (logical
/// decoding captures instead); the backlog they left stays, for the mirror to apply.
pub async fn remove(
    legacy: &Client,
    rules: &RuleSet,
    previous: Option<&RuleSet>,
) -> Result<(), tokio_postgres::Error> {
    for rule in rules
        .tables()
        .iter()
        .chain(previous.iter().flat_map(|p| p.tables()))
    {
        legacy
            .batch_execute(&capture_sql::remove_capture(rule))
            .await?;
    }
    Ok(())
}
