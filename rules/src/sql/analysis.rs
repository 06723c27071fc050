//! Statement analysis: what kind of statement a SQL text holds and which tables it touches.
//!
//! Pure functions of the SQL text, using sqlparser's PostgreSQL dialect. A text that does not
//! parse is `Unknown`, never an error: the proxy relays it unchanged whatever we make of it.

use std::fmt;
use std::ops::ControlFlow;

use sqlparser::ast::{CopySource, Expr, ObjectName, Query, SetExpr, Statement as Ast};

use crate::sql::bounds::{self, BoundedError, Exceeded};
use crate::sql::ident::TableRef;

/// The kind of one statement, as the metrics and (later) the router see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE, SHOW-like reads, COPY ... TO.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY ... FROM, data-modifying CTEs.
    Write,
    /// CREATE, ALTER, DROP, GRANT and friends.
    Ddl,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE.
    Transaction,
    /// SET, RESET, SHOW, DISCARD, PREPARE, EXECUTE, DEALLOCATE, LISTEN, NOTIFY.
    Session,
    /// Parsed, but none of the above (EXPLAIN, VACUUM, CALL, ...).
    Other,
    /// Did not parse with sqlparser's PostgreSQL dialect.
    Unknown,
}

impl StatementKind {
    pub const ALL: [StatementKind; 7] = [
        StatementKind::Read,
        StatementKind::Write,
        StatementKind::Ddl,
        StatementKind::Transaction,
        StatementKind::Session,
        StatementKind::Other,
        StatementKind::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Read => "read",
            StatementKind::Write => "write",
            StatementKind::Ddl => "ddl",
            StatementKind::Transaction => "transaction",
            StatementKind::Session => "session",
            StatementKind::Other => "other",
            StatementKind::Unknown => "unknown",
        }
    }

    /// Dense index for per-kind counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for StatementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One statement of a SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    pub kind: StatementKind,
    /// Relations named by the statement, each part folded as PostgreSQL folds identifiers
    /// (unquoted parts lowercased, quoted parts exact), deduplicated, in order of first
    /// appearance. [`TableRef::resolve`] gives the table each names.
    pub tables: Vec<TableRef>,
}

/// All statements of one SQL text (a simple Query may hold several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub statements: Vec<StatementInfo>,
    /// sqlparser's message when the text did not parse, or why it was not parsed.
    pub parse_error: Option<String>,
    /// Set when the text was over the analysis bounds and so never parsed.
    pub exceeded: Option<Exceeded>,
}

impl Analysis {
    /// True when the text did not parse (or was not parsed).
    pub fn is_unknown(&self) -> bool {
        self.parse_error.is_some()
    }

    fn unknown(error: String, exceeded: Option<Exceeded>) -> Analysis {
        Analysis {
            statements: vec![StatementInfo {
                kind: StatementKind::Unknown,
                tables: Vec::new(),
            }],
            parse_error: Some(error),
            exceeded,
        }
    }
}

/// Analyzes a SQL text. Never fails: text that does not parse, or is too long or too deep
/// to parse within `bounds`, is one `Unknown` statement.
pub fn analyze(sql: &str) -> Analysis {
    match bounds::parse(sql) {
        Ok(stmts) => Analysis {
            statements: stmts.iter().map(statement_info).collect(),
            parse_error: None,
            exceeded: None,
        },
        Err(e @ BoundedError::Exceeded(exceeded)) => {
            Analysis::unknown(e.to_string(), Some(exceeded))
        }
        Err(BoundedError::Parse(e)) => Analysis::unknown(e, None),
    }
}

fn statement_info(stmt: &Ast) -> StatementInfo {
    let mut tables: Vec<TableRef> = Vec::new();
    // sqlparser's relation visitor does not descend into COPY's table.
    if let Ast::Copy {
        source: CopySource::Table { table_name, .. },
        ..
    } = stmt
    {
        tables.push(TableRef::of(table_name));
    }
    // Nor into SELECT ... INTO's new table.
    if let Ast::Query(q) = stmt {
        if let SetExpr::Select(select) = q.body.as_ref() {
            for target in select.into.iter().flat_map(|i| &i.targets) {
                let parts = match target {
                    Expr::Identifier(id) => vec![id.clone()],
                    Expr::CompoundIdentifier(ids) => ids.clone(),
                    _ => continue,
                };
                tables.push(TableRef::of(&ObjectName::from(parts)));
            }
        }
    }
    let _ = sqlparser::ast::visit_relations(stmt, |name| {
        let n = TableRef::of(name);
        if !tables.contains(&n) {
            tables.push(n);
        }
        ControlFlow::<()>::Continue(())
    });
    StatementInfo {
        kind: kind_of(stmt),
        tables,
    }
}

