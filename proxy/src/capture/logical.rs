//! Capture by logical decoding: legacy decodes its own WAL through a replication slot with
//! the `pgoutput` plugin and streams every committed change of the published (mapped)
//! tables, whole transactions in commit order. Legacy pays for decoding WAL it writes anyway;
//! nothing runs inside the clients' statements.
//!
//! Keys come from the decoded messages; row images are then read by key from legacy, as the
//! trigger source does, so the applier, the copy lock and the dead-letter path are shared.
//! Reading the image instead of taking the decoded tuple keeps two properties: unchanged
//! TOASTed values (which `pgoutput` does not send) need no special case, and applying an
//! older change again only copies the row's present state, so overlaps (a restart, a switch
//! between methods) change nothing. A transaction can be decoded a moment before legacy's
//! snapshots see it (its commit record is flushed before it leaves the process array), so a
//! batch is read only once legacy sees every transaction in it.
//!
//! The slot's confirmed position moves only past transactions whose effects new has
//! committed: a crash or restart of pgdual streams them again from there.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pgdual_rules::ruleset::WriteMode;
use pgdual_rules::{RuleSet, TableName};
use tokio_postgres::Client;
use tracing::{error, warn};

use super::{Change, ChangeSource};
use crate::net::conn::{BackendConn, BackendError};
use crate::proto::pgoutput::{self, Message, Relation, StreamMessage, Tuple, Value};

