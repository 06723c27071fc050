//! Reads routed by the rules: answered by new (with legacy as the fallback) or shadowed on new
//! and compared, off the critical path.
//!
//! The relay decides per request group (a simple Query, or Bind/Describe/Execute/Sync) with
//! [`pgdual_rules::route::route`]. A read answered by new goes out as legacy would have sent
//! it: legacy's own RowDescription (learned by describing the statement on legacy, cached),
//! new's rows and command tag, and ReadyForQuery. Anything off (an error, new unreachable or
//! slow, a result shape that differs from legacy's, an empty result where the rule says so,
//! a result over the size limit) falls back to legacy and is counted with its reason.

mod answer;
mod counters;
mod describe;
mod health;
mod request;
mod runner;
mod shadow;
mod warm;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use pgdual_config::ReadsConfig;
use pgdual_rules::read_plan::{NotLifted, NotRoutable};
use pgdual_rules::ruleset::TargetDatabase;
use pgdual_rules::{ReadPlan, RuleSet, TableName};

use crate::control::rules_store::RulesSnapshot;
use crate::net::conn::Target;
use crate::net::endpoint::Endpoints;
pub use answer::answer;
pub use counters::{Fallback, Families, KeptForRole, Sample, TableReads};
pub use describe::Described;
pub use request::{Describe, Lifted, Request, Settings, TRACKED_SETTINGS};
pub use shadow::{spawn_shadow, Capture, ShadowJob};
pub use warm::keep_warm;

/// Distinct (rules generation, SQL text) plans kept; the map is cleared when full.
const PLAN_CACHE_CAPACITY: usize = 10_000;
/// Mismatch samples kept for the admin API.
const SAMPLES: usize = 64;

/// A statement's plan for one rules generation, or why new cannot answer it.
pub type CachedPlan = Arc<Result<ReadPlan, NotRoutable>>;

/// A simple-query shape's plan for one rules generation; `plan` is `None` when the shape's
/// literals must stay in its text.
#[derive(Clone)]
struct LiftedEntry {
    generation: u64,
    text: Arc<str>,
    plan: Option<CachedPlan>,
}

/// Where reads connect: pooled connections as pgdual's own role.
struct Targets {
    /// Legacy, to describe statements (within `limits.connect_timeout_ms`).
    describe: Target,
    /// Legacy, to answer reads of tables whose target is a schema of legacy.
    legacy: Target,
    /// New, to answer reads; `None` without a `[new]` database.
    new: Option<Target>,
}

impl Targets {
    /// Where `plan` runs: where its first table's rule puts the table.
    fn for_plan(&self, plan: &ReadPlan, rules: &RuleSet) -> Option<&Target> {
        let on_legacy = plan
            .tables
            .first()
            .and_then(|t| rules.table(t))
            .is_some_and(|r| r.database == TargetDatabase::Legacy);
        if on_legacy {
            Some(&self.legacy)
        } else {
            self.new.as_ref()
        }
    }
}

/// The read router: its settings and connections, and everything it keeps between requests.
pub struct Reads {
    settings: ReadsConfig,
    targets: Targets,
    /// Plans by SQL text, each with the rules generation it was made under.
    plans: DashMap<Box<str>, (u64, CachedPlan)>,
    /// Plans of simple queries by shape (rules generation, text with literals lifted); `None`
    /// when the shape's literals must stay in its text.
    lifted: DashMap<Arc<str>, LiftedEntry>,
    /// Verdicts that new cannot answer a statement, by rules generation and fingerprint.
    unroutable: DashMap<Box<str>, (u64, CachedPlan)>,
    described: DashMap<(Arc<str>, Vec<u32>), Arc<Described>>,
    /// The rules generation `described` was learned under: a rules change forgets it.
    described_generation: AtomicU64,
    /// Read counters by legacy table.
    tables: DashMap<TableName, Arc<TableReads>>,
    families: Families,
    samples: Mutex<VecDeque<Sample>>,
    /// Shadowed reads waiting for the shadow thread, started with the first.
    shadow_queue: std::sync::OnceLock<tokio::sync::mpsc::Sender<ShadowJob>>,
    health: health::Health,
}

