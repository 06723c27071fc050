//! Per-client session state: transaction status, prepared statements, portals, and the queue
//! of responses legacy still owes.
//!
//! This is a state machine driven by the frames the relay sees; it never does I/O and never
//! fails. Transaction status comes from legacy's ReadyForQuery, never from guessing at SQL.
//! A response that does not match the queue is logged and skipped, never a panic: the
//! client's bytes are relayed whatever this bookkeeping believes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use pgdual_rules::Analysis;

use crate::codec::frontend;

/// Transaction status from the last ReadyForQuery (protocol 55.7, `ReadyForQuery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InBlock,
    /// `E`: in a failed transaction block; statements are rejected until it ends.
    Failed,
}

/// A statement created by Parse.
#[derive(Debug)]
pub struct Prepared {
    pub sql: Arc<str>,
    /// Parameter types declared in Parse (0 = left to the server).
    pub param_types: Vec<u32>,
    /// Filled on first Execute, after the bytes went to legacy.
    pub analysis: OnceLock<Arc<Analysis>>,
    /// Legacy answered its Parse with ParseComplete: the statement exists there.
    pub confirmed: std::sync::atomic::AtomicBool,
}

/// A portal created by Bind: its statement and the raw Bind body (parameter format codes,
/// values and result format codes, exactly as the client sent them).
#[derive(Debug)]
pub struct Portal {
    pub statement: Arc<Prepared>,
    pub bind: Bytes,
}

/// A response legacy still owes, in the order the requests were sent.
#[derive(Debug)]
pub enum Expected {
    /// Startup and authentication, until the first ReadyForQuery.
    Startup,
    /// A simple Query: any number of results, then ReadyForQuery.
    SimpleQuery,
    /// A FunctionCall: FunctionCallResponse, then ReadyForQuery.
    FunctionCall,
    Parse,
    Bind,
    Describe,
    Close,
    Execute,
    Sync,
}

/// Work to finish after a chunk was forwarded to legacy (statement analysis).
#[derive(Debug)]
pub enum AfterWrite {
    /// A simple Query's text at this byte range of the chunk.
    Query { start: usize, end: usize },
    /// An Execute of this statement.
    Execute(Arc<Prepared>),
}

#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub tx: TxStatus,
    prepared: HashMap<Box<[u8]>, Arc<Prepared>>,
    portals: HashMap<Box<[u8]>, Portal>,
    expected: VecDeque<Expected>,
    /// Responses that did not match the queue (a protocol sequence we do not model).
    pub desyncs: u64,
    /// A write was sent since the session was last idle: when it is idle again, the mirror
    /// is told to look at the backlog.
    pub wrote: bool,
    /// When the session last finished a write (the reads clock), for read-your-writes.
    pub last_write_done: Option<u64>,
    /// The session ran SET, RESET or the like: its settings may differ from new's.
    pub own_settings: bool,
    /// Extended-protocol messages went to legacy since the last Sync: legacy is inside a
    /// batch (an implicit transaction, perhaps an error to skip past) until one arrives.
    pub unsynced: bool,
    /// The session's database and startup options are those the rules describe.
    pub reads_routable: bool,
    /// Statements parsed and not yet confirmed or refused, in order, each with the number
    /// of requests ending in ReadyForQuery (Sync, Query, FunctionCall) sent before it.
    parsing: VecDeque<(u64, Arc<Prepared>)>,
    /// Requests ending in ReadyForQuery sent to legacy, and ReadyForQuery received.
    readies_sent: u64,
    readies_seen: u64,
    /// Printing settings legacy reported (ParameterStatus), mirrored on new for routed reads.
    pub settings: crate::reads::Settings,
    /// A shadowed read whose answer from legacy is being captured.
    pub shadow: Option<Box<crate::reads::ShadowJob>>,
}

impl Session {
    pub fn new(id: u64) -> Self {
        Session {
            id,
            tx: TxStatus::Idle,
            prepared: HashMap::new(),
            portals: HashMap::new(),
            expected: VecDeque::from([Expected::Startup]),
            desyncs: 0,
            wrote: false,
            last_write_done: None,
            own_settings: false,
            unsynced: false,
            reads_routable: false,
            parsing: VecDeque::new(),
            // The startup phase ends in the first ReadyForQuery.
            readies_sent: 1,
            readies_seen: 0,
            settings: Vec::new(),
            shadow: None,
        }
    }

