//! Offline validation of a rules file: every problem found, each naming where it is.

use std::collections::HashMap;

use sqlparser::ast::Expr;

use super::model::{
    ColumnMap, ReadBack, RuleProblem, RuleSet, RulesFile, TableRule, TableSpec, TargetDatabase,
};
use super::parse::parse_column_expr;
use crate::sql::ident::{fold, fold_unquoted, parse_table_name, quote_ident, TableName};

impl RulesFile {
    /// The validated rule set, or every problem found.
    pub fn validate(&self) -> Result<RuleSet, Vec<RuleProblem>> {
        let mut problems = Vec::new();
        let mut set = RuleSet::default();
        let mut new_names = HashMap::new();
        for (index, spec) in self.tables.iter().enumerate() {
            let mut entry = Entry {
                index,
                spec,
                problems: &mut problems,
            };
            if let Some(rule) = entry.table_rule(&set, &mut new_names) {
                set.by_legacy.insert(rule.legacy.clone(), set.tables.len());
                set.tables.push(rule);
            }
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(problems)
        }
    }
}

/// The new tables already taken, by database, with the entry that took each.
type NewNames = HashMap<(TargetDatabase, TableName), usize>;

/// One `[[table]]` entry being validated, and where its problems go.
struct Entry<'a> {
    index: usize,
    spec: &'a TableSpec,
    problems: &'a mut Vec<RuleProblem>,
}

impl Entry<'_> {
    fn bad(&mut self, field: &str, message: String) {
        self.problems.push(RuleProblem {
            at: format!("table[{}] ({}).{field}", self.index, self.spec.legacy),
            message,
        });
    }

    /// The entry's rule, when it has no problem that leaves the rule unbuildable; every
    /// problem found is recorded either way, in the order of the entry's fields.
    fn table_rule(&mut self, set: &RuleSet, new_names: &mut NewNames) -> Option<TableRule> {
        let spec = self.spec;
        let (legacy, new) = self.names(set, new_names);
        if spec.keys.is_empty() {
            self.bad("keys", "must name at least one legacy key column".into());
        }
        if spec.columns.is_empty() {
            self.bad("columns", "must map at least one new column".into());
        }
        let columns = self.columns();
        let legacy_keys: Vec<String> = spec.keys.iter().map(|k| fold_unquoted(k)).collect();
        let new_keys = self.new_keys(&legacy_keys, &columns);
        if spec.read_percent > 100 {
            self.bad(
                "read_percent",
                format!("{} is not a percentage (0-100)", spec.read_percent),
            );
        }
        let read_back = self.read_back(&columns);
        let complete = new_keys.len() == legacy_keys.len() && !spec.columns.is_empty();
        Some(TableRule {
            legacy: legacy?,
            new: new?,
            database: spec.database,
            legacy_keys,
            new_keys,
            write: spec.write,
            columns,
            read: spec.read,
            read_percent: spec.read_percent,
            fallback_on_empty: spec.fallback_on_empty,
            read_back,
            legacy_columns: Vec::new(),
        })
        .filter(|_| complete)
    }

    /// The legacy and new table names, each checked against the entries before this one.
    fn names(
        &mut self,
        set: &RuleSet,
        new_names: &mut NewNames,
    ) -> (Option<TableName>, Option<TableName>) {
        let spec = self.spec;
        let legacy = parse_table_name(&spec.legacy)
            .map_err(|m| self.bad("legacy", m))
            .ok();
        let new = parse_table_name(&spec.new)
            .map_err(|m| self.bad("new", m))
            .ok();
        if let (Some(l), Some(n)) = (&legacy, &new) {
            if spec.database == TargetDatabase::Legacy && l == n {
                self.bad(
                    "new",
                    "is the legacy table itself; with database = \"legacy\" it must be another table".into(),
                );
            }
            if let Some(j) = new_names.insert((spec.database, n.clone()), self.index) {
                self.bad("new", format!("{n} is also the new table of table[{j}]"));
            }
            if set.by_legacy.contains_key(l) {
                self.bad("legacy", format!("{l} has more than one rule"));
            }
        }
        (legacy, new)
    }

    /// The new columns whose expressions parse.
    fn columns(&mut self) -> Vec<ColumnMap> {
        let mut columns = Vec::new();
        for (new_col, source) in &self.spec.columns {
            match parse_column_expr(source) {
                Err(m) => self.bad(&format!("columns.{new_col}"), m),
                Ok((expr, reads)) => {
                    let rename_of = match &expr {
                        Expr::Identifier(id) => Some(fold(id)),
                        _ => None,
                    };
                    columns.push(ColumnMap {
                        new: new_col.clone(),
                        source: source.clone(),
                        expr,
                        reads,
                        rename_of,
                    });
                }
            }
        }
        columns
    }

    /// The new column each legacy key is renamed to, in key order (shorter when some key is
    /// not mapped by a plain rename).
    fn new_keys(&mut self, legacy_keys: &[String], columns: &[ColumnMap]) -> Vec<String> {
        let mut new_keys = Vec::new();
        for key in legacy_keys {
            match columns.iter().find(|c| c.rename_of.as_deref() == Some(key)) {
                Some(c) => new_keys.push(c.new.clone()),
                None => self.bad(
                    "keys",
                    format!("key column {key:?} must be mapped to a new column by name, like `{key} = \"{key}\"`"),
                ),
            }
        }
        new_keys
    }

    /// The explicit `read_back` entries that parse, then the plain renames they leave out.
    fn read_back(&mut self, columns: &[ColumnMap]) -> Vec<ReadBack> {
        let mut read_back = Vec::new();
        for (legacy_col, source) in &self.spec.read_back {
            match parse_column_expr(source) {
                Err(m) => self.bad(&format!("read_back.{legacy_col}"), m),
                Ok((expr, reads)) => read_back.push(ReadBack {
                    legacy: legacy_col.clone(),
                    source: source.clone(),
                    expr,
                    reads,
                }),
            }
        }
        for c in columns {
            if let Some(old) = &c.rename_of {
                if !read_back.iter().any(|r| &r.legacy == old) {
                    read_back.push(ReadBack {
                        legacy: old.clone(),
                        source: quote_ident(&c.new),
                        expr: Expr::Identifier(sqlparser::ast::Ident::with_quote(
                            '"',
                            c.new.clone(),
                        )),
                        reads: vec![c.new.clone()],
                    });
                }
            }
        }
        read_back
    }
}
