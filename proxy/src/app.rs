//! The running proxy: builds each part with only the handles it uses, starts the worker
//! threads that accept clients, the admin server and the background jobs (mirror, privilege
//! look-ups, rules watcher), and shuts them down.
//!
//! Each worker is a thread with its own single-threaded tokio runtime; all workers accept
//! from the same listening socket, so a session lives on one thread from accept to close and
//! its two relay directions never cross threads.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pgdual_config::Config;
use pgdual_rules::{AnalysisCache, RuleSet};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admin::Admin;
use crate::capture::{CaptureStatus, CommitSignal};
use crate::control::privileges::{LookUps, Privileges};
use crate::control::rules_store::RulesStore;
use crate::mirror::{Mirror, Watermark};
use crate::net::endpoint::Endpoints;
use crate::reads::Reads;
use crate::session::cancel::CancelKeys;
use crate::session::{Context, Gate};
use crate::telemetry::metrics::Metrics;

/// Distinct SQL texts whose analysis is kept.
const ANALYSIS_CACHE_CAPACITY: usize = 10_000;
/// Statement analysis is bounded to trees that fit in a sixteenth of this (see
/// `pgdual_rules::bounds`); the rest is headroom for the relay's own frames.
const WORKER_STACK_BYTES: usize = 8 << 20;

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
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    rules: Arc<RulesStore>,
    reads: Arc<Reads>,
    privileges: Arc<Privileges>,
    stop_accepting: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// Watches the rules file while the proxy runs.
    _watcher: Option<notify::RecommendedWatcher>,
}

/// The listening sockets, bound before anything starts.
struct Listeners {
    clients: std::net::TcpListener,
    admin: Option<std::net::TcpListener>,
}

impl Proxy {
    /// Validates `config`, binds the listeners and starts the workers, the admin server and,
    /// with a rules file, the mirror, the privilege look-ups and the rules watcher.
    pub fn start(mut config: Config) -> Result<Proxy, StartError> {
        config.validate("configuration")?;
        // Read once here: reads on new open connections on the client's path.
        for warning in config.read_password_files("configuration")? {
            warn!(%warning, "password file");
        }
        // A bad CA file for legacy or new is a startup error.
        let endpoints = Endpoints::from_config(&config)?;
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::net::tls::server_config(cert, key)?,
            )),
            _ => None,
        };
        let rules = Arc::new(rules_store(&config, endpoints.clone())?);
        let listeners = bind(&config)?;
        // A mirror runs when there are rules to mirror by; sessions ring it after writes.
        let commits = config.rules_file.is_some().then(CommitSignal::default);
        let ctx = Arc::new(session_context(
            &config,
            &endpoints,
            rules.clone(),
            tls,
            commits.clone(),
        ));
        let (metrics, reads, legacy) = (&ctx.metrics, &ctx.reads, &ctx.legacy);
        let addr = listeners
            .clients
            .local_addr()
            .map_err(StartError::Runtime)?;
        let (stop_accepting, stop) = watch::channel(false);
        let mut threads = start_workers(&config, &listeners, &ctx, &stop)?;
        let workers = threads.len();
        let capture = Arc::new(CaptureStatus::default());
        let admin_addr = match listeners.admin {
            None => None,
            Some(l) => {
                let admin = admin(&config, &ctx, &endpoints, capture.clone(), &stop);
                Some(start_admin(l, admin, &stop, &mut threads)?)
            }
        };
        let watcher = match commits {
            None => None,
            Some(commits) => {
                let (c, e) = (&ctx, &endpoints);
                start_background(&config, c, e, commits, capture, &stop, &mut threads)?;
                crate::control::rules_store::watch(rules.clone())
            }
        };
        info!(%addr, legacy = %legacy, workers, admin = ?admin_addr, "pgdual listening");
        Ok(Proxy {
            addr,
            admin_addr,
            gate: ctx.gate.clone(),
            metrics: metrics.clone(),
            rules,
            reads: reads.clone(),
            privileges: ctx.privileges.clone(),
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

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The rules in force, and reloads.
    pub fn rules(&self) -> &Arc<RulesStore> {
        &self.rules
    }

    /// The read router's counters and samples.
    pub fn reads(&self) -> &Arc<Reads> {
        &self.reads
    }

    /// What each client role may read on legacy, as read routing knows it.
    pub fn privileges(&self) -> &Arc<Privileges> {
        &self.privileges
    }

    /// Stops accepting, lets open sessions finish for up to `drain`, then closes the rest
    /// with SQLSTATE 57P01 and waits for the threads.
    pub fn shutdown(mut self, drain: Duration) {
        let _ = self.stop_accepting.send(true);
        let open = self.gate.active.load(Relaxed);
        if open > 0 {
            info!(
                sessions = open,
                drain_ms = drain.as_millis() as u64,
                "draining sessions"
            );
        }
        let until = Instant::now() + drain;
        while self.gate.active.load(Relaxed) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.gate.active.load(Relaxed);
        if left > 0 {
            warn!(sessions = left, "drain timeout reached; closing sessions");
        }
        let _ = self.gate.force_close.send(true);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                error!("a worker thread panicked");
            }
        }
        info!("pgdual stopped");
    }
}

