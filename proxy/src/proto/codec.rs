//! Sans-I/O framing of the PostgreSQL v3 protocol (protocol docs, "Message Formats").
//!
//! Typed messages are `tag: u8, length: i32 (including itself), body`. The startup-phase
//! messages (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) have no tag. This module
//! only splits bytes into frames and decodes the few messages the proxy must look at; it never
//! touches a socket, so it is tested and fuzzed on plain byte slices. It must never panic on
//! any input.

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::sqlstate::SqlState;

/// Protocol version 3.0, as sent in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// PostgreSQL rejects startup packets above this size (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Longest cancel secret: protocol 3.2 (PostgreSQL 18) allows up to 256 bytes.
pub const MAX_CANCEL_SECRET: usize = 256;

/// A framing error: the peer sent bytes that are not the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error("message of type {tag:?} is {len} bytes, over the limit of {max} bytes")]
    TooLarge { tag: char, len: u64, max: u64 },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    #[error("invalid startup packet length {len}")]
    BadStartupLength { len: i64 },
    #[error("invalid length of cancel request packet: {len}")]
    BadCancelLength { len: usize },
}

impl CodecError {
    /// PostgreSQL closes the connection without an answer for these (it reports them with
    /// `COMMERROR`, to its log only): a client that sent something that is not a startup
    /// packet at all, such as a Terminate before its StartupMessage, gets no error to read.
    pub fn closes_silently(&self) -> bool {
        matches!(
            self,
            CodecError::BadStartupLength { .. } | CodecError::BadCancelLength { .. }
        )
    }

    pub fn sqlstate(&self) -> SqlState {
        match self {
            CodecError::TooLarge { .. } => SqlState::PROGRAM_LIMIT_EXCEEDED,
            _ => SqlState::PROTOCOL_VIOLATION,
        }
    }
}

/// The header of a typed message found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Bytes of the whole frame: tag, length field and body.
    pub frame_len: usize,
}

/// Reads the header at the start of `buf`: `Ok(None)` until five bytes are there.
/// `max_len` bounds the length field (the frame minus its tag).
pub fn header(buf: &[u8], max_len: u64) -> Result<Option<Header>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(CodecError::BadLength {
            tag: tag as char,
            len: len as i64,
        });
    }
    if len as u64 > max_len {
        return Err(CodecError::TooLarge {
            tag: tag as char,
            len: len as u64,
            max: max_len,
        });
    }
    Ok(Some(Header {
        tag,
        frame_len: len as usize + 1,
    }))
}

/// Where the frames of a read buffer lie, as found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    /// Complete frames start here; bytes before belong to a frame streamed earlier.
    pub first: usize,
    /// End of the last complete frame.
    pub complete: usize,
    /// Bytes to forward now: the complete frames, plus the head of a large frame being
    /// streamed through without buffering.
    pub forward: usize,
    /// Length of an incomplete frame to buffer whole (0 if none): the caller reserves room.
    pub want: usize,
}

/// Frames larger than this whose type the caller need not decode are streamed through as
/// they arrive instead of being buffered whole.
pub const STREAM_THRESHOLD: usize = 64 * 1024;

/// Finds the frames in `buf`. `pass` carries the bytes still owed by a frame that is being
/// streamed through from an earlier call; `inspect(tag)` says which frame types the caller
/// must see whole. Errors on a bad length or one over `max_len`.
pub fn scan(
    buf: &[u8],
    pass: &mut usize,
    max_len: u64,
    inspect: impl Fn(u8) -> bool,
) -> Result<Scan, CodecError> {
    let first = (*pass).min(buf.len());
    *pass -= first;
    let mut at = first;
    let mut scan = Scan {
        first,
        complete: first,
        forward: first,
        want: 0,
    };
    while let Some(h) = header(&buf[at..], max_len)? {
        let avail = buf.len() - at;
        if avail >= h.frame_len {
            at += h.frame_len;
            scan.complete = at;
            scan.forward = at;
            continue;
        }
        if h.frame_len > STREAM_THRESHOLD && !inspect(h.tag) {
            *pass = h.frame_len - avail;
            scan.forward = buf.len();
        } else {
            scan.want = h.frame_len;
        }
        break;
    }
    Ok(scan)
}

