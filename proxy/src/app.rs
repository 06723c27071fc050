//! The running proxy: worker threads accepting clients, the admin server, and shutdown.
//!
//! Each worker is a thread with its own single-threaded tokio runtime; all workers accept
//! from the same listening socket, so a session lives on one thread from accept to close and
//! its two relay directions never cross threads. Shared state is only what must be: config,
//! metrics, the analysis cache and the cancel keys.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pgdual_config::Config;
use pgdual_rules::{AnalysisCache, RuleSet};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::control::rules_store::RulesStore;
use crate::net::legacy::LegacyTarget;
use crate::session::cancel::CancelKeys;
use crate::telemetry::metrics::Metrics;

/// Distinct SQL texts whose analysis is kept.
const ANALYSIS_CACHE_CAPACITY: usize = 10_000;

/// State every session and the admin server share.
pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    pub cache: AnalysisCache,
    pub cancel: CancelKeys,
    pub legacy: LegacyTarget,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Client sessions holding a connection slot.
    pub active: AtomicUsize,
    pub next_session_id: AtomicU64,
    /// Set when the drain timeout ran out: sessions still open are closed.
    pub force_close: watch::Sender<bool>,
    /// The rules in force (empty without a rules file), swapped whole on reload.
    pub rules: crate::control::rules_store::RulesStore,
    /// Sessions signal here when a transaction that wrote has ended, so the mirror looks at
    /// the backlog at once instead of at its next poll.
    pub mirror_nudge: Notify,
    /// Read routing: plans, legacy's statement descriptions, counters, mismatch samples.
    pub reads: crate::reads::Reads,
    /// What each client role may read on legacy, for read routing.
    pub privileges: crate::control::privileges::Privileges,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] pgdual_config::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("cannot listen on {addr} ({field}): {source}")]
    Bind {
        field: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Rules(#[from] pgdual_rules::RulesError),
    #[error("cannot read rules file {path}: {source}")]
    RulesFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start worker threads: {0}")]
    Runtime(std::io::Error),
}

/// A started proxy. Dropping it stops accepting and closes every session at once;
/// [`Proxy::shutdown`] drains first.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop_accepting: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// Watches the rules file while the proxy runs.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Proxy {
    /// Validates `config`, binds the listeners and starts the workers and admin server.
    pub fn start(mut config: Config) -> Result<Proxy, StartError> {
        config.validate("configuration")?;
        // Read once here: reads on new open connections on the client's path.
        for warning in config.read_password_files("configuration")? {
            tracing::warn!(%warning, "password file");
        }
        if !config.new.host.is_empty() {
            // A bad CA file for new is a startup error, as one for legacy is.
            crate::net::tls::TlsTarget::new_db(&config.new).client_config()?;
        }
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::net::tls::server_config(cert, key)?,
            )),
            _ => None,
        };
        let bind = |field: &'static str, addr: &str| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| StartError::Bind {
                    field,
                    addr: addr.to_string(),
                    source,
                })
        };
        let rules = match &config.rules_file {
            None => RulesStore::new(None, RuleSet::default(), String::new()),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| StartError::RulesFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                let set = pgdual_rules::parse_rules(&text, &path.display().to_string())?;
                RulesStore::new(Some(path.clone()), set, text)
            }
        };
        let listener = bind("listen", &config.listen)?;
        let admin = match config.admin.listen.as_str() {
            "" => None,
            addr => Some(bind("admin.listen", addr)?),
        };
        let shared = Arc::new(Shared {
            legacy: LegacyTarget::new(&config.legacy)?,
            metrics: Metrics::default(),
            cache: AnalysisCache::new(ANALYSIS_CACHE_CAPACITY),
            cancel: CancelKeys::default(),
            tls,
            active: AtomicUsize::new(0),
            next_session_id: AtomicU64::new(1),
            force_close: watch::channel(false).0,
            rules,
            mirror_nudge: Notify::new(),
            reads: crate::reads::Reads::new(config.reads.shadow_concurrency),
            privileges: Default::default(),
            config,
        });
        let addr = listener.local_addr().map_err(StartError::Runtime)?;
        let (stop_accepting, stop_rx) = watch::channel(false);
        let workers = match shared.config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut threads = Vec::new();
        // Statement analysis is bounded to trees that fit in a sixteenth of this (see
        // `pgdual_rules::bounds`); the rest is headroom for the relay's own frames.
        const WORKER_STACK_BYTES: usize = 8 << 20;
        for i in 0..workers {
            let listener = listener.try_clone().map_err(StartError::Runtime)?;
            let (shared, stop) = (shared.clone(), stop_rx.clone());
            let t = std::thread::Builder::new()
                .name(format!("pgdual-worker-{i}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || worker(listener, shared, stop))
                .map_err(StartError::Runtime)?;
            threads.push(t);
        }
        let admin_addr = match admin {
            None => None,
            Some(l) => {
                let a = l.local_addr().map_err(StartError::Runtime)?;
                let (shared, stop) = (shared.clone(), stop_rx.clone());
                let t = std::thread::Builder::new()
                    .name("pgdual-admin".into())
                    .spawn(move || crate::admin::run(l, shared, stop))
                    .map_err(StartError::Runtime)?;
                threads.push(t);
                Some(a)
            }
        };
        let mut watcher = None;
        if shared.config.rules_file.is_some() {
            let mirror = crate::mirror::start(shared.clone(), stop_rx.clone())
                .map_err(StartError::Runtime)?;
            threads.push(mirror);
            let privileges = crate::control::privileges::start(shared.clone(), stop_rx.clone())
                .map_err(StartError::Runtime)?;
            threads.push(privileges);
            watcher = crate::control::rules_store::watch(shared.clone());
        }
        info!(%addr, legacy = %shared.legacy, workers, admin = ?admin_addr, "pgdual listening");
        Ok(Proxy {
            shared,
            addr,
            admin_addr,
            stop_accepting,
            threads,
            _watcher: watcher,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin API listens, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets open sessions finish for up to `drain`, then closes the rest
    /// with SQLSTATE 57P01 and waits for the threads.
    pub fn shutdown(mut self, drain: Duration) {
        let _ = self.stop_accepting.send(true);
        let open = self.shared.active.load(Relaxed);
        if open > 0 {
            info!(
                sessions = open,
                drain_ms = drain.as_millis() as u64,
                "draining sessions"
            );
        }
        let until = Instant::now() + drain;
        while self.shared.active.load(Relaxed) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.shared.active.load(Relaxed);
        if left > 0 {
            warn!(sessions = left, "drain timeout reached; closing sessions");
        }
        let _ = self.shared.force_close.send(true);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                error!("a worker thread panicked");
            }
        }
        info!("pgdual stopped");
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop_accepting.send(true);
        let _ = self.shared.force_close.send(true);
    }
}

fn worker(listener: std::net::TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(rt) = crate::runtime::current_thread("worker") else {
        return;
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot register the listener");
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        tokio::task::spawn_local(crate::session::accept::serve(tcp, peer, shared.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    });
    // Sessions still open finish (or are closed by force_close) before the thread ends.
    rt.block_on(local);
}
