//! Reads routed by the rules: answered by new (with legacy as the fallback) or shadowed on new
//! and compared, off the critical path.
//!
//! The relay decides per request group (a simple Query, or Bind/Describe/Execute/Sync) with
//! [`pgdual_rules::route::route`]. A read answered by new goes out as legacy would have sent
//! it: legacy's own RowDescription (learned by describing the statement on legacy, cached),
//! new's rows and command tag, and ReadyForQuery. Anything off (an error, new unreachable or
//! slow, a result shape that differs from legacy's, an empty result where the rule says so,
//! a result over the size limit) falls back to legacy and is counted with its reason.

pub mod route;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use pgdual_rules::read_plan::{KeyRef, NotRoutable, ReadPlan};
use pgdual_rules::ruleset::TargetDatabase;
use pgdual_rules::{RuleSet, TableName};
use serde::Serialize;
use tracing::{debug, warn};

use crate::app::Shared;
use crate::net::backend::{self, BackendError, Frame, Target};
use crate::proto::codec::put_message;

/// Distinct (rules version, SQL text) plans kept; the map is cleared when full.
const PLAN_CACHE_CAPACITY: usize = 10_000;
/// Mismatch samples kept for the admin API.
const SAMPLES: usize = 64;
/// Settings that change how values print, kept equal on new's connection to the session's.
pub const TRACKED_SETTINGS: [&str; 4] =
    ["TimeZone", "DateStyle", "IntervalStyle", "client_encoding"];

/// Why a read meant for new was answered by legacy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// New answered with an error.
    Error,
    /// New could not be reached, broke off, or took longer than `reads.timeout_ms`.
    Unavailable,
    /// New's columns differ from legacy's in number or type.
    Shape,
    /// No rows, and the rule has `fallback_on_empty`.
    Empty,
    /// The result is over `reads.max_result_bytes`.
    TooLarge,
    /// Legacy could not describe the statement.
    Describe,
}

impl Fallback {
    pub const ALL: [Fallback; 6] = [
        Fallback::Error,
        Fallback::Unavailable,
        Fallback::Shape,
        Fallback::Empty,
        Fallback::TooLarge,
        Fallback::Describe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Error => "error",
            Fallback::Unavailable => "unavailable",
            Fallback::Shape => "shape",
            Fallback::Empty => "empty",
            Fallback::TooLarge => "too_large",
            Fallback::Describe => "describe",
        }
    }
}

/// Why a read that new or a shadow could have taken stayed on legacy because of the
/// client's role (the `reason` of `pgdual_reads_kept_on_legacy_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptForRole {
    /// The role lacks SELECT on a table or column the read touches.
    Privilege,
    /// The role's privileges were being looked up.
    PrivilegeUnchecked,
    /// A table the read touches has row-level security on legacy.
    RowSecurity,
    /// The session may have changed its role.
    Role,
}

impl KeptForRole {
    pub const ALL: [KeptForRole; 4] = [
        KeptForRole::Privilege,
        KeptForRole::PrivilegeUnchecked,
        KeptForRole::RowSecurity,
        KeptForRole::Role,
    ];

    pub fn of(why: pgdual_rules::route::Why) -> Option<KeptForRole> {
        use pgdual_rules::route::Why;
        match why {
            Why::Privilege => Some(KeptForRole::Privilege),
            Why::PrivilegeUnchecked => Some(KeptForRole::PrivilegeUnchecked),
            Why::RowSecurity => Some(KeptForRole::RowSecurity),
            Why::Role => Some(KeptForRole::Role),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeptForRole::Privilege => "privilege",
            KeptForRole::PrivilegeUnchecked => "privilege_unchecked",
            KeptForRole::RowSecurity => "rls",
            KeptForRole::Role => "role",
        }
    }
}

/// Read counters of one legacy table.
#[derive(Debug, Default)]
pub struct TableReads {
    pub legacy: AtomicU64,
    pub new: AtomicU64,
    pub shadow: AtomicU64,
    pub fallbacks: [AtomicU64; Fallback::ALL.len()],
    /// Reads kept on legacy for the client's role, by [`KeptForRole`].
    pub kept_for_role: [AtomicU64; KeptForRole::ALL.len()],
    pub shadow_matches: AtomicU64,
    pub shadow_mismatches: AtomicU64,
    pub shadow_errors: AtomicU64,
    pub shadow_skipped: AtomicU64,
}

impl TableReads {
    pub fn fallback(&self, why: Fallback) -> u64 {
        self.fallbacks[why as usize].load(Relaxed)
    }

    /// Matches over compared reads, when any were compared.
    pub fn match_rate(&self) -> Option<f64> {
        let m = self.shadow_matches.load(Relaxed);
        let n = m + self.shadow_mismatches.load(Relaxed);
        (n > 0).then(|| m as f64 / n as f64)
    }
}

