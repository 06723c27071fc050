//! Copy rows by key from legacy to new, transformed by a table rule: the row-image routine
//! that dual-write, backfill and repair build on.
//!
//! Reads what legacy holds now for the given keys (and which keys are gone) in one query,
//! then upserts and deletes on new in the caller's transaction. Replaying the row image
//! instead of the statement gives new exactly legacy's values, whatever produced them
//! (`now()`, `random()`, serial defaults, triggers, concurrent updates).

use pgdual_rules::copy_sql;
use pgdual_rules::TableRule;
use tokio_postgres::GenericClient;

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

/// The three statements of a rule, built once.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    read: String,
    upsert: String,
    delete: String,
    legacy: String,
    new: String,
}

impl CopyPlan {
    pub fn new(rule: &TableRule) -> Self {
        CopyPlan {
            read: copy_sql::read_rows_by_keys(rule),
            upsert: copy_sql::upsert_rows(rule),
            delete: copy_sql::delete_rows(rule),
            legacy: rule.legacy.to_string(),
            new: rule.new.to_string(),
        }
    }

    /// Copies the rows with `keys`: the text of a JSON array of objects of the legacy key
    /// columns. Writes happen on `new` as given: pass a transaction to make them atomic.
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
