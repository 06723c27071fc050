//! What each client role may read on legacy, for read routing: looked up on pgdual's own
//! connection to legacy by a thread of its own, cached per (role, rules version), refreshed
//! after every rules change and every [`REFRESH`].
//!
//! Never on the client's path: a read whose role is not in the cache (or only for an older
//! rules version) goes to legacy and asks for the look-up; it never waits for it. Anything
//! unknown is a refusal: a role that cannot be looked up stays on legacy.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pgdual_rules::privilege::{Access, TableAccess};
use pgdual_rules::{ReadMode, ReadPlan, TableName};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::control::rules_store::RulesStore;
use crate::net::endpoint::Endpoint;

/// How often every cached role is looked up again: a REVOKE on legacy reaches routing
/// within this long (or at the next rules change).
pub const REFRESH: Duration = Duration::from_secs(60);
/// Entries older than this (a refresh kept failing) are not trusted.
const TRUSTED_FOR: Duration = Duration::from_secs(180);
/// Roles cached at most; reads of further roles stay on legacy.
const MAX_ROLES: usize = 1024;
/// Pause after the catalog connection failed.
const RETRY: Duration = Duration::from_secs(1);
/// Longest one role's look-up may take before the connection is dropped and retried.
const LOOK_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// One role's access to the routed tables, for one rules version.
#[derive(Debug)]
struct RoleAccess {
    version: u64,
    fetched: Instant,
    /// Legacy gives the role another role at login (`ALTER ROLE ... SET role`).
    default_role: bool,
    tables: HashMap<TableName, TableAccess>,
}

