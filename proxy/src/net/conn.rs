//! Raw PostgreSQL wire-protocol client connections, for answering a client's reads from another
//! database with the server's bytes passed through unchanged.
//!
//! A [`BackendConn`] speaks protocol 3.0 over TCP, with TLS as the endpoint's `tls` setting
//! says (or a Unix socket when the host starts with `/`), authenticates with trust,
//! cleartext, MD5 or SCRAM-SHA-256, and then exchanges whole request groups
//! ([`BackendConn::round_trip`]) up to ReadyForQuery. Server bytes are never trusted: a
//! malformed frame is a [`BackendError::Protocol`], never a panic.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::stream::{self, ServerStream};
use crate::net::tls::TlsTarget;
use crate::proto::backend::{
    self, backend_key_data, error_fields, parameter_status, Authentication,
};
use crate::proto::codec::{self, Frame};
use crate::proto::frontend;

/// Where and as whom to connect; the key of the per-thread pool
/// (`crate::net::pool`).
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    /// TLS to this server (`legacy.tls*` or `new.tls*`).
    pub tls: TlsTarget,
    /// rustls's side of `tls`, built once (`None`: plaintext).
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("tls", &self.tls.mode)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Largest frame accepted from a server (PostgreSQL's own limit on a message is 1 GB).
const MAX_FRAME: u64 = 1 << 30;
/// Frames that are always buffered whole (authentication, ParameterStatus, ReadyForQuery...)
/// may be at most this long.
const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Terminate.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The server could not be reached or refused the session; names `host:port`.
    #[error("could not connect to {0}")]
    Connect(String),
    /// The server refused the credentials; names the user.
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("I/O error talking to the server: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The answer's frame bodies add up to this many bytes, over the caller's limit.
    #[error("answer of {0} bytes is over the size limit")]
    TooLarge(usize),
    #[error("timed out waiting for the server")]
    Timeout,
}

fn protocol(msg: impl Into<String>) -> BackendError {
    BackendError::Protocol(msg.into())
}

/// An authenticated protocol-3.0 session with a PostgreSQL server.
pub struct BackendConn {
    stream: ServerStream,
    buf: BytesMut,
    addr: String,
    params: HashMap<String, String>,
    pid: i32,
    /// Transaction status of the last ReadyForQuery: `I`, `T` or `E`.
    status: u8,
    broken: bool,
    /// Statements this connection has prepared, by SQL and parameter types: their names.
    statements: HashMap<Box<str>, Vec<Named>>,
    /// Names handed out so far: a name is never reused, even when its Parse's outcome was
    /// not recorded.
    named: usize,
}

/// A statement prepared on a connection: its parameter types and name.
type Named = (Vec<u32>, Box<str>);

/// Named statements kept per connection; past this, statements run unnamed.
const MAX_STATEMENTS: usize = 256;

impl fmt::Debug for BackendConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConn")
            .field("addr", &self.addr)
            .field("pid", &self.pid)
            .field("status", &(self.status as char))
            .field("broken", &self.broken)
            .finish()
    }
}

impl Drop for BackendConn {
    fn drop(&mut self) {
        // Best effort, never blocking: a clean Terminate spares the server's log an EOF.
        if !self.broken {
            let _ = self.stream.try_write(&TERMINATE);
        }
    }
}

/// The SASLInitialResponse answering AuthenticationSASL with the server's `mechanisms`, and
/// the SCRAM exchange it starts.
fn sasl_start(
    out: &mut BytesMut,
    user: &str,
    pw: &str,
    mechanisms: &[String],
) -> Result<sasl::ScramSha256, BackendError> {
    if !mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256) {
        return Err(BackendError::Auth(format!(
            "user \"{user}\": the server offers SASL mechanisms {mechanisms:?}; \
             pgdual supports only {}",
            sasl::SCRAM_SHA_256
        )));
    }
    let s = sasl::ScramSha256::new(pw.as_bytes(), sasl::ChannelBinding::unsupported());
    frontend::put_sasl_initial(out, sasl::SCRAM_SHA_256, s.message());
    Ok(s)
}

