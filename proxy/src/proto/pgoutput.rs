//! The streaming replication protocol as a logical-decoding client sees it, and the messages
//! of the `pgoutput` plugin (protocol version 1) inside it: decoded from the server's bytes,
//! which are never trusted (a malformed message is a [`DecodeError`], never a panic, and no
//! allocation is larger than the message that asked for it), and the client's status updates
//! encoded.
//!
//! See PostgreSQL's "Streaming Replication Protocol" and "Logical Replication Message
//! Formats".

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::put_message;

/// PostgreSQL's epoch (2000-01-01) in Unix seconds: replication timestamps count from it.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed replication message: {0}")]
pub struct DecodeError(pub String);

fn short(what: &str) -> DecodeError {
    DecodeError(format!("{what} ends early"))
}

/// A bounds-checked reader over one message.
struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(short(self.what));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.u32()? as i32)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    /// A NUL-terminated string.
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| DecodeError(format!("{}: unterminated string", self.what)))?;
        let s = String::from_utf8_lossy(&self.b[..end]).into_owned();
        self.b = &self.b[end + 1..];
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
}

/// A message of the replication stream (the body of a CopyData from the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// WAL data: one `pgoutput` message, starting at `start`.
    XLogData {
        start: u64,
        wal_end: u64,
        data: Bytes,
    },
    /// The server's position; `reply` asks for a status update at once.
    Keepalive { wal_end: u64, reply: bool },
}

impl StreamMessage {
    pub fn decode(body: &Bytes) -> Result<StreamMessage, DecodeError> {
        let mut r = Reader {
            b: body,
            what: "replication message",
        };
        match r.u8()? {
            b'w' => {
                let start = r.u64()?;
                let wal_end = r.u64()?;
                let _sent_at = r.i64()?;
                let at = body.len() - r.b.len();
                Ok(StreamMessage::XLogData {
                    start,
                    wal_end,
                    data: body.slice(at..),
                })
            }
            b'k' => {
                let wal_end = r.u64()?;
                let _sent_at = r.i64()?;
                let reply = r.u8()? != 0;
                Ok(StreamMessage::Keepalive { wal_end, reply })
            }
            other => Err(DecodeError(format!(
                "unknown replication message {:?}",
                other as char
            ))),
        }
    }
}

/// A Standby Status Update as a complete CopyData frame: everything up to `lsn` is written,
/// flushed and applied; `reply` asks the server to answer at once.
pub fn status_update(lsn: u64, now_unix_micros: u64, reply: bool) -> BytesMut {
    let mut out = BytesMut::with_capacity(40);
    put_message(&mut out, b'd', |o| {
        o.put_u8(b'r');
        o.put_u64(lsn);
        o.put_u64(lsn);
        o.put_u64(lsn);
        o.put_u64(now_unix_micros.saturating_sub(PG_EPOCH_UNIX_SECS * 1_000_000));
        o.put_u8(reply as u8);
    });
    out
}

/// A replication timestamp (microseconds since 2000-01-01) as Unix microseconds.
pub fn unix_micros(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_UNIX_SECS as i64 * 1_000_000)
}

/// `X/Y`, the way PostgreSQL prints an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// An LSN printed as `X/Y`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some(((hi as u64) << 32) | lo as u64)
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the table's replica identity (the key sent with updates and deletes).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A table as the stream describes it, sent before its first change and after its
/// definition changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    /// `d` default (the primary key), `n` nothing, `f` full, `i` an index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the change left as it was (not sent).
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

pub type Tuple = Vec<Value>;

/// A `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: u64,
        /// Microseconds since 2000-01-01.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        /// Where the transaction's WAL ends: once new has its effects, confirm this.
        end_lsn: u64,
        commit_time: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        /// The old key (`K`) or the whole old row (`O`, replica identity full), when sent.
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: Tuple,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Origin, Type and logical messages: nothing the mirror needs.
    Other(u8),
}

