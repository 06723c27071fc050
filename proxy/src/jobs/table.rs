//! What a job knows of one mapped table: its rule, the column types on both sides, the
//! statements built from them, and connections pinned for row images.

use std::collections::HashMap;
use std::time::Duration;

use pgdual_rules::copy_sql::ColumnTypes;
use pgdual_rules::keyset_sql::{self, Bounds, VerifyTypes};
use pgdual_rules::ruleset::TargetDatabase;
use pgdual_rules::{RuleSet, TableRule};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::mirror::copy::{self, CopyPlan};
use crate::mirror::error::transient;
use crate::net::endpoint::Endpoints;
use crate::telemetry::redact;

/// A key: the text form of each key column, in key order.
pub type Key = Vec<String>;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Connect(String),
    #[error("no rule maps {0} (rules name legacy tables schema-qualified, e.g. public.users)")]
    NoRule(String),
    #[error("{0}")]
    Refused(String),
    #[error("legacy: {0}")]
    Legacy(tokio_postgres::Error),
    #[error("new: {0}")]
    New(tokio_postgres::Error),
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
}

impl JobError {
    pub fn code(&self) -> Option<&str> {
        match self {
            JobError::Legacy(e) | JobError::New(e) => e.code().map(|c| c.code()),
            JobError::Copy(e) => e.code(),
            _ => None,
        }
    }

    /// Worth retrying after a pause: connections, serialization, resources, shutdowns.
    pub fn is_transient(&self) -> bool {
        match self {
            JobError::Connect(_) => true,
            JobError::Legacy(_) | JobError::New(_) | JobError::Copy(_) => transient(self.code()),
            JobError::NoRule(_) | JobError::Refused(_) => false,
        }
    }

    /// The error for the log: no row values unless `show_values`.
    pub fn for_log(&self, show_values: bool) -> String {
        match self {
            JobError::Legacy(e) => format!("legacy: {}", redact::pg_error(e, show_values)),
            JobError::New(e) => format!("new: {}", redact::pg_error(e, show_values)),
            JobError::Copy(copy::CopyError::Legacy { table, source }) => format!(
                "reading {table} from legacy: {}",
                redact::pg_error(source, show_values)
            ),
            JobError::Copy(copy::CopyError::New { table, source }) => format!(
                "writing {table} in new: {}",
                redact::pg_error(source, show_values)
            ),
            other => other.to_string(),
        }
    }
}

/// A connection to legacy and one to the database holding the rule's target (new, or
/// legacy for a rule that writes to a schema of legacy), both pinned for row images.
pub struct Pair {
    pub legacy: Client,
    pub target: Client,
}

impl Pair {
    pub async fn open(endpoints: &Endpoints, database: TargetDatabase) -> Result<Pair, JobError> {
        let legacy = endpoints.legacy.client().await.map_err(JobError::Connect)?;
        let target = match (database, &endpoints.new) {
            (TargetDatabase::Legacy, _) => {
                endpoints.legacy.client().await.map_err(JobError::Connect)?
            }
            (TargetDatabase::New, Some(n)) => n.client().await.map_err(JobError::Connect)?,
            (TargetDatabase::New, None) => {
                return Err(JobError::Refused(
                    "the rule writes to the new database but no [new] database is configured"
                        .into(),
                ))
            }
        };
        copy::pin_session(&legacy).await.map_err(JobError::Legacy)?;
        copy::pin_session(&target).await.map_err(JobError::New)?;
        Ok(Pair { legacy, target })
    }
}

/// One table's rule with the types and statements jobs use.
pub struct TablePlan {
    pub rule: TableRule,
    /// The legacy table, as the rules and the backlog name it.
    pub name: String,
    pub legacy_types: ColumnTypes,
    pub new_types: ColumnTypes,
    pub verify_types: VerifyTypes,
    pub copy: CopyPlan,
    upsert: String,
}

impl TablePlan {
    /// The rule for `table` in `rules`.
    pub fn rule(rules: &RuleSet, table: &str) -> Result<TableRule, JobError> {
        let name = pgdual_rules::sql::ident::parse_table_name(table)
            .map_err(|e| JobError::Refused(format!("table {table:?}: {e}")))?;
        rules
            .table(&name)
            .cloned()
            .ok_or_else(|| JobError::NoRule(table.to_string()))
    }

    /// Learns the column types of both tables over `pair`.
    pub async fn learn(rule: TableRule, pair: &Pair) -> Result<TablePlan, JobError> {
        let copy = CopyPlan::learn(&rule, &pair.legacy, &pair.target).await?;
        let (legacy_types, new_types) = (copy.legacy_types().clone(), copy.types().clone());
        let rows = pair
            .target
            .query(keyset_sql::VERIFY_TYPES, &[&rule.new.to_string()])
            .await
            .map_err(JobError::New)?;
        // A built-in type legacy's expression already has, without a modifier, comes out of
        // the cast through text unchanged: the cast is skipped.
        let described = pair
            .legacy
            .prepare(&keyset_sql::expression_types(&rule))
            .await
            .map_err(JobError::Legacy)?;
        let legacy_oids: HashMap<&str, u32> = rule
            .columns
            .iter()
            .zip(described.columns())
            .map(|(c, d)| (c.new.as_str(), d.type_().oid()))
            .collect();
        let verify_types = rows
            .iter()
            .map(|r| {
                let (name, ty, builtin, oid, modifier): (String, String, bool, u32, bool) =
                    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                let same = legacy_oids.get(name.as_str()) == Some(&oid) && !modifier;
                (name, (ty, builtin && !same))
            })
            .collect();
        let upsert = pgdual_rules::copy_sql::upsert_rows(&rule, &new_types);
        Ok(TablePlan {
            name: rule.legacy.to_string(),
            rule,
            legacy_types,
            new_types,
            verify_types,
            copy,
            upsert,
        })
    }

