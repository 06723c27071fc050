//! The rules in force, and how they change while pgdual runs.
//!
//! One `ArcSwap` holds one snapshot (version, rule set, text). A new rule set is validated
//! whole, offline and against legacy's catalog (and new's, for what it newly uses of new:
//! moving tables off new never needs new), before the single swap; a rejected
//! one leaves the old snapshot serving and reports every reason. Reloads come from the file
//! (watched, and on SIGHUP) and from the admin API, which also writes the accepted text back to
//! the file atomically so a restart keeps it. Reloads are serialized; readers never wait.
//!
//! Every snapshot swapped in is also published on a channel ([`RulesStore::subscribe`]):
//! the parts that keep something derived from the rules (the mirror's capture, the privilege
//! cache) react to it there; nothing here reaches into them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pgdual_rules::RuleSet;
use serde::Serialize;
use tracing::{info, warn};

use crate::control::catalog::{self, LegacyColumns};
use crate::net::endpoint::Endpoints;

/// The rules at one version.
#[derive(Debug)]
pub struct RulesSnapshot {
    /// Counts accepted rule sets: what operators see and the admin API compares.
    pub version: u64,
    /// Counts swaps, including the one that teaches a version its legacy columns: what
    /// caches derived from the rules are keyed by.
    pub generation: u64,
    pub rules: Arc<RuleSet>,
    pub text: String,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum ReloadOutcome {
    Reloaded { version: u64 },
    Unchanged { version: u64 },
    Rejected { version: u64, reasons: Vec<String> },
}

pub struct RulesStore {
    current: ArcSwap<RulesSnapshot>,
    path: Option<PathBuf>,
    reloading: tokio::sync::Mutex<()>,
    /// Where reloads are checked against the catalogs.
    endpoints: Endpoints,
    /// The generation of the snapshot in force, for subscribers.
    published: tokio::sync::watch::Sender<u64>,
}

impl RulesStore {
    /// The store for `path` (or an empty rule set without one), starting from `initial`.
    pub fn new(
        path: Option<PathBuf>,
        initial: RuleSet,
        text: String,
        endpoints: Endpoints,
    ) -> Self {
        RulesStore {
            current: ArcSwap::from_pointee(RulesSnapshot {
                version: 1,
                generation: 1,
                rules: Arc::new(initial),
                text,
            }),
            path,
            reloading: tokio::sync::Mutex::new(()),
            endpoints,
            published: tokio::sync::watch::channel(1).0,
        }
    }

    /// Changes whenever a snapshot is swapped in (its value: the generation).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    fn publish(&self, generation: u64) {
        self.published.send_replace(generation);
    }

    /// The snapshot in force; cheap, never blocks.
    pub fn load(&self) -> Arc<RulesSnapshot> {
        self.current.load_full()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the rules file.
    pub async fn reload_file(&self) -> ReloadOutcome {
        let Some(path) = &self.path else {
            return self.rejected(vec!["no rules_file is configured".into()]);
        };
        // Read under the lock: a file read before another change landed (an API change,
        // written back) must not be applied after it and undo it.
        let _one_at_a_time = self.reloading.lock().await;
        match tokio::fs::read_to_string(path).await {
            Ok(text) => self.apply_locked(text, false).await,
            Err(e) => self.rejected(vec![format!("cannot read {}: {e}", path.display())]),
        }
    }

    /// Edits the rules text in force with `edit` and applies the result with write-back,
    /// all under the reload lock, so that no other change lands between reading the text
    /// and swapping in its edit. `edit`'s error is returned as it is.
    pub async fn edit<E>(
        &self,
        edit: impl FnOnce(&str) -> Result<String, E>,
    ) -> Result<ReloadOutcome, E> {
        let _one_at_a_time = self.reloading.lock().await;
        let text = edit(&self.load().text)?;
        Ok(self.apply_locked(text, true).await)
    }

    fn rejected(&self, reasons: Vec<String>) -> ReloadOutcome {
        let version = self.load().version;
        warn!(version, reasons = ?reasons, "rules rejected; the old rules stay in force");
        ReloadOutcome::Rejected { version, reasons }
    }

    /// Validates `text` whole and swaps it in, or rejects it with every reason. With
    /// `write_back`, the accepted text also replaces the rules file (atomically).
    pub async fn apply(&self, text: String, write_back: bool) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock().await;
        self.apply_locked(text, write_back).await
    }

