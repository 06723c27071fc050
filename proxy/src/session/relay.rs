//! The relay: bytes from the client to legacy and back, frame by frame, as they arrive.
//!
//! Both directions run as two futures of one task (no cross-thread hand-off), sharing the
//! session state through a `RefCell` that is never held across an `.await`. Each read is
//! forwarded with one write; only the frames the session tracks are decoded, and DataRow or
//! CopyData frames above `STREAM_THRESHOLD` stream through without being buffered whole.
//! Statement analysis runs after the bytes went to legacy, never before.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use pgdual_rules::{Analysis, StatementKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::codec::{frames, scan, CodecError, Scan};
use crate::session::cancel::ClientKey;
use crate::session::state::{AfterWrite, Session};
use crate::session::Context;
use crate::telemetry::metrics::ObserveDuration;

/// Bytes asked of the kernel per read, and the least free room before a read.
const READ_SIZE: usize = 16 * 1024;
const MIN_READ_ROOM: usize = 4 * 1024;
/// Most a buffer grows per read toward a large frame, so that a header claiming a huge
/// length costs memory only as its bytes actually arrive.
const MAX_GROWTH: usize = 1 << 20;

/// Why a relay ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    ClientClosed,
    LegacyClosed,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("client sent an invalid message: {0}")]
    Client(#[from] CodecError),
    #[error("client connection failed: {0}")]
    ClientIo(io::Error),
    #[error("legacy connection failed: {0}")]
    LegacyIo(io::Error),
}

/// Client messages the session must see whole (protocol 55.7, frontend messages).
fn frontend_inspected(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'E' | b'C' | b'D' | b'S' | b'F' | b'X'
    )
}

/// Legacy messages the session must see whole.
fn backend_inspected(tag: u8) -> bool {
    matches!(
        tag,
        b'Z' | b'E' | b'C' | b'1' | b'2' | b'3' | b'n' | b'T' | b's' | b'I' | b'K'
    )
}