/// A shadow comparison that differed.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub tables: Vec<String>,
    /// The statement with its literals replaced by `?`.
    pub fingerprint: String,
    /// The pinned key value (redacted unless `reads.log_values`).
    pub key: Option<String>,
    pub legacy_rows: usize,
    pub new_rows: usize,
    /// The first column whose values differ, when both sides have the same columns.
    pub column: Option<String>,
    pub legacy_value: Option<String>,
    pub new_value: Option<String>,
}

/// How legacy describes a statement: parameter types and result columns.
#[derive(Debug)]
pub struct Described {
    pub params: Vec<u32>,
    /// The RowDescription body, or `None` for a statement that returns no rows.
    pub row: Option<Bytes>,
}

/// A statement's plan for one rules version, or why new cannot answer it.
pub type CachedPlan = Arc<Result<ReadPlan, NotRoutable>>;

/// Everything the read router keeps between requests.
pub struct Reads {
    plans: DashMap<(u64, Box<str>), CachedPlan>,
    /// Verdicts that new cannot answer a statement, by rules version and fingerprint.
    unroutable: DashMap<(u64, Box<str>), CachedPlan>,
    described: DashMap<(Box<str>, Vec<u32>), Arc<Described>>,
    tables: DashMap<String, Arc<TableReads>>,
    samples: Mutex<VecDeque<Sample>>,
    shadow_slots: Arc<tokio::sync::Semaphore>,
    epoch: Instant,
    /// The mirror has applied every change committed before this instant (µs since epoch).
    mirrored_through: AtomicU64,
    /// New is not tried again before this instant (µs since epoch).
    new_down_until: AtomicU64,
    /// When new last answered a round trip (µs since epoch).
    new_answered_at: AtomicU64,
}

impl Reads {
    pub fn new(shadow_concurrency: usize) -> Self {
        Reads {
            plans: DashMap::new(),
            unroutable: DashMap::new(),
            described: DashMap::new(),
            tables: DashMap::new(),
            samples: Mutex::new(VecDeque::new()),
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(shadow_concurrency)),
            epoch: Instant::now(),
            mirrored_through: AtomicU64::new(0),
            new_down_until: AtomicU64::new(0),
            new_answered_at: AtomicU64::new(0),
        }
    }

    /// Microseconds since the router started; the clock of the watermarks.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The mirror has applied every change committed before `at` (from [`Reads::now`]).
    pub fn mirrored(&self, at: u64) {
        self.mirrored_through.fetch_max(at, Relaxed);
    }

    /// True when a write the session finished at `at` may not be on new yet.
    pub fn unmirrored(&self, at: Option<u64>) -> bool {
        at.is_some_and(|at| at >= self.mirrored_through.load(Relaxed))
    }

    /// The plan of `sql` under the rules at `version`, cached.
    pub fn plan(&self, version: u64, rules: &RuleSet, sql: &str) -> CachedPlan {
        let key = (version, Box::<str>::from(sql));
        if let Some(p) = self.plans.get(&key) {
            return p.clone();
        }
        // What keeps a statement from new is its shape, not its literals: one verdict per
        // fingerprint spares parsing every text that differs in literals only. At worst a
        // text whose literals would have let it through stays on legacy, which is always right.
        let shape = (
            version,
            Box::<str>::from(pgdual_rules::fingerprint::fingerprint(sql)),
        );
        if let Some(p) = self.unroutable.get(&shape) {
            return p.clone();
        }
        let plan = Arc::new(pgdual_rules::read_plan::plan_read(sql, rules));
        let (cache, key) = match &*plan {
            Err(NotRoutable::TooLong(_) | NotRoutable::Parse(_)) | Ok(_) => (&self.plans, key),
            Err(_) => (&self.unroutable, shape),
        };
        if cache.len() >= PLAN_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, plan.clone());
        plan
    }

    pub fn table(&self, name: &str) -> Arc<TableReads> {
        if let Some(t) = self.tables.get(name) {
            return t.clone();
        }
        self.tables.entry(name.to_string()).or_default().clone()
    }

    /// Counters of every table that has seen a routed read.
    pub fn all_tables(&self) -> Vec<(String, Arc<TableReads>)> {
        let mut v: Vec<_> = self
            .tables
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn sample(&self, s: Sample) {
        if let Ok(mut ring) = self.samples.lock() {
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back(s);
        }
    }

    /// Counts one read for each of its tables.
    pub fn count(&self, plan: &ReadPlan, f: impl Fn(&TableReads)) {
        self.count_tables(&plan.tables, f)
    }

    pub fn count_tables(&self, tables: &[TableName], f: impl Fn(&TableReads)) {
        for t in tables {
            f(&self.table(&t.to_string()));
        }
    }

    fn new_is_down(&self) -> bool {
        self.now() < self.new_down_until.load(Relaxed)
    }

    /// After a connection to new failed: reads skip new for `retry_after`, unless new
    /// answered on another connection within that time (one slow connect under load is not
    /// an outage; a connect that keeps failing is, once the answers stop). Returns whether
    /// new is now considered down.
    fn mark_new_down(&self, retry_after: Duration) -> bool {
        let now = self.now();
        let window = retry_after.as_micros() as u64;
        if now.saturating_sub(self.new_answered_at.load(Relaxed)) < window
            && self.new_answered_at.load(Relaxed) > 0
        {
            return false;
        }
        self.new_down_until.store(now + window, Relaxed);
        true
    }

    /// Per-table read counters in the Prometheus text format.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let tables: Vec<(String, Arc<TableReads>)> = self
            .all_tables()
            .into_iter()
            .map(|(t, r)| (t.replace('\\', "\\\\").replace('"', "\\\""), r))
            .collect();
        let mut out = String::new();
        let mut family = |name: &str, help: &str, rows: &mut dyn Iterator<Item = (String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
        family(
            "pgdual_reads_total",
            "Reads of tables with routing rules, by the side that answered (legacy, new) or shadow.",
            &mut tables.iter().flat_map(|(t, r)| {
                [("legacy", &r.legacy), ("new", &r.new), ("shadow", &r.shadow)]
                    .map(|(m, v)| (format!("table=\"{t}\",route=\"{m}\""), v.load(Relaxed)))
            }),
        );
        family(
            "pgdual_read_fallbacks_total",
            "Reads meant for new that legacy answered, by reason.",
            &mut tables.iter().flat_map(|(t, r)| {
                Fallback::ALL.map(|f| {
                    (
                        format!("table=\"{t}\",reason=\"{}\"", f.as_str()),
                        r.fallback(f),
                    )
                })
            }),
        );
        family(
            "pgdual_reads_kept_on_legacy_total",
            "Reads new or a shadow would have taken that legacy answered alone because of the \
             client's role: privilege (no SELECT on a table or column read), privilege_unchecked \
             (the role's privileges were being looked up), rls (row-level security), role (the \
             session changed its role).",
            &mut tables.iter().flat_map(|(t, r)| {
                KeptForRole::ALL.map(|k| {
                    (
                        format!("table=\"{t}\",reason=\"{}\"", k.as_str()),
                        r.kept_for_role[k as usize].load(Relaxed),
                    )
                })
            }),
        );
        family(
            "pgdual_shadow_reads_total",
            "Shadow comparisons by outcome (match, mismatch, error on new, skipped).",
            &mut tables.iter().flat_map(|(t, r)| {
                [
                    ("match", &r.shadow_matches),
                    ("mismatch", &r.shadow_mismatches),
                    ("error", &r.shadow_errors),
                    ("skipped", &r.shadow_skipped),
                ]
                .map(|(o, v)| (format!("table=\"{t}\",outcome=\"{o}\""), v.load(Relaxed)))
            }),
        );
        out
    }

    /// Forgets every plan (the rules at a version learned their legacy columns).
    pub fn forget_plans(&self) {
        self.plans.clear();
        self.unroutable.clear();
    }

    /// Forgets what was learned about legacy's statements (after a rules change).
    pub fn forget_descriptions(&self) {
        self.described.clear();
    }
}