    async fn apply_locked(&self, text: String, write_back: bool) -> ReloadOutcome {
        let old = self.load();
        if old.text == text {
            return ReloadOutcome::Unchanged {
                version: old.version,
            };
        }
        let origin = self
            .path
            .as_ref()
            .map_or("rules".to_string(), |p| p.display().to_string());
        let mut rules = match pgdual_rules::parse_rules(&text, &origin) {
            Ok(r) => r,
            Err(pgdual_rules::RulesError::Invalid { problems, .. }) => {
                return self.rejected(problems.iter().map(|p| p.to_string()).collect())
            }
            Err(e) => return self.rejected(vec![e.to_string()]),
        };
        // New is asked only about what the new rules use of it beyond the rules in force
        // (checked when they came in; those pgdual started with are checked by the mirror,
        // which captures nothing until they pass): the way back to legacy never needs new,
        // not even right after a start with new down.
        match catalog::check_reload(&self.endpoints, &rules, Some(&old.rules)).await {
            Err(e) => {
                return self.rejected(vec![format!("cannot check against the catalogs: {e}")])
            }
            Ok((problems, learned)) => {
                if !problems.is_empty() {
                    return self.rejected(problems.iter().map(|p| p.to_string()).collect());
                }
                for (table, columns) in learned {
                    rules.set_legacy_columns(&table, columns);
                }
            }
        }
        if write_back {
            if let Some(path) = &self.path {
                if let Err(e) = write_atomically(path, &text).await {
                    return self.rejected(vec![format!("cannot write {}: {e}", path.display())]);
                }
            }
        }
        let (version, generation) = (old.version + 1, old.generation + 1);
        self.current.store(Arc::new(RulesSnapshot {
            version,
            generation,
            rules: Arc::new(rules),
            text,
        }));
        info!(version, "rules reloaded");
        self.publish(generation);
        ReloadOutcome::Reloaded { version }
    }
}

impl RulesStore {
    /// Records the legacy tables' columns learned from the catalog for the rules at `version`
    /// (the rules pgdual started with were only checked offline). Same version, same rules.
    pub fn learn_columns(&self, version: u64, learned: LegacyColumns) {
        let old = self.load();
        if old.version != version {
            return;
        }
        let mut rules = (*old.rules).clone();
        let mut changed = false;
        for (table, columns) in learned {
            if rules
                .table(&table)
                .is_some_and(|t| t.legacy_columns != columns)
            {
                rules.set_legacy_columns(&table, columns);
                changed = true;
            }
        }
        if changed {
            let swapped = self.current.rcu(|cur| {
                if cur.version == version {
                    Arc::new(RulesSnapshot {
                        version,
                        generation: cur.generation + 1,
                        rules: Arc::new(rules.clone()),
                        text: cur.text.clone(),
                    })
                } else {
                    cur.clone()
                }
            });
            if swapped.version == version {
                self.publish(swapped.generation + 1);
            }
        }
    }
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`.
async fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("toml.pgdual-tmp");
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Watches the rules file and reloads it when it changes; returns the watcher, which stops
/// watching when dropped. Only events naming the file count, and a reload of unchanged text
/// is a no-op, so the API's own write-back does not trigger a second reload.
pub fn watch(store: Arc<RulesStore>) -> Option<notify::RecommendedWatcher> {
    use notify::event::ModifyKind;
    use notify::{EventKind, RecursiveMode, Watcher};
    let path = store.path()?.to_path_buf();
    let name = path.file_name()?.to_os_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Content changes and renames onto the file; not metadata (an unlink changes the
        // link count, a backup tool touches times).
        let relevant = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
        ) && event.paths.iter().any(|p| p.file_name() == Some(&name));
        if relevant {
            let _ = tx.send(());
        }
    })
    .map_err(|e| warn!(error = %e, "cannot watch the rules file; use SIGHUP or the admin API"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(error = %e, dir = %dir.display(), "cannot watch the rules file's directory");
        return None;
    }
    let spawned = std::thread::Builder::new()
        .name("pgdual-rules-watch".into())
        .spawn(move || {
            let Some(rt) = crate::runtime::current_thread("rules watcher") else {
                return;
            };
            rt.block_on(async move {
                while rx.recv().await.is_some() {
                    // Editors write in several steps: let them settle, then read once.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    loop {
                        match rx.try_recv() {
                            Ok(()) => {}
                            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                            // The watcher is gone: pgdual is stopping.
                            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return,
                        }
                    }
                    store.reload_file().await;
                }
            });
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the rules watcher");
        return None;
    }
    Some(watcher)
}