    /// True while legacy owes responses: a request is in flight.
    pub fn busy(&self) -> bool {
        !self.expected.is_empty()
    }

    pub fn prepared(&self, name: &[u8]) -> Option<&Arc<Prepared>> {
        self.prepared.get(name)
    }

    /// The session's client_encoding (as legacy reported it) is UTF8.
    pub fn utf8(&self) -> bool {
        self.settings
            .iter()
            .any(|(n, v)| n == "client_encoding" && v.eq_ignore_ascii_case("UTF8"))
    }

    /// A named statement legacy has confirmed, as a routed Bind may use: the unnamed one is
    /// replaced by any simple Query, so it is never trusted.
    pub fn confirmed(&self, name: &[u8]) -> Option<&Arc<Prepared>> {
        use std::sync::atomic::Ordering::Relaxed;
        (!name.is_empty())
            .then(|| self.prepared.get(name))
            .flatten()
            .filter(|p| p.confirmed.load(Relaxed))
    }

    pub fn portal(&self, name: &[u8]) -> Option<&Portal> {
        self.portals.get(name)
    }

    /// A frame from the client, before it is forwarded: `chunk[at..at + len]` holds it,
    /// tag and length included.
    pub fn on_frontend(
        &mut self,
        tag: u8,
        chunk: &Bytes,
        at: usize,
        len: usize,
        after: &mut Vec<AfterWrite>,
    ) {
        let body = &chunk[at + 5..at + len];
        if matches!(tag, b'S' | b'Q' | b'F') {
            self.readies_sent += 1;
        }
        self.unsynced = match tag {
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => true,
            b'S' => false,
            _ => self.unsynced,
        };
        match tag {
            b'Q' => {
                self.expected.push_back(Expected::SimpleQuery);
                if let Some(sql) = frontend::query(body) {
                    if drops_statements(sql) {
                        self.prepared.clear();
                    }
                    let start = at + 5;
                    after.push(AfterWrite::Query {
                        start,
                        end: start + sql.len(),
                    });
                }
            }
            b'P' => {
                self.expected.push_back(Expected::Parse);
                if let Some((name, sql)) = frontend::parse(body) {
                    if drops_statements(sql) {
                        self.prepared.clear();
                    }
                    // Drivers re-parse the same text into the unnamed statement again and
                    // again: keep the statement (and its analysis) when the text is unchanged.
                    let same = self
                        .prepared
                        .get(name)
                        .filter(|p| p.sql.as_bytes() == sql)
                        .cloned();
                    let stmt = same.unwrap_or_else(|| {
                        let stmt = Arc::new(Prepared {
                            sql: String::from_utf8_lossy(sql).into(),
                            param_types: crate::reads::parse_declared_types(body),
                            analysis: OnceLock::new(),
                            confirmed: Default::default(),
                        });
                        self.prepared.insert(name.into(), stmt.clone());
                        stmt
                    });
                    self.parsing.push_back((self.readies_sent, stmt));
                }
            }
            b'B' => {
                self.expected.push_back(Expected::Bind);
                if let Some((portal, stmt)) = frontend::bind(body) {
                    if let Some(statement) = self.prepared.get(stmt).cloned() {
                        let bind = chunk.slice(at + 5..at + len);
                        self.portals
                            .insert(portal.into(), Portal { statement, bind });
                    }
                }
            }
            b'E' => {
                let stmt = frontend::execute(body).and_then(|p| self.portals.get(p));
                if let Some(portal) = stmt {
                    after.push(AfterWrite::Execute(portal.statement.clone()));
                }
                self.expected.push_back(Expected::Execute);
            }
            b'D' => self.expected.push_back(Expected::Describe),
            b'C' => {
                self.expected.push_back(Expected::Close);
                match frontend::target(body) {
                    Some((b'S', name)) => {
                        self.prepared.remove(name);
                    }
                    Some((b'P', name)) => {
                        self.portals.remove(name);
                    }
                    _ => {}
                }
            }
            b'S' => self.expected.push_back(Expected::Sync),
            b'F' => self.expected.push_back(Expected::FunctionCall),
            _ => {}
        }
    }