/// How often the confirmed position is reported at most while batches keep coming.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// How often the position is reported when nothing moves, so the server knows we live.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);
/// How long a batch waits for legacy's snapshots to see its transactions.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// The settings a replication session runs under: text forms of values as the copy reads
/// them (see `mirror::copy::SESSION_SETTINGS`), UTF-8 whatever legacy's encoding.
pub const STREAM_SETTINGS: [(&str, &str); 7] = [
    ("replication", "database"),
    ("application_name", APPLICATION_NAME),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// The replication session's `application_name`, as `pg_stat_replication` shows it.
pub const APPLICATION_NAME: &str = "pgdual-capture";

/// How many of the transactions in `$1` (32-bit ids, as the stream names them) legacy's
/// snapshot does not see yet.
const UNSEEN: &str = "SELECT count(*)::int8 FROM pg_catalog.unnest($1::int8[]) AS x(xid), \
    LATERAL (SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()) AS m) AS s \
    WHERE NOT pg_catalog.txid_visible_in_snapshot( \
        s.m - (((s.m % 4294967296) - x.xid + 4294967296) % 4294967296), \
        pg_catalog.txid_current_snapshot())";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("legacy: {0}")]
    Legacy(#[from] tokio_postgres::Error),
    #[error("replication stream: {0}")]
    Stream(#[from] BackendError),
    #[error("replication stream: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    /// A mapped table's definition changed while capturing.
    #[error("{0}")]
    Ddl(String),
    #[error("{0}")]
    Key(String),
}

/// A mapped table as the stream describes it.
struct Mapped {
    /// The rules' name of the table.
    table: TableName,
    /// Where the rule's key columns are in the stream's tuples.
    key_at: Vec<usize>,
    key_names: Vec<String>,
    key_types: Vec<u32>,
    /// Column names and types, to notice a definition change.
    shape: Vec<(String, u32, i32)>,
}

struct Txn {
    xid: u32,
    /// Where its commit record is.
    commit_lsn: u64,
    end_lsn: u64,
    /// Unix microseconds.
    commit_time: i64,
    changes: Vec<Change>,
}

/// The decoded stream of one slot, for the tables of one rules version.
pub struct LogicalSource {
    legacy: Client,
    stream: BackendConn,
    /// Key columns of each mapped legacy table, by (schema, name).
    keys: HashMap<(String, String), (TableName, Vec<String>)>,
    relations: HashMap<u32, Option<Mapped>>,
    /// See [`LogicalSource::start`].
    checked_at: u64,
    open: Option<Txn>,
    pending: VecDeque<Txn>,
    pending_changes: usize,
    /// End of the last transaction taken, and the commit times of its changes.
    taken: Option<(u64, Vec<i64>)>,
    /// Every transaction ending at or before this has been received.
    received: u64,
    /// Every transaction ending at or before this is applied.
    confirmed: u64,
    reported: u64,
    last_report: Instant,
    reply_due: bool,
}

impl LogicalSource {
    /// Starts streaming `slot` with `publication` over `stream` (a replication session);
    /// `legacy` reads the row images.
    /// `checked_at`: legacy's WAL position taken just before the rules were last checked
    /// against its catalog (definition changes committed before it are in that check).
    pub async fn start(
        legacy: Client,
        mut stream: BackendConn,
        rules: &RuleSet,
        (slot, publication): (&str, &str),
        checked_at: u64,
    ) -> Result<LogicalSource, CaptureError> {
        stream
            .start_copy_both(&format!(
                "START_REPLICATION SLOT {slot} LOGICAL 0/0 \
                 (proto_version '1', publication_names '{publication}')"
            ))
            .await?;
        let keys = rules
            .tables()
            .iter()
            .filter(|r| r.write == WriteMode::On)
            .map(|r| {
                (
                    (r.legacy.schema.clone(), r.legacy.name.clone()),
                    (r.legacy.clone(), r.legacy_keys.clone()),
                )
            })
            .collect();
        Ok(LogicalSource {
            legacy,
            stream,
            keys,
            checked_at,
            relations: HashMap::new(),
            open: None,
            pending: VecDeque::new(),
            pending_changes: 0,
            taken: None,
            received: 0,
            confirmed: 0,
            reported: 0,
            last_report: Instant::now(),
            reply_due: false,
        })
    }

    /// Reads and handles what the server sent already, without waiting, until about
    /// `enough` changes are pending.
    async fn take_available(&mut self, enough: usize) -> Result<(), CaptureError> {
        while self.pending_changes < enough {
            match tokio::time::timeout(Duration::ZERO, self.stream.next_frame()).await {
                Err(_) => break,
                Ok(frame) => self.handle(frame?)?,
            }
        }
        Ok(())
    }

    fn handle(&mut self, f: crate::proto::codec::Frame) -> Result<(), CaptureError> {
        match f.tag {
            b'd' => {}
            b'E' => {
                let (code, message) = crate::proto::backend::error_fields(&f.body);
                return Err(BackendError::Protocol(format!("{message} (SQLSTATE {code})")).into());
            }
            b'c' => return Err(BackendError::Protocol("the server ended the stream".into()).into()),
            // Notices and parameter changes.
            _ => return Ok(()),
        }
        match StreamMessage::decode(&f.body)? {
            StreamMessage::Keepalive { wal_end, reply } => {
                if self.open.is_none() {
                    self.received = self.received.max(wal_end);
                }
                self.reply_due |= reply;
                Ok(())
            }
            StreamMessage::XLogData { data, .. } => self.message(&data),
        }
    }

    fn message(&mut self, data: &Bytes) -> Result<(), CaptureError> {
        match Message::decode(data)? {
            Message::Begin {
                xid,
                commit_time,
                final_lsn,
            } => {
                self.open = Some(Txn {
                    xid,
                    commit_lsn: final_lsn,
                    end_lsn: 0,
                    commit_time: pgoutput::unix_micros(commit_time),
                    changes: Vec::new(),
                });
            }
            Message::Commit { end_lsn, .. } => {
                let mut t = self
                    .open
                    .take()
                    .ok_or_else(|| pgoutput::DecodeError("Commit without Begin".into()))?;
                t.end_lsn = end_lsn;
                self.received = self.received.max(end_lsn);
                if !t.changes.is_empty() {
                    self.pending_changes += t.changes.len();
                    self.pending.push_back(t);
                }
            }
            Message::Relation(r) => self.relation(r)?,
            Message::Insert { relation, new } => self.change(relation, None, &new)?,
            Message::Update { relation, old, new } => self.change(relation, old.as_ref(), &new)?,
            Message::Delete { relation, old } => self.change(relation, Some(&old), &old)?,
            Message::Truncate { relations } => {
                for id in relations {
                    if let Some(Some(m)) = self.relations.get(&id) {
                        let table = m.table.clone();
                        self.push(Change { table, keys: None })?;
                    }
                }
            }
            Message::Other(_) => {}
        }
        Ok(())
    }

    fn relation(&mut self, r: Relation) -> Result<(), CaptureError> {
        let Some((table, keys)) = self.keys.get(&(r.schema.clone(), r.name.clone())) else {
            self.relations.insert(r.id, None);
            return Ok(());
        };
        let shape: Vec<(String, u32, i32)> = r
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.type_oid, c.type_modifier))
            .collect();
        // A change committed before the rules were last checked is in that check: a restart
        // streams transactions from before it again, whose descriptions may differ from
        // each other, and they are not news. (Stopping for them would stop at the same place
        // after every check, for ever.)
        let checked = self
            .open
            .as_ref()
            .is_some_and(|t| t.commit_lsn < self.checked_at);
        if let Some(Some(before)) = self.relations.get(&r.id).filter(|_| !checked) {
            if before.shape != shape {
                // The changes before it are applied under the old plans; stop here, so the
                // rules are checked against the catalogs again before anything after it.
                error!(table = %table, "the definition of a mapped legacy table changed while capturing");
                return Err(CaptureError::Ddl(format!(
                    "the definition of {table} changed in legacy (ALTER TABLE while capturing); \
                     the rules are checked against it again before mirroring goes on"
                )));
            }
        }
        let mut key_at = Vec::with_capacity(keys.len());
        let mut key_types = Vec::with_capacity(keys.len());
        for k in keys {
            let at = r.columns.iter().position(|c| &c.name == k).ok_or_else(|| {
                CaptureError::Ddl(format!("{table} has no key column {k:?} any more"))
            })?;
            key_at.push(at);
            key_types.push(r.columns[at].type_oid);
        }
        self.relations.insert(
            r.id,
            Some(Mapped {
                table: table.clone(),
                key_at,
                key_names: keys.clone(),
                key_types,
                shape,
            }),
        );
        Ok(())
    }

    /// A changed row: its old key (when the change moved or removed it) and its new one.
    fn change(
        &mut self,
        relation: u32,
        old: Option<&Tuple>,
        new: &Tuple,
    ) -> Result<(), CaptureError> {
        let Some(Some(m)) = self.relations.get(&relation) else {
            if !self.relations.contains_key(&relation) {
                return Err(pgoutput::DecodeError(format!(
                    "a change of relation {relation} before its description"
                ))
                .into());
            }
            return Ok(());
        };
        let table = m.table.clone();
        let new_key = key_json(m, new, old)?;
        let old_key = match old {
            Some(o) if !std::ptr::eq(o, new) => Some(key_json(m, o, None)?),
            _ => None,
        };
        if let Some(k) = old_key.filter(|k| *k != new_key) {
            self.push(Change {
                table: table.clone(),
                keys: Some(k),
            })?;
        }
        self.push(Change {
            table,
            keys: Some(new_key),
        })
    }

    fn push(&mut self, c: Change) -> Result<(), CaptureError> {
        match &mut self.open {
            Some(t) => {
                t.changes.push(c);
                Ok(())
            }
            None => Err(pgoutput::DecodeError("a change outside a transaction".into()).into()),
        }
    }

    /// Reports the confirmed position when it moved (at most every [`REPORT_EVERY`]), when
    /// the server asked, or every [`KEEPALIVE_EVERY`].
    async fn report(&mut self, force: bool) -> Result<(), CaptureError> {
        let since = self.last_report.elapsed();
        let moved = self.confirmed > self.reported && since >= REPORT_EVERY;
        if !(force || moved || self.reply_due || since >= KEEPALIVE_EVERY) {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let frame = pgoutput::status_update(self.confirmed, now, false);
        self.stream.send_frames(&frame).await?;
        self.reported = self.confirmed;
        self.last_report = Instant::now();
        self.reply_due = false;
        Ok(())
    }

    /// Nothing is pending, open or taken: everything received is applied.
    fn idle_confirm(&mut self) {
        if self.open.is_none() && self.pending.is_empty() && self.taken.is_none() {
            self.confirmed = self.confirmed.max(self.received);
        }
    }

    /// Waits until legacy's snapshots see every transaction in `xids`.
    async fn until_visible(&self, xids: &[i64]) -> Result<(), CaptureError> {
        let deadline = Instant::now() + VISIBLE_WITHIN;
        loop {
            let unseen: i64 = self.legacy.query_one(UNSEEN, &[&xids]).await?.get(0);
            if unseen == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CaptureError::Key(format!(
                    "{unseen} decoded transactions stayed invisible to legacy's snapshots for {} s",
                    VISIBLE_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Where the slot stands: the position confirmed so far.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }
}

/// Type oids whose text form is the JSON literal legacy's `jsonb` would print for the value
/// (so keys read the same as the triggers' in the dead-letter file): `int2`, `int4`, `int8`.
const JSON_NUMBERS: [u32; 3] = [21, 23, 20];
const BOOL: u32 = 16;

/// The key of a row as the JSON object text the copy reads (`{"id": 5, "code": "x"}`):
/// integers and booleans as JSON literals, every other value as its text form in a JSON
/// string. A key column left out of `tuple` (an unchanged TOASTed value) is taken from `old`
/// when it was sent.
fn key_json(m: &Mapped, tuple: &Tuple, old: Option<&Tuple>) -> Result<String, CaptureError> {
    let mut out = String::from("{");
    for (i, ((at, name), ty)) in m
        .key_at
        .iter()
        .zip(&m.key_names)
        .zip(&m.key_types)
        .enumerate()
    {
        let mut v = tuple.get(*at);
        if matches!(v, Some(Value::Unchanged)) {
            v = old.and_then(|o| o.get(*at));
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&serde_json::Value::String(name.clone()).to_string());
        out.push_str(": ");
        match v {
            Some(Value::Null) => out.push_str("null"),
            Some(Value::Text(b)) => {
                let s = std::str::from_utf8(b).map_err(|_| {
                    CaptureError::Key(format!("{}: key column {name} is not UTF-8", m.table))
                })?;
                let integer = !s.is_empty()
                    && s.bytes()
                        .enumerate()
                        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'));
                match *ty {
                    t if JSON_NUMBERS.contains(&t) && integer && s != "-" => out.push_str(s),
                    BOOL if s == "t" || s == "f" => {
                        out.push_str(if s == "t" { "true" } else { "false" })
                    }
                    _ => out.push_str(&serde_json::Value::String(s.to_string()).to_string()),
                }
            }
            _ => {
                return Err(CaptureError::Key(format!(
                    "{}: the stream did not send key column {name} as text (an unchanged \
                     TOASTed key, or binary mode); capture this table with triggers",
                    m.table
                )))
            }
        }
    }
    out.push('}');
    Ok(out)
}

impl ChangeSource for LogicalSource {
    type Error = CaptureError;

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Change>, Self::Error> {
        self.take_available(max.max(1)).await?;
        if self.pending.is_empty() {
            self.idle_confirm();
            self.report(false).await?;
            return Ok(Vec::new());
        }
        let mut changes = Vec::new();
        let mut times = Vec::new();
        let mut xids = Vec::new();
        let mut end = 0;
        while let Some(t) = self.pending.front() {
            if !changes.is_empty() && changes.len() + t.changes.len() > max {
                break;
            }
            let t = self.pending.pop_front().expect("front exists");
            self.pending_changes -= t.changes.len();
            xids.push(t.xid as i64);
            end = t.end_lsn;
            times.extend(std::iter::repeat_n(t.commit_time, t.changes.len()));
            changes.extend(t.changes);
        }
        self.legacy.batch_execute("BEGIN").await?;
        self.until_visible(&xids).await?;
        self.taken = Some((end, times));
        Ok(changes)
    }

    fn legacy(&self) -> &Client {
        &self.legacy
    }

    async fn acknowledge(&mut self) -> Result<Vec<Duration>, Self::Error> {
        self.legacy.batch_execute("COMMIT").await?;
        let Some((end, times)) = self.taken.take() else {
            return Ok(Vec::new());
        };
        self.confirmed = self.confirmed.max(end);
        self.idle_confirm();
        self.report(false).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        Ok(times
            .into_iter()
            .map(|t| Duration::from_micros(now.saturating_sub(t).max(0) as u64))
            .collect())
    }

    async fn backlog(&self) -> Result<i64, Self::Error> {
        Ok(self.pending_changes as i64 + self.open.as_ref().map_or(0, |t| t.changes.len()) as i64)
    }

    /// Legacy's WAL insert position: every commit that has returned lies before it.
    async fn mark(&mut self) -> Result<u64, Self::Error> {
        wal_insert_lsn(&self.legacy).await
    }

    fn applied(&self) -> u64 {
        self.confirmed
    }

    async fn wait(&mut self) -> Result<(), Self::Error> {
        let before = self.received;
        loop {
            if !self.pending.is_empty() || (self.open.is_none() && self.received > before) {
                return Ok(());
            }
            self.report(false).await?;
            let due = if self.confirmed > self.reported {
                REPORT_EVERY.saturating_sub(self.last_report.elapsed())
            } else {
                KEEPALIVE_EVERY.saturating_sub(self.last_report.elapsed())
            };
            tokio::select! {
                f = self.stream.next_frame() => self.handle(f?)?,
                _ = tokio::time::sleep(due) => {}
            }
            if self.reply_due {
                self.report(true).await?;
            }
        }
    }
}

impl std::fmt::Debug for LogicalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalSource")
            .field("received", &pgoutput::lsn_text(self.received))
            .field("confirmed", &pgoutput::lsn_text(self.confirmed))
            .field("pending", &self.pending_changes)
            .finish()
    }
}

/// Legacy's WAL insert position: every commit that has returned lies before it.
pub async fn wal_insert_lsn(legacy: &Client) -> Result<u64, CaptureError> {
    let lsn: String = legacy
        .query_one("SELECT pg_catalog.pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    pgoutput::parse_lsn(&lsn)
        .ok_or_else(|| CaptureError::Key(format!("legacy printed the LSN {lsn:?}")))
}

/// Warns once each time the slot's retained WAL crosses `limit` bytes.
pub fn warn_retained(retained: i64, limit: u64, warned: &mut bool) {
    if retained > limit as i64 && !*warned {
        warn!(
            retained_bytes = retained,
            limit_bytes = limit,
            "the capture slot retains more WAL than mirror.slot_warn_bytes: is the mirror \
             stuck, or new unreachable? `pgdual capture drop` releases it"
        );
    }
    *warned = retained > limit as i64;
}