/// One read request group of the client, as it would go to legacy.
#[derive(Debug, Clone)]
pub enum Request {
    /// A simple Query.
    Simple { sql: Arc<str> },
    /// Bind (of a statement prepared on legacy), optional Describe of the portal, Execute, Sync.
    Extended {
        sql: Arc<str>,
        /// The parameter types the client gave in Parse (0 = unspecified).
        param_types: Vec<u32>,
        /// The Bind body after the portal and statement names.
        bind_rest: Bytes,
        /// The client asked for a RowDescription of the portal.
        describe: bool,
    },
}

impl Request {
    pub fn sql(&self) -> &str {
        match self {
            Request::Simple { sql } | Request::Extended { sql, .. } => sql,
        }
    }

    fn param_types(&self) -> &[u32] {
        match self {
            Request::Simple { .. } => &[],
            Request::Extended { param_types, .. } => param_types,
        }
    }

    /// The bytes of parameter `n` (1-based) in text or binary as the client sent it.
    pub fn param(&self, n: usize) -> Option<Bytes> {
        match self {
            Request::Simple { .. } => None,
            Request::Extended { bind_rest, .. } => bind_param(bind_rest, n),
        }
    }

    /// Whether parameter `n` (from 1) was sent in binary format (Bind's format codes: none
    /// means all text, one applies to all, else one per parameter).
    fn param_binary(&self, n: usize) -> bool {
        let Request::Extended { bind_rest, .. } = self else {
            return false;
        };
        let at = match be_i16(bind_rest, 0) {
            Some(1) => 2,
            Some(nf) if nf > 1 && n >= 1 => 2 * n,
            _ => return false,
        };
        be_i16(bind_rest, at) == Some(1)
    }
}

/// The connection settings of a session that new must share.
pub type Settings = Vec<(String, String)>;

