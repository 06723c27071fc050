//! The rules file's types: the file as written (`RulesFile`) and the validated rule set.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use sqlparser::ast::Expr;

use crate::sql::ident::TableName;

/// The file as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// One `[[table]]` per mapped legacy table.
    #[serde(default, rename = "table")]
    pub tables: Vec<TableSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Legacy table, schema-qualified: `public.users`.
    pub legacy: String,
    /// New table, schema-qualified: `app.customers`.
    pub new: String,
    /// Which database holds the new table: `new` (default; the config's new database) or
    /// `legacy` (another schema of the legacy database).
    #[serde(default)]
    pub database: TargetDatabase,
    /// Legacy key columns; each must be mapped to a new column by a plain rename.
    pub keys: Vec<String>,
    /// Mirror writes to this table: `off` (default) or `on`.
    #[serde(default)]
    pub write: WriteMode,
    /// New column = SQL expression over the legacy row's columns.
    pub columns: BTreeMap<String, String>,
    /// Where reads of this table go: `legacy` (default), `shadow` or `new`.
    #[serde(default)]
    pub read: ReadMode,
    /// Share of reads (0-100) that take `read`'s mode; the rest stay on legacy. Sticky per
    /// key value, or else per client connection.
    #[serde(default = "full_percent")]
    pub read_percent: u8,
    /// In `new` mode, answer from legacy when new returns no rows.
    #[serde(default)]
    pub fallback_on_empty: bool,
    /// Legacy column = SQL expression over the new row's columns, for reads answered by new.
    /// Columns mapped by a plain rename read back by the rename without an entry here.
    #[serde(default)]
    pub read_back: BTreeMap<String, String>,
}

fn full_percent() -> u8 {
    100
}

/// Where a table's reads go.
#[derive(
    Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Default, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Legacy answers; new is not asked.
    #[default]
    Legacy,
    /// Legacy answers; the same read runs on new off the critical path and is compared.
    Shadow,
    /// New answers, rewritten to the new schema; legacy answers on any failure.
    New,
}

impl ReadMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Legacy => "legacy",
            ReadMode::Shadow => "shadow",
            ReadMode::New => "new",
        }
    }

    pub fn parse(text: &str) -> Option<ReadMode> {
        match text {
            "legacy" => Some(ReadMode::Legacy),
            "shadow" => Some(ReadMode::Shadow),
            "new" => Some(ReadMode::New),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum TargetDatabase {
    #[default]
    New,
    Legacy,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    #[default]
    Off,
    On,
}

/// One new column and where its value comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMap {
    pub new: String,
    /// The expression as written.
    pub source: String,
    pub expr: Expr,
    /// Legacy columns the expression reads.
    pub reads: Vec<String>,
    /// When the expression is a bare legacy column: that column.
    pub rename_of: Option<String>,
}

/// How one legacy column is read back from the new row.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadBack {
    pub legacy: String,
    /// The expression as written, over the new row's columns.
    pub source: String,
    pub expr: Expr,
    /// New columns the expression reads.
    pub reads: Vec<String>,
}

/// A validated table rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRule {
    pub legacy: TableName,
    pub new: TableName,
    pub database: TargetDatabase,
    pub legacy_keys: Vec<String>,
    /// The new columns holding the legacy keys, in key order.
    pub new_keys: Vec<String>,
    pub write: WriteMode,
    pub columns: Vec<ColumnMap>,
    pub read: ReadMode,
    pub read_percent: u8,
    pub fallback_on_empty: bool,
    /// Every legacy column readable from new: explicit `read_back` entries, then the plain
    /// renames not overridden there.
    pub read_back: Vec<ReadBack>,
    /// The legacy table's columns in table order, filled by the catalog check (empty until
    /// then); `SELECT *` is rewritten only when known.
    pub legacy_columns: Vec<String>,
}

impl TableRule {
    /// Every legacy column some new column reads, keys first.
    pub fn legacy_columns_read(&self) -> Vec<String> {
        let mut out = self.legacy_keys.clone();
        for c in &self.columns {
            for r in &c.reads {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }
}

/// A validated rule set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleSet {
    pub(super) tables: Vec<TableRule>,
    pub(super) by_legacy: HashMap<TableName, usize>,
}

impl RuleSet {
    pub fn tables(&self) -> &[TableRule] {
        &self.tables
    }

    /// The rule for a legacy table.
    pub fn table(&self, legacy: &TableName) -> Option<&TableRule> {
        self.by_legacy.get(legacy).map(|&i| &self.tables[i])
    }

    /// Records the legacy table's columns (from its catalog), in table order.
    pub fn set_legacy_columns(&mut self, legacy: &TableName, columns: Vec<String>) {
        if let Some(&i) = self.by_legacy.get(legacy) {
            self.tables[i].legacy_columns = columns;
        }
    }

    /// True when some table's reads are not all on legacy.
    pub fn routes_reads(&self) -> bool {
        self.tables
            .iter()
            .any(|t| t.read != ReadMode::Legacy && t.read_percent > 0)
    }
}

/// One problem with a rules file, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub at: String,
    pub message: String,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules file {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{} problem(s) in rules file {origin}:\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: String,
        problems: Vec<RuleProblem>,
    },
}
