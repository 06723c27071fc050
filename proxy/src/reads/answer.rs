//! Answering a read from new: the plan's SQL run on a pooled connection to new with the
//! client's parameters and the session's printing settings, and the answer sent as legacy
//! would have sent it (legacy's own RowDescription, new's rows and command tag). Anything
//! off is a [`Fallback`], and legacy answers.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pgdual_rules::{ReadPlan, RuleSet};
use tracing::{debug, warn};

use super::counters::Routed;
use super::describe::{describe, Described};
use super::{Describe, Fallback, Reads, Request, Settings};
use crate::net::conn::{BackendConn, BackendError};
use crate::net::pool;
use crate::proto::backend::{self, error_fields, same_shape, with_formats};
use crate::proto::codec::Frame;
use crate::proto::frontend;

/// What new said to one read.
pub(super) struct NewAnswer {
    pub row: Option<Bytes>,
    pub rows: Vec<Bytes>,
    pub complete: Bytes,
}

/// Runs the plan's SQL on new with the request's parameters and result formats.
pub(super) async fn run_on_new(
    reads: &Reads,
    rules: &RuleSet,
    plan: &ReadPlan,
    request: &Request,
    described: &Described,
    settings: &Settings,
    on_new: &mut Duration,
) -> Result<NewAnswer, Fallback> {
    if reads.health.is_down() {
        return Err(Fallback::Unavailable);
    }
    let started = Instant::now();
    let answer = on_new_database(reads, rules, plan, request, described, settings).await;
    *on_new += started.elapsed();
    answer
}

/// The part of [`run_on_new`] spent on new: a pooled connection, the session's settings,
/// the round trip.
async fn on_new_database(
    reads: &Reads,
    rules: &RuleSet,
    plan: &ReadPlan,
    request: &Request,
    described: &Described,
    settings: &Settings,
) -> Result<NewAnswer, Fallback> {
    let cfg = &reads.settings;
    let timeout = reads.timeout();
    let Some(target) = reads.targets.for_plan(plan, rules) else {
        return Err(Fallback::Unavailable);
    };
    let mut conn = match pool::checkout(target).await {
        Ok(c) => c,
        Err(e) => {
            let retry_after = Duration::from_millis(cfg.retry_after_ms);
            if reads.health.failed(retry_after) {
                warn!(error = %e, "new is unreachable; reads fall back to legacy");
            } else {
                debug!(error = %e, "a connection to new failed; this read falls back");
            }
            return Err(Fallback::Unavailable);
        }
    };
    let result = async {
        align_settings(&mut conn, settings, timeout, cfg.log_values).await?;
        exchange(
            &mut conn,
            plan,
            request,
            described,
            cfg.max_result_bytes,
            timeout,
        )
        .await
    }
    .await;
    pool::checkin(target, conn);
    if result.is_ok() {
        reads.health.answered();
    }
    if let (
        Ok(x),
        Request::Simple {
            lifted: Some(l), ..
        },
    ) = (&result, request)
    {
        if x.refused_parse {
            debug!(
                "new refused a simple query's shape with its literals lifted; its texts keep them"
            );
            reads.keep_literals(l);
        }
    }
    let frames = result.map(|x| x.frames).map_err(|e| match e {
        BackendError::TooLarge(_) => Fallback::TooLarge,
        BackendError::Protocol(e) => {
            debug!(error = %e, "read on new failed");
            Fallback::Error
        }
        e => {
            debug!(error = %e, "read on new failed");
            Fallback::Unavailable
        }
    })?;
    new_answer(frames, cfg.log_values)
}