    pub fn key_len(&self) -> usize {
        self.rule.legacy_keys.len()
    }

    /// The highest key legacy holds now; `None` for an empty table.
    pub async fn last_key(&self, legacy: &Client) -> Result<Option<Key>, JobError> {
        let row = legacy
            .query_opt(&keyset_sql::last_key(&self.rule), &[])
            .await
            .map_err(JobError::Legacy)?;
        Ok(row.map(|r| key_of(&r, self.key_len())))
    }

    /// The end of the chunk of `rows` keys after `lower`, within `upper`; `None` when fewer
    /// remain (the chunk then ends at `upper`, or is the rest of the table).
    pub async fn chunk_end(
        &self,
        legacy: &Client,
        lower: Option<&Key>,
        upper: Option<&Key>,
        rows: u32,
    ) -> Result<Option<Key>, JobError> {
        let b = Bounds {
            lower: lower.is_some(),
            upper: upper.is_some(),
        };
        let sql = keyset_sql::chunk_end(&self.rule, &self.legacy_types, b);
        let offset = i64::from(rows.max(1) - 1);
        let mut params = bound_params(lower, upper);
        params.push(&offset);
        let row = legacy
            .query_opt(&sql, &params)
            .await
            .map_err(JobError::Legacy)?;
        Ok(row.map(|r| key_of(&r, self.key_len())))
    }

    /// Copies the rows of `(lower, upper]` from legacy to the target under the table's copy
    /// lock (shared), waiting `hold` between the read and the write; returns how many rows
    /// were written.
    pub async fn copy_range(
        &self,
        pair: &Pair,
        lower: Option<&Key>,
        upper: &Key,
        hold: Option<Duration>,
    ) -> Result<u64, JobError> {
        self.under_copy_lock(pair, self.copy_range_locked(pair, lower, upper, hold))
            .await
    }

    /// Runs `work` holding the table's copy lock shared on `pair`'s legacy session.
    async fn under_copy_lock<T>(
        &self,
        pair: &Pair,
        work: impl std::future::Future<Output = Result<T, JobError>>,
    ) -> Result<T, JobError> {
        copy::lock_shared(&pair.legacy, &self.rule.legacy)
            .await
            .map_err(JobError::Legacy)?;
        let result = work.await;
        // A broken connection drops the lock with the session.
        let unlocked = copy::unlock_shared(&pair.legacy, &self.rule.legacy).await;
        let out = result?;
        unlocked.map_err(JobError::Legacy)?;
        Ok(out)
    }

    async fn copy_range_locked(
        &self,
        pair: &Pair,
        lower: Option<&Key>,
        upper: &Key,
        hold: Option<Duration>,
    ) -> Result<u64, JobError> {
        let b = Bounds {
            lower: lower.is_some(),
            upper: true,
        };
        let sql = keyset_sql::read_range(&self.rule, &self.legacy_types, b);
        let row = pair
            .legacy
            .query_one(&sql, &bound_params(lower, Some(upper)))
            .await
            .map_err(|source| copy::CopyError::Legacy {
                table: self.name.clone(),
                source,
            })?;
        let (rows, count): (String, i32) = (row.get(0), row.get(1));
        if let Some(d) = hold {
            tokio::time::sleep(d).await;
        }
        if count > 0 {
            pair.target
                .execute(self.upsert.as_str(), &[&rows])
                .await
                .map_err(|source| copy::CopyError::New {
                    table: self.rule.new.to_string(),
                    source,
                })?;
        }
        Ok(count as u64)
    }

    /// Copies the rows with `keys` (JSON objects of legacy key columns) as the mirror does:
    /// upserts what legacy holds, deletes what it no longer holds; under the copy lock.
    pub async fn repair(&self, pair: &Pair, keys: &str) -> Result<copy::CopyOutcome, JobError> {
        self.under_copy_lock(pair, async {
            Ok(self.copy.copy(&pair.legacy, &pair.target, keys).await?)
        })
        .await
    }

    /// A key as the JSON object of legacy key columns that the copy and verify statements
    /// take.
    pub fn key_object(&self, key: &Key) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .rule
            .legacy_keys
            .iter()
            .zip(key)
            .map(|(c, v)| (c.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(map)
    }
}

/// The key in the first `len` columns of `row` (text).
pub fn key_of(row: &tokio_postgres::Row, len: usize) -> Key {
    (0..len)
        .map(|i| row.get::<_, Option<String>>(i).unwrap_or_default())
        .collect()
}

/// The parameters of a range's bounds, in statement order.
pub fn bound_params<'a>(
    lower: Option<&'a Key>,
    upper: Option<&'a Key>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    lower
        .into_iter()
        .chain(upper)
        .flat_map(|k| k.iter().map(|v| v as &(dyn ToSql + Sync)))
        .collect()
}