impl Reads {
    /// `connect_timeout` bounds opening a connection (`limits.connect_timeout_ms`); a read's
    /// connection to new is also bounded by `reads.timeout_ms`.
    pub fn new(
        settings: ReadsConfig,
        connect_timeout: Duration,
        endpoints: &Endpoints,
        families: Families,
    ) -> Self {
        let read_connect = connect_timeout.min(Duration::from_millis(settings.timeout_ms));
        Reads {
            targets: Targets {
                describe: endpoints.legacy.target(connect_timeout),
                legacy: endpoints.legacy.target(read_connect),
                new: endpoints.new.as_ref().map(|n| n.target(read_connect)),
            },
            plans: DashMap::new(),
            lifted: DashMap::new(),
            unroutable: DashMap::new(),
            described: DashMap::new(),
            described_generation: AtomicU64::new(0),
            tables: DashMap::new(),
            families,
            samples: Mutex::new(VecDeque::new()),
            shadow_queue: std::sync::OnceLock::new(),
            health: Default::default(),
            settings,
        }
    }

    /// Where shadowed reads go: the shadow thread's queue (the thread starts on first use
    /// and ends once these reads are dropped).
    fn shadow_queue(self: &Arc<Self>) -> &tokio::sync::mpsc::Sender<ShadowJob> {
        self.shadow_queue.get_or_init(|| runner::start(self))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.timeout_ms)
    }

    fn log_values(&self) -> bool {
        self.settings.log_values
    }

    /// The plan of `sql` under the rules of `snap`, cached.
    pub fn plan(&self, snap: &RulesSnapshot, sql: &str) -> CachedPlan {
        self.follow(snap.generation);
        let current = |e: &(u64, CachedPlan)| (e.0 == snap.generation).then(|| e.1.clone());
        if let Some(p) = self.plans.get(sql).and_then(|e| current(&e)) {
            return p;
        }
        // What keeps a statement from new is its shape, not its literals: one verdict per
        // fingerprint spares parsing every text that differs in literals only. At worst a
        // text whose literals would have let it through stays on legacy, which is always right.
        let shape = pgdual_rules::fingerprint::fingerprint(sql);
        if let Some(p) = self
            .unroutable
            .get(shape.as_str())
            .and_then(|e| current(&e))
        {
            return p;
        }
        let plan = Arc::new(pgdual_rules::read_plan::plan_read(sql, &snap.rules));
        let (cache, key) = match &*plan {
            Err(NotRoutable::TooLong(_) | NotRoutable::Parse(_)) | Ok(_) => {
                (&self.plans, sql.into())
            }
            Err(_) => (&self.unroutable, shape.into_boxed_str()),
        };
        if cache.len() >= PLAN_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, (snap.generation, plan.clone()));
        plan
    }

    /// The plan of a simple query: once per shape with its literals lifted to parameters
    /// (the values returned, bound), or, for a shape whose literals must stay in the text
    /// (see [`pgdual_rules::sql::literals`]), per text as [`Self::plan`].
    pub fn plan_simple(
        &self,
        snap: &RulesSnapshot,
        sql: &str,
    ) -> (CachedPlan, Option<Box<Lifted>>) {
        self.follow(snap.generation);
        if let Some(l) = pgdual_rules::sql::literals::lift(sql) {
            let known = self
                .lifted
                .get(l.sql.as_str())
                .filter(|e| e.generation == snap.generation)
                .map(|e| (e.text.clone(), e.plan.clone()));
            let (text, plan) = known.unwrap_or_else(|| {
                let plan = match pgdual_rules::plan_lifted(&l.sql, l.values.len(), &snap.rules) {
                    Ok(plan) => Some(Arc::new(Ok(plan))),
                    Err(NotLifted::NotRoutable(e)) => Some(Arc::new(Err(e))),
                    Err(NotLifted::Literals) => None,
                };
                if self.lifted.len() >= PLAN_CACHE_CAPACITY {
                    self.lifted.clear();
                }
                let text: Arc<str> = l.sql.as_str().into();
                let entry = LiftedEntry {
                    generation: snap.generation,
                    text: text.clone(),
                    plan: plan.clone(),
                };
                self.lifted.insert(text.clone(), entry);
                (text, plan)
            });
            if let Some(plan) = plan {
                let lifted = plan.is_ok().then(|| {
                    Box::new(Lifted {
                        key: (snap.generation, text),
                        types: l.types,
                        values: l.values,
                    })
                });
                return (plan, lifted);
            }
        }
        (self.plan(snap, sql), None)
    }

    /// Plans cached: (simple-query shapes planned with their literals lifted, texts planned
    /// as they are).
    pub fn plan_counts(&self) -> (usize, usize) {
        let lifted = self.lifted.iter().filter(|e| e.plan.is_some()).count();
        (lifted, self.plans.len())
    }

    /// New refused to prepare a lifted shape: its texts are planned with their literals from
    /// now on (until the rules change).
    fn keep_literals(&self, lifted: &Lifted) {
        let (generation, text) = lifted.key.clone();
        let plan = None;
        self.lifted.insert(
            text.clone(),
            LiftedEntry {
                generation,
                text,
                plan,
            },
        );
    }

    /// A newer rules generation forgets what was learned about legacy's statements (the change
    /// may come with changes on legacy) and the plans of older generations.
    fn follow(&self, generation: u64) {
        let seen = self.described_generation.load(Relaxed);
        if seen < generation
            && self
                .described_generation
                .compare_exchange(seen, generation, Relaxed, Relaxed)
                .is_ok()
        {
            self.described.clear();
            self.plans.retain(|_, e| e.0 == generation);
            self.lifted.retain(|_, e| e.generation == generation);
            self.unroutable.retain(|_, e| e.0 == generation);
        }
    }

    /// The read counters of a legacy table (labelled with its name as PostgreSQL prints it).
    pub fn table(&self, name: &TableName) -> Arc<TableReads> {
        if let Some(t) = self.tables.get(name) {
            return t.clone();
        }
        self.tables
            .entry(name.clone())
            .or_insert_with(|| Arc::new(self.families.table(&name.to_string())))
            .clone()
    }

    /// Counters of every table that has seen a routed read, by name.
    pub fn all_tables(&self) -> Vec<(TableName, Arc<TableReads>)> {
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
            match self.tables.get(t) {
                Some(r) => f(&r),
                None => f(&self.table(t)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let config = pgdual_config::Config::default();
        let endpoints = Endpoints::from_config(&config).unwrap();
        let metrics = crate::telemetry::metrics::Metrics::default();
        let families = Families::register(&metrics.registrar());
        let reads = Reads::new(config.reads, Duration::from_secs(1), &endpoints, families);
        let snap = |generation| RulesSnapshot {
            version: 1,
            generation,
            rules: Arc::new(rules.clone()),
            text: String::new(),
        };
        let (one, two) = (snap(1), snap(2));
        let a = reads.plan(&one, "SELECT email FROM users WHERE id = 1");
        let b = reads.plan(&one, "SELECT email FROM users WHERE id = 2");
        let sql = |p: &CachedPlan| p.as_ref().as_ref().unwrap().sql.clone();
        assert!(
            sql(&a).ends_with("= 1") && sql(&b).ends_with("= 2"),
            "{}",
            sql(&a)
        );
        let c = reads.plan(&one, "SELECT email FROM users WHERE id = 1 FOR UPDATE");
        let d = reads.plan(&one, "SELECT email FROM users WHERE id = 9 FOR UPDATE");
        assert!(
            c.is_err() && Arc::ptr_eq(&c, &d),
            "one verdict for the shape"
        );
        let e = reads.plan(&two, "SELECT email FROM users WHERE id = 9 FOR UPDATE");
        assert!(!Arc::ptr_eq(&d, &e), "a new rules generation plans again");
        assert_eq!(
            reads.unroutable.len(),
            1,
            "the older generation's verdicts are gone"
        );
    }
}