/// Sends the plan's SQL with the request's parameters (see [`request_frames`]) and reads
/// the answer. Statements are prepared once per pooled connection.
async fn exchange(
    conn: &mut BackendConn,
    plan: &ReadPlan,
    request: &Request,
    described: &Described,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Exchanged, BackendError> {
    let mut out = BytesMut::new();
    let prepare = request_frames(conn, plan, request, described, &mut out, &mut Vec::new());
    let frames = conn.round_trip(&out, max_bytes, timeout).await?;
    let parsed = frames.iter().any(|f| f.tag == b'1');
    let errored = frames.iter().any(|f| f.tag == b'E');
    let refused_parse = settle_prepare(conn, &plan.sql, prepare, parsed, errored);
    Ok(Exchanged {
        frames,
        refused_parse,
    })
}

/// A statement being prepared by a request: its name and parameter types.
pub(super) type Preparing = Option<(String, Vec<u32>)>;

/// Adds one read's messages to `out`: a simple Query; a prepared statement, as the client
/// prepared it on legacy; or the statement of a simple query's shape with its literals
/// bound. `batch` holds the statements earlier requests of the same write prepare.
pub(super) fn request_frames(
    conn: &mut BackendConn,
    plan: &ReadPlan,
    request: &Request,
    described: &Described,
    out: &mut BytesMut,
    batch: &mut Vec<(String, Vec<u32>, String)>,
) -> Preparing {
    match request {
        Request::Simple { lifted: None, .. } => {
            frontend::put_query(out, &plan.sql);
            None
        }
        Request::Simple {
            lifted: Some(l), ..
        } => bind_statement(conn, &plan.sql, &l.types, &l.bind_rest(), out, batch),
        Request::Extended { bind_rest, .. } => bind_statement(
            conn,
            &plan.sql,
            &described.new_params,
            bind_rest,
            out,
            batch,
        ),
    }
}

/// Records a statement new confirmed (ParseComplete among `frames`); `true` when new
/// refused to prepare it.
pub(super) fn settle_prepare(
    conn: &mut BackendConn,
    sql: &str,
    prepare: Preparing,
    parsed: bool,
    errored: bool,
) -> bool {
    let Some((name, types)) = prepare else {
        return false;
    };
    if parsed && !name.is_empty() {
        conn.prepared(sql, &types, name);
    }
    !parsed && errored
}

/// What new sent back, and whether it refused to prepare the statement.
struct Exchanged {
    frames: Vec<Frame>,
    refused_parse: bool,
}

/// Adds Bind (of `sql`, prepared first unless the connection or an earlier request of the
/// batch has it already), Describe, Execute and Sync to `out`; returns the name and types
/// being prepared, if it is.
fn bind_statement(
    conn: &mut BackendConn,
    sql: &str,
    types: &[u32],
    bind_rest: &[u8],
    out: &mut BytesMut,
    batch: &mut Vec<(String, Vec<u32>, String)>,
) -> Preparing {
    let mut preparing = None;
    let earlier = batch
        .iter()
        .find(|(s, t, _)| s == sql && t == types)
        .map(|(_, _, n)| n.as_str());
    let name = match conn.statement(sql, types).or(earlier) {
        Some(known) => known,
        None => {
            let name = conn.statement_name().unwrap_or_default();
            frontend::put_parse(out, &name, sql, types);
            if !name.is_empty() {
                batch.push((sql.to_string(), types.to_vec(), name.clone()));
            }
            preparing = Some((name, types.to_vec()));
            preparing.as_ref().map_or("", |(n, _)| n.as_str())
        }
    };
    // Bind (unnamed portal), Describe of the portal, Execute of all rows, Sync.
    frontend::put_bind(out, "", name, bind_rest);
    frontend::put_describe(out, b'P', "");
    frontend::put_execute(out, "", 0);
    frontend::put_sync(out);
    preparing
}

/// New's answer from its frames; an ErrorResponse is a [`Fallback::Error`].
pub(super) fn new_answer(frames: Vec<Frame>, log_values: bool) -> Result<NewAnswer, Fallback> {
    let mut answer = NewAnswer {
        row: None,
        rows: Vec::new(),
        complete: Bytes::new(),
    };
    for Frame { tag, body } in frames {
        match tag {
            b'T' => answer.row = Some(body),
            b'D' => answer.rows.push(body),
            b'C' => answer.complete = body,
            b'E' => {
                let (code, message) = error_fields(&body);
                let message = crate::telemetry::redact::server_message(&code, &message, log_values);
                debug!(code, message, "new answered a read with an error");
                return Err(Fallback::Error);
            }
            _ => {}
        }
    }
    Ok(answer)
}

/// Makes the connection's printing settings those of the session.
pub(super) async fn align_settings(
    conn: &mut BackendConn,
    settings: &Settings,
    timeout: Duration,
    show_values: bool,
) -> Result<(), BackendError> {
    let mut sql = String::new();
    for (name, value) in settings.iter() {
        if conn.parameter(name) != Some(value.as_str()) {
            sql.push_str(&format!(
                "SET {} TO '{}';",
                pgdual_rules::ruleset::quote_ident(name),
                value.replace('\'', "''")
            ));
        }
    }
    if !sql.is_empty() {
        // Constants in a prepared statement were read under the settings it was prepared
        // with (a timestamp literal under TimeZone and DateStyle): new settings, new statements.
        sql.push_str("DEALLOCATE ALL;");
        conn.forget_statements();
        let frames = conn
            .round_trip(&frontend::query_frame(&sql), 1 << 16, timeout)
            .await?;
        if let Some(f) = frames.iter().find(|f| f.tag == b'E') {
            let (code, message) = error_fields(&f.body);
            let message = crate::telemetry::redact::server_message(&code, &message, show_values);
            return Err(BackendError::Protocol(format!(
                "new refused the session's settings: {code} {message}"
            )));
        }
    }
    Ok(())
}

/// Answers a read from new: the bytes to send the client, or why legacy must answer.
pub async fn answer(
    reads: &Reads,
    rules: &RuleSet,
    plan: &ReadPlan,
    request: &Request,
    settings: &Settings,
) -> Result<BytesMut, Fallback> {
    let started = Instant::now();
    let mut on_new = Duration::ZERO;
    let answer = answer_timed(reads, rules, plan, request, settings, &mut on_new).await;
    reads
        .families
        .times
        .observe(Routed::New, started.elapsed(), on_new);
    answer
}

async fn answer_timed(
    reads: &Reads,
    rules: &RuleSet,
    plan: &ReadPlan,
    request: &Request,
    settings: &Settings,
    on_new: &mut Duration,
) -> Result<BytesMut, Fallback> {
    if reads.health.is_down() {
        return Err(Fallback::Unavailable);
    }
    let described = describe(reads, plan, request)
        .await
        .map_err(|()| Fallback::Describe)?;
    let Some(legacy_row) = &described.row else {
        return Err(Fallback::Shape);
    };
    let new = run_on_new(reads, rules, plan, request, &described, settings, on_new).await?;
    if !same_shape(legacy_row, new.row.as_deref()) {
        return Err(Fallback::Shape);
    }
    if new.rows.is_empty()
        && plan
            .tables
            .iter()
            .any(|t| rules.table(t).is_some_and(|r| r.fallback_on_empty))
    {
        return Err(Fallback::Empty);
    }
    let mut out = BytesMut::with_capacity(
        64 + legacy_row.len() + new.rows.iter().map(|r| r.len() + 5).sum::<usize>(),
    );
    match request {
        Request::Simple { .. } => backend::put_row_description(&mut out, legacy_row),
        Request::Extended {
            bind_rest,
            describe,
            parse,
            ..
        } => {
            if *parse {
                backend::put_parse_complete(&mut out);
            }
            backend::put_bind_complete(&mut out);
            match describe {
                Describe::None => {}
                Describe::Portal => {
                    let formats = frontend::result_formats(bind_rest).ok_or(Fallback::Shape)?;
                    let row = with_formats(legacy_row, &formats).ok_or(Fallback::Shape)?;
                    backend::put_row_description(&mut out, &row);
                }
                Describe::Statement => {
                    backend::put_parameter_description(&mut out, &described.params);
                    backend::put_row_description(&mut out, legacy_row);
                }
            }
        }
    }
    for r in &new.rows {
        backend::put_data_row(&mut out, r);
    }
    backend::put_command_complete(&mut out, &new.complete);
    backend::put_ready_for_query(&mut out, b'I');
    Ok(out)
}