/// Relays until either side closes or fails. `pending` holds client bytes already read
/// after the startup packet.
#[allow(clippy::too_many_arguments)]
pub async fn relay<CR, CW, LR, LW>(
    client_r: &mut CR,
    client_w: &mut CW,
    legacy_r: &mut LR,
    legacy_w: &mut LW,
    session: &RefCell<Session>,
    ctx: &Arc<Context>,
    key: &RefCell<Option<ClientKey>>,
    pending: BytesMut,
) -> Result<RelayEnd, RelayError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    LR: AsyncRead + Unpin,
    LW: AsyncWrite + Unpin,
{
    // Legacy's answers and the reads new answers both go to the client, each as whole
    // messages; a read goes to new only when legacy owes nothing.
    let client_w = tokio::sync::Mutex::new(client_w);
    let up = client_to_legacy(client_r, legacy_w, &client_w, session, ctx, pending);
    let down = legacy_to_client(legacy_r, &client_w, session, ctx, key);
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// Capacity above which an emptied buffer is given back, so a session that once sent or
/// received one large message does not keep its memory while idle.
const SHRINK_ABOVE: usize = 64 * 1024;

fn make_room(buf: &mut BytesMut, want: usize) {
    // An empty buffer near the end of its allocation would reclaim the whole allocation on
    // `reserve`, however large a past message made it: start a fresh one instead.
    if buf.is_empty() && !(MIN_READ_ROOM..=SHRINK_ABOVE).contains(&buf.capacity()) {
        *buf = BytesMut::with_capacity(READ_SIZE);
    }
    if want > buf.len() {
        buf.reserve((want - buf.len()).min(MAX_GROWTH));
    }
    if buf.capacity() - buf.len() < MIN_READ_ROOM {
        buf.reserve(READ_SIZE);
    }
}

async fn client_to_legacy<R, W, CW>(
    r: &mut R,
    w: &mut W,
    client_w: &tokio::sync::Mutex<&mut CW>,
    session: &RefCell<Session>,
    ctx: &Arc<Context>,
    mut buf: BytesMut,
) -> Result<RelayEnd, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    CW: AsyncWrite + Unpin,
{
    let max = ctx.limits.max_message_bytes;
    let mut pass = 0;
    let mut after = Vec::new();
    let mut started = Instant::now();
    loop {
        let found = scan(&buf, &mut pass, max, frontend_inspected)?;
        if found.first == 0 && pass == 0 && found.complete > 0 {
            let answered =
                crate::session::route::route_group(&buf[..found.complete], session, ctx).await;
            if let Some((end, answer)) = answered {
                buf.advance(end);
                let mut out = client_w.lock().await;
                out.write_all(&answer).await.map_err(RelayError::ClientIo)?;
                continue;
            }
        }
        if found.forward > 0 {
            let mut chunk = buf.split_to(found.forward).freeze();
            {
                let mut s = session.borrow_mut();
                let mut complete = found.complete;
                let held = match s.held_parse_at(&chunk, found.first, complete) {
                    Some(at) => s.held_unnamed.take().map(|parse| (at, parse)),
                    None => None,
                };
                if let Some((at, parse)) = &held {
                    chunk = with_frame_at(&chunk, *at, parse);
                    complete += parse.len();
                }
                for (at, tag, len) in frames(&chunk, found.first, complete) {
                    if held.as_ref().is_some_and(|(h, _)| *h == at) {
                        s.on_held_parse(&chunk, at, len);
                    } else {
                        s.on_frontend(tag, &chunk, at, len, &mut after);
                    }
                }
            }
            w.write_all(&chunk).await.map_err(RelayError::LegacyIo)?;
            ctx.metrics
                .added_latency
                .observe_duration(started.elapsed());
            ctx.metrics.bytes_from_clients.inc_by(chunk.len() as u64);
            let mut seen = Seen::default();
            for done in after.drain(..) {
                analyze_after_write(done, &chunk, ctx, &mut seen);
            }
            if seen.write || seen.settings {
                let mut s = session.borrow_mut();
                s.wrote |= seen.write;
                s.own_settings |= seen.settings;
            }
        }
        make_room(&mut buf, found.want);
        if r.read_buf(&mut buf).await.map_err(RelayError::ClientIo)? == 0 {
            return Ok(RelayEnd::ClientClosed);
        }
        started = Instant::now();
    }
}

/// `chunk` with `frame` inserted at byte `at`.
fn with_frame_at(chunk: &Bytes, at: usize, frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(chunk.len() + frame.len());
    out.extend_from_slice(&chunk[..at]);
    out.extend_from_slice(frame);
    out.extend_from_slice(&chunk[at..]);
    out.freeze()
}

/// What the statements just sent to legacy may do.
#[derive(Default)]
struct Seen {
    write: bool,
    settings: bool,
}

/// Classifies what was just sent to legacy and counts it.
fn analyze_after_write(done: AfterWrite, chunk: &[u8], ctx: &Context, seen: &mut Seen) {
    let mut count = |a: &Analysis| {
        for s in &a.statements {
            seen.write |= matches!(
                s.kind,
                StatementKind::Write | StatementKind::Unknown | StatementKind::Other
            );
            // A text pgdual could not read may have changed settings or the role (SET ROLE,
            // set_config): its session's reads stay on legacy.
            seen.settings |= matches!(s.kind, StatementKind::Session | StatementKind::Unknown);
            ctx.metrics.statement(s.kind);
        }
        match a.exceeded {
            Some(why) => ctx.metrics.analysis_skipped(why),
            None if a.is_unknown() => {
                ctx.metrics.parse_failures_total.inc();
            }
            None => {}
        }
    };
    match done {
        AfterWrite::Query { start, end } => {
            let sql = String::from_utf8_lossy(&chunk[start..end]);
            count(&ctx.cache.get(&sql))
        }
        AfterWrite::Execute(stmt) => count(stmt.analysis.get_or_init(|| ctx.cache.get(&stmt.sql))),
    }
}

async fn legacy_to_client<R, W>(
    r: &mut R,
    w: &tokio::sync::Mutex<&mut W>,
    session: &RefCell<Session>,
    ctx: &Arc<Context>,
    key: &RefCell<Option<ClientKey>>,
) -> Result<RelayEnd, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut pass = 0;
    let mut want = 0;
    loop {
        make_room(&mut buf, want);
        if r.read_buf(&mut buf).await.map_err(RelayError::LegacyIo)? == 0 {
            return Ok(RelayEnd::LegacyClosed);
        }
        let started = Instant::now();
        // Legacy's frames are trusted for size: its results may be as large as it likes.
        let found = scan(&buf, &mut pass, u64::MAX, backend_inspected)
            .map_err(|e| RelayError::LegacyIo(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        want = found.want;
        if found.forward == 0 {
            continue;
        }
        let Inspected {
            key_at,
            nudge,
            shadowed,
            dropped,
        } = inspect(&buf, &found, pass, session, ctx);
        if let Some(job) = shadowed {
            crate::reads::spawn_shadow(ctx.reads.clone(), *job);
        }
        if let (true, Some(commits)) = (nudge, &ctx.commits) {
            commits.ring();
        }
        if let Some((at, end)) = key_at {
            *key.borrow_mut() = Some(replace_backend_secret(&mut buf[at..end], ctx));
        }
        {
            let mut out = w.lock().await;
            let mut from = 0;
            for (at, end) in dropped {
                out.write_all(&buf[from..at])
                    .await
                    .map_err(RelayError::ClientIo)?;
                from = end;
            }
            out.write_all(&buf[from..found.forward])
                .await
                .map_err(RelayError::ClientIo)?;
        }
        ctx.metrics
            .added_latency
            .observe_duration(started.elapsed());
        ctx.metrics.bytes_from_legacy.inc_by(found.forward as u64);
        buf.advance(found.forward);
    }
}

/// What the relay does after a read of legacy's frames, besides forwarding them.
struct Inspected {
    /// Where BackendKeyData's body is, to swap its secret.
    key_at: Option<(usize, usize)>,
    /// A transaction that wrote has ended: the mirror may look at once.
    nudge: bool,
    /// A shadowed read whose legacy answer is now whole.
    shadowed: Option<Box<crate::reads::ShadowJob>>,
    /// Frames the client must not see (byte ranges, in order): answers to messages pgdual
    /// sent for it.
    dropped: Vec<(usize, usize)>,
}

/// Walks the whole frames legacy sent: the session's state, shadow capture, error counts.
fn inspect(
    buf: &[u8],
    found: &Scan,
    pass: usize,
    session: &RefCell<Session>,
    ctx: &Context,
) -> Inspected {
    let (mut key_at, mut nudge, mut shadowed) = (None, false, None);
    let mut dropped = Vec::new();
    let mut s = session.borrow_mut();
    if pass > 0 {
        if let Some(job) = &mut s.shadow {
            job.capture.spoiled = true;
        }
    }
    for (at, tag, len) in frames(buf, found.first, found.complete) {
        if s.shadow.is_some() {
            shadowed = shadowed.or_else(|| {
                capture(
                    &mut s,
                    tag,
                    &buf[at + 5..at + len],
                    ctx.shadow_capture_bytes,
                )
            });
        }
        if s.on_backend(tag, &buf[at + 5..at + len]) {
            dropped.push((at, at + len));
        }
        match tag {
            b'E' => {
                ctx.metrics.legacy_error_responses_total.inc();
            }
            // Process ID and a secret of 4 bytes (3.0) or more (3.2).
            b'K' if len >= 13 => key_at = Some((at + 5, at + len)),
            _ => {}
        }
    }
    if s.wrote && s.tx == crate::session::state::TxStatus::Idle && !s.busy() && !s.unsynced {
        s.wrote = false;
        s.last_write_done = Some(ctx.watermark.now());
        nudge = true;
    }
    Inspected {
        key_at,
        nudge,
        shadowed,
        dropped,
    }
}

/// Records one frame of legacy's answer to a shadowed read; the job once the answer is whole.
fn capture(
    s: &mut Session,
    tag: u8,
    body: &[u8],
    max: usize,
) -> Option<Box<crate::reads::ShadowJob>> {
    let job = s.shadow.as_mut()?;
    let c = &mut job.capture;
    match tag {
        b'T' => c.row = Some(Bytes::copy_from_slice(body)),
        b'D' if !c.spoiled => {
            c.bytes += body.len();
            if c.bytes > max {
                c.spoiled = true;
                c.rows = Default::default();
            } else {
                c.rows.push(body);
            }
        }
        b'C' => c.complete = true,
        b'E' | b's' => c.spoiled = true,
        b'Z' => return s.shadow.take(),
        _ => {}
    }
    None
}

/// Keeps legacy's process ID in its BackendKeyData and swaps its secret for pgdual's (of the
/// same length), remembering legacy's so that a CancelRequest sent to pgdual reaches the
/// right backend.
fn replace_backend_secret(body: &mut [u8], ctx: &Context) -> ClientKey {
    let (legacy_pid, legacy_secret) =
        crate::proto::backend::backend_key_data(body).unwrap_or((0, &[]));
    let key = ctx.cancel.register(legacy_pid, legacy_secret);
    body[4..].copy_from_slice(&key.secret);
    key
}

/// Reads until the read buffer holds at least one byte more; used by the startup phase.
pub async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> io::Result<bool> {
    make_room(buf, 0);
    Ok(r.read_buf(buf).await? > 0)
}
