//! pgdual-rules: statement analysis (kind and tables touched) and its bounded cache, and the
//! rules file that maps legacy tables to new ones.
//!
//! Pure: no I/O, no async runtime, no clocks. The proxy calls in here; nothing here calls out.
//!
//! Layers, lowest first: `sql` (identifiers, analysis, fingerprints), `ruleset` (the rules
//! file), `read` (read planning, privileges, routing) and `sqlgen` (SQL generated from rules).
//! A layer uses only the layers below it.

pub mod read;
pub mod ruleset;
pub mod sql;
pub mod sqlgen;

pub use read::{plan as read_plan, privilege, route};
pub use sql::{analysis, bounds, cache, fingerprint};
pub use sqlgen::{capture_sql, copy_sql, keyset_sql};

pub use analysis::{analyze, Analysis, StatementInfo, StatementKind};
pub use cache::AnalysisCache;
pub use fingerprint::fingerprint;
pub use read_plan::{plan_lifted, plan_read, KeyRef, NotLifted, NotRoutable, ReadPlan};
pub use ruleset::{parse_rules, ReadMode, RuleSet, RulesError, TableRule};
pub use sql::ident::{TableName, TableRef};
