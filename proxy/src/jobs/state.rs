//! The jobs' state, kept in legacy next to the backlog (schema `pgdual`), so that a backfill
//! resumes wherever it runs next, any pgdual can pause or cancel it, and the last
//! verification of a table is there for every instance to show.

use serde::Serialize;
use tokio_postgres::Client;

use super::table::{JobError, Key};

/// One implicit transaction (a simple-protocol batch) under the lock the capture's installation takes too:
/// catalog changes to one schema from concurrent sessions fail ("tuple concurrently
/// updated") otherwise.
const INSTALL: &str = "
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgdual install'));
CREATE SCHEMA IF NOT EXISTS pgdual;
REVOKE ALL ON SCHEMA pgdual FROM PUBLIC;
CREATE TABLE IF NOT EXISTS pgdual.backfills (
    tbl          text PRIMARY KEY,
    state        text NOT NULL,
    request      text,
    last_key     text[],
    cursor       text[],
    rows_copied  int8 NOT NULL DEFAULT 0,
    chunks       int8 NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    error        text
);
CREATE TABLE IF NOT EXISTS pgdual.verifications (
    tbl     text PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    report  jsonb NOT NULL
);
REVOKE ALL ON TABLE pgdual.backfills, pgdual.verifications FROM PUBLIC;
";

/// Creates the state tables when missing.
pub async fn install(legacy: &Client) -> Result<(), JobError> {
    let present: bool = legacy
        .query_one(
            "SELECT pg_catalog.to_regclass('pgdual.backfills') IS NOT NULL \
             AND pg_catalog.to_regclass('pgdual.verifications') IS NOT NULL",
            &[],
        )
        .await
        .map_err(JobError::Legacy)?
        .get(0);
    if present {
        return Ok(());
    }
    legacy
        .batch_execute(INSTALL)
        .await
        .map_err(JobError::Legacy)
}

/// Where a backfill stands, as legacy keeps it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checkpoint {
    pub table: String,
    /// `running`, `paused`, `done`, `stopped` (ended early: resumable), `cancelled`
    /// (resumable), `failed` (resumable once the cause is fixed).
    pub state: String,
    /// What an operator asked of the running job: `pause`, `cancel`, or none.
    pub request: Option<String>,
    /// The highest key when the backfill began: it copies up to there and no further.
    #[serde(skip)]
    pub last_key: Option<Key>,
    /// Every key up to here is copied.
    #[serde(skip)]
    pub cursor: Option<Key>,
    pub rows_copied: i64,
    pub chunks: i64,
    pub started_at: String,
    pub updated_at: String,
    pub error: Option<String>,
}

const COLUMNS: &str = "tbl, state, request, last_key, cursor, rows_copied, chunks, \
    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), error";

fn checkpoint(r: &tokio_postgres::Row) -> Checkpoint {
    Checkpoint {
        table: r.get(0),
        state: r.get(1),
        request: r.get(2),
        last_key: r.get(3),
        cursor: r.get(4),
        rows_copied: r.get(5),
        chunks: r.get(6),
        started_at: r.get(7),
        updated_at: r.get(8),
        error: r.get(9),
    }
}

pub async fn load(legacy: &Client, table: &str) -> Result<Option<Checkpoint>, JobError> {
    let sql = format!("SELECT {COLUMNS} FROM pgdual.backfills WHERE tbl = $1");
    let row = legacy
        .query_opt(&sql, &[&table])
        .await
        .map_err(JobError::Legacy)?;
    Ok(row.as_ref().map(checkpoint))
}

/// Every backfill legacy knows of, by table.
pub async fn load_all(legacy: &Client) -> Result<Vec<Checkpoint>, JobError> {
    let sql = format!("SELECT {COLUMNS} FROM pgdual.backfills ORDER BY tbl");
    let rows = legacy.query(&sql, &[]).await.map_err(JobError::Legacy)?;
    Ok(rows.iter().map(checkpoint).collect())
}

/// Starts a backfill of `table` from the beginning, up to `last_key`.
pub async fn begin(legacy: &Client, table: &str, last_key: &Key) -> Result<(), JobError> {
    legacy
        .execute(
            "INSERT INTO pgdual.backfills (tbl, state, last_key) VALUES ($1, 'running', $2) \
             ON CONFLICT (tbl) DO UPDATE SET state = 'running', request = NULL, \
               last_key = EXCLUDED.last_key, cursor = NULL, rows_copied = 0, chunks = 0, \
               started_at = now(), updated_at = now(), error = NULL",
            &[&table, last_key],
        )
        .await
        .map_err(JobError::Legacy)
        .map(drop)
}

