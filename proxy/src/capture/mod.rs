//! Where committed writes on mapped tables come from, behind one seam: a [`ChangeSource`]
//! hands the mirror batches of committed changes (table and key, in commit order) and is told
//! when a batch has been applied. Two sources: the capture triggers' backlog in legacy
//! ([`triggers`]) and legacy's logical decoding of its WAL through a replication slot
//! ([`logical`]); [`method`] chooses between them. Sessions ring a [`CommitSignal`] when a
//! transaction that wrote has ended, so the mirror looks at once instead of at its next poll.

pub mod logical;
pub mod method;
pub mod triggers;

use std::sync::Arc;

use pgdual_rules::TableName;
use tokio::sync::Notify;

/// Rung by sessions after a transaction that wrote; awaited by the mirror.
#[derive(Debug, Clone, Default)]
pub struct CommitSignal(Arc<Notify>);

impl CommitSignal {
    pub fn ring(&self) {
        self.0.notify_one();
    }

    pub async fn rung(&self) {
        self.0.notified().await
    }
}

/// What the mirror last found of its capture, for `/status`: the method in use and why, the
/// slot as legacy reported it, and the tables whose capture had a gap (a lost slot) and need
/// a backfill and a verify, with why.
#[derive(Debug, Default)]
pub struct CaptureStatus {
    pub method: arc_swap::ArcSwapOption<method::Choice>,
    pub slot: arc_swap::ArcSwapOption<method::SlotState>,
    pub gaps: arc_swap::ArcSwap<Vec<(String, String)>>,
}

/// One committed change: a table's row, by key, or the whole table (TRUNCATE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The legacy table.
    pub table: TableName,
    /// The key columns and values as a JSON object text (legacy prints it, so no value passes
    /// through a lossy client-side type); `None` for a TRUNCATE.
    pub keys: Option<String>,
}

/// A source of committed changes, in commit order, handed out in batches of whole
/// transactions. A batch is taken by [`ChangeSource::next_batch`] and stays taken until
/// [`ChangeSource::acknowledge`] (its effects are on new: forget it); a source that errs or is
/// dropped before acknowledging hands the same changes out again, so nothing is lost and
/// applying twice (row images by key) changes nothing.
#[allow(async_fn_in_trait)] // used with static dispatch only
pub trait ChangeSource {
    type Error: std::error::Error;

    /// The next batch, at most about `max` changes (whole transactions); empty when nothing
    /// is waiting.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Change>, Self::Error>;

    /// A legacy session that sees at least every change of the batch taken: row images are
    /// read (and legacy-schema targets written) here.
    fn legacy(&self) -> &tokio_postgres::Client;

    /// Forgets the batch taken; returns how long ago each of its changes committed.
    async fn acknowledge(&mut self) -> Result<Vec<std::time::Duration>, Self::Error>;

    /// Changes waiting, for the backlog gauge.
    async fn backlog(&self) -> Result<i64, Self::Error>;

    /// A position in the source's order at or after every change committed before now.
    async fn mark(&mut self) -> Result<u64, Self::Error>;

    /// Every change up to this position is applied (taken, applied and acknowledged). A
    /// source that holds every committed change as soon as it commits (the triggers'
    /// backlog) is caught up with every mark once a drain found nothing.
    fn applied(&self) -> u64;

    /// Returns when the source may have more to hand out than at the last look (or at once
    /// when it cannot tell); the mirror also looks on commit signals and every poll.
    async fn wait(&mut self) -> Result<(), Self::Error>;
}
