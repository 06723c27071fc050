//! Why a SQL text is not answered by the new schema: the reasons, their metric labels and
//! their sentences.

use std::fmt;

use super::MAX_SQL_LEN;
use crate::sql::ident::TableName;

/// Why a SQL text is not answered by the new schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRoutable {
    /// The text does not parse (sqlparser's message).
    Parse(String),
    /// The text holds no statement.
    Empty,
    /// The text holds this many statements.
    MultipleStatements(usize),
    /// Not a plain SELECT: what it is instead.
    NotSelect(String),
    /// UNION, INTERSECT or EXCEPT.
    SetOperation,
    /// WITH (common table expressions).
    With,
    /// A subquery anywhere (FROM, WHERE, select list, function argument).
    Subquery,
    /// FOR UPDATE / FOR SHARE / FOR NO KEY UPDATE / FOR KEY SHARE.
    Locking,
    /// A function that is not on the allowlist of non-volatile functions.
    Function(String),
    /// A table with no rule.
    UnmappedTable(TableName),
    /// No FROM clause.
    NoTable,
    /// A column reference that cannot be rewritten: which column, and why.
    Column {
        column: String,
        problem: &'static str,
    },
    /// `*` over a table whose legacy columns are not known (not read from the catalog).
    Star(TableName),
    /// The tables' new tables live in different databases.
    MixedDatabases,
    /// The text is longer than [`MAX_SQL_LEN`] bytes.
    TooLong(usize),
    /// The text nests deeper than the analysis bounds allow (`bounds::MAX_DEPTH`).
    TooDeep,
    /// Some other construct the planner does not rewrite.
    Unsupported(String),
}

impl NotRoutable {
    /// A short snake_case label, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            NotRoutable::Parse(_) => "parse",
            NotRoutable::Empty => "empty",
            NotRoutable::MultipleStatements(_) => "multiple_statements",
            NotRoutable::NotSelect(_) => "not_select",
            NotRoutable::SetOperation => "set_operation",
            NotRoutable::With => "with",
            NotRoutable::Subquery => "subquery",
            NotRoutable::Locking => "locking",
            NotRoutable::Function(_) => "function",
            NotRoutable::UnmappedTable(_) => "unmapped_table",
            NotRoutable::NoTable => "no_table",
            NotRoutable::Column { .. } => "column",
            NotRoutable::Star(_) => "star",
            NotRoutable::MixedDatabases => "mixed_databases",
            NotRoutable::TooLong(_) => "too_long",
            NotRoutable::TooDeep => "too_deep",
            NotRoutable::Unsupported(_) => "unsupported",
        }
    }

    pub(super) fn column(column: impl Into<String>, problem: &'static str) -> NotRoutable {
        NotRoutable::Column {
            column: column.into(),
            problem,
        }
    }
}

impl fmt::Display for NotRoutable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotRoutable::Parse(m) => write!(f, "the statement does not parse: {m}"),
            NotRoutable::Empty => write!(f, "the text holds no statement"),
            NotRoutable::MultipleStatements(n) => write!(
                f,
                "the text holds {n} statements; only a single SELECT is routed"
            ),
            NotRoutable::NotSelect(what) => write!(f, "{what} is not a plain SELECT"),
            NotRoutable::SetOperation => {
                write!(f, "UNION, INTERSECT and EXCEPT queries are not routed")
            }
            NotRoutable::With => write!(
                f,
                "queries with WITH (common table expressions) are not routed"
            ),
            NotRoutable::Subquery => write!(f, "queries with subqueries are not routed"),
            NotRoutable::Locking => write!(
                f,
                "locking reads (FOR UPDATE, FOR SHARE, ...) are not routed"
            ),
            NotRoutable::Function(name) => write!(
                f,
                "function {name} is not on the allowlist of non-volatile functions"
            ),
            NotRoutable::UnmappedTable(t) => write!(f, "table {t} has no rule"),
            NotRoutable::NoTable => write!(f, "the query reads no table"),
            NotRoutable::Column { column, problem } => write!(f, "column {column}: {problem}"),
            NotRoutable::Star(t) => write!(
                f,
                "* over table {t}: its legacy columns are not known (not read from the catalog)"
            ),
            NotRoutable::MixedDatabases => write!(
                f,
                "the query's tables map to new tables in different databases"
            ),
            NotRoutable::TooLong(n) => write!(
                f,
                "the text is {n} bytes long; texts over {MAX_SQL_LEN} bytes are not routed"
            ),
            NotRoutable::TooDeep => write!(
                f,
                "the text nests deeper than {} levels and is not parsed",
                crate::sql::bounds::MAX_DEPTH
            ),
            NotRoutable::Unsupported(what) => write!(f, "{what} is not routed"),
        }
    }
}

impl std::error::Error for NotRoutable {}

pub(super) fn unsupported(what: &str) -> NotRoutable {
    NotRoutable::Unsupported(what.to_string())
}