fn target(shared: &Shared, plan: &ReadPlan, rules: &RuleSet) -> Target {
    let on_legacy = plan
        .tables
        .first()
        .and_then(|t| rules.table(t))
        .is_some_and(|r| r.database == TargetDatabase::Legacy);
    let c = &shared.config;
    let timeout = Duration::from_millis(c.limits.connect_timeout_ms.min(c.reads.timeout_ms));
    if on_legacy {
        legacy_target(shared, timeout)
    } else {
        Target {
            host: c.new.host.clone(),
            port: c.new.port,
            user: c.new.user.clone(),
            password: c.new.password.clone(),
            dbname: c.new.dbname.clone(),
            tls: crate::net::tls::TlsTarget::new_db(&c.new),
            connect_timeout: timeout,
        }
    }
}

fn legacy_target(shared: &Shared, connect_timeout: Duration) -> Target {
    let c = &shared.config.legacy;
    Target {
        host: c.host.clone(),
        port: c.port,
        user: c.user.clone(),
        password: c.password.clone(),
        dbname: c.dbname.clone(),
        tls: crate::net::tls::TlsTarget::legacy(c),
        connect_timeout,
    }
}

/// Legacy's description of `sql`, cached by text and declared parameter types.
async fn describe(
    shared: &Shared,
    plan: &ReadPlan,
    request: &Request,
) -> Result<Arc<Described>, ()> {
    let (sql, param_types) = (request.sql(), request.param_types());
    // Texts that differ only in literals outside the select list (`WHERE id = 1`, `= 2`)
    // have the same shape: one describe serves them all.
    let key_text = match request {
        Request::Simple { .. } if !plan.literal_output => {
            Box::from(pgdual_rules::fingerprint::fingerprint(sql))
        }
        _ => Box::<str>::from(sql),
    };
    let key = (key_text, param_types.to_vec());
    if let Some(d) = shared.reads.described.get(&key) {
        return Ok(d.clone());
    }
    let timeout = Duration::from_millis(shared.config.reads.timeout_ms);
    let target = legacy_target(
        shared,
        Duration::from_millis(shared.config.limits.connect_timeout_ms),
    );
    let mut request = backend::parse_frame("", sql, param_types);
    request.extend_from_slice(&backend::describe_frame(b'S', ""));
    request.extend_from_slice(&backend::sync_frame());
    let mut conn = backend::checkout(&target).await.map_err(|e| {
        debug!(error = %e, "cannot describe a read on legacy");
    })?;
    let frames = conn.round_trip(&request, 1 << 20, timeout).await;
    backend::checkin(&target, conn);
    let frames = frames.map_err(|e| debug!(error = %e, "cannot describe a read on legacy"))?;
    let mut params = None;
    let mut row = None;
    for f in &frames {
        match f.tag {
            b't' => params = Some(parse_param_types(&f.body)),
            b'T' => row = Some(f.body.clone()),
            b'E' => {
                let (code, message) = backend::error_fields(&f.body);
                let message = crate::telemetry::redact::server_message(
                    &code,
                    &message,
                    shared.config.reads.log_values,
                );
                debug!(code, message, "legacy refused to describe a read");
                return Err(());
            }
            _ => {}
        }
    }
    let d = Arc::new(Described {
        params: params.ok_or(())?,
        row,
    });
    if shared.reads.described.len() >= PLAN_CACHE_CAPACITY {
        shared.reads.described.clear();
    }
    shared.reads.described.insert(key, d.clone());
    Ok(d)
}

/// What new said to one read.
struct NewAnswer {
    row: Option<Bytes>,
    rows: Vec<Bytes>,
    complete: Bytes,
}

/// Runs the plan's SQL on new with the request's parameters and result formats.
async fn run_on_new(
    shared: &Shared,
    rules: &RuleSet,
    plan: &ReadPlan,
    request: &Request,
    described: &Described,
    settings: &Settings,
) -> Result<NewAnswer, Fallback> {
    if shared.reads.new_is_down() {
        return Err(Fallback::Unavailable);
    }
    let cfg = &shared.config.reads;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let target = target(shared, plan, rules);
    let mut conn = match backend::checkout(&target).await {
        Ok(c) => c,
        Err(e) => {
            let retry_after = Duration::from_millis(cfg.retry_after_ms);
            if shared.reads.mark_new_down(retry_after) {
                warn!(error = %e, "new is unreachable; reads fall back to legacy");
            } else {
                debug!(error = %e, "a connection to new failed; this read falls back");
            }
            return Err(Fallback::Unavailable);
        }
    };
    let result = async {
        align_settings(&mut conn, settings, timeout, cfg.log_values).await?;
        let mut out = BytesMut::new();
        let mut preparing = None;
        match request {
            Request::Simple { .. } => out.extend_from_slice(&backend::query_frame(&plan.sql)),
            Request::Extended { bind_rest, .. } => {
                // Prepared once per connection, as the client prepared it on legacy.
                let name = match conn.statement(&plan.sql, &described.params) {
                    Some(known) => known.to_string(),
                    None => {
                        let name = conn.statement_name();
                        let name = name.as_deref().unwrap_or("");
                        out.extend_from_slice(&backend::parse_frame(
                            name,
                            &plan.sql,
                            &described.params,
                        ));
                        preparing = Some(name.to_string()).filter(|n| !n.is_empty());
                        name.to_string()
                    }
                };
                out.extend_from_slice(&backend::bind_frame("", &name, bind_rest));
                out.extend_from_slice(&backend::describe_frame(b'P', ""));
                out.extend_from_slice(&backend::execute_frame("", 0));
                out.extend_from_slice(&backend::sync_frame());
            }
        }
        let frames = conn.round_trip(&out, cfg.max_result_bytes, timeout).await?;
        if let Some(name) = preparing {
            if frames.iter().any(|f| f.tag == b'1') {
                conn.prepared(&plan.sql, &described.params, name);
            }
        }
        Ok(frames)
    }
    .await;
    backend::checkin(&target, conn);
    if result.is_ok() {
        shared
            .reads
            .new_answered_at
            .store(shared.reads.now(), Relaxed);
    }
    let frames = result.map_err(|e| match e {
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
                let (code, message) = backend::error_fields(&body);
                let message =
                    crate::telemetry::redact::server_message(&code, &message, cfg.log_values);
                debug!(code, message, "new answered a read with an error");
                return Err(Fallback::Error);
            }
            _ => {}
        }
    }
    Ok(answer)
}