    /// A frame from legacy, before it is forwarded to the client.
    pub fn on_backend(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => {
                // Parses of the request this answers that were not confirmed by now were
                // refused (or skipped after an error).
                let done = self.readies_seen;
                self.readies_seen += 1;
                while self
                    .parsing
                    .front()
                    .is_some_and(|(batch, _)| *batch <= done)
                {
                    self.parsing.pop_front();
                }
                self.tx = match body.first() {
                    Some(b'T') => TxStatus::InBlock,
                    Some(b'E') => TxStatus::Failed,
                    _ => TxStatus::Idle,
                };
                if self.tx == TxStatus::Idle {
                    // Portals live until the end of the transaction (protocol 55.2.3).
                    self.portals.clear();
                }
                self.pop(|e| {
                    matches!(
                        e,
                        Expected::Sync
                            | Expected::SimpleQuery
                            | Expected::FunctionCall
                            | Expected::Startup
                    )
                });
            }
            b'1' => {
                if let Some((_, p)) = self.parsing.pop_front() {
                    p.confirmed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                self.pop(|e| matches!(e, Expected::Parse))
            }
            b'2' => self.pop(|e| matches!(e, Expected::Bind)),
            b'3' => self.pop(|e| matches!(e, Expected::Close)),
            b'T' | b'n' if matches!(self.expected.front(), Some(Expected::Describe)) => {
                self.expected.pop_front();
            }
            b'C' | b's' | b'I' if matches!(self.expected.front(), Some(Expected::Execute)) => {
                self.expected.pop_front();
            }
            b'E' => self.on_error(),
            b'S' => self.on_parameter_status(body),
            _ => {}
        }
    }

    fn on_parameter_status(&mut self, body: &[u8]) {
        let mut parts = body.split(|&c| c == 0);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            return;
        };
        let Some(name) = crate::reads::TRACKED_SETTINGS
            .iter()
            .find(|n| n.as_bytes() == name)
        else {
            return;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match self.settings.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.settings.push((name.to_string(), value)),
        }
    }

    /// After an error in the extended protocol, legacy skips everything up to the next Sync
    /// (protocol 55.2.3); a simple query or startup ends at its ReadyForQuery anyway.
    fn on_error(&mut self) {
        if let Some(Expected::SimpleQuery | Expected::FunctionCall | Expected::Startup) =
            self.expected.front()
        {
            return;
        }
        while let Some(front) = self.expected.front() {
            if matches!(front, Expected::Sync) {
                break;
            }
            self.expected.pop_front();
        }
    }

    fn pop(&mut self, fits: impl Fn(&Expected) -> bool) {
        match self.expected.front() {
            Some(e) if fits(e) => {
                self.expected.pop_front();
            }
            other => {
                self.desyncs += 1;
                tracing::debug!(session_id = self.id, expected = ?other, "response does not match the request queue");
            }
        }
    }
}

