//! The rules file: which legacy tables map to which new tables, by which keys, with which
//! column transforms. Parsing and offline validation only; checks against the databases'
//! catalogs happen where there are connections (the proxy crate).
//!
//! Every column of a new table is a SQL expression over the legacy row: a bare column name is
//! a rename, `lower(email)` a transform, `'legacy'` a constant. Legacy columns no expression
//! uses are dropped. Validation lists every problem at once, each naming where it is.

mod edit;
mod model;
mod parse;
mod validate;

pub use crate::sql::ident::{parse_table_name, quote_ident, TableName};
pub use edit::{set_read_mode, set_write_mode};
pub use model::{
    ColumnMap, ReadBack, ReadMode, RuleProblem, RuleSet, RulesError, RulesFile, TableRule,
    TableSpec, TargetDatabase, WriteMode,
};
pub use parse::parse_rules;

#[cfg(test)]
mod tests;
