//! One client connection from accept to close: the startup phase (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage), the connection to legacy, then the relay.
//!
//! Authentication is not handled here at all: the StartupMessage goes to legacy unchanged and
//! every authentication message is relayed, so trust, password, md5 and SCRAM work as they
//! would directly. Failures pgdual itself detects reach the client as one FATAL
//! ErrorResponse with a SQLSTATE, then the connection closes.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};

use crate::net::stream::ClientStream;
use crate::proto::backend::put_error;
use crate::proto::codec::{initial, CodecError, Initial};
use crate::proto::sqlstate::SqlState;
use crate::session::relay::{read_more, relay, RelayEnd, RelayError};
use crate::session::state::Session;
use crate::session::Context;
use crate::telemetry::metrics::ErrorSource;

/// Serves one accepted client connection to completion. Never panics on client input.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    let id = ctx.gate.next_id.fetch_add(1, Relaxed);
    let span = tracing::info_span!("session", session_id = id, peer = %peer);
    run(tcp, id, &ctx).instrument(span).await
}

/// Counts a client toward `limits.max_client_connections` while alive.
struct Slot<'a>(&'a Context);

impl<'a> Slot<'a> {
    fn acquire(ctx: &'a Context) -> Option<Self> {
        let max = ctx.limits.max_client_connections;
        let mut now = ctx.gate.active.load(Relaxed);
        loop {
            if now >= max {
                return None;
            }
            match ctx
                .gate
                .active
                .compare_exchange_weak(now, now + 1, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        ctx.metrics.client_connections.inc();
        Some(Slot(ctx))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.gate.active.fetch_sub(1, Relaxed);
        self.0.metrics.client_connections.dec();
    }
}

async fn fatal<W: AsyncWrite + Unpin>(w: &mut W, code: SqlState, message: &str) {
    let mut out = BytesMut::new();
    put_error(&mut out, "FATAL", code, message);
    let _ = w.write_all(&out).await;
    let _ = w.shutdown().await;
}

/// A StartupMessage's parameters, as the codec decoded them.
type StartupParams = Vec<(String, String)>;

/// What the startup phase ended with.
enum Startup {
    /// A StartupMessage of `len` bytes at the front of the buffer.
    Message { len: usize, params: StartupParams },
    /// The connection was a CancelRequest, or closed before a StartupMessage.
    Done,
}

async fn run(tcp: TcpStream, id: u64, ctx: &Arc<Context>) {
    ctx.metrics.client_connections_total.inc();
    let _ = tcp.set_nodelay(true);
    let Some((mut client, mut buf, len, params)) = accept_client(tcp, ctx).await else {
        return;
    };
    let Some(_slot) = Slot::acquire(ctx) else {
        ctx.metrics.rejected_connections_total.inc();
        warn!(
            max = ctx.limits.max_client_connections,
            "refusing client: too many connections"
        );
        let msg = "sorry, too many clients already (pgdual limits.max_client_connections)";
        return fatal(&mut client, SqlState::TOO_MANY_CONNECTIONS, msg).await;
    };
    let timeout = Duration::from_millis(ctx.limits.connect_timeout_ms);
    let mut legacy = match ctx.legacy.connect(timeout).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.error(ErrorSource::Legacy);
            warn!(error = %e, "legacy unreachable");
            let code = SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION;
            return fatal(&mut client, code, &format!("pgdual: {e}")).await;
        }
    };
    // The StartupMessage goes to legacy exactly as the client sent it.
    if let Err(e) = legacy.write_all(&buf[..len]).await {
        ctx.metrics.error(ErrorSource::Legacy);
        return fatal(
            &mut client,
            SqlState::CONNECTION_FAILURE,
            &legacy_lost(ctx, e),
        )
        .await;
    }
    let reads_routable = startup_fits_rules(&params, &ctx.rules_database);
    buf.advance(len);
    relay_session(client, legacy, buf, id, reads_routable, ctx).await;
}

/// Whether a session's reads may be routed: it connects to the database the rules describe
/// (`legacy.dbname`) and sets no `options` (such as a search_path) that new would not share.
fn startup_fits_rules(params: &[(String, String)], dbname: &str) -> bool {
    let (mut user, mut database, mut options) = (None, None, false);
    let mut role = false;
    for (name, value) in params {
        match name.as_str() {
            "user" => user = Some(value.as_str()),
            "database" => database = Some(value.as_str()),
            "options" => options = !value.trim().is_empty(),
            // Another role than the one legacy authenticates, whose privileges routing checks.
            "role" | "session_authorization" => role = true,
            _ => {}
        }
    }
    !options && !role && database.or(user) == Some(dbname)
}