/// Iterates the frames of `buf[from..to]` already validated by [`scan`]: yields
/// `(offset, tag, frame length)`.
pub fn frames(buf: &[u8], from: usize, to: usize) -> impl Iterator<Item = (usize, u8, usize)> + '_ {
    let mut at = from;
    std::iter::from_fn(move || {
        if at + 5 > to {
            return None;
        }
        let len = i32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]);
        let frame_len = (len.max(4) as usize + 1).min(to - at);
        let item = (at, buf[at], frame_len);
        at += frame_len;
        Some(item)
    })
}

/// What a client may send before the typed-message phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initial {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    /// A StartupMessage; `params` are its name/value pairs.
    Startup {
        version: i32,
        params: Vec<(String, String)>,
    },
}

/// Splits one untagged startup-phase packet from the front of `buf`.
/// Returns the packet and its byte length, or `Ok(None)` until it is complete.
pub fn initial(buf: &[u8]) -> Result<Option<(Initial, usize)>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    // As PostgreSQL's ProcessStartupPacket: the length minus itself, at least a protocol
    // code, at most MAX_STARTUP_PACKET_LENGTH.
    if !(8..=MAX_STARTUP_LEN as i32 + 4).contains(&len) {
        return Err(CodecError::BadStartupLength { len: len as i64 });
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..len];
    let msg = match code {
        SSL_REQUEST_CODE => Initial::SslRequest,
        GSSENC_REQUEST_CODE => Initial::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            // A process ID and a secret of 4 bytes (protocol 3.0) up to 256 (3.2).
            if !(8..=4 + MAX_CANCEL_SECRET).contains(&body.len()) {
                return Err(CodecError::BadCancelLength { len });
            }
            Initial::Cancel {
                pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                secret: body[4..].to_vec(),
            }
        }
        version => Initial::Startup {
            version,
            params: startup_params(body)?,
        },
    };
    Ok(Some((msg, len)))
}

fn startup_params(mut body: &[u8]) -> Result<Vec<(String, String)>, CodecError> {
    let bad = CodecError::Malformed {
        what: "StartupMessage",
    };
    let mut out = Vec::new();
    loop {
        let (name, rest) = cstr(body).ok_or(bad.clone())?;
        if name.is_empty() {
            return Ok(out);
        }
        let (value, rest) = cstr(rest).ok_or(bad.clone())?;
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        body = rest;
    }
}

/// One whole message: its type byte and body (without the length field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    /// Appends the frame as it goes over the wire: tag, length, body.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        put_message(out, self.tag, |o| o.put_slice(&self.body));
    }
}

/// A NUL-terminated string at the start of `buf`, and what follows it.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Appends a typed message with the given body writer, filling in the length.
pub fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a protocol 3.0 StartupMessage with these parameters.
pub fn put_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let mut body = BytesMut::new();
    for (name, value) in params {
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    put_initial(out, PROTOCOL_3_0, &body);
}

/// Appends a CancelRequest for backend `pid` with its secret key.
pub fn put_cancel_request(out: &mut BytesMut, pid: i32, secret: &[u8]) {
    let mut body = BytesMut::with_capacity(4 + secret.len());
    body.put_i32(pid);
    body.put_slice(secret);
    put_initial(out, CANCEL_REQUEST_CODE, &body);
}

/// Appends an SSLRequest.
pub fn put_ssl_request(out: &mut BytesMut) {
    put_initial(out, SSL_REQUEST_CODE, &[]);
}

/// Appends an untagged startup-phase packet (StartupMessage, SSLRequest, CancelRequest).
pub fn put_initial(out: &mut BytesMut, code: i32, body: &[u8]) {
    out.put_i32(8 + body.len() as i32);
    out.put_i32(code);
    out.put_slice(body);
}

#[cfg(test)]
mod tests;
