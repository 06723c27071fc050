//! The admin HTTP API: `/healthz`, `/readyz`, `/metrics`, `GET`/`PUT /rules`, the per-table
//! flags, `/status`, and the migration jobs ([`jobs`]).
//!
//! Binds to loopback by default; when `admin.token` is set, every endpoint but `/healthz`
//! needs `Authorization: Bearer <token>` (config validation requires a token off loopback).
//! It runs on its own thread so that nothing here can slow the relay workers.

mod jobs;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use axum::Router;
use tokio::sync::watch;
use tracing::error;

use pgdual_rules::AnalysisCache;

use crate::control::rules_store::RulesStore;
use crate::net::legacy::LegacyTarget;
use crate::reads::Reads;
use crate::telemetry::metrics::Metrics;

/// What the API reads and changes.
pub struct Admin {
    /// Bearer token every endpoint but `/healthz` requires (`admin.token`).
    pub token: Option<String>,
    /// Bounds `/readyz`'s connection attempt (`limits.connect_timeout_ms`, at most 2 s).
    pub connect_timeout: Duration,
    pub legacy: LegacyTarget,
    pub rules: Arc<RulesStore>,
    pub reads: Arc<Reads>,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<AnalysisCache>,
    pub jobs: Arc<crate::jobs::Jobs>,
    pub capture: Arc<crate::capture::CaptureStatus>,
}

pub fn router(admin: Arc<Admin>) -> Router {
    let protected = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/rules", get(get_rules).put(put_rules))
        .route("/tables/{table}/write", axum::routing::put(put_table_write))
        .route("/tables/{table}/read", axum::routing::put(put_table_read))
        .route("/reads/mismatches", get(mismatches))
        .route("/status", get(status))
        .merge(jobs::routes())
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(protected)
        .with_state(admin)
}