/// `DEALLOCATE` and `DISCARD` drop prepared statements that the session cannot name: after
/// one, no statement is trusted to exist on legacy.
fn drops_statements(sql: &[u8]) -> bool {
    let start = sql
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(0);
    let head = &sql[start..sql.len().min(start + 10)];
    head.len() >= 7
        && (head[..7].eq_ignore_ascii_case(b"DISCARD")
            || head.len() >= 10 && head.eq_ignore_ascii_case(b"DEALLOCATE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn feed_front(s: &mut Session, msgs: &[(u8, &[u8])]) -> Vec<AfterWrite> {
        let mut after = Vec::new();
        for (tag, body) in msgs {
            let mut b = BytesMut::new();
            crate::codec::put_message(&mut b, *tag, |o| o.put_slice(body));
            let frame = b.freeze();
            s.on_frontend(*tag, &frame, 0, frame.len(), &mut after);
        }
        after
    }

    fn started() -> Session {
        let mut s = Session::new(1);
        s.on_backend(b'Z', b"I");
        assert!(!s.busy());
        s
    }

    #[test]
    fn extended_pipeline_is_matched_response_by_response() {
        let mut s = started();
        let after = feed_front(
            &mut s,
            &[
                (b'P', b"s1\0SELECT $1\0\0\0"),
                (b'B', b"p1\0s1\0\0\0\0\0\0\0"),
                (b'D', b"Pp1\0"),
                (b'E', b"p1\0\0\0\0\0"),
                (b'S', b""),
            ],
        );
        assert!(matches!(&after[..], [AfterWrite::Execute(p)] if &*p.sql == "SELECT $1"));
        assert_eq!(s.portal(b"p1").unwrap().statement.sql.as_ref(), "SELECT $1");
        for tag in [b'1', b'2', b'T', b'D', b'C'] {
            s.on_backend(tag, b"");
        }
        assert!(s.busy());
        s.on_backend(b'Z', b"I");
        assert!(!s.busy());
        assert_eq!(s.desyncs, 0);
        assert!(
            s.portal(b"p1").is_none(),
            "portals end with the transaction"
        );
        assert!(s.prepared(b"s1").is_some(), "statements outlive it");
    }

    #[test]
    fn routed_binds_trust_only_statements_legacy_confirmed_between_batches() {
        let mut s = started();
        feed_front(
            &mut s,
            &[
                (b'P', b"s1\0SELECT 1\0\0\0"),
                (b'P', b"s2\0SELECT nope\0\0\0"),
                (b'P', b"\0SELECT 3\0\0\0"),
            ],
        );
        assert!(s.unsynced, "inside a batch until Sync");
        feed_front(&mut s, &[(b'S', b"")]);
        assert!(!s.unsynced);
        assert!(s.confirmed(b"s1").is_none(), "not before ParseComplete");
        s.on_backend(b'1', b"");
        s.on_backend(b'E', b"");
        s.on_backend(b'Z', b"I");
        assert!(s.confirmed(b"s1").is_some());
        assert!(s.confirmed(b"s2").is_none(), "refused by legacy");
        assert!(
            s.confirmed(b"").is_none(),
            "the unnamed statement is never trusted"
        );
        // A Flush leaves legacy inside the batch: nothing may answer in its place.
        feed_front(&mut s, &[(b'B', b"\0s1\0\0\0\0\0\0\0"), (b'H', b"")]);
        assert!(s.unsynced);
        feed_front(&mut s, &[(b'S', b"")]);
        s.on_backend(b'2', b"");
        s.on_backend(b'Z', b"I");
        // A Parse pipelined behind an earlier request: that request's ReadyForQuery does
        // not settle it.
        feed_front(
            &mut s,
            &[
                (b'C', b"Ss1\0"),
                (b'S', b""),
                (b'P', b"s3\0SELECT 3\0\0\0"),
                (b'S', b""),
            ],
        );
        s.on_backend(b'3', b"");
        s.on_backend(b'Z', b"I");
        s.on_backend(b'1', b"");
        s.on_backend(b'Z', b"I");
        assert!(s.confirmed(b"s3").is_some());
        assert!(s.confirmed(b"s1").is_none(), "closed");
        feed_front(&mut s, &[(b'Q', b"  discard ALL\0")]);
        assert!(
            s.confirmed(b"s3").is_none(),
            "DISCARD drops every statement"
        );
    }

    #[test]
    fn error_mid_pipeline_skips_to_sync() {
        let mut s = started();
        feed_front(
            &mut s,
            &[
                (b'P', b"\0SELECT 1/0\0\0\0"),
                (b'B', b"\0\0\0\0\0\0\0\0"),
                (b'E', b"\0\0\0\0\0"),
                (b'P', b"\0SELECT 2\0\0\0"),
                (b'S', b""),
            ],
        );
        s.on_backend(b'1', b"");
        s.on_backend(b'2', b"");
        s.on_backend(b'E', b"");
        s.on_backend(b'Z', b"I");
        assert!(!s.busy());
        assert_eq!(s.desyncs, 0);
    }

    #[test]
    fn transaction_status_follows_ready_for_query() {
        let mut s = started();
        let after = feed_front(&mut s, &[(b'Q', b"BEGIN\0")]);
        assert!(matches!(
            after[..],
            [AfterWrite::Query { start: 5, end: 10 }]
        ));
        s.on_backend(b'C', b"BEGIN\0");
        s.on_backend(b'Z', b"T");
        assert_eq!(s.tx, TxStatus::InBlock);
        feed_front(&mut s, &[(b'Q', b"SELECT 1/0\0")]);
        s.on_backend(b'E', b"");
        assert!(
            s.busy(),
            "a simple query ends at ReadyForQuery, not at its error"
        );
        s.on_backend(b'Z', b"E");
        assert_eq!(s.tx, TxStatus::Failed);
        assert!(!s.busy());
    }

    #[test]
    fn close_forgets_statements_and_unmatched_responses_do_not_panic() {
        let mut s = started();
        feed_front(&mut s, &[(b'P', b"s\0SELECT 1\0\0\0"), (b'C', b"Ss\0")]);
        assert!(s.prepared(b"s").is_none());
        for tag in [b'1', b'3', b'2', b'Z', b'Z'] {
            s.on_backend(tag, b"");
        }
        assert!(s.desyncs >= 2);
    }
}