fn kind_of(stmt: &Ast) -> StatementKind {
    use StatementKind::*;
    match stmt {
        Ast::Query(q) => query_kind(q),
        Ast::Insert(_) | Ast::Update(_) | Ast::Delete(_) | Ast::Merge(_) | Ast::Truncate(_) => {
            Write
        }
        Ast::Copy { to, .. } => {
            if *to {
                Read
            } else {
                Write
            }
        }
        Ast::StartTransaction { .. }
        | Ast::Commit { .. }
        | Ast::Rollback { .. }
        | Ast::Savepoint { .. }
        | Ast::ReleaseSavepoint { .. } => Transaction,
        Ast::Set(_)
        | Ast::Reset(_)
        | Ast::ShowVariable { .. }
        | Ast::ShowVariables { .. }
        | Ast::Discard { .. }
        | Ast::Prepare { .. }
        | Ast::Execute { .. }
        | Ast::Deallocate { .. }
        | Ast::LISTEN { .. }
        | Ast::UNLISTEN { .. }
        | Ast::NOTIFY { .. }
        | Ast::Declare { .. }
        | Ast::Fetch { .. }
        | Ast::Close { .. } => Session,
        Ast::CreateView(_)
        | Ast::CreateTable(_)
        | Ast::CreateIndex(_)
        | Ast::CreateRole(_)
        | Ast::CreatePolicy(_)
        | Ast::CreateExtension(_)
        | Ast::CreateSchema { .. }
        | Ast::CreateDatabase { .. }
        | Ast::CreateFunction(_)
        | Ast::CreateTrigger(_)
        | Ast::CreateProcedure { .. }
        | Ast::CreateSequence { .. }
        | Ast::CreateDomain(_)
        | Ast::CreateType { .. }
        | Ast::CreateUser(_)
        | Ast::AlterTable(_)
        | Ast::AlterSchema(_)
        | Ast::AlterIndex { .. }
        | Ast::AlterView { .. }
        | Ast::AlterFunction(_)
        | Ast::AlterType(_)
        | Ast::AlterRole { .. }
        | Ast::AlterPolicy(_)
        | Ast::AlterUser(_)
        | Ast::Drop { .. }
        | Ast::DropFunction(_)
        | Ast::DropDomain(_)
        | Ast::DropProcedure { .. }
        | Ast::DropPolicy(_)
        | Ast::DropExtension(_)
        | Ast::DropTrigger(_)
        | Ast::Grant(_)
        | Ast::Revoke(_)
        | Ast::Comment { .. }
        | Ast::RenameTable(_) => Ddl,
        _ => Other,
    }
}

/// A query is a read unless it writes through a CTE (`WITH x AS (DELETE ...)`) or
/// creates a table (`SELECT ... INTO t`).
fn query_kind(q: &Query) -> StatementKind {
    let cte_writes = q.with.as_ref().is_some_and(|w| {
        w.cte_tables
            .iter()
            .any(|c| query_kind(&c.query) == StatementKind::Write)
    });
    if cte_writes {
        return StatementKind::Write;
    }
    set_expr_kind(&q.body)
}

fn set_expr_kind(body: &SetExpr) -> StatementKind {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            StatementKind::Write
        }
        SetExpr::Select(s) if s.into.is_some() => StatementKind::Ddl,
        SetExpr::Query(q) => query_kind(q),
        SetExpr::SetOperation { left, right, .. } => {
            let (l, r) = (set_expr_kind(left), set_expr_kind(right));
            if l == StatementKind::Read {
                r
            } else {
                l
            }
        }
        _ => StatementKind::Read,
    }
}

#[cfg(test)]
mod tests;