/// The admin API's handles.
fn admin(
    config: &Config,
    ctx: &Context,
    endpoints: &Endpoints,
    capture: Arc<CaptureStatus>,
    stop: &watch::Receiver<bool>,
) -> Admin {
    Admin {
        token: config.admin.token.clone(),
        connect_timeout: Duration::from_millis(config.limits.connect_timeout_ms),
        legacy: ctx.legacy.clone(),
        rules: ctx.rules.clone(),
        reads: ctx.reads.clone(),
        metrics: ctx.metrics.clone(),
        cache: ctx.cache.clone(),
        jobs: Arc::new(crate::jobs::Jobs::new(
            endpoints.clone(),
            ctx.rules.clone(),
            config,
            crate::jobs::JobMetrics::register(&ctx.metrics.registrar()),
            stop.clone(),
        )),
        capture,
    }
}

/// Starts what runs beside the sessions when a rules file is set: the mirror and the
/// privilege look-ups.
fn start_background(
    config: &Config,
    ctx: &Context,
    endpoints: &Endpoints,
    commits: CommitSignal,
    capture: Arc<CaptureStatus>,
    stop: &watch::Receiver<bool>,
    threads: &mut Vec<JoinHandle<()>>,
) -> Result<(), StartError> {
    let mirror = Mirror {
        settings: config.mirror.clone(),
        log_values: config.reads.log_values,
        endpoints: endpoints.clone(),
        rules: ctx.rules.clone(),
        metrics: ctx.metrics.mirror.clone(),
        watermark: ctx.watermark.clone(),
        commits,
        capture,
    };
    let look_ups = LookUps {
        privileges: ctx.privileges.clone(),
        rules: ctx.rules.clone(),
        legacy: endpoints.legacy.clone(),
        log_values: config.reads.log_values,
    };
    threads.push(mirror.start(stop.clone()).map_err(StartError::Runtime)?);
    threads.push(look_ups.start(stop.clone()).map_err(StartError::Runtime)?);
    Ok(())
}

/// What every session works with.
fn session_context(
    config: &Config,
    endpoints: &Endpoints,
    rules: Arc<RulesStore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    commits: Option<CommitSignal>,
) -> Context {
    let connect_timeout = Duration::from_millis(config.limits.connect_timeout_ms);
    let metrics = Arc::new(Metrics::default());
    let cache = Arc::new(AnalysisCache::new(ANALYSIS_CACHE_CAPACITY));
    metrics.watch_cache(cache.clone());
    let families = crate::reads::Families::register(&metrics.registrar());
    Context {
        limits: config.limits.clone(),
        rules_database: config.legacy.dbname.clone(),
        shadow_capture_bytes: config.reads.max_result_bytes,
        legacy: endpoints.legacy.relay_target(),
        tls,
        gate: Arc::default(),
        cancel: Arc::new(CancelKeys::default()),
        metrics,
        cache,
        rules,
        reads: Arc::new(Reads::new(
            config.reads.clone(),
            connect_timeout,
            endpoints,
            families,
        )),
        privileges: Arc::new(Privileges::default()),
        watermark: Arc::new(Watermark::default()),
        commits,
    }
}

/// Starts the admin server's thread; returns its address.
fn start_admin(
    listener: std::net::TcpListener,
    admin: Admin,
    stop: &watch::Receiver<bool>,
    threads: &mut Vec<JoinHandle<()>>,
) -> Result<SocketAddr, StartError> {
    let addr = listener.local_addr().map_err(StartError::Runtime)?;
    let (admin, stop) = (Arc::new(admin), stop.clone());
    let t = std::thread::Builder::new()
        .name("pgdual-admin".into())
        .spawn(move || crate::admin::run(listener, admin, stop))
        .map_err(StartError::Runtime)?;
    threads.push(t);
    Ok(addr)
}

/// The rules store, starting from the rules file (or no rules without one).
fn rules_store(config: &Config, endpoints: Endpoints) -> Result<RulesStore, StartError> {
    let Some(path) = &config.rules_file else {
        return Ok(RulesStore::new(
            None,
            RuleSet::default(),
            String::new(),
            endpoints,
        ));
    };
    let text = std::fs::read_to_string(path).map_err(|source| StartError::RulesFile {
        path: path.display().to_string(),
        source,
    })?;
    let set = pgdual_rules::parse_rules(&text, &path.display().to_string())?;
    Ok(RulesStore::new(Some(path.clone()), set, text, endpoints))
}

fn bind(config: &Config) -> Result<Listeners, StartError> {
    let bind = |field: &'static str, addr: &str| {
        std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| StartError::Bind {
                field,
                addr: addr.to_string(),
                source,
            })
    };
    Ok(Listeners {
        clients: bind("listen", &config.listen)?,
        admin: match config.admin.listen.as_str() {
            "" => None,
            addr => Some(bind("admin.listen", addr)?),
        },
    })
}

fn start_workers(
    config: &Config,
    listeners: &Listeners,
    ctx: &Arc<Context>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    (0..workers)
        .map(|i| {
            let listener = listeners.clients.try_clone().map_err(StartError::Runtime)?;
            let (ctx, stop) = (ctx.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("pgdual-worker-{i}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || worker(listener, ctx, stop))
                .map_err(StartError::Runtime)
        })
        .collect()
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
        let _ = self.gate.force_close.send(true);
    }
}

fn worker(listener: std::net::TcpListener, ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let Some(rt) = crate::runtime::current_thread("worker") else {
        return;
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let warm = crate::reads::keep_warm(ctx.reads.clone(), ctx.rules.clone(), stop.clone());
        tokio::task::spawn_local(warm);
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
                        tokio::task::spawn_local(crate::session::accept::serve(tcp, peer, ctx.clone()));
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
