//! The jobs' endpoints: start, follow, pause, resume and cancel a table's backfill; verify a
//! table (and repair it) and read its last report.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::{parse_body, Admin};
use crate::jobs::backfill::{Ended, Request};
use crate::jobs::state;
use crate::jobs::table::JobError;
use crate::jobs::StartError;

pub fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route(
            "/tables/{table}/backfill",
            get(get_backfill).post(post_backfill),
        )
        .route("/tables/{table}/backfill/{action}", post(control_backfill))
        .route("/tables/{table}/verify", get(get_verify).post(post_verify))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn job_error(e: JobError, show_values: bool) -> Response {
    let status = match &e {
        JobError::NoRule(_) => StatusCode::NOT_FOUND,
        JobError::Refused(_) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.for_log(show_values))
}

/// A JSON body that may be left out (its defaults then).
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: &str,
    expected: &str,
) -> Result<T, String> {
    if body.trim().is_empty() {
        Ok(T::default())
    } else {
        parse_body(body, expected)
    }
}

/// Runs `f` over a legacy session with the jobs' state tables in place.
async fn on_legacy<T, F, Fut>(admin: &Admin, f: F) -> Result<T, JobError>
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, JobError>>,
{
    let c = admin
        .jobs
        .endpoints
        .legacy
        .client()
        .await
        .map_err(JobError::Connect)?;
    state::install(&c).await?;
    f(c).await
}

/// `POST /tables/{t}/backfill` with an optional JSON body of options: starts the backfill
/// in the background (202 with its progress), or answers a dry run with its plan.
async fn post_backfill(
    State(admin): State<Arc<Admin>>,
    Path(table): Path<String>,
    body: String,
) -> Response {
    let table = match admin.jobs.table(&table) {
        Ok(t) => t,
        Err(e) => return job_error(e, admin.jobs.log_values),
    };
    let request: Request = match optional_body(
        &body,
        r#"{"batch_size": N, "target_chunk_ms": N, "concurrency": N, "rate": N, "max_runtime_s": N, "restart": bool, "dry_run": bool}"#,
    ) {
        Ok(r) => r,
        Err(reason) => return error(StatusCode::UNPROCESSABLE_ENTITY, reason),
    };
    let options = match request.options(&admin.jobs.backfill) {
        Ok(o) => o,
        Err(reason) => return error(StatusCode::UNPROCESSABLE_ENTITY, reason),
    };
    let dry_run = options.dry_run;
    let job = admin.jobs.backfill(&table, options);
    if dry_run {
        return match job.run().await {
            Ok(Ended::Planned(plan)) => {
                Json(json!({ "table": table, "plan": plan })).into_response()
            }
            Ok(other) => {
                Json(json!({ "table": table, "plan": format!("{other:?}") })).into_response()
            }
            Err(e) => job_error(e, admin.jobs.log_values),
        };
    }
    match admin.jobs.start_backfill(job).await {
        Ok(progress) => (
            StatusCode::ACCEPTED,
            Json(json!({ "progress": progress.view() })),
        )
            .into_response(),
        Err(StartError::Preflight(e)) => job_error(e, admin.jobs.log_values),
        Err(StartError::Running(table)) => error(
            StatusCode::CONFLICT,
            format!("a backfill of {table} is running here"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /tables/{t}/backfill`: the checkpoint legacy keeps (whoever runs the backfill) and,
/// when this process runs or ran it, its live progress.
async fn get_backfill(State(admin): State<Arc<Admin>>, Path(table): Path<String>) -> Response {
    let table = match admin.jobs.table(&table) {
        Ok(t) => t,
        Err(e) => return job_error(e, admin.jobs.log_values),
    };
    let checkpoint = on_legacy(&admin, |c| {
        let t = table.clone();
        async move { state::load(&c, &t).await }
    })
    .await;
    match checkpoint {
        Ok(checkpoint) => Json(json!({
            "table": table,
            "checkpoint": checkpoint,
            "progress": admin.jobs.progress(&table),
        }))
        .into_response(),
        Err(e) => job_error(e, admin.jobs.log_values),
    }
}

/// `POST /tables/{t}/backfill/pause|resume|cancel`: recorded in legacy, where the running
/// backfill (in any pgdual, or the command line) reads it before its next chunk.
async fn control_backfill(
    State(admin): State<Arc<Admin>>,
    Path((table, action)): Path<(String, String)>,
) -> Response {
    let table = match admin.jobs.table(&table) {
        Ok(t) => t,
        Err(e) => return job_error(e, admin.jobs.log_values),
    };
    let request = match action.as_str() {
        "pause" => Some("pause"),
        "cancel" => Some("cancel"),
        "resume" => None,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: pause, resume or cancel"),
            )
        }
    };
    let recorded = on_legacy(&admin, |c| {
        let t = table.clone();
        async move { state::request(&c, &t, request).await }
    })
    .await;
    match recorded {
        Ok(true) => Json(json!({ "table": table, "request": action })).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("legacy has no backfill of {table} on record"),
        ),
        Err(e) => job_error(e, admin.jobs.log_values),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    #[serde(default)]
    repair: bool,
}

/// `POST /tables/{t}/verify` (`{"repair": true}` to repair): compares the table and answers
/// with the report when done.
async fn post_verify(
    State(admin): State<Arc<Admin>>,
    Path(table): Path<String>,
    body: String,
) -> Response {
    let table = match admin.jobs.table(&table) {
        Ok(t) => t,
        Err(e) => return job_error(e, admin.jobs.log_values),
    };
    let body: VerifyBody = match optional_body(&body, r#"{"repair": bool}"#) {
        Ok(b) => b,
        Err(reason) => return error(StatusCode::UNPROCESSABLE_ENTITY, reason),
    };
    match admin.jobs.verify(&table, body.repair).run().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => job_error(e, admin.jobs.log_values),
    }
}

/// `GET /tables/{t}/verify`: the last report legacy keeps.
async fn get_verify(State(admin): State<Arc<Admin>>, Path(table): Path<String>) -> Response {
    let table = match admin.jobs.table(&table) {
        Ok(t) => t,
        Err(e) => return job_error(e, admin.jobs.log_values),
    };
    let report = on_legacy(&admin, |c| {
        let t = table.clone();
        async move { state::last_report(&c, &t).await }
    })
    .await;
    match report {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("{table} has not been verified yet"),
        ),
        Err(e) => job_error(e, admin.jobs.log_values),
    }
}