impl Message {
    pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader {
            b: data,
            what: "pgoutput message",
        };
        let tag = r.u8()?;
        r.what = match tag {
            b'B' => "Begin",
            b'C' => "Commit",
            b'R' => "Relation",
            b'I' => "Insert",
            b'U' => "Update",
            b'D' => "Delete",
            b'T' => "Truncate",
            _ => "pgoutput message",
        };
        let m = match tag {
            b'B' => Message::Begin {
                final_lsn: r.u64()?,
                commit_time: r.i64()?,
                xid: r.u32()?,
            },
            b'C' => {
                let _flags = r.u8()?;
                Message::Commit {
                    commit_lsn: r.u64()?,
                    end_lsn: r.u64()?,
                    commit_time: r.i64()?,
                }
            }
            b'R' => Message::Relation(relation(&mut r)?),
            b'I' => {
                let relation = r.u32()?;
                expect(&mut r, b'N')?;
                Message::Insert {
                    relation,
                    new: tuple(data, &mut r)?,
                }
            }
            b'U' => update(data, &mut r)?,
            b'D' => delete(data, &mut r)?,
            b'T' => truncate(&mut r)?,
            b'O' | b'Y' | b'M' => {
                r.rest();
                Message::Other(tag)
            }
            other => {
                return Err(DecodeError(format!(
                    "unknown pgoutput message {:?}",
                    other as char
                )))
            }
        };
        Ok(m)
    }
}

/// Update: the relation, the old key or row when sent (`K`, `O`), the new row (`N`).
fn update(data: &Bytes, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let relation = r.u32()?;
    let mut old = None;
    let mut kind = r.u8()?;
    if matches!(kind, b'K' | b'O') {
        old = Some(tuple(data, r)?);
        kind = r.u8()?;
    }
    if kind != b'N' {
        return Err(DecodeError(format!(
            "Update: expected a new tuple, found {:?}",
            kind as char
        )));
    }
    Ok(Message::Update {
        relation,
        old,
        new: tuple(data, r)?,
    })
}

/// Delete: the relation and the old key or row.
fn delete(data: &Bytes, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let relation = r.u32()?;
    match r.u8()? {
        b'K' | b'O' => {}
        other => {
            return Err(DecodeError(format!(
                "Delete: expected an old tuple, found {:?}",
                other as char
            )))
        }
    }
    Ok(Message::Delete {
        relation,
        old: tuple(data, r)?,
    })
}

/// Truncate: the relations, in the order the server truncated them.
fn truncate(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let n = r.u32()? as usize;
    let _options = r.u8()?;
    if n > r.b.len() / 4 {
        return Err(short("Truncate"));
    }
    let mut relations = Vec::with_capacity(n);
    for _ in 0..n {
        relations.push(r.u32()?);
    }
    Ok(Message::Truncate { relations })
}

fn expect(r: &mut Reader<'_>, want: u8) -> Result<(), DecodeError> {
    let got = r.u8()?;
    if got != want {
        return Err(DecodeError(format!(
            "{}: expected {:?}, found {:?}",
            r.what, want as char, got as char
        )));
    }
    Ok(())
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = r.u32()?;
    let schema = r.cstr()?;
    let name = r.cstr()?;
    let replica_identity = r.u8()?;
    let n = r.i16()?;
    // Each column takes at least 10 bytes: never allocate for more than the message holds.
    if n < 0 || n as usize > r.b.len() / 10 {
        return Err(DecodeError(format!("Relation: {n} columns do not fit")));
    }
    let mut columns = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let flags = r.u8()?;
        columns.push(Column {
            key: flags & 1 == 1,
            name: r.cstr()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Relation {
        id,
        schema,
        name,
        replica_identity,
        columns,
    })
}

/// TupleData; values are slices of `data`, not copies.
fn tuple(data: &Bytes, r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
    let n = r.i16()?;
    if n < 0 || n as usize > r.b.len() {
        return Err(DecodeError(format!(
            "{}: {n} columns do not fit in the tuple",
            r.what
        )));
    }
    let mut values = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let v = match r.u8()? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            kind @ (b't' | b'b') => {
                let len = r.i32()?;
                if len < 0 {
                    return Err(DecodeError(format!("{}: negative value length", r.what)));
                }
                let at = data.len() - r.b.len();
                r.take(len as usize)?;
                let bytes = data.slice(at..at + len as usize);
                if kind == b't' {
                    Value::Text(bytes)
                } else {
                    Value::Binary(bytes)
                }
            }
            other => {
                return Err(DecodeError(format!(
                    "{}: unknown value kind {:?}",
                    r.what, other as char
                )))
            }
        };
        values.push(v);
    }
    Ok(values)
}

#[cfg(test)]
mod tests;