/// The encryption negotiation and the startup packet, within `limits.connect_timeout_ms`.
/// Returns the client stream, the buffer holding the StartupMessage, its length and its
/// parameters; `None` when the connection was a CancelRequest, closed, or failed (already
/// answered).
async fn accept_client(
    mut tcp: TcpStream,
    ctx: &Context,
) -> Option<(ClientStream, BytesMut, usize, StartupParams)> {
    let mut buf = BytesMut::with_capacity(1024);
    let timeout = Duration::from_millis(ctx.limits.connect_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let tls = tokio::time::timeout_at(deadline, encryption_request(&mut tcp, &mut buf, ctx)).await;
    let mut client = match (tls, &ctx.tls) {
        (Ok(Ok(false)), _) => ClientStream::Plain(tcp),
        (Ok(Ok(true)), Some(acceptor)) => {
            match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    ctx.metrics.error(ErrorSource::Client);
                    debug!(error = %e, "TLS handshake with client failed");
                    return None;
                }
                Err(_) => return None,
            }
        }
        (Ok(Ok(true)), None) => return None,
        (Ok(Err(e)), _) => return startup_failed(&mut tcp, e, ctx).await,
        (Err(_), _) => return startup_timed_out(&mut tcp, ctx).await,
    };
    match tokio::time::timeout_at(deadline, startup(&mut client, &mut buf, ctx)).await {
        Ok(Ok(Startup::Message { len, params })) => {
            let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            debug!(user = ?param("user"), database = ?param("database"), "session starting");
            Some((client, buf, len, params))
        }
        Ok(Ok(Startup::Done)) => None,
        Ok(Err(e)) => startup_failed(&mut client, e, ctx).await,
        Err(_) => startup_timed_out(&mut client, ctx).await,
    }
}

fn legacy_lost(ctx: &Context, e: impl std::fmt::Display) -> String {
    format!(
        "pgdual: connection to the legacy database at {} failed: {e}",
        ctx.legacy
    )
}

/// Relays an authenticated-or-authenticating session until it ends, then tells the client
/// why if pgdual ended it, and cancels a query left running for a client that is gone.
async fn relay_session(
    client: ClientStream,
    legacy: crate::net::stream::ServerStream,
    buf: BytesMut,
    id: u64,
    reads_routable: bool,
    ctx: &Arc<Context>,
) {
    let key = RefCell::new(None);
    let mut session = Session::new(id);
    session.reads_routable = reads_routable;
    let session = RefCell::new(session);
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut lr, mut lw) = tokio::io::split(legacy);
    let mut closing = ctx.gate.force_close.subscribe();
    let outcome = tokio::select! {
        r = relay(&mut cr, &mut cw, &mut lr, &mut lw, &session, ctx, &key, buf) => Some(r),
        _ = closing.wait_for(|closing| *closing) => None,
    };
    let busy = session.borrow().busy();
    match outcome {
        Some(Ok(RelayEnd::LegacyClosed)) => debug!("legacy closed the session"),
        Some(Ok(RelayEnd::ClientClosed)) | Some(Err(RelayError::ClientIo(_))) => {
            debug!(busy, "client closed the session");
        }
        Some(Err(RelayError::Client(e))) => {
            ctx.metrics.error(ErrorSource::Client);
            warn!(error = %e, "closing session: invalid message from client");
            fatal(&mut cw, e.sqlstate(), &format!("pgdual: {e}")).await;
        }
        Some(Err(RelayError::LegacyIo(e))) => {
            ctx.metrics.error(ErrorSource::Legacy);
            warn!(error = %e, "legacy connection failed");
            fatal(&mut cw, SqlState::CONNECTION_FAILURE, &legacy_lost(ctx, e)).await;
        }
        None => {
            info!("closing session: shutdown drain timeout reached");
            let msg = "terminating connection because pgdual is shutting down";
            fatal(&mut cw, SqlState::ADMIN_SHUTDOWN, msg).await;
        }
    }
    // A query still running on legacy for a client that is gone would hold its backend
    // (and locks) until it finished: cancel it.
    let key = key.into_inner();
    if let (true, Some(key)) = (busy, &key) {
        if let Some(secret) = ctx.cancel.lookup(key.pid, &key.secret) {
            let timeout = Duration::from_millis(ctx.limits.connect_timeout_ms);
            if let Err(e) = ctx.legacy.cancel(key.pid, &secret, timeout).await {
                debug!(error = %e, "could not cancel the abandoned query");
            }
        }
    }
    if let Some(key) = &key {
        ctx.cancel.remove(key);
    }
    let _ = lw.shutdown().await;
}

#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