/// The cache, shared by every session; the look-ups run on [`start`]'s thread.
#[derive(Default)]
pub struct Privileges {
    roles: RwLock<HashMap<String, Arc<RoleAccess>>>,
    /// Roles a read asked about that are not cached yet.
    wanted: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Privileges {
    /// Whether `role` may read on legacy everything `plan` touches, under the rules at
    /// `version`; when not known yet, `Unchecked`, and the look-up is asked for.
    pub fn access(&self, role: &str, version: u64, plan: &ReadPlan) -> Access {
        let cached = self
            .roles
            .read()
            .ok()
            .and_then(|r| r.get(role).cloned())
            .filter(|r| r.version == version && r.fetched.elapsed() < TRUSTED_FOR);
        match cached {
            Some(r) if r.default_role => Access::RoleChanged,
            Some(r) => pgdual_rules::privilege::access(plan, |t| r.tables.get(t)),
            None => {
                self.want(role);
                Access::Unchecked
            }
        }
    }

    /// True once `role`'s privileges for the rules at `version` are cached.
    pub fn knows(&self, role: &str, version: u64) -> bool {
        self.roles
            .read()
            .ok()
            .and_then(|r| r.get(role).map(|a| a.version == version))
            .unwrap_or(false)
    }

    fn want(&self, role: &str) {
        let Ok(mut wanted) = self.wanted.lock() else {
            return;
        };
        let cached = self.roles.read().map_or(MAX_ROLES, |r| r.len());
        if cached + wanted.len() < MAX_ROLES && wanted.insert(role.to_string()) {
            self.wake.notify_one();
        }
    }

    fn store(&self, role: String, access: RoleAccess) {
        if let Ok(mut roles) = self.roles.write() {
            roles.insert(role, Arc::new(access));
        }
    }

    /// Roles to look up for `version`: the ones asked for, plus every cached role when
    /// `all` or when its entry is for another version.
    fn due(&self, version: u64, all: bool) -> Vec<String> {
        let mut due: HashSet<String> = self
            .wanted
            .lock()
            .map(|mut w| w.drain().collect())
            .unwrap_or_default();
        if let Ok(roles) = self.roles.read() {
            due.extend(
                roles
                    .iter()
                    .filter(|(_, a)| all || a.version != version)
                    .map(|(r, _)| r.clone()),
            );
        }
        due.into_iter().collect()
    }

    fn retry_later(&self, roles: impl IntoIterator<Item = String>) {
        if let Ok(mut w) = self.wanted.lock() {
            w.extend(roles);
        }
    }
}

/// The look-up thread's handles.
pub struct LookUps {
    pub privileges: Arc<Privileges>,
    /// The rules in force: their routed tables are what is looked up, and a change of them
    /// looks every cached role up again.
    pub rules: Arc<RulesStore>,
    /// Looked up over pgdual's own connection to legacy.
    pub legacy: Endpoint,
    /// Values may appear in log lines (`reads.log_values`).
    pub log_values: bool,
}

impl LookUps {
    /// Starts the thread that looks privileges up until `stop` is set.
    pub fn start(
        self,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("pgdual-privileges".into())
            .spawn(move || {
                let Some(rt) = crate::runtime::current_thread("privileges") else {
                    return;
                };
                rt.block_on(self.run(stop));
            })
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let privileges = &self.privileges;
        let mut rules_changed = self.rules.subscribe();
        let mut client: Option<tokio_postgres::Client> = None;
        let mut refreshed = Instant::now();
        loop {
            tokio::select! {
                _ = privileges.wake.notified() => {}
                // Every cached role is looked up again for the new version.
                _ = rules_changed.changed() => {}
                _ = tokio::time::sleep_until((refreshed + REFRESH).into()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let snap = self.rules.load();
            let all = refreshed.elapsed() >= REFRESH;
            let roles = privileges.due(snap.version, all);
            if all {
                refreshed = Instant::now();
            }
            if roles.is_empty() {
                continue;
            }
            // Stopping never waits on a look-up.
            tokio::select! {
                _ = self.refresh(&mut client, roles, snap.version, &snap.rules) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if privileges.wanted.lock().is_ok_and(|w| !w.is_empty()) {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => privileges.wake.notify_one(),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }

    /// Looks `roles` up for the rules at `version`; the roles it could not look up are asked
    /// for again.
    async fn refresh(
        &self,
        client: &mut Option<tokio_postgres::Client>,
        roles: Vec<String>,
        version: u64,
        rules: &pgdual_rules::RuleSet,
    ) {
        let privileges = &self.privileges;
        let tables: Vec<TableName> = rules
            .tables()
            .iter()
            .filter(|t| t.read != ReadMode::Legacy)
            .map(|t| t.legacy.clone())
            .collect();
        let mut pending = roles.into_iter();
        while let Some(role) = pending.next() {
            let c = match client {
                Some(c) if !c.is_closed() => c,
                _ => match self.legacy.client().await {
                    Ok(c) => client.insert(c),
                    Err(e) => {
                        warn!(error = %e, "cannot look up client roles' privileges; their reads stay on legacy");
                        privileges.retry_later(std::iter::once(role).chain(pending));
                        return;
                    }
                },
            };
            let found = tokio::time::timeout(LOOK_UP_TIMEOUT, look_up(c, &role, &tables)).await;
            let access = |default_role, tables| RoleAccess {
                version,
                fetched: Instant::now(),
                default_role,
                tables,
            };
            match found {
                Ok(Ok((default_role, tables))) => {
                    privileges.store(role, access(default_role, tables))
                }
                Ok(Err(e))
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) =>
                {
                    // The role is gone from legacy: it may read nothing.
                    let error = crate::telemetry::redact::pg_error(&e, self.log_values);
                    debug!(%error, "client role not found on legacy");
                    privileges.store(role, access(false, HashMap::new()));
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => crate::telemetry::redact::pg_error(&e, self.log_values),
                        _ => "timed out".to_string(),
                    };
                    warn!(%error, "privilege look-up failed; the role's reads stay on legacy");
                    *client = None;
                    privileges.retry_later(std::iter::once(role).chain(pending));
                    return;
                }
            }
        }
    }
}

/// What `role` may read of each of `tables` on legacy (its schema's USAGE, table SELECT,
/// the columns it may SELECT, row-level security), and whether legacy gives it another role
/// at login in this database.
async fn look_up(
    c: &tokio_postgres::Client,
    role: &str,
    tables: &[TableName],
) -> Result<(bool, HashMap<TableName, TableAccess>), tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let default_role: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) AS c(setting) \
               WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
                 AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = $1::text)) \
                 AND (c.setting LIKE 'role=%' OR c.setting LIKE 'session\\_authorization=%'))",
            &[&role],
        )
        .await?
        .get(0);
    let rows = c
        .query(
            "SELECT t.i, coalesce(c.relrowsecurity, false), \
                    coalesce(has_schema_privilege(($1::text)::name, c.relnamespace, 'USAGE'), false), \
                    coalesce(has_table_privilege(($1::text)::name, c.oid, 'SELECT'), false), \
                    ARRAY(SELECT a.attname::text FROM pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                            AND has_column_privilege(($1::text)::name, c.oid, a.attnum, 'SELECT')) \
             FROM unnest($2::text[]) WITH ORDINALITY AS t(name, i) \
             LEFT JOIN pg_class c ON c.oid = to_regclass(t.name)",
            &[&role, &names],
        )
        .await?;
    let mut out = HashMap::new();
    for row in rows {
        let i: i64 = row.get(0);
        let Some(table) = usize::try_from(i - 1).ok().and_then(|i| tables.get(i)) else {
            continue;
        };
        let mut columns: Vec<String> = row.get(4);
        columns.sort();
        out.insert(
            table.clone(),
            TableAccess {
                row_security: row.get(1),
                usage: row.get(2),
                select: row.get(3),
                columns,
            },
        );
    }
    Ok((default_role, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_miss_asks_for_the_role_and_a_hit_is_for_its_rules_version_only() {
        let mut rules = pgdual_rules::parse_rules(
            "[[table]]\nlegacy = \"public.t\"\nnew = \"app.t\"\nkeys = [\"id\"]\nread = \"new\"\n\
             [table.columns]\nid = \"id\"\nname = \"name\"\n",
            "t",
        )
        .unwrap();
        let t = rules.tables()[0].legacy.clone();
        rules.set_legacy_columns(&t, vec!["id".into(), "name".into()]);
        let plan = pgdual_rules::plan_read("SELECT name FROM t", &rules).unwrap();
        let p = Privileges::default();
        assert_eq!(p.access("app", 1, &plan), Access::Unchecked);
        assert_eq!(p.due(1, false), vec!["app".to_string()]);
        let grants = |columns: &[&str], default_role| RoleAccess {
            version: 1,
            fetched: Instant::now(),
            default_role,
            tables: HashMap::from([(
                t.clone(),
                TableAccess {
                    usage: true,
                    select: false,
                    columns: columns.iter().map(|c| c.to_string()).collect(),
                    row_security: false,
                },
            )]),
        };
        p.store("app".into(), grants(&["name"], false));
        assert!(p.knows("app", 1));
        assert_eq!(p.access("app", 1, &plan), Access::Allowed);
        assert_eq!(
            p.access("app", 2, &plan),
            Access::Unchecked,
            "another version"
        );
        assert_eq!(p.due(2, false), vec!["app".to_string()]);
        p.store("app".into(), grants(&["id"], false));
        assert_eq!(p.access("app", 1, &plan), Access::Denied);
        p.store("app".into(), grants(&["name"], true));
        assert_eq!(p.access("app", 1, &plan), Access::RoleChanged);
    }
}