/// Records progress: every key up to `cursor` is copied.
pub async fn advance(
    legacy: &Client,
    table: &str,
    cursor: &Key,
    rows: i64,
    chunks: i64,
) -> Result<(), JobError> {
    legacy
        .execute(
            "UPDATE pgdual.backfills SET cursor = $2, rows_copied = rows_copied + $3, \
             chunks = chunks + $4, updated_at = now() WHERE tbl = $1",
            &[&table, cursor, &rows, &chunks],
        )
        .await
        .map_err(JobError::Legacy)
        .map(drop)
}

/// Sets the state (and the error, or none); a finished job's request is answered.
pub async fn set_state(
    legacy: &Client,
    table: &str,
    state: &str,
    error: Option<&str>,
) -> Result<(), JobError> {
    let clear_request = matches!(state, "done" | "stopped" | "cancelled" | "failed");
    legacy
        .execute(
            "UPDATE pgdual.backfills SET state = $2, error = $3, updated_at = now(), \
             request = CASE WHEN $4 THEN NULL ELSE request END WHERE tbl = $1",
            &[&table, &state, &error, &clear_request],
        )
        .await
        .map_err(JobError::Legacy)
        .map(drop)
}

/// Asks the backfill of `table` to `pause`, `cancel` or (`None`) resume; false when legacy
/// knows no backfill of it.
pub async fn request(
    legacy: &Client,
    table: &str,
    request: Option<&str>,
) -> Result<bool, JobError> {
    let n = legacy
        .execute(
            "UPDATE pgdual.backfills SET request = $2, updated_at = now() WHERE tbl = $1",
            &[&table, &request],
        )
        .await
        .map_err(JobError::Legacy)?;
    Ok(n > 0)
}

/// The request an operator left for the backfill of `table`.
pub async fn pending_request(legacy: &Client, table: &str) -> Result<Option<String>, JobError> {
    let row = legacy
        .query_opt(
            "SELECT request FROM pgdual.backfills WHERE tbl = $1",
            &[&table],
        )
        .await
        .map_err(JobError::Legacy)?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Keeps a verification report as the table's last.
pub async fn save_report(
    legacy: &Client,
    table: &str,
    report: &serde_json::Value,
) -> Result<(), JobError> {
    let text = report.to_string();
    legacy
        .execute(
            "INSERT INTO pgdual.verifications (tbl, report) VALUES ($1, $2::text::jsonb) \
             ON CONFLICT (tbl) DO UPDATE SET at = now(), report = EXCLUDED.report",
            &[&table, &text],
        )
        .await
        .map_err(JobError::Legacy)
        .map(drop)
}

/// The last verification report of `table`.
pub async fn last_report(
    legacy: &Client,
    table: &str,
) -> Result<Option<serde_json::Value>, JobError> {
    let row = legacy
        .query_opt(
            "SELECT report::text FROM pgdual.verifications WHERE tbl = $1",
            &[&table],
        )
        .await
        .map_err(JobError::Legacy)?;
    Ok(row.and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok()))
}

/// Holds the right to run `what` of `table` for as long as `legacy`'s session lasts (or
/// until released); false when another session holds it.
pub async fn try_claim(legacy: &Client, what: &str, table: &str) -> Result<bool, JobError> {
    let row = legacy
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock(hashtextextended($1 || ' ' || $2, 0))",
            &[&what, &table],
        )
        .await
        .map_err(JobError::Legacy)?;
    Ok(row.get(0))
}

/// Gives up the right [`try_claim`] took, at once (a closed session gives it up only when
/// the server notices).
pub async fn release(legacy: &Client, what: &str, table: &str) -> Result<(), JobError> {
    legacy
        .execute(
            "SELECT pg_catalog.pg_advisory_unlock(hashtextextended($1 || ' ' || $2, 0))",
            &[&what, &table],
        )
        .await
        .map_err(JobError::Legacy)
        .map(drop)
}

/// Legacy's clock now, as text.
pub async fn legacy_now(legacy: &Client) -> Result<String, JobError> {
    Ok(legacy
        .query_one("SELECT pg_catalog.clock_timestamp()::text", &[])
        .await
        .map_err(JobError::Legacy)?
        .get(0))
}

/// Forgets that `table`'s capture had a gap (a lost slot) before `before`: a verify that
/// began after it found new at parity.
pub async fn close_capture_gap(legacy: &Client, table: &str, before: &str) -> Result<(), JobError> {
    let closed = legacy
        .execute(
            "DELETE FROM pgdual.capture_gaps WHERE tbl = $1 AND since < $2::text::timestamptz",
            &[&table, &before],
        )
        .await;
    match closed {
        Ok(n) if n > 0 => {
            tracing::info!(table, "verify found parity: the capture gap is closed");
            Ok(())
        }
        Ok(_) => Ok(()),
        // No logical capture ever ran here (no such table), or it is not ours to change.
        Err(e) if matches!(e.code().map(|c| c.code()), Some("42P01" | "42501")) => Ok(()),
        Err(e) => Err(JobError::Legacy(e)),
    }
}