async fn startup_failed<W: AsyncWrite + Unpin, T>(
    w: &mut W,
    e: StartupError,
    ctx: &Context,
) -> Option<T> {
    match e {
        StartupError::Codec(e) if e.closes_silently() => {
            ctx.metrics.error(ErrorSource::Client);
            debug!(error = %e, "not a startup packet; closing as PostgreSQL does");
            let _ = w.shutdown().await;
        }
        StartupError::Codec(e) => {
            ctx.metrics.error(ErrorSource::Client);
            warn!(error = %e, "invalid startup packet");
            fatal(w, e.sqlstate(), &format!("pgdual: {e}")).await;
        }
        StartupError::Io(e) => debug!(error = %e, "client left during startup"),
    }
    None
}

async fn startup_timed_out<W: AsyncWrite + Unpin, T>(w: &mut W, ctx: &Context) -> Option<T> {
    ctx.metrics.error(ErrorSource::Client);
    debug!("no startup packet within limits.connect_timeout_ms");
    let msg = "pgdual: no startup packet received within limits.connect_timeout_ms";
    fatal(w, SqlState::PROTOCOL_VIOLATION, msg).await;
    None
}

/// The next startup-phase packet and its length, or `None` if the client closed.
async fn next_initial<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<(Initial, usize)>, StartupError> {
    loop {
        if let Some(found) = initial(buf)? {
            return Ok(Some(found));
        }
        if !read_more(s, buf).await? {
            return Ok(None);
        }
    }
}

/// Answers GSSENCRequest (`N`: not offered) and SSLRequest at the front of the connection
/// (protocol 55.2.9, 55.2.10). Returns whether to start a TLS handshake; `S` is already sent.
/// Any other packet is left in `buf`.
async fn encryption_request(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    ctx: &Context,
) -> Result<bool, StartupError> {
    loop {
        let Some((msg, len)) = next_initial(tcp, buf).await? else {
            return Ok(false);
        };
        if !matches!(msg, Initial::SslRequest | Initial::GssEncRequest) {
            return Ok(false);
        }
        if buf.len() > len {
            // Bytes sent ahead of the answer would bypass the handshake (CVE-2021-23214);
            // PostgreSQL refuses them too.
            return Err(CodecError::Malformed {
                what: "SSLRequest (data sent before the answer)",
            }
            .into());
        }
        buf.advance(len);
        if msg == Initial::SslRequest && ctx.tls.is_some() {
            tcp.write_all(b"S").await?;
            return Ok(true);
        }
        tcp.write_all(b"N").await?;
    }
}

/// Reads the StartupMessage, or serves a CancelRequest (protocol 55.2.1, 55.2.8).
async fn startup(
    client: &mut ClientStream,
    buf: &mut BytesMut,
    ctx: &Context,
) -> Result<Startup, StartupError> {
    let Some((msg, len)) = next_initial(client, buf).await? else {
        return Ok(Startup::Done);
    };
    match msg {
        Initial::SslRequest | Initial::GssEncRequest => Err(CodecError::Malformed {
            what: "second encryption request",
        }
        .into()),
        Initial::Cancel { pid, secret } => {
            ctx.metrics.cancel_requests_total.inc();
            forward_cancel(pid, &secret, ctx).await;
            Ok(Startup::Done)
        }
        Initial::Startup { params, .. } => Ok(Startup::Message { len, params }),
    }
}

async fn forward_cancel(pid: i32, secret: &[u8], ctx: &Context) {
    let Some(legacy_secret) = ctx.cancel.lookup(pid, secret) else {
        debug!(pid, "CancelRequest with an unknown key ignored");
        return;
    };
    let timeout = Duration::from_millis(ctx.limits.connect_timeout_ms);
    if let Err(e) = ctx.legacy.cancel(pid, &legacy_secret, timeout).await {
        ctx.metrics.error(ErrorSource::Legacy);
        warn!(error = %e, "could not forward CancelRequest");
    }
}

#[cfg(test)]
mod startup_tests {
    use super::startup_fits_rules;

    fn startup(params: &[(&str, &str)]) -> Vec<(String, String)> {
        params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_route_only_for_the_rules_database_without_options() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("user", "app"), ("database", "shop")], true),
            (&[("user", "shop")], true),
            (&[("user", "app")], false),
            (&[("user", "app"), ("database", "other")], false),
            (
                &[
                    ("user", "app"),
                    ("database", "shop"),
                    ("options", "-c search_path=t"),
                ],
                false,
            ),
            (
                &[("user", "app"), ("database", "shop"), ("options", "")],
                true,
            ),
            (&[("database", "shop"), ("application_name", "x")], true),
        ];
        for (params, fits) in cases {
            assert_eq!(
                startup_fits_rules(&startup(params), "shop"),
                *fits,
                "{params:?}"
            );
        }
        assert!(!startup_fits_rules(&[], "shop"));
    }
}
