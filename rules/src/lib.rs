//! pgdual-rules: statement analysis (kind and tables touched) and its bounded cache, and the
//! rules file that maps legacy tables to new ones.
//!
//! Pure: no I/O, no async runtime, no clocks. The proxy calls in here; nothing here calls out.

pub mod analysis;
pub mod bounds;
pub mod cache;
pub mod capture_sql;
pub mod copy_sql;
pub mod fingerprint;
pub mod privilege;
pub mod read_plan;
pub mod route;
pub mod ruleset;

pub use analysis::{analyze, Analysis, StatementInfo, StatementKind};
pub use cache::AnalysisCache;
pub use fingerprint::fingerprint;
pub use read_plan::{plan_read, KeyRef, NotRoutable, ReadPlan};
pub use ruleset::{parse_rules, ReadMode, RuleSet, RulesError, TableName, TableRule};