/// Makes the connection's printing settings those of the session.
async fn align_settings(
    conn: &mut backend::BackendConn,
    settings: &Settings,
    timeout: Duration,
    show_values: bool,
) -> Result<(), BackendError> {
    let mut sql = String::new();
    for (name, value) in settings {
        if conn.parameter(name) != Some(value.as_str()) {
            sql.push_str(&format!(
                "SET {} TO '{}';",
                pgdual_rules::ruleset::quote_ident(name),
                value.replace('\'', "''")
            ));
        }
    }
    if !sql.is_empty() {
        let frames = conn
            .round_trip(&backend::query_frame(&sql), 1 << 16, timeout)
            .await?;
        if let Some(f) = frames.iter().find(|f| f.tag == b'E') {
            let (code, message) = backend::error_fields(&f.body);
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
    shared: &Shared,
    rules: &RuleSet,
    plan: &ReadPlan,
    request: &Request,
    settings: &Settings,
) -> Result<BytesMut, Fallback> {
    if shared.reads.new_is_down() {
        return Err(Fallback::Unavailable);
    }
    let described = describe(shared, plan, request)
        .await
        .map_err(|()| Fallback::Describe)?;
    let Some(legacy_row) = &described.row else {
        return Err(Fallback::Shape);
    };
    let new = run_on_new(shared, rules, plan, request, &described, settings).await?;
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
        Request::Simple { .. } => {
            put_message(&mut out, b'T', |b| b.put_slice(legacy_row));
        }
        Request::Extended {
            bind_rest,
            describe,
            ..
        } => {
            put_message(&mut out, b'2', |_| {});
            if *describe {
                let formats = result_formats(bind_rest).ok_or(Fallback::Shape)?;
                let row = with_formats(legacy_row, &formats).ok_or(Fallback::Shape)?;
                put_message(&mut out, b'T', |b| b.put_slice(&row));
            }
        }
    }
    for r in &new.rows {
        put_message(&mut out, b'D', |b| b.put_slice(r));
    }
    put_message(&mut out, b'C', |b| b.put_slice(&new.complete));
    put_message(&mut out, b'Z', |b| b.put_u8(b'I'));
    Ok(out)
}

/// What legacy answered a shadowed read, captured as it went to the client.
#[derive(Debug, Default)]
pub struct Capture {
    pub row: Option<Bytes>,
    pub rows: Vec<Bytes>,
    pub bytes: usize,
    /// Over the size limit, streamed, or an error: nothing to compare.
    pub spoiled: bool,
    pub complete: bool,
}

/// A shadowed read waiting for legacy's answer.
#[derive(Debug)]
pub struct ShadowJob {
    pub plan: CachedPlan,
    pub rules: Arc<RuleSet>,
    pub request: Request,
    pub settings: Settings,
    pub capture: Capture,
}

/// Runs a shadowed read on new and compares, on a task of its own; the client has its answer.
pub fn spawn_shadow(shared: Arc<Shared>, job: ShadowJob) {
    let Ok(plan) = &*job.plan else { return };
    let reads = &shared.reads;
    if job.capture.spoiled || !job.capture.complete {
        reads.count(plan, |t| {
            t.shadow_skipped.fetch_add(1, Relaxed);
        });
        return;
    }
    let Ok(permit) = reads.shadow_slots.clone().try_acquire_owned() else {
        reads.count(plan, |t| {
            t.shadow_skipped.fetch_add(1, Relaxed);
        });
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut job = job;
        let plan = job.plan.clone();
        let Ok(plan) = &*plan else { return };
        let outcome = async {
            let described = describe(&shared, plan, &job.request)
                .await
                .map_err(|()| Fallback::Describe)?;
            // Without a Describe in the client's request, legacy sent no RowDescription.
            if job.capture.row.is_none() {
                job.capture.row = described.row.clone();
            }
            run_on_new(
                &shared,
                &job.rules,
                plan,
                &job.request,
                &described,
                &job.settings,
            )
            .await
            .map(|new| (new, described))
        }
        .await;
        let reads = &shared.reads;
        match outcome {
            Err(why) => {
                debug!(reason = why.as_str(), "shadow read failed on new");
                reads.count(plan, |t| {
                    t.shadow_errors.fetch_add(1, Relaxed);
                });
            }
            Ok((new, described)) => match compare(&job.capture, &new, plan.ordered) {
                None => reads.count(plan, |t| {
                    t.shadow_matches.fetch_add(1, Relaxed);
                }),
                Some(diff) => {
                    reads.count(plan, |t| {
                        t.shadow_mismatches.fetch_add(1, Relaxed);
                    });
                    let sample = sample(&shared, plan, &job, &new, diff, &described.params);
                    warn!(
                        tables = ?sample.tables,
                        fingerprint = %sample.fingerprint,
                        key = ?sample.key,
                        column = ?sample.column,
                        legacy_rows = sample.legacy_rows,
                        new_rows = sample.new_rows,
                        "shadow read differs between legacy and new"
                    );
                    reads.sample(sample);
                }
            },
        }
    });
}

