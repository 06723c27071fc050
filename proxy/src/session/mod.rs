//! One client from accept to close: the startup exchange ([`accept`]), the relay loop to
//! legacy ([`relay`]) with its hooks that analyse statements and route reads ([`route`]), the
//! session's protocol state machine ([`state`]), and the cancel keys handed to clients
//! ([`cancel`]).

pub mod accept;
pub mod cancel;
pub mod relay;
pub mod route;
pub mod state;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use pgdual_config::Limits;
use pgdual_rules::AnalysisCache;
use tokio::sync::watch;

use crate::capture::CommitSignal;
use crate::control::privileges::Privileges;
use crate::control::rules_store::RulesStore;
use crate::mirror::Watermark;
use crate::net::legacy::LegacyTarget;
use crate::reads::Reads;
use crate::telemetry::metrics::Metrics;
use cancel::CancelKeys;

/// The sessions as a whole: how many hold a connection slot, the next session id, and the
/// signal that closes those still open when the drain time is up.
#[derive(Debug)]
pub struct Gate {
    pub active: AtomicUsize,
    pub next_id: AtomicU64,
    pub force_close: watch::Sender<bool>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            force_close: watch::channel(false).0,
        }
    }
}

/// What every session works with.
pub struct Context {
    pub limits: Limits,
    /// The database whose reads the rules route (`legacy.dbname`).
    pub rules_database: String,
    /// Largest legacy answer kept for a shadow comparison (`reads.max_result_bytes`).
    pub shadow_capture_bytes: usize,
    pub legacy: LegacyTarget,
    /// Accepts TLS from clients when `tls.cert_file` and `tls.key_file` are set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub gate: Arc<Gate>,
    pub cancel: Arc<CancelKeys>,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<AnalysisCache>,
    pub rules: Arc<RulesStore>,
    pub reads: Arc<Reads>,
    pub privileges: Arc<Privileges>,
    /// Read-your-writes: how far the mirror has got.
    pub watermark: Arc<Watermark>,
    /// Rung after a transaction that wrote, when a mirror runs.
    pub commits: Option<CommitSignal>,
}