impl BackendConn {
    /// Connects, sends a StartupMessage (user, database, `application_name=pgdual`; everything
    /// else is the server's default), authenticates and reads up to the first ReadyForQuery.
    /// The whole of it is bounded by `timeout` (a timeout is a [`BackendError::Connect`]).
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        password: Option<&str>,
        dbname: &str,
        tls: &TlsTarget,
        timeout: Duration,
    ) -> Result<Self, BackendError> {
        let addr = stream::display_addr(host, port);
        let tls_config = tls
            .client_config()
            .map_err(|e| BackendError::Connect(format!("{addr}: {e}")))?;
        let target = Target {
            host: host.to_string(),
            port,
            user: user.to_string(),
            password: password.map(str::to_string),
            dbname: dbname.to_string(),
            tls: tls.clone(),
            tls_config,
            connect_timeout: timeout,
        };
        Self::connect_to(&target).await
    }

    /// [`Self::connect`] to a target whose TLS configuration is built already.
    pub(crate) async fn connect_to(target: &Target) -> Result<Self, BackendError> {
        Self::connect_with(target, &[]).await
    }

    /// [`Self::connect_to`], with more startup parameters (`replication`, settings).
    pub(crate) async fn connect_with(
        target: &Target,
        extra: &[(&str, &str)],
    ) -> Result<Self, BackendError> {
        let addr = stream::display_addr(&target.host, target.port);
        let timeout = target.connect_timeout;
        match tokio::time::timeout(timeout, Self::connect_inner(target, &addr, extra)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Connect(format!(
                "{addr}: timed out after {} ms",
                timeout.as_millis()
            ))),
        }
    }

    async fn connect_inner(
        target: &Target,
        addr: &str,
        extra: &[(&str, &str)],
    ) -> Result<Self, BackendError> {
        let (user, password) = (target.user.as_str(), target.password.as_deref());
        let dbname = target.dbname.as_str();
        let connect_err = |e: io::Error| BackendError::Connect(format!("{addr}: {e}"));
        let config = target.tls_config.as_ref();
        let stream = stream::open(&target.host, target.port, &target.tls, config)
            .await
            .map_err(|e| BackendError::Connect(format!("{addr}: {e}")))?;
        let mut conn = BackendConn {
            stream,
            buf: BytesMut::with_capacity(8192),
            addr: addr.to_string(),
            params: HashMap::new(),
            pid: 0,
            status: b'I',
            statements: HashMap::new(),
            named: 0,
            broken: true,
        };
        let mut startup = BytesMut::new();
        let mut params = vec![("user", user), ("database", dbname)];
        if !extra.iter().any(|(k, _)| *k == "application_name") {
            params.push(("application_name", "pgdual"));
        }
        params.extend_from_slice(extra);
        codec::put_startup(&mut startup, &params);
        conn.send(&startup).await.map_err(connect_err)?;
        conn.authenticate(user, password).await?;
        conn.finish_startup(user).await?;
        conn.broken = false;
        Ok(conn)
    }

    /// The authentication exchange, up to AuthenticationOk.
    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&str>,
    ) -> Result<(), BackendError> {
        let need_password = || {
            password.ok_or_else(|| {
                BackendError::Auth(format!(
                    "the server asks a password for user \"{user}\" and none is configured"
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let f = self.read_control_frame().await?;
            match f.tag {
                b'R' => {}
                b'E' => return Err(self.startup_error(&f.body, user)),
                b'N' | b'v' => continue,
                other => {
                    return Err(protocol(format!(
                        "unexpected message {:?} during authentication",
                        other as char
                    )))
                }
            }
            let request = backend::authentication(&f.body)
                .ok_or_else(|| protocol("malformed authentication message"))?;
            let mut out = BytesMut::new();
            match request {
                Authentication::Ok if scram.is_some() => {
                    return Err(protocol("authentication ended before SCRAM finished"))
                }
                Authentication::Ok => return Ok(()),
                Authentication::Cleartext => {
                    frontend::put_password(&mut out, need_password()?.as_bytes())
                }
                Authentication::Md5 { salt } => {
                    let hash = md5_hash(user.as_bytes(), need_password()?.as_bytes(), salt);
                    frontend::put_password(&mut out, hash.as_bytes());
                }
                Authentication::Sasl(mechanisms) => {
                    scram = Some(sasl_start(&mut out, user, need_password()?, &mechanisms)?)
                }
                Authentication::SaslContinue(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| protocol("SASLContinue without SASL"))?;
                    s.update(data).map_err(|e| {
                        BackendError::Auth(format!("user \"{user}\": SCRAM exchange failed: {e}"))
                    })?;
                    frontend::put_sasl_response(&mut out, s.message());
                }
                Authentication::SaslFinal(data) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| protocol("SASLFinal without SASL"))?;
                    s.finish(data).map_err(|e| {
                        BackendError::Auth(format!(
                            "user \"{user}\": the server's SCRAM signature is invalid: {e}"
                        ))
                    })?;
                    continue;
                }
                Authentication::Other(code) => {
                    return Err(BackendError::Auth(format!(
                        "user \"{user}\": unsupported authentication method {code} \
                         requested by the server"
                    )))
                }
            }
            self.send(&out).await?;
        }
    }

    /// After AuthenticationOk: ParameterStatus, BackendKeyData, up to ReadyForQuery.
    async fn finish_startup(&mut self, user: &str) -> Result<(), BackendError> {
        loop {
            let f = self.read_control_frame().await?;
            match f.tag {
                b'S' => self.set_parameter(&f.body)?,
                b'K' => {
                    (self.pid, _) = backend_key_data(&f.body)
                        .ok_or_else(|| protocol("short BackendKeyData"))?;
                }
                b'Z' => {
                    self.set_status(&f.body)?;
                    return Ok(());
                }
                b'E' => return Err(self.startup_error(&f.body, user)),
                b'N' | b'v' => {}
                other => {
                    return Err(protocol(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )))
                }
            }
        }
    }

    /// An ErrorResponse before ReadyForQuery: class 28 (invalid authorization) is an
    /// authentication failure naming the user; anything else a connection failure.
    fn startup_error(&self, body: &[u8], user: &str) -> BackendError {
        let (code, message) = error_fields(body);
        if code.starts_with("28") {
            BackendError::Auth(format!("user \"{user}\": {message} (SQLSTATE {code})"))
        } else {
            BackendError::Connect(format!("{}: {message} (SQLSTATE {code})", self.addr))
        }
    }

    fn set_parameter(&mut self, body: &[u8]) -> Result<(), BackendError> {
        let (name, value) =
            parameter_status(body).ok_or_else(|| protocol("malformed ParameterStatus"))?;
        self.params.insert(
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        );
        Ok(())
    }

    fn set_status(&mut self, body: &[u8]) -> Result<(), BackendError> {
        match body {
            [s @ (b'I' | b'T' | b'E')] => {
                self.status = *s;
                Ok(())
            }
            _ => Err(protocol("malformed ReadyForQuery")),
        }
    }

    /// Writes `buf` whole (and flushes it, which TLS needs).
    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.write_all(buf).await?;
        self.stream.flush().await
    }

    /// Reads until `buf` holds at least `n` bytes.
    async fn fill(&mut self, n: usize) -> Result<(), BackendError> {
        while self.buf.len() < n {
            self.buf.reserve((n - self.buf.len()).max(8192));
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(BackendError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
        Ok(())
    }

    /// The next frame's tag and whole length (tag and length field included).
    async fn next_header(&mut self) -> Result<(u8, usize), BackendError> {
        self.fill(5).await?;
        match codec::header(&self.buf, MAX_FRAME) {
            Ok(Some(h)) => Ok((h.tag, h.frame_len)),
            Ok(None) => Err(protocol("incomplete frame header")),
            Err(e) => Err(protocol(e.to_string())),
        }
    }

    /// The frame whose header was just read, buffered whole.
    async fn take_frame(&mut self, tag: u8, frame_len: usize) -> Result<Frame, BackendError> {
        self.fill(frame_len).await?;
        let mut f = self.buf.split_to(frame_len);
        f.advance(5);
        Ok(Frame {
            tag,
            body: f.freeze(),
        })
    }

    /// Discards the frame whose header was just read, without buffering it whole.
    async fn skip_frame(&mut self, frame_len: usize) -> Result<(), BackendError> {
        let mut left = frame_len;
        loop {
            let n = left.min(self.buf.len());
            self.buf.advance(n);
            left -= n;
            if left == 0 {
                return Ok(());
            }
            self.fill(1).await?;
        }
    }

    /// A frame that must be small (authentication, startup, status).
    async fn read_control_frame(&mut self) -> Result<Frame, BackendError> {
        let (tag, len) = self.next_header().await?;
        if len > MAX_CONTROL_FRAME {
            return Err(protocol(format!(
                "message {:?} of {len} bytes is too long",
                tag as char
            )));
        }
        self.take_frame(tag, len).await
    }

    /// Writes `request` (complete frontend frames, ending with Sync or a simple Query) and
    /// reads the answer up to the ReadyForQuery of each Sync and Query in it. Returns the
    /// frames in order, ReadyForQuery included, without NoticeResponse, ParameterStatus
    /// (whose values [`Self::parameter`] tracks) and NotificationResponse. A COPY FROM STDIN
    /// is refused with CopyFail (the server then answers with an ErrorResponse).
    ///
    /// If the bodies add up to more than `max_bytes`, the rest is read and discarded up to
    /// ReadyForQuery, so the connection stays usable, and the result is `TooLarge`. On a
    /// timeout, an I/O or a protocol error the connection is broken. A server's
    /// ErrorResponse is not an error here: it is one of the frames.
    pub async fn round_trip(
        &mut self,
        request: &[u8],
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<Frame>, BackendError> {
        let mut frames = Vec::new();
        self.round_trip_visit(request, max_bytes, timeout, &mut |f| frames.push(f))
            .await?;
        Ok(frames)
    }

    /// As [`Self::round_trip`], handing each frame to `visit` as it arrives instead of
    /// collecting them: a caller that digests rows holds none of them. Past `max_bytes`,
    /// frames other than ReadyForQuery are skipped and the answer is `TooLarge`.
    pub async fn round_trip_visit(
        &mut self,
        request: &[u8],
        max_bytes: usize,
        timeout: Duration,
        visit: &mut (dyn FnMut(Frame) + Send),
    ) -> Result<(), BackendError> {
        if self.broken {
            return Err(protocol("the connection is broken"));
        }
        let syncs = sync_points(request)?;
        // Broken until the exchange completes, even if this future is dropped midway.
        self.broken = true;
        let exchange = self.exchange(request, syncs, max_bytes, visit);
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(BackendError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok((total, over))) => {
                self.broken = false;
                if over {
                    Err(BackendError::TooLarge(total))
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn exchange(
        &mut self,
        request: &[u8],
        mut syncs: usize,
        max_bytes: usize,
        visit: &mut (dyn FnMut(Frame) + Send),
    ) -> Result<(usize, bool), BackendError> {
        self.send(request).await?;
        let mut total = 0usize;
        let mut over = false;
        while syncs > 0 {
            let (tag, len) = self.next_header().await?;
            match tag {
                b'N' | b'A' => {
                    self.skip_frame(len).await?;
                    continue;
                }
                b'S' => {
                    let f = self.read_sized(tag, len).await?;
                    self.set_parameter(&f.body)?;
                    continue;
                }
                b'G' => {
                    self.skip_frame(len).await?;
                    let mut out = BytesMut::new();
                    frontend::put_copy_fail(&mut out, "pgdual does not relay COPY FROM STDIN here");
                    self.send(&out).await?;
                    continue;
                }
                b'W' => return Err(protocol("unexpected CopyBothResponse")),
                _ => {}
            }
            total = total.saturating_add(len - 5);
            over |= total > max_bytes;
            if tag == b'Z' {
                let f = self.read_sized(tag, len).await?;
                self.set_status(&f.body)?;
                syncs -= 1;
                visit(f);
            } else if over {
                self.skip_frame(len).await?;
            } else {
                visit(self.take_frame(tag, len).await?);
            }
        }
        Ok((total, over))
    }

    async fn read_sized(&mut self, tag: u8, len: usize) -> Result<Frame, BackendError> {
        if len > MAX_CONTROL_FRAME {
            return Err(protocol(format!(
                "message {:?} of {len} bytes is too long",
                tag as char
            )));
        }
        self.take_frame(tag, len).await
    }

    /// Sends a simple Query that answers with CopyBothResponse (`START_REPLICATION`) and
    /// reads up to it; an ErrorResponse instead is an error carrying its message and
    /// SQLSTATE. Afterwards the session is a stream of [`Self::next_frame`] and
    /// [`Self::send_frames`].
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), BackendError> {
        let q = frontend::query_frame(sql);
        self.broken = true;
        self.send(&q).await?;
        loop {
            let f = self.read_control_frame().await?;
            match f.tag {
                b'W' => {
                    self.broken = false;
                    return Ok(());
                }
                b'E' => {
                    let (code, message) = error_fields(&f.body);
                    return Err(protocol(format!("{message} (SQLSTATE {code})")));
                }
                b'N' | b'S' => {}
                other => {
                    return Err(protocol(format!(
                        "unexpected message {:?} before CopyBothResponse",
                        other as char
                    )))
                }
            }
        }
    }

    /// The next whole frame from the server, of any size up to PostgreSQL's own limit.
    /// Cancel-safe: dropped midway, it consumes nothing, and a later call reads on.
    pub async fn next_frame(&mut self) -> Result<Frame, BackendError> {
        let (tag, len) = self.next_header().await?;
        self.take_frame(tag, len).await
    }

    /// Writes complete frames (and flushes them).
    pub async fn send_frames(&mut self, frames: &[u8]) -> Result<(), BackendError> {
        self.send(frames).await.map_err(BackendError::Io)
    }

    /// Any I/O or protocol error, or a timeout, leaves the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// A ParameterStatus value the server reported (at startup or since).
    /// The name this connection prepared `sql` under, if it has.
    pub fn statement(&self, sql: &str, param_types: &[u32]) -> Option<&str> {
        self.statements
            .get(sql)?
            .iter()
            .find(|(t, _)| t == param_types)
            .map(|(_, n)| &**n)
    }

    /// A fresh name to prepare `sql` under, or `None` when the connection keeps enough
    /// statements already (run it unnamed). Call [`Self::prepared`] once the server said
    /// ParseComplete.
    pub fn statement_name(&mut self) -> Option<String> {
        if self.statements.values().map(Vec::len).sum::<usize>() >= MAX_STATEMENTS {
            return None;
        }
        self.named += 1;
        Some(format!("pgdual_{}", self.named))
    }

    /// Forgets every statement prepared (the caller deallocates them on the server).
    pub fn forget_statements(&mut self) {
        self.statements.clear();
    }

    /// Records that `sql` is prepared under `name`.
    pub fn prepared(&mut self, sql: &str, param_types: &[u32], name: String) {
        self.statements
            .entry(sql.into())
            .or_default()
            .push((param_types.to_vec(), name.into()));
    }

    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The server process id (BackendKeyData).
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// Transaction status of the last ReadyForQuery: `b'I'` idle, `b'T'` in a transaction,
    /// `b'E'` in a failed transaction.
    pub fn transaction_status(&self) -> u8 {
        self.status
    }

    /// `host:port` (or the socket path) of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection can go back to a pool: not broken, outside a transaction, with
    /// nothing left unread.
    pub(crate) fn reusable(&self) -> bool {
        !self.broken && self.status == b'I' && self.buf.is_empty()
    }

    /// Reusable, and the server has sent nothing since (such as a FATAL error before
    /// closing): one non-blocking read, paid when the connection leaves the pool.
    pub(crate) fn still_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.reusable()
            && matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// How many ReadyForQuery answers `request` calls for (its Sync and Query frames); the
/// request must be whole frames ending with one of them.
fn sync_points(request: &[u8]) -> Result<usize, BackendError> {
    let mut at = 0;
    let mut count = 0;
    let mut last = 0;
    while at < request.len() {
        let h = match codec::header(&request[at..], MAX_FRAME) {
            Ok(Some(h)) if h.frame_len <= request.len() - at => h,
            Ok(_) => return Err(protocol("the request ends with an incomplete frame")),
            Err(e) => return Err(protocol(format!("invalid request: {e}"))),
        };
        if matches!(h.tag, b'S' | b'Q') {
            count += 1;
        }
        last = h.tag;
        at += h.frame_len;
    }
    if !matches!(last, b'S' | b'Q') {
        return Err(protocol("the request must end with Sync or Query"));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frontend::{parse_frame, query_frame, sync_frame};

    #[test]
    fn sync_points_counts_and_validates() {
        let mut r = parse_frame("", "SELECT 1", &[]);
        r.extend_from_slice(&sync_frame());
        r.extend_from_slice(&query_frame("SELECT 2"));
        assert_eq!(sync_points(&r).unwrap(), 2);
        assert!(sync_points(&parse_frame("", "x", &[])).is_err());
        assert!(sync_points(&r[..r.len() - 1]).is_err());
        assert!(sync_points(b"Q\0\0\0\x01").is_err());
        assert!(sync_points(b"").is_err());
    }
}