/// Where two answers first differ: (row index in comparison order, column index).
type Diff = Option<(usize, usize)>;

/// `None` when the answers are equal (as multisets, or in order when the query is ordered).
fn compare(legacy: &Capture, new: &NewAnswer, ordered: bool) -> Option<Diff> {
    if !same_shape(legacy.row.as_deref().unwrap_or(&[]), new.row.as_deref()) {
        return Some(None);
    }
    let mut a: Vec<&Bytes> = legacy.rows.iter().collect();
    let mut b: Vec<&Bytes> = new.rows.iter().collect();
    if !ordered {
        a.sort();
        b.sort();
    }
    if a == b {
        return None;
    }
    if a.len() != b.len() {
        return Some(None);
    }
    let i = a.iter().zip(&b).position(|(x, y)| x != y)?;
    let (x, y) = (columns(a[i]), columns(b[i]));
    let col = x.iter().zip(&y).position(|(p, q)| p != q);
    Some(col.map(|c| (i, c)))
}

fn sample(
    shared: &Shared,
    plan: &ReadPlan,
    job: &ShadowJob,
    new: &NewAnswer,
    diff: Diff,
    param_types: &[u32],
) -> Sample {
    let show = shared.config.reads.log_values;
    let redact = |v: Option<&[u8]>| -> String {
        if show {
            v.map_or("NULL".into(), |v| String::from_utf8_lossy(v).into_owned())
        } else {
            "<redacted>".into()
        }
    };
    let key = plan.key.as_ref().map(|keys| {
        keys.iter()
            .map(|k| match k {
                KeyRef::Literal(v) => redact(Some(v.as_bytes())),
                // Binary-format parameters decoded by their type, not shown as raw bytes.
                KeyRef::Param(n) => {
                    let text = job.request.param(*n).map(|raw| {
                        let ty = param_types.get(n.wrapping_sub(1)).copied().unwrap_or(0);
                        crate::telemetry::redact::param_text(&raw, job.request.param_binary(*n), ty)
                    });
                    redact(text.as_deref().map(str::as_bytes))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    let (mut column, mut legacy_value, mut new_value) = (None, None, None);
    if let Some((row, col)) = diff {
        let names = job
            .capture
            .row
            .as_deref()
            .map(field_names)
            .unwrap_or_default();
        column = names.get(col).cloned();
        let mut a: Vec<&Bytes> = job.capture.rows.iter().collect();
        let mut b: Vec<&Bytes> = new.rows.iter().collect();
        if !plan.ordered {
            a.sort();
            b.sort();
        }
        legacy_value = Some(redact(columns(a[row]).get(col).copied().flatten()));
        new_value = Some(redact(columns(b[row]).get(col).copied().flatten()));
    }
    Sample {
        at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        tables: plan.tables.iter().map(|t| t.to_string()).collect(),
        fingerprint: pgdual_rules::fingerprint(job.request.sql()),
        key,
        legacy_rows: job.capture.rows.len(),
        new_rows: new.rows.len(),
        column,
        legacy_value,
        new_value,
    }
}

// ---- message bodies ----------------------------------------------------------------------

fn be_i16(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One RowDescription field: where it starts, its name, and the offset of its type OID.
struct Field<'a> {
    name: &'a [u8],
    type_at: usize,
}

fn fields(row: &[u8]) -> Option<Vec<Field<'_>>> {
    let n = be_i16(row, 0)?;
    let mut at = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let end = at + row.get(at..)?.iter().position(|&c| c == 0)?;
        let name = &row[at..end];
        let type_at = end + 1 + 4 + 2;
        row.get(type_at..type_at + 4 + 2 + 4 + 2)?;
        out.push(Field { name, type_at });
        at = type_at + 12;
    }
    Some(out)
}

fn field_names(row: &[u8]) -> Vec<String> {
    fields(row)
        .unwrap_or_default()
        .iter()
        .map(|f| String::from_utf8_lossy(f.name).into_owned())
        .collect()
}

/// Same number of columns with the same types.
fn same_shape(legacy: &[u8], new: Option<&[u8]>) -> bool {
    let (Some(a), Some(b)) = (fields(legacy), new.and_then(fields)) else {
        return false;
    };
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            legacy[x.type_at..x.type_at + 4] == new.unwrap_or(&[])[y.type_at..y.type_at + 4]
        })
}

/// The RowDescription with each column's format code set as a Bind asked for them.
fn with_formats(row: &[u8], formats: &[i16]) -> Option<Vec<u8>> {
    let mut out = row.to_vec();
    for (i, f) in fields(row)?.iter().enumerate() {
        let code = match formats {
            [] => 0,
            [one] => *one,
            many => *many.get(i)?,
        };
        let at = f.type_at + 4 + 2 + 4;
        out[at..at + 2].copy_from_slice(&code.to_be_bytes());
    }
    Some(out)
}

/// The values of a DataRow body (`None` for NULL).
fn columns(row: &[u8]) -> Vec<Option<&[u8]>> {
    let mut out = Vec::new();
    let Some(n) = be_i16(row, 0) else { return out };
    let mut at = 2;
    for _ in 0..n {
        let Some(len) = be_i32(row, at) else { break };
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let Some(v) = row.get(at..at + len as usize) else {
                break;
            };
            out.push(Some(v));
            at += len as usize;
        }
    }
    out
}