async fn require_token(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    if let Some(token) = &admin.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let timeout = admin.connect_timeout.min(Duration::from_secs(2));
    match admin.legacy.reachable(timeout).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

/// Each table of a rule set with its modes, as the API shows them.
fn tables_json(rules: &pgdual_rules::RuleSet) -> Vec<serde_json::Value> {
    rules
        .tables()
        .iter()
        .map(|t| {
            serde_json::json!({
                "legacy": t.legacy.to_string(),
                "new": t.new.to_string(),
                "database": format!("{:?}", t.database).to_lowercase(),
                "write": format!("{:?}", t.write).to_lowercase(),
                "read": t.read.as_str(),
                "read_percent": t.read_percent,
                "fallback_on_empty": t.fallback_on_empty,
            })
        })
        .collect()
}

/// The rules in force: version, text, and each table's modes.
async fn get_rules(State(admin): State<Arc<Admin>>) -> Response {
    let snap = admin.rules.load();
    Json(serde_json::json!({
        "version": snap.version,
        "file": admin.rules.path().map(|p| p.display().to_string()),
        "tables": tables_json(&snap.rules),
        "text": snap.text,
    }))
    .into_response()
}

/// Replaces the whole rule set with the TOML body: validated whole (and against both
/// catalogs) before one swap, written back to the rules file; 422 with every reason if not.
async fn put_rules(State(admin): State<Arc<Admin>>, body: String) -> Response {
    use crate::control::rules_store::ReloadOutcome;
    if admin.rules.path().is_none() {
        let outcome = ReloadOutcome::Rejected {
            version: admin.rules.load().version,
            reasons: vec!["no rules_file is configured; start pgdual with one".into()],
        };
        return (StatusCode::CONFLICT, Json(outcome)).into_response();
    }
    reload_answer(admin.rules.apply(body, true).await)
}

/// 200 with the outcome, or 422 with every reason when the rules were rejected.
fn reload_answer(outcome: crate::control::rules_store::ReloadOutcome) -> Response {
    let status = match outcome {
        crate::control::rules_store::ReloadOutcome::Rejected { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::OK,
    };
    (status, Json(outcome)).into_response()
}

/// A JSON request body, whatever Content-Type the client sent (curl's `-d` sends a form
/// type); the error names what was wrong and the shape expected.
fn parse_body<T: serde::de::DeserializeOwned>(body: &str, expected: &str) -> Result<T, String> {
    serde_json::from_str(body).map_err(|e| format!("invalid body: {e}; expected {expected}"))
}

/// A flag change refused before validation: the rules stay at `version`.
fn rejected(status: StatusCode, version: u64, reason: String) -> Response {
    let outcome = crate::control::rules_store::ReloadOutcome::Rejected {
        version,
        reasons: vec![reason],
    };
    (status, Json(outcome)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: pgdual_rules::ruleset::WriteMode,
}

/// Sets one table's write mode (`{"mode": "on"}` or `"off"`): the rules text is edited in
/// place and goes through the same whole validation, swap and write-back as `PUT /rules`.
async fn put_table_write(
    State(admin): State<Arc<Admin>>,
    Path(table): Path<String>,
    body: String,
) -> Response {
    let snap = admin.rules.load();
    let reject = |status, reason| rejected(status, snap.version, reason);
    let body: ModeBody = match parse_body(&body, r#"{"mode": "on|off"}"#) {
        Ok(b) => b,
        Err(reason) => return reject(StatusCode::UNPROCESSABLE_ENTITY, reason),
    };
    edit_rules(&admin, snap.version, |text| {
        pgdual_rules::ruleset::set_write_mode(text, &table, body.mode)
    })
    .await
}

/// Applies `edit` to the rules in force (whole validation, swap, write-back); 404 when the
/// edit itself fails (no rule for the table).
async fn edit_rules(
    admin: &Admin,
    version: u64,
    edit: impl FnOnce(&str) -> Result<String, String>,
) -> Response {
    match admin.rules.edit(edit).await {
        Ok(outcome) => reload_answer(outcome),
        Err(reason) => rejected(StatusCode::NOT_FOUND, version, reason),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    mode: pgdual_rules::ReadMode,
    /// 0-100; the file's value (or 100) when left out.
    percent: Option<u8>,
}

/// Sets one table's read mode and ramp (`{"mode": "shadow", "percent": 10}`), through the
/// same whole validation, swap and write-back as `PUT /rules`.
async fn put_table_read(
    State(admin): State<Arc<Admin>>,
    Path(table): Path<String>,
    body: String,
) -> Response {
    let snap = admin.rules.load();
    let reject = |status, reason| rejected(status, snap.version, reason);
    let body: ReadBody =
        match parse_body(&body, r#"{"mode": "legacy|shadow|new", "percent": 0-100}"#) {
            Ok(b) => b,
            Err(reason) => return reject(StatusCode::UNPROCESSABLE_ENTITY, reason),
        };
    if body.percent.is_some_and(|p| p > 100) {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "percent: {} is not a percentage (0-100)",
                body.percent.unwrap_or(0)
            ),
        );
    }
    edit_rules(&admin, snap.version, |text| {
        pgdual_rules::ruleset::set_read_mode(text, &table, body.mode, body.percent)
    })
    .await
}

/// The latest shadow comparisons that differed, oldest first.
async fn mismatches(State(admin): State<Arc<Admin>>) -> Response {
    Json(serde_json::json!({ "samples": admin.reads.samples() })).into_response()
}

/// Read counters per legacy table.
fn reads_json(reads: &Reads) -> serde_json::Value {
    use crate::reads::Fallback;
    let mut out = serde_json::Map::new();
    for (table, r) in reads.all_tables() {
        let fallbacks: serde_json::Map<String, serde_json::Value> = Fallback::ALL
            .iter()
            .map(|f| (f.as_str().to_string(), r.fallback(*f).into()))
            .collect();
        let kept_for_role: serde_json::Map<String, serde_json::Value> =
            crate::reads::KeptForRole::ALL
                .iter()
                .map(|k| {
                    let n = r.kept_for_role[*k as usize].get();
                    (k.as_str().to_string(), n.into())
                })
                .collect();
        out.insert(
            table.to_string(),
            serde_json::json!({
                "legacy": r.legacy.get(),
                "new": r.new.get(),
                "shadow": r.shadow.get(),
                "fallbacks": fallbacks,
                "kept_on_legacy_for_role": kept_for_role,
                "shadow_matches": r.shadow_matches.get(),
                "shadow_mismatches": r.shadow_mismatches.get(),
                "shadow_errors": r.shadow_errors.get(),
                "shadow_skipped": r.shadow_skipped.get(),
                "shadow_match_rate": r.match_rate(),
            }),
        );
    }
    out.into()
}

/// Rules version, per-table modes, and the mirror's state, in one JSON document.
async fn status(State(admin): State<Arc<Admin>>) -> Response {
    let snap = admin.rules.load();
    let m = &admin.metrics.mirror;
    Json(serde_json::json!({
        "rules_version": snap.version,
        "tables": tables_json(&snap.rules),
        "client_connections": admin.metrics.client_connections.get(),
        "reads": reads_json(&admin.reads),
        "mirror": {
            "ready": m.ready.get() == 1,
            "rules_version": m.rules_version.get(),
            "backlog_changes": m.backlog.get(),
            "batches": m.batches_total.get(),
            "changes": m.changes_total.get(),
            "dead_letters": m.dead_letters_total.get(),
            "retries": m.retries_total.get(),
            "capture": admin.capture.method.load().as_deref(),
            "slot": admin.capture.slot.load().as_deref(),
            "needs_backfill": admin.capture.gaps.load().iter()
                .map(|(t, why)| serde_json::json!({"table": t, "reason": why}))
                .collect::<Vec<_>>(),
        },
        "backfills": admin.jobs.all_progress(),
    }))
    .into_response()
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics.render(),
    )
        .into_response()
}

/// Serves the admin API on `listener` until `stop` is set.
pub fn run(listener: std::net::TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    let Some(rt) = crate::runtime::current_thread("admin") else {
        return;
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot register the admin listener");
                return;
            }
        };
        let serve = axum::serve(listener, router(admin)).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            error!(error = %e, "admin server failed");
        }
    });
}
