//! Copy rows by key from legacy to new, transformed by a table rule: the row-image routine
//! that dual-write, backfill and repair build on.
//!
//! Reads what legacy holds now for the given keys (and which keys are gone) in one query,
//! then upserts and deletes on new in the caller's transaction. Replaying the row image
//! instead of the statement gives new exactly legacy's values, whatever produced them
//! (`now()`, `random()`, serial defaults, triggers, concurrent updates). Values travel as
//! their text forms (see `pgdual_rules::copy_sql`), so both connections must run under
//! [`SESSION_SETTINGS`].

use pgdual_rules::copy_sql::{self, ColumnTypes};
use pgdual_rules::{TableName, TableRule};
use tokio_postgres::{Client, GenericClient};

/// Session settings for pgdual's connections that read and write row images.
///
/// The first four fix the text forms values travel in, so that each reads back bit for bit:
/// every float digit (`extra_float_digits = 3`, which also gives `-0`, `NaN`, `Infinity`),
/// dates that new parses the way legacy printed them (`DateStyle`), intervals in the
/// unambiguous `postgres` style, bytea in hex. `TimeZone` is left alone: a `timestamptz`
/// text carries its offset, and transforms such as `created_at::date` keep legacy's zone.
/// `synchronous_commit = on` whatever the server's default, because the mirror forgets a
/// change as soon as new acknowledges its commit: an acknowledged commit must be durable.
pub const SESSION_SETTINGS: &str = "SET extra_float_digits = 3; SET DateStyle = 'ISO, MDY'; \
    SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'; SET synchronous_commit = on";

/// Applies [`SESSION_SETTINGS`] to a connection.
pub async fn pin_session<C: GenericClient>(c: &C) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(SESSION_SETTINGS).await
}

/// The copy lock of a legacy table, taken on legacy: every writer of row images to the
/// table's target holds it between reading images from legacy and committing them. The
/// mirror takes it exclusively for a batch (until the batch's legacy transaction ends, after
/// new committed); backfill chunks and repairs take it shared (chunks copy disjoint key
/// ranges). So no image read earlier is ever written after the mirror wrote a later one:
/// see README, "Backfill", for the whole argument.
const COPY_LOCK: &str = "hashtextextended('pgdual copy ' || $1::text, 0)";

/// Takes the copy lock of `table` exclusively until the end of the current transaction.
pub async fn lock_for_batch(c: &Client, table: &TableName) -> Result<(), tokio_postgres::Error> {
    c.execute(
        &format!("SELECT pg_catalog.pg_advisory_xact_lock({COPY_LOCK})"),
        &[&table.to_string()],
    )
    .await
    .map(drop)
}

/// Takes the copy lock of `table` shared, for this session, until [`unlock_shared`].
pub async fn lock_shared(c: &Client, table: &TableName) -> Result<(), tokio_postgres::Error> {
    c.execute(
        &format!("SELECT pg_catalog.pg_advisory_lock_shared({COPY_LOCK})"),
        &[&table.to_string()],
    )
    .await
    .map(drop)
}

pub async fn unlock_shared(c: &Client, table: &TableName) -> Result<(), tokio_postgres::Error> {
    c.execute(
        &format!("SELECT pg_catalog.pg_advisory_unlock_shared({COPY_LOCK})"),
        &[&table.to_string()],
    )
    .await
    .map(drop)
}

