//! Applying a batch of changes: grouped per table, row images copied by key from legacy to
//! their target (new, or a schema of legacy), all of a batch in one transaction on new; what
//! the target refuses for good is isolated key by key and written to the dead-letter file.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use pgdual_rules::ruleset::TargetDatabase;
use pgdual_rules::TableName;
use serde_json::json;
use tokio_postgres::{Client, GenericClient};
use tracing::{error, warn};

use super::copy::CopyPlan;
use super::error::MirrorError;
use crate::capture::Change;

/// Where a table's row images go, and how they are cast there.
pub struct Target {
    pub plan: CopyPlan,
    pub database: TargetDatabase,
    pub new_table: String,
}

/// One step of a batch: copy these keys of a table, or mirror a TRUNCATE. Keys stay the
/// JSON text legacy wrote, so no value passes through a lossy client-side type.
pub struct Op<'a> {
    tbl: &'a TableName,
    keys: Vec<&'a str>,
    truncate: bool,
}

impl Op<'_> {
    fn keys_array(&self) -> String {
        format!("[{}]", self.keys.join(","))
    }
}

/// Whether any target table's column types changed since its plan was made.
pub async fn stale_plans(
    targets: &HashMap<TableName, Target>,
    new: Option<&Client>,
    legacy: &Client,
) -> Result<bool, MirrorError> {
    for t in targets.values() {
        let stale = match (t.database, new) {
            (TargetDatabase::Legacy, _) => t.plan.is_stale(legacy, legacy).await?,
            (TargetDatabase::New, Some(n)) => t.plan.is_stale(legacy, n).await?,
            (TargetDatabase::New, None) => false,
        };
        if stale {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Applies an op key by key; what new refuses for good goes to the dead-letter file at
/// `dead_letters`. Returns how many changes were dead-lettered.
pub async fn isolate(
    legacy: &Client,
    new: Option<&Client>,
    targets: &HashMap<TableName, Target>,
    dead_letters: &Path,
    op: &Op<'_>,
) -> Result<u64, MirrorError> {
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
    let mut dead = 0;
    for single in singles {
        match apply(legacy, new, targets, std::slice::from_ref(&single)).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                dead_letter(dead_letters, &single, &e);
                dead += 1;
            }
        }
    }
    Ok(dead)
}

/// Appends the change and why it failed to the dead-letter file (JSON lines, mode 0600).
fn dead_letter(path: &Path, op: &Op<'_>, e: &MirrorError) {
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let record = json!({
        "at_unix": when,
        "table": op.tbl.to_string(),
        "keys": op.keys.first().and_then(|k| serde_json::value::RawValue::from_string(k.to_string()).ok()),
        "truncate": op.truncate,
        "sqlstate": e.code(),
        "error": e.to_string(),
    });
    warn!(table = %op.tbl, sqlstate = e.code(), "change dead-lettered");
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
pub fn group(changes: &[Change]) -> Vec<Op<'_>> {
    let mut ops: Vec<Op> = Vec::new();
    let mut open: HashMap<&TableName, (usize, HashSet<&str>)> = HashMap::new();
    for Change { table: tbl, keys } in changes {
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
                open.remove(tbl);
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
/// savepoint of the batch's legacy transaction (open on `legacy`). Returns rows upserted and
/// deleted; on an error, neither side keeps anything of the ops.
pub async fn apply(
    legacy: &Client,
    new: Option<&Client>,
    targets: &HashMap<TableName, Target>,
    ops: &[Op<'_>],
) -> Result<(u64, u64), MirrorError> {
    legacy
        .batch_execute("SAVEPOINT pgdual_apply")
        .await
        .map_err(MirrorError::Legacy)?;
    let result = apply_in_savepoint(legacy, new, targets, ops).await;
    let end = match result {
        Ok(_) => "RELEASE SAVEPOINT pgdual_apply",
        Err(_) => "ROLLBACK TO SAVEPOINT pgdual_apply; RELEASE SAVEPOINT pgdual_apply",
    };
    match legacy.batch_execute(end).await {
        Err(e) if result.is_ok() => Err(MirrorError::Legacy(e)),
        // A failed rollback leaves the batch's transaction failed: its commit fails and the
        // batch is taken again.
        _ => result,
    }
}

async fn apply_in_savepoint(
    legacy: &Client,
    new: Option<&Client>,
    targets: &HashMap<TableName, Target>,
    ops: &[Op<'_>],
) -> Result<(u64, u64), MirrorError> {
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
    let result = apply_ops(legacy, new, targets, ops).await;
    if let Some(c) = new {
        match &result {
            Ok(_) => c.batch_execute("COMMIT").await.map_err(MirrorError::New)?,
            Err(_) => {
                let _ = c.batch_execute("ROLLBACK").await;
            }
        }
    }
    result
}

async fn apply_ops(
    sp: &Client,
    new: Option<&Client>,
    targets: &HashMap<TableName, Target>,
    ops: &[Op<'_>],
) -> Result<(u64, u64), MirrorError> {
    // Locks in one order (table names), so two batches cannot wait on each other.
    let mut tables: Vec<&TableName> = ops
        .iter()
        .map(|op| op.tbl)
        .filter(|t| targets.contains_key(*t))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    for t in tables {
        super::copy::lock_for_batch(sp, t)
            .await
            .map_err(MirrorError::Legacy)?;
    }
    let (mut up, mut del) = (0, 0);
    for op in ops {
        // A table with no rule any more (the rules changed): its backlog is skipped.
        let Some(t) = targets.get(op.tbl) else {
            warn!(table = %op.tbl, "changes for a table without a rule skipped");
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
        let c = |t: &str, k: Option<&str>| Change {
            table: TableName {
                schema: "public".into(),
                name: t.to_string(),
            },
            keys: k.map(str::to_string),
        };
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
            .map(|o| (o.tbl.name.as_str(), o.truncate, o.keys.clone()))
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