fn parse_param_types(body: &[u8]) -> Vec<u32> {
    let n = be_i16(body, 0).unwrap_or(0).max(0) as usize;
    (0..n)
        .filter_map(|i| be_i32(body, 2 + 4 * i).map(|t| t as u32))
        .collect()
}

/// Parameter types a Parse body declares.
pub fn parse_declared_types(body: &[u8]) -> Vec<u32> {
    let Some(a) = body.iter().position(|&c| c == 0) else {
        return Vec::new();
    };
    let Some(b) = body[a + 1..].iter().position(|&c| c == 0) else {
        return Vec::new();
    };
    parse_param_types(&body[a + 1 + b + 1..])
}

/// The Bind body after the portal and statement names.
pub fn bind_rest(body: &Bytes) -> Option<Bytes> {
    let a = body.iter().position(|&c| c == 0)?;
    let b = body[a + 1..].iter().position(|&c| c == 0)?;
    Some(body.slice(a + 1 + b + 1..))
}

/// Where a Bind's parameter values sit (offset, length; `None` for NULL) and
/// the result formats it asks for.
struct BindParts {
    values: Vec<Option<(usize, usize)>>,
    formats: Vec<i16>,
}

/// Walks a Bind body's rest: parameter formats, values, result formats.
fn bind_parts(rest: &[u8]) -> Option<BindParts> {
    let nf = be_i16(rest, 0)?.max(0) as usize;
    let mut at = 2 + 2 * nf;
    let np = be_i16(rest, at)?.max(0) as usize;
    at += 2;
    let mut values = Vec::with_capacity(np);
    for _ in 0..np {
        let len = be_i32(rest, at)?;
        at += 4;
        if len < 0 {
            values.push(None);
        } else {
            rest.get(at..at + len as usize)?;
            values.push(Some((at, len as usize)));
            at += len as usize;
        }
    }
    let nr = be_i16(rest, at)?.max(0) as usize;
    at += 2;
    let formats = (0..nr)
        .map(|i| be_i16(rest, at + 2 * i))
        .collect::<Option<Vec<_>>>()?;
    Some(BindParts { values, formats })
}

fn result_formats(rest: &[u8]) -> Option<Vec<i16>> {
    bind_parts(rest).map(|p| p.formats)
}

