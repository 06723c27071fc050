//! A client speaking raw protocol bytes, and encoders for the few frontend messages tests
//! craft by hand (protocol 3.0, "Message Formats" in the PostgreSQL documentation).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A client speaking raw protocol bytes, for crafted and malformed input.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        RawClient { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends a StartupMessage for `postgres` (trust auth) and reads up to ReadyForQuery.
    pub fn startup(port: u16) -> RawClient {
        let mut c = RawClient::connect(port);
        c.send(&startup_message("postgres", "postgres"));
        let msgs = c.read_until(b'Z');
        assert!(
            msgs.iter().any(|(t, _)| *t == b'R'),
            "authenticated: {msgs:?}"
        );
        c
    }

    /// One typed message, or `None` at end of stream.
    pub fn read_message(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        if self.stream.read_exact(&mut head).is_err() {
            return None;
        }
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.stream.read_exact(&mut body).ok()?;
        Some((head[0], body))
    }

    /// Messages up to and including the first with `tag` (or end of stream).
    pub fn read_until(&mut self, tag: u8) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(m) = self.read_message() {
            let done = m.0 == tag;
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Reads one byte (the answer to SSLRequest or GSSENCRequest).
    pub fn read_byte(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        self.stream.read_exact(&mut b).ok().map(|_| b[0])
    }

    /// True once the peer has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }
}

pub fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A typed frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}
