//! How legacy describes a read's statement (parameter types, result columns), learned by
//! describing it on legacy over a pooled connection, cached by text (or by fingerprint when
//! literals cannot change the result's shape).

use std::sync::Arc;

use pgdual_rules::ReadPlan;
use tracing::debug;

use super::{Reads, Request, PLAN_CACHE_CAPACITY};
use crate::net::pool;
use crate::proto::{backend, frontend};

/// OIDs below this are built into PostgreSQL, the same in every cluster of a version.
const FIRST_NORMAL_OID: u32 = 16384;

/// How legacy describes a statement: parameter types and result columns.
#[derive(Debug)]
pub struct Described {
    pub params: Vec<u32>,
    /// `params` as new's Parse gets them: a type legacy's catalog defined (an OID from
    /// 16384 up: an enum, a domain) is left for new to infer, as its OID there differs.
    pub new_params: Vec<u32>,
    /// The RowDescription body, or `None` for a statement that returns no rows.
    pub row: Option<bytes::Bytes>,
}

/// Legacy's description of the request's statement, cached by text and declared parameter
/// types.
pub async fn describe(
    reads: &Reads,
    plan: &ReadPlan,
    request: &Request,
) -> Result<Arc<Described>, ()> {
    let (sql, param_types) = (request.sql(), request.param_types());
    // Texts that differ only in literals outside the select list (`WHERE id = 1`, `= 2`)
    // have the same shape: one describe serves them all.
    let key_text = match request {
        // One shape, one description: its literals are values outside the select list.
        Request::Simple {
            lifted: Some(l), ..
        } => l.key.1.clone(),
        Request::Simple { .. } if !plan.literal_output => {
            Arc::from(pgdual_rules::fingerprint::fingerprint(sql))
        }
        Request::Simple { sql, .. } | Request::Extended { sql, .. } => sql.clone(),
    };
    let key = (key_text, param_types.to_vec());
    if let Some(d) = reads.described.get(&key) {
        return Ok(d.clone());
    }
    let mut request = frontend::parse_frame("", sql, param_types);
    request.extend_from_slice(&frontend::describe_frame(b'S', ""));
    request.extend_from_slice(&frontend::sync_frame());
    let target = &reads.targets.describe;
    let mut conn = pool::checkout(target).await.map_err(|e| {
        debug!(error = %e, "cannot describe a read on legacy");
    })?;
    let frames = conn.round_trip(&request, 1 << 20, reads.timeout()).await;
    pool::checkin(target, conn);
    let frames = frames.map_err(|e| debug!(error = %e, "cannot describe a read on legacy"))?;
    let mut params = None;
    let mut row = None;
    for f in &frames {
        match f.tag {
            b't' => params = Some(backend::parameter_types(&f.body)),
            b'T' => row = Some(f.body.clone()),
            b'E' => {
                let (code, message) = backend::error_fields(&f.body);
                let message =
                    crate::telemetry::redact::server_message(&code, &message, reads.log_values());
                debug!(code, message, "legacy refused to describe a read");
                return Err(());
            }
            _ => {}
        }
    }
    let params = params.ok_or(())?;
    let d = Arc::new(Described {
        new_params: params
            .iter()
            .map(|&t| if t < FIRST_NORMAL_OID { t } else { 0 })
            .collect(),
        params,
        row,
    });
    if reads.described.len() >= PLAN_CACHE_CAPACITY {
        reads.described.clear();
    }
    reads.described.insert(key, d.clone());
    Ok(d)
}