fn bind_param(rest: &Bytes, n: usize) -> Option<Bytes> {
    let values = bind_parts(rest)?.values;
    let (at, len) = (*values.get(n.checked_sub(1)?)?)?;
    Some(rest.slice(at..at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_description(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(cols.len() as i16);
        for (name, oid) in cols {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_i32(16384);
            b.put_i16(1);
            b.put_u32(*oid);
            b.put_i16(4);
            b.put_i32(-1);
            b.put_i16(0);
        }
        b.to_vec()
    }

    fn data_row(vals: &[Option<&str>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(vals.len() as i16);
        for v in vals {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
            }
        }
        b.freeze()
    }

    #[test]
    fn shapes_compare_by_count_and_type() {
        let a = row_description(&[("id", 23), ("email", 25)]);
        assert!(same_shape(
            &a,
            Some(&row_description(&[("x", 23), ("y", 25)]))
        ));
        assert!(!same_shape(
            &a,
            Some(&row_description(&[("id", 20), ("email", 25)]))
        ));
        assert!(!same_shape(&a, Some(&row_description(&[("id", 23)]))));
        assert!(!same_shape(&a, None));
        assert!(!same_shape(&a, Some(b"\x00\x05garbage")));
        assert_eq!(field_names(&a), ["id", "email"]);
        let bin = with_formats(&a, &[1]).unwrap();
        assert!(fields(&bin).is_some());
        assert_eq!(&bin[bin.len() - 2..], &[0, 1]);
        assert!(with_formats(&a, &[0, 1, 1]).is_some());
        assert!(with_formats(&a, &[0, 1]).is_some());
    }

    #[test]
    fn answers_compare_as_multisets_unless_ordered() {
        let row = Some(Bytes::from(row_description(&[("id", 23), ("email", 25)])));
        let legacy = Capture {
            row: row.clone(),
            rows: vec![
                data_row(&[Some("1"), Some("a")]),
                data_row(&[Some("2"), None]),
            ],
            complete: true,
            ..Default::default()
        };
        let new = |rows: Vec<Bytes>| NewAnswer {
            row: row.clone(),
            rows,
            complete: Bytes::new(),
        };
        let swapped = new(vec![
            data_row(&[Some("2"), None]),
            data_row(&[Some("1"), Some("a")]),
        ]);
        assert_eq!(compare(&legacy, &swapped, false), None);
        assert!(compare(&legacy, &swapped, true).is_some());
        let changed = new(vec![
            data_row(&[Some("1"), Some("b")]),
            data_row(&[Some("2"), None]),
        ]);
        assert_eq!(compare(&legacy, &changed, true), Some(Some((0, 1))));
        assert_eq!(compare(&legacy, &new(vec![]), false), Some(None));
    }

    #[test]
    fn bind_bodies_are_walked_safely() {
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i16(0);
        b.put_i16(2);
        b.put_i32(2);
        b.put_slice(b"42");
        b.put_i32(-1);
        b.put_i16(1);
        b.put_i16(1);
        let rest = b.freeze();
        assert_eq!(result_formats(&rest), Some(vec![1]));
        assert_eq!(bind_param(&rest, 1).as_deref(), Some(&b"42"[..]));
        assert_eq!(bind_param(&rest, 2), None);
        assert_eq!(bind_param(&rest, 3), None);
        assert_eq!(bind_param(&rest, 0), None);
        for cut in 0..rest.len() {
            let _ = result_formats(&rest[..cut]);
        }
        assert_eq!(
            parse_declared_types(b"s\0SELECT $1\0\0\x01\0\0\0\x17"),
            vec![23]
        );
        assert_eq!(
            parse_declared_types(b"s\0SELECT 1\0\0\0"),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn plans_are_per_text_and_verdicts_per_fingerprint() {
        let mut rules = pgdual_rules::parse_rules(
            "[[table]]\nlegacy = \"public.users\"\nnew = \"app.customers\"\nkeys = [\"id\"]\n\
             read = \"new\"\n[table.columns]\ncustomer_id = \"id\"\nemail = \"email\"\n",
            "rules.toml",
        )
        .unwrap();
        let users = pgdual_rules::TableName {
            schema: "public".into(),
            name: "users".into(),
        };
        rules.set_legacy_columns(&users, vec!["id".into(), "email".into()]);
        let reads = Reads::new(1);
        let a = reads.plan(1, &rules, "SELECT email FROM users WHERE id = 1");
        let b = reads.plan(1, &rules, "SELECT email FROM users WHERE id = 2");
        let sql = |p: &CachedPlan| p.as_ref().as_ref().unwrap().sql.clone();
        assert!(
            sql(&a).ends_with("= 1") && sql(&b).ends_with("= 2"),
            "{}",
            sql(&a)
        );
        let c = reads.plan(1, &rules, "SELECT email FROM users WHERE id = 1 FOR UPDATE");
        let d = reads.plan(1, &rules, "SELECT email FROM users WHERE id = 9 FOR UPDATE");
        assert!(
            c.is_err() && Arc::ptr_eq(&c, &d),
            "one verdict for the shape"
        );
        let e = reads.plan(2, &rules, "SELECT email FROM users WHERE id = 9 FOR UPDATE");
        assert!(!Arc::ptr_eq(&d, &e), "a new rules version plans again");
    }

    #[test]
    fn one_failed_connect_is_an_outage_only_when_new_has_stopped_answering() {
        let reads = Reads::new(1);
        let window = Duration::from_secs(60);
        reads.new_answered_at.store(reads.now().max(1), Relaxed);
        assert!(!reads.mark_new_down(window), "new answered just now");
        assert!(!reads.new_is_down());
        reads.new_answered_at.store(0, Relaxed);
        assert!(reads.mark_new_down(window), "never answered");
        assert!(reads.new_is_down());
    }
}
