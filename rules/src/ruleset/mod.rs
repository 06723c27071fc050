//! The rules file: which legacy tables map to which new tables, by which keys, with which
//! column transforms. Parsing and offline validation only; checks against the databases'
//! catalogs happen where there are connections (the proxy crate).
//!
//! Every column of a new table is a SQL expression over the legacy row: a bare column name is
//! a rename, `lower(email)` a transform, `'legacy'` a constant. Legacy columns no expression
//! uses are dropped. Validation lists every problem at once, each naming where it is.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use sqlparser::ast::Expr;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::sql::ident::{fold, fold_unquoted};
pub use crate::sql::ident::{parse_table_name, quote_ident, TableName};

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
    tables: Vec<TableRule>,
    by_legacy: HashMap<TableName, usize>,
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

/// Parses and validates rules text; `origin` names the file in errors.
pub fn parse_rules(text: &str, origin: &str) -> Result<RuleSet, RulesError> {
    let file: RulesFile = toml::from_str(text).map_err(|e| RulesError::Parse {
        origin: origin.to_string(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    file.validate().map_err(|problems| RulesError::Invalid {
        origin: origin.to_string(),
        problems,
    })
}

/// Parses a column expression and lists the columns it reads.
fn parse_column_expr(text: &str) -> Result<(Expr, Vec<String>), String> {
    crate::sql::bounds::check(text).map_err(|e| e.to_string())?;
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    let expr = parser.parse_expr().map_err(|e| e.to_string())?;
    if parser.peek_token().token != Token::EOF {
        return Err(format!("{text:?} is more than one expression"));
    }
    let mut reads = Vec::new();
    let mut bad = None;
    let _ = sqlparser::ast::visit_expressions(&expr, |e| {
        match e {
            Expr::Identifier(id) => {
                let c = fold(id);
                if !reads.contains(&c) {
                    reads.push(c);
                }
            }
            Expr::CompoundIdentifier(_) => {
                bad = Some(format!(
                    "{text:?}: refer to legacy columns by bare name, without a table"
                ))
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                bad = Some(format!(
                    "{text:?}: subqueries are not allowed in a column mapping"
                ))
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    match bad {
        Some(b) => Err(b),
        None => Ok((expr, reads)),
    }
}

impl RulesFile {
    /// The validated rule set, or every problem found.
    pub fn validate(&self) -> Result<RuleSet, Vec<RuleProblem>> {
        let mut problems = Vec::new();
        let mut set = RuleSet::default();
        let mut new_names = HashMap::new();
        for (i, spec) in self.tables.iter().enumerate() {
            let at = |field: &str| format!("table[{i}] ({}).{field}", spec.legacy);
            let mut bad = |field: &str, message: String| {
                problems.push(RuleProblem {
                    at: at(field),
                    message,
                })
            };
            let legacy = parse_table_name(&spec.legacy)
                .map_err(|m| bad("legacy", m))
                .ok();
            let new = parse_table_name(&spec.new).map_err(|m| bad("new", m)).ok();
            if let (Some(l), Some(n)) = (&legacy, &new) {
                if spec.database == TargetDatabase::Legacy && l == n {
                    bad(
                        "new",
                        "is the legacy table itself; with database = \"legacy\" it must be another table".into(),
                    );
                }
                if let Some(j) = new_names.insert((spec.database, n.clone()), i) {
                    bad("new", format!("{n} is also the new table of table[{j}]"));
                }
                if set.by_legacy.contains_key(l) {
                    bad("legacy", format!("{l} has more than one rule"));
                }
            }
            if spec.keys.is_empty() {
                bad("keys", "must name at least one legacy key column".into());
            }
            if spec.columns.is_empty() {
                bad("columns", "must map at least one new column".into());
            }
            let mut columns = Vec::new();
            for (new_col, source) in &spec.columns {
                match parse_column_expr(source) {
                    Err(m) => bad(&format!("columns.{new_col}"), m),
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
            let legacy_keys: Vec<String> = spec.keys.iter().map(|k| fold_unquoted(k)).collect();
            let mut new_keys = Vec::new();
            for key in &legacy_keys {
                match columns.iter().find(|c| c.rename_of.as_deref() == Some(key)) {
                    Some(c) => new_keys.push(c.new.clone()),
                    None => bad(
                        "keys",
                        format!("key column {key:?} must be mapped to a new column by name, like `{key} = \"{key}\"`"),
                    ),
                }
            }
            if spec.read_percent > 100 {
                bad(
                    "read_percent",
                    format!("{} is not a percentage (0-100)", spec.read_percent),
                );
            }
            let mut read_back = Vec::new();
            for (legacy_col, source) in &spec.read_back {
                match parse_column_expr(source) {
                    Err(m) => bad(&format!("read_back.{legacy_col}"), m),
                    Ok((expr, reads)) => read_back.push(ReadBack {
                        legacy: legacy_col.clone(),
                        source: source.clone(),
                        expr,
                        reads,
                    }),
                }
            }
            for c in &columns {
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
            if let (Some(legacy), Some(new)) = (legacy, new) {
                if new_keys.len() == legacy_keys.len() && !spec.columns.is_empty() {
                    set.by_legacy.insert(legacy.clone(), set.tables.len());
                    set.tables.push(TableRule {
                        legacy,
                        new,
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
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[table]]
        legacy = "public.users"
        new = "app.customers"
        keys = ["id"]
        write = "on"
        [table.columns]
        customer_id = "id"
        full_name = "first_name || ' ' || last_name"
        email = "lower(email)"
        source = "'legacy'"

        [[table]]
        legacy = "public.Orders"
        new = "public.orders_v2"
        database = "legacy"
        keys = ["id", "line"]
        [table.columns]
        id = "id"
        line_no = "line"
        "Total" = "amount * 100"
    "#;

    #[test]
    fn a_good_file_validates() {
        let set = parse_rules(GOOD, "rules.toml").unwrap();
        let users = set
            .table(&TableName {
                schema: "public".into(),
                name: "users".into(),
            })
            .unwrap();
        assert_eq!(users.new.to_string(), "app.customers");
        assert_eq!(users.new_keys, ["customer_id"]);
        assert_eq!(users.write, WriteMode::On);
        let full = users.columns.iter().find(|c| c.new == "full_name").unwrap();
        assert_eq!(full.reads, ["first_name", "last_name"]);
        assert_eq!(full.rename_of, None);
        assert_eq!(
            users.legacy_columns_read(),
            ["id", "email", "first_name", "last_name"]
        );
        let orders = &set.tables()[1];
        assert_eq!(
            orders.legacy.name, "orders",
            "unquoted names fold to lower case"
        );
        assert_eq!(orders.new_keys, ["id", "line_no"]);
        assert_eq!(orders.database, TargetDatabase::Legacy);
        assert_eq!(orders.write, WriteMode::Off, "writes are off by default");
    }

    #[test]
    fn every_problem_is_listed_with_where_it_is() {
        let text = r#"
            [[table]]
            legacy = "users"
            new = "app.customers"
            keys = []
            [table.columns]
            email = "lower(email"

            [[table]]
            legacy = "public.a"
            new = "public.a"
            database = "legacy"
            keys = ["id"]
            [table.columns]
            ident = "id + 0"
            x = "(SELECT 1)"
            y = "t.col"
        "#;
        let err = parse_rules(text, "rules.toml").unwrap_err();
        let RulesError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "table[0] (users).legacy",
                "table[0] (users).keys",
                "table[0] (users).columns.email",
                "table[1] (public.a).new",
                "table[1] (public.a).columns.x",
                "table[1] (public.a).columns.y",
                "table[1] (public.a).keys",
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with("7 problem(s) in rules file rules.toml"),
            "{text}"
        );
        assert!(text.contains("must be schema-qualified"), "{text}");
    }

    #[test]
    fn unknown_fields_and_bad_modes_are_named() {
        let err = parse_rules("[[table]]\nlegacy = \"public.a\"\nnew = \"public.b\"\nkeys = [\"id\"]\nwrite = \"maybe\"\ncolumns = { id = \"id\" }\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("maybe") || err.contains("write"), "{err}");
        let err = parse_rules("[[table]]\nlegcy = \"x\"\n", "r.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("legcy"), "{err}");
    }

    #[test]
    fn duplicate_tables_are_rejected() {
        let one = "[[table]]\nlegacy = \"public.a\"\nnew = \"app.a\"\nkeys = [\"id\"]\ncolumns = { id = \"id\" }\n";
        let err = parse_rules(&format!("{one}{one}"), "r.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("also the new table of table[0]"), "{err}");
        assert!(err.contains("more than one rule"), "{err}");
    }
}

/// The rules text with one table's `write` set to `mode`, everything else (comments, order,
/// formatting) kept as written. `legacy` is matched as PostgreSQL would resolve it.
pub fn set_write_mode(text: &str, legacy: &str, mode: WriteMode) -> Result<String, String> {
    let value = match mode {
        WriteMode::On => "on",
        WriteMode::Off => "off",
    };
    edit_table(text, legacy, |entry| {
        entry["write"] = toml_edit::value(value);
    })
}

/// The rules text with one table's `read` set to `mode` and, when given, its `read_percent`,
/// everything else kept as written.
pub fn set_read_mode(
    text: &str,
    legacy: &str,
    mode: ReadMode,
    percent: Option<u8>,
) -> Result<String, String> {
    edit_table(text, legacy, |entry| {
        entry["read"] = toml_edit::value(mode.as_str());
        if let Some(p) = percent {
            entry["read_percent"] = toml_edit::value(i64::from(p));
        }
    })
}

fn edit_table(
    text: &str,
    legacy: &str,
    edit: impl FnOnce(&mut toml_edit::Table),
) -> Result<String, String> {
    let wanted = parse_table_name(legacy)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let tables = doc
        .get_mut("table")
        .and_then(|t| t.as_array_of_tables_mut())
        .ok_or_else(|| "the rules have no [[table]] entries".to_string())?;
    let entry = tables
        .iter_mut()
        .find(|t| {
            t.get("legacy")
                .and_then(|v| v.as_str())
                .and_then(|l| parse_table_name(l).ok())
                .is_some_and(|l| l == wanted)
        })
        .ok_or_else(|| format!("no rule for table {wanted}"))?;
    edit(entry);
    Ok(doc.to_string())
}

#[cfg(test)]
mod edit_tests {
    use super::*;

    #[test]
    fn write_mode_changes_in_place_keeping_comments() {
        let text = "# the users table\n[[table]]\nlegacy = \"public.users\" # keep me\nnew = \"app.c\"\nkeys = [\"id\"]\ncolumns = { id = \"id\" }\n\n[[table]]\nlegacy = \"public.orders\"\nnew = \"app.o\"\nkeys = [\"id\"]\nwrite = \"on\"\ncolumns = { id = \"id\" }\n";
        let on = set_write_mode(text, "public.USERS", WriteMode::On).unwrap();
        assert!(
            on.contains("# the users table") && on.contains("# keep me"),
            "{on}"
        );
        let set = parse_rules(&on, "t").unwrap();
        assert_eq!(set.tables()[0].write, WriteMode::On);
        assert_eq!(set.tables()[1].write, WriteMode::On);
        let off = set_write_mode(&on, "public.orders", WriteMode::Off).unwrap();
        assert_eq!(
            parse_rules(&off, "t").unwrap().tables()[1].write,
            WriteMode::Off
        );
        assert_eq!(
            set_write_mode(text, "public.nope", WriteMode::On).unwrap_err(),
            "no rule for table public.nope"
        );
        assert!(set_write_mode(text, "nope", WriteMode::On)
            .unwrap_err()
            .contains("schema-qualified"));
        let shadow = set_read_mode(&off, "public.users", ReadMode::Shadow, Some(25)).unwrap();
        let set = parse_rules(&shadow, "t").unwrap();
        assert_eq!(set.tables()[0].read, ReadMode::Shadow);
        assert_eq!(set.tables()[0].read_percent, 25);
        assert_eq!(
            set.tables()[1].read,
            ReadMode::Legacy,
            "reads stay on legacy by default"
        );
        assert_eq!(set.tables()[1].read_percent, 100);
        assert!(set.routes_reads());
    }

    #[test]
    fn read_settings_validate() {
        let text = "[[table]]\nlegacy = \"public.users\"\nnew = \"app.c\"\nkeys = [\"id\"]\nread = \"new\"\nread_percent = 150\ncolumns = { customer_id = \"id\", full_name = \"first || last\" }\nread_back = { first = \"split_part(full_name, ' ', 1)\", last = \"(\" }\n";
        let err = parse_rules(text, "r.toml").unwrap_err().to_string();
        assert!(
            err.contains("table[0] (public.users).read_percent: 150 is not a percentage"),
            "{err}"
        );
        assert!(
            err.contains("table[0] (public.users).read_back.last"),
            "{err}"
        );
        let ok = text.replace("150", "40").replace(", last = \"(\"", "");
        let set = parse_rules(&ok, "r.toml").unwrap();
        let t = &set.tables()[0];
        let backs: Vec<(&str, &str)> = t
            .read_back
            .iter()
            .map(|r| (r.legacy.as_str(), r.source.as_str()))
            .collect();
        assert_eq!(
            backs,
            [
                ("first", "split_part(full_name, ' ', 1)"),
                ("id", "customer_id")
            ]
        );
        assert_eq!(t.read_back[0].reads, ["full_name"]);
        assert_eq!(t.read, ReadMode::New);
        let err = parse_rules(
            &ok.replace("\"new\"\nread_percent", "\"sometimes\"\nread_percent"),
            "r.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sometimes"), "{err}");
    }
}