/// The types of `table`'s columns in the database `c` is connected to.
pub async fn column_types<C: GenericClient>(
    c: &C,
    table: &str,
) -> Result<ColumnTypes, tokio_postgres::Error> {
    let rows = c.query(copy_sql::COLUMN_TYPES, &[&table]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What one copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopyOutcome {
    /// Rows inserted or updated in new.
    pub upserted: u64,
    /// Rows deleted from new because their keys are gone from legacy.
    pub deleted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading {table} from legacy: {source}")]
    Legacy {
        table: String,
        source: tokio_postgres::Error,
    },
    #[error("writing {table} in new: {source}")]
    New {
        table: String,
        source: tokio_postgres::Error,
    },
}

impl CopyError {
    /// The SQLSTATE of the underlying error, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        let (CopyError::Legacy { source, .. } | CopyError::New { source, .. }) = self;
        source.code().map(|c| c.code())
    }
}

async fn learn_types<L, N>(
    legacy: &L,
    target: &N,
    legacy_table: String,
    new_table: String,
) -> Result<(ColumnTypes, ColumnTypes), CopyError>
where
    L: GenericClient,
    N: GenericClient,
{
    let legacy_types = column_types(legacy, &legacy_table)
        .await
        .map_err(|source| CopyError::Legacy {
            table: legacy_table,
            source,
        })?;
    let types = column_types(target, &new_table)
        .await
        .map_err(|source| CopyError::New {
            table: new_table,
            source,
        })?;
    Ok((legacy_types, types))
}

/// The three statements of a rule, built once for the target table's column types.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    read: String,
    upsert: String,
    delete: String,
    legacy: String,
    new: String,
    legacy_types: ColumnTypes,
    types: ColumnTypes,
}

impl CopyPlan {
    /// The plan for `rule`, casting keys to `legacy_types` (the legacy table's column
    /// types) and values to `types` (the new table's).
    pub fn new(rule: &TableRule, legacy_types: ColumnTypes, types: ColumnTypes) -> Self {
        CopyPlan {
            read: copy_sql::read_rows_by_keys(rule, &legacy_types),
            upsert: copy_sql::upsert_rows(rule, &types),
            delete: copy_sql::delete_rows(rule, &types),
            legacy: rule.legacy.to_string(),
            new: rule.new.to_string(),
            legacy_types,
            types,
        }
    }

    /// The plan for `rule`, with the column types read from `legacy` and from `target` (the
    /// database holding the rule's new table).
    pub async fn learn<L, N>(rule: &TableRule, legacy: &L, target: &N) -> Result<Self, CopyError>
    where
        L: GenericClient,
        N: GenericClient,
    {
        let (legacy_types, types) = learn_types(
            legacy,
            target,
            rule.legacy.to_string(),
            rule.new.to_string(),
        )
        .await?;
        Ok(CopyPlan::new(rule, legacy_types, types))
    }

    /// The legacy table's column types this plan casts keys to.
    pub fn legacy_types(&self) -> &ColumnTypes {
        &self.legacy_types
    }

    /// The target table's column types this plan casts values to.
    pub fn types(&self) -> &ColumnTypes {
        &self.types
    }

    /// Whether the tables' column types are no longer those this plan casts to (a schema
    /// changed under it).
    pub async fn is_stale<L, N>(&self, legacy: &L, target: &N) -> Result<bool, CopyError>
    where
        L: GenericClient,
        N: GenericClient,
    {
        let now = learn_types(legacy, target, self.legacy.clone(), self.new.clone()).await?;
        Ok(now != (self.legacy_types.clone(), self.types.clone()))
    }

    /// Copies the rows with `keys`: the text of a JSON array of objects of the legacy key
    /// columns. Writes happen on `new` as given: pass a transaction to make them atomic.
    /// Both connections must run under [`SESSION_SETTINGS`].
    pub async fn copy<L, N>(
        &self,
        legacy: &L,
        new: &N,
        keys: &str,
    ) -> Result<CopyOutcome, CopyError>
    where
        L: GenericClient,
        N: GenericClient,
    {
        let row = legacy
            .query_one(self.read.as_str(), &[&keys])
            .await
            .map_err(|source| CopyError::Legacy {
                table: self.legacy.clone(),
                source,
            })?;
        let (rows, row_count): (String, i32) = (row.get(0), row.get(1));
        let (gone, gone_count): (String, i32) = (row.get(2), row.get(3));
        let mut outcome = CopyOutcome::default();
        let new_err = |source| CopyError::New {
            table: self.new.clone(),
            source,
        };
        if row_count > 0 {
            new.execute(self.upsert.as_str(), &[&rows])
                .await
                .map_err(new_err)?;
            outcome.upserted = row_count as u64;
        }
        if gone_count > 0 {
            outcome.deleted = new
                .execute(self.delete.as_str(), &[&gone])
                .await
                .map_err(new_err)?;
        }
        Ok(outcome)
    }
}
