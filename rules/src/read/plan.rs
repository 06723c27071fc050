//! Read planning: whether one client SQL text is a read the new schema can answer, and the SQL
//! to run there.
//!
//! Pure function of the SQL text and the rule set. The planner is deliberately conservative:
//! anything it does not fully understand is [`NotRoutable`], so the read stays on legacy.
//!
//! Routable: exactly one plain `SELECT` (no set operations, `VALUES`, `WITH`, subqueries,
//! `SELECT ... INTO` or locking clause) over one or more tables that all have a rule (plain
//! table references joined with `ON` or `CROSS JOIN`), using only allowlisted non-volatile
//! functions, where every column reference resolves to a legacy column with a read-back
//! expression.
//!
//! Name resolution follows PostgreSQL with a fixed search path: **an unqualified table name
//! resolves to schema `public`**. Each legacy table becomes its rule's new table, keeping the
//! query's alias or, when it had none, aliased as the legacy table's bare name, so that every
//! column reference can be written as `alias.new_column`. Legacy column references become
//! their read-back expressions (parenthesized unless they are a plain column). Select-list
//! items that were column references are aliased with the legacy column name, so the result
//! columns keep their legacy names; `*` and `t.*` expand to the legacy columns (known from
//! the catalog) in table order.
//!
//! Bare names in `ORDER BY` and `DISTINCT ON` that name an output column are left as they are
//! (PostgreSQL resolves them to the output column first, and output names are kept); bare
//! names in `GROUP BY` that are not legacy columns but name an output column become that
//! output column's position (PostgreSQL resolves `GROUP BY` names to input columns first, and
//! the new table may have a column of that name). Any other name that is not a known legacy
//! column of a table in scope makes the query not routable: it could be a legacy column the
//! rules do not know, or a whole-row reference.

use std::collections::HashSet;
use std::fmt;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments,
    GroupByExpr, Ident, JoinConstraint, JoinOperator, LimitClause, ObjectName, ObjectNamePart,
    OrderByKind, Query, Select, SelectFlavor, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    Statement, TableAlias, TableFactor, UnaryOperator, Value, Visit, Visitor,
    WildcardAdditionalOptions,
};

use crate::ruleset::{ReadBack, RuleSet, TableRule, TargetDatabase};
use crate::sql::bounds::{BoundedError, Exceeded};
use crate::sql::ident::{
    fold, quote_ident, sql_ident as ident, TableName, TableRef, DEFAULT_SCHEMA,
};

/// A read the new schema can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// SQL for the new side; same parameters (`$n`) as the original.
    pub sql: String,
    /// Legacy tables read (each has a rule), in order of appearance, deduplicated.
    pub tables: Vec<TableName>,
    /// The query has a top-level ORDER BY (results compare in order).
    pub ordered: bool,
    /// When the WHERE clause's top-level AND chain pins every key column of the (single)
    /// table with `key = literal` or `key = $n`: the pinned values, in key order.
    pub key: Option<Vec<KeyRef>>,
    /// The select list holds literal values or casts (`SELECT 'a', id::numeric(10,2) ...`),
    /// so texts with the same fingerprint may differ in the result's shape.
    pub literal_output: bool,
    /// Each legacy table read (as in `tables`) with the legacy columns the query references
    /// anywhere (select list with `*` expanded, WHERE, JOIN, GROUP BY, HAVING, ORDER BY,
    /// function arguments), sorted: what the client's role needs SELECT on, on legacy.
    pub columns: Vec<(TableName, Vec<String>)>,
}

/// A key column's pinned value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// A literal's text value, e.g. `42` or `abc` (for `'abc'`).
    Literal(String),
    /// A parameter, 1-based (`$1` is `Param(1)`).
    Param(usize),
}

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

    fn column(column: impl Into<String>, problem: &'static str) -> NotRoutable {
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

/// Non-volatile functions a routed read may call (unqualified or `pg_catalog.`-qualified).
const ALLOWED_FUNCTIONS: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "string_agg",
    "array_agg",
    "lower",
    "upper",
    "length",
    "char_length",
    "substr",
    "substring",
    "split_part",
    "concat",
    "concat_ws",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "abs",
    "round",
    "trunc",
    "floor",
    "ceil",
    "ceiling",
    "mod",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "left",
    "right",
    "position",
    "strpos",
    "to_char",
    "date_trunc",
    "extract",
    "date_part",
    "md5",
    "starts_with",
    "format",
    "jsonb_build_object",
    "json_build_object",
    "to_jsonb",
    "row_to_json",
];

/// Longest SQL text planned, in bytes (tighter than the analysis bound: a plan is kept per
/// text). Deep texts are refused by `bounds::check` before they are parsed.
pub const MAX_SQL_LEN: usize = 32 * 1024;

/// Plans one client SQL text as a read on the new schema, or says why it cannot be.
pub fn plan_read(sql: &str, rules: &RuleSet) -> Result<ReadPlan, NotRoutable> {
    if sql.len() > MAX_SQL_LEN {
        return Err(NotRoutable::TooLong(sql.len()));
    }
    let mut statements = crate::sql::bounds::parse(sql).map_err(|e| match e {
        BoundedError::Exceeded(Exceeded::Length(n)) => NotRoutable::TooLong(n),
        BoundedError::Exceeded(Exceeded::Depth) => NotRoutable::TooDeep,
        BoundedError::Parse(e) => NotRoutable::Parse(e),
    })?;
    if statements.len() > 1 {
        return Err(NotRoutable::MultipleStatements(statements.len()));
    }
    let mut query = match statements.pop() {
        None => return Err(NotRoutable::Empty),
        Some(Statement::Query(q)) => q,
        Some(other) => return Err(NotRoutable::NotSelect(statement_word(&other))),
    };
    check_query_shape(&query)?;
    check_no_subqueries(&query)?;
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(NotRoutable::NotSelect("the query".into()));
    };
    let scope = Scope::build(select, rules)?;
    check_expressions(&query)?;

    let tables = {
        let mut out: Vec<TableName> = Vec::new();
        for s in &scope.sources {
            if !out.contains(&s.rule.legacy) {
                out.push(s.rule.legacy.clone());
            }
        }
        out
    };
    let key = match scope.sources.as_slice() {
        [_] => select
            .selection
            .as_ref()
            .and_then(|w| pinned_key(w, &scope)),
        _ => None,
    };
    let ordered = query
        .order_by
        .as_ref()
        .is_some_and(|o| matches!(&o.kind, OrderByKind::Expressions(e) if !e.is_empty()));

    let literal_output = select.projection.iter().any(|item| {
        sqlparser::ast::visit_expressions(item, |e| match e {
            Expr::Value(v) if !matches!(v.value, Value::Placeholder(_)) => ControlFlow::Break(()),
            // A type modifier (`::numeric(10,2)`) reads as a literal to the fingerprint.
            Expr::Cast { .. } | Expr::TypedString { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break()
    });
    // The select list as it will be: expansions of `*`, aliases for column references.
    let projection = plan_projection(&select.projection, &scope)?;
    // Legacy columns referenced, by source: `*` expansions here, every other reference
    // when it is substituted below.
    let mut touched: Vec<(usize, String)> = projection
        .iter()
        .flat_map(|p| p.expanded.iter().cloned())
        .collect();
    let output_names: Vec<Option<String>> = projection
        .iter()
        .flat_map(|p| p.names.iter().cloned())
        .collect();

    // GROUP BY output-column names become positions; ORDER BY / DISTINCT ON output-column
    // names stay as written.
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(NotRoutable::NotSelect("the query".into()));
    };
    if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
        for e in exprs.iter_mut() {
            if let Expr::Identifier(id) = e {
                let name = fold(id);
                if scope.columns_named(&name).is_empty() {
                    if !scope.complete() {
                        return Err(NotRoutable::column(
                            name,
                            "not a known legacy column (the legacy columns are not known)",
                        ));
                    }
                    let at: Vec<usize> = output_names
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| n.as_deref() == Some(name.as_str()))
                        .map(|(i, _)| i + 1)
                        .collect();
                    match at.as_slice() {
                        [] => return Err(NotRoutable::column(name, "not a known legacy column")),
                        [position] => *e = number(*position),
                        _ => {
                            return Err(NotRoutable::column(
                                name,
                                "names more than one output column",
                            ))
                        }
                    }
                }
            }
        }
    }
    let mut keep: HashSet<usize> = HashSet::new();
    let is_output_name = |e: &Expr| match e {
        Expr::Identifier(id) => output_names.iter().flatten().any(|n| *n == fold(id)),
        _ => false,
    };
    if let Some(Distinct::On(exprs)) = &select.distinct {
        for e in exprs.iter().filter(|e| is_output_name(e)) {
            keep.insert(e as *const Expr as usize);
        }
    }
    if let Some(OrderByKind::Expressions(items)) = query.order_by.as_ref().map(|o| &o.kind) {
        for item in items.iter().filter(|i| is_output_name(&i.expr)) {
            keep.insert(&item.expr as *const Expr as usize);
        }
    }

    // Every column reference in every expression, everywhere in the query.
    let rewritten = sqlparser::ast::visit_expressions_mut(&mut *query, |e| {
        if keep.contains(&(e as *const Expr as usize)) {
            return ControlFlow::Continue(());
        }
        let parts = match e {
            Expr::Identifier(id) => std::slice::from_ref(id),
            Expr::CompoundIdentifier(ids) => ids.as_slice(),
            _ => return ControlFlow::Continue(()),
        };
        match scope.resolve(parts) {
            Ok((index, column)) => match scope.read_back(index, &column) {
                Ok(new) => {
                    *e = new;
                    touched.push((index, column));
                    ControlFlow::Continue(())
                }
                Err(err) => ControlFlow::Break(err),
            },
            Err(err) => ControlFlow::Break(err),
        }
    });
    if let ControlFlow::Break(err) = rewritten {
        return Err(err);
    }

    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(NotRoutable::NotSelect("the query".into()));
    };
    let items = std::mem::take(&mut select.projection);
    for (item, plan) in items.into_iter().zip(projection) {
        match (item, plan.alias) {
            (SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..), _) => {
                select.projection.extend(plan.expansion);
            }
            (SelectItem::UnnamedExpr(expr), Some(name)) => {
                select.projection.push(SelectItem::ExprWithAlias {
                    expr,
                    alias: ident(&name),
                });
            }
            (other, _) => select.projection.push(other),
        }
    }
    scope.rename_tables(select);

    // Not parsed again here: a rewrite new cannot run is a fallback, counted as an error.
    let sql = query.to_string();
    let columns = columns_by_table(&tables, &scope, touched);
    Ok(ReadPlan {
        sql,
        tables,
        ordered,
        key,
        literal_output,
        columns,
    })
}

/// The referenced legacy columns grouped by legacy table (a table read twice under two
/// aliases is one entry), sorted and deduplicated, one entry per table even when none of
/// its columns is referenced (`SELECT count(*)`).
fn columns_by_table(
    tables: &[TableName],
    scope: &Scope,
    touched: Vec<(usize, String)>,
) -> Vec<(TableName, Vec<String>)> {
    let mut out: Vec<(TableName, Vec<String>)> =
        tables.iter().map(|t| (t.clone(), Vec::new())).collect();
    for (index, column) in touched {
        let table = &scope.sources[index].rule.legacy;
        if let Some((_, cols)) = out.iter_mut().find(|(t, _)| t == table) {
            cols.push(column);
        }
    }
    for (_, cols) in &mut out {
        cols.sort();
        cols.dedup();
    }
    out
}

/// The first word of a statement, for messages: `INSERT`, `UPDATE`, ...
fn statement_word(stmt: &Statement) -> String {
    let text = stmt.to_string();
    let word: String = text
        .split_whitespace()
        .next()
        .unwrap_or("the statement")
        .chars()
        .take(32)
        .collect();
    word.to_uppercase()
}

fn number(n: usize) -> Expr {
    Expr::value(Value::Number(
        n.to_string().parse().unwrap_or_default(),
        false,
    ))
}

fn unsupported(what: &str) -> NotRoutable {
    NotRoutable::Unsupported(what.to_string())
}

/// Everything about the query except its expressions and FROM items.
fn check_query_shape(query: &Query) -> Result<(), NotRoutable> {
    if !query.locks.is_empty() {
        return Err(NotRoutable::Locking);
    }
    if query.with.is_some() {
        return Err(NotRoutable::With);
    }
    let select = match query.body.as_ref() {
        SetExpr::Select(s) => s,
        SetExpr::SetOperation { .. } => return Err(NotRoutable::SetOperation),
        SetExpr::Query(_) => return Err(NotRoutable::Subquery),
        SetExpr::Values(_) => return Err(NotRoutable::NotSelect("VALUES".into())),
        SetExpr::Table(_) => return Err(NotRoutable::NotSelect("TABLE".into())),
        SetExpr::Insert(_) => return Err(NotRoutable::NotSelect("INSERT".into())),
        SetExpr::Update(_) => return Err(NotRoutable::NotSelect("UPDATE".into())),
        SetExpr::Delete(_) => return Err(NotRoutable::NotSelect("DELETE".into())),
        SetExpr::Merge(_) => return Err(NotRoutable::NotSelect("MERGE".into())),
    };
    if select.into.is_some() {
        return Err(NotRoutable::NotSelect("SELECT ... INTO".into()));
    }
    if query.for_clause.is_some()
        || query.settings.is_some()
        || query.format_clause.is_some()
        || !query.pipe_operators.is_empty()
    {
        return Err(unsupported("a non-PostgreSQL query clause"));
    }
    match &query.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset { limit_by, .. }) if limit_by.is_empty() => {}
        Some(_) => return Err(unsupported("this LIMIT form")),
    }
    if let Some(order_by) = &query.order_by {
        if order_by.interpolate.is_some() || matches!(order_by.kind, OrderByKind::All(_)) {
            return Err(unsupported("this ORDER BY form"));
        }
        if let OrderByKind::Expressions(items) = &order_by.kind {
            if items.iter().any(|i| i.with_fill.is_some()) {
                return Err(unsupported("ORDER BY ... WITH FILL"));
            }
        }
    }
    if select.flavor != SelectFlavor::Standard
        || !select.optimizer_hints.is_empty()
        || select.select_modifiers.is_some()
        || select.top.is_some()
        || select.exclude.is_some()
        || !select.lateral_views.is_empty()
        || select.prewhere.is_some()
        || !select.connect_by.is_empty()
        || !select.cluster_by.is_empty()
        || !select.distribute_by.is_empty()
        || !select.sort_by.is_empty()
        || select.qualify.is_some()
        || select.value_table_mode.is_some()
    {
        return Err(unsupported("a non-PostgreSQL SELECT clause"));
    }
    match &select.group_by {
        GroupByExpr::Expressions(_, modifiers) if modifiers.is_empty() => {}
        _ => return Err(unsupported("this GROUP BY form")),
    }
    Ok(())
}

/// Counts queries: more than the statement's own is a subquery.
struct QueryCounter(usize);

impl Visitor for QueryCounter {
    type Break = ();

    fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.0 += 1;
        if self.0 > 1 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

fn check_no_subqueries(query: &Query) -> Result<(), NotRoutable> {
    let mut counter = QueryCounter(0);
    match query.visit(&mut counter) {
        ControlFlow::Break(()) => Err(NotRoutable::Subquery),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Every expression is of a kind the planner understands, and calls only allowed functions.
fn check_expressions(query: &Query) -> Result<(), NotRoutable> {
    let outcome = sqlparser::ast::visit_expressions(query, |e| match check_expr(e) {
        Ok(()) => ControlFlow::Continue(()),
        Err(err) => ControlFlow::Break(err),
    });
    match outcome {
        ControlFlow::Break(err) => Err(err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn check_expr(e: &Expr) -> Result<(), NotRoutable> {
    match e {
        Expr::Function(f) => check_function(f),
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
            Err(NotRoutable::Subquery)
        }
        Expr::CompoundFieldAccess { access_chain, .. } => {
            if access_chain
                .iter()
                .all(|a| matches!(a, sqlparser::ast::AccessExpr::Subscript(_)))
            {
                Ok(())
            } else {
                Err(unsupported("field access on a composite value"))
            }
        }
        Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => {
            Err(unsupported("a wildcard inside an expression"))
        }
        Expr::Identifier(_)
        | Expr::CompoundIdentifier(_)
        | Expr::IsFalse(_)
        | Expr::IsNotFalse(_)
        | Expr::IsTrue(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotUnknown(_)
        | Expr::IsDistinctFrom(..)
        | Expr::IsNotDistinctFrom(..)
        | Expr::IsNormalized { .. }
        | Expr::InList { .. }
        | Expr::Between { .. }
        | Expr::BinaryOp { .. }
        | Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::SimilarTo { .. }
        | Expr::AnyOp { .. }
        | Expr::AllOp { .. }
        | Expr::UnaryOp { .. }
        | Expr::Cast { .. }
        | Expr::AtTimeZone { .. }
        | Expr::Extract { .. }
        | Expr::Ceil { .. }
        | Expr::Floor { .. }
        | Expr::Position { .. }
        | Expr::Substring { .. }
        | Expr::Trim { .. }
        | Expr::Overlay { .. }
        | Expr::Collate { .. }
        | Expr::Nested(_)
        | Expr::Value(_)
        | Expr::TypedString(_)
        | Expr::Case { .. }
        | Expr::GroupingSets(_)
        | Expr::Cube(_)
        | Expr::Rollup(_)
        | Expr::Tuple(_)
        | Expr::Array(_)
        | Expr::Interval(_) => Ok(()),
        other => Err(NotRoutable::Unsupported(format!(
            "the expression {}",
            truncate(&other.to_string(), 60)
        ))),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(max).collect();
        t.push_str("...");
        t
    }
}

fn check_function(f: &sqlparser::ast::Function) -> Result<(), NotRoutable> {
    let parts: Vec<String> = f
        .name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => fold(id),
            other => other.to_string(),
        })
        .collect();
    let name = parts.join(".");
    let allowed = match parts.as_slice() {
        [n] => ALLOWED_FUNCTIONS.contains(&n.as_str()),
        [schema, n] => schema == "pg_catalog" && ALLOWED_FUNCTIONS.contains(&n.as_str()),
        _ => false,
    } && f
        .name
        .0
        .iter()
        .all(|p| matches!(p, ObjectNamePart::Identifier(_)));
    if !allowed || f.uses_odbc_syntax || f.null_treatment.is_some() {
        return Err(NotRoutable::Function(name));
    }
    if !matches!(f.parameters, FunctionArguments::None) {
        return Err(NotRoutable::Function(name));
    }
    match &f.args {
        FunctionArguments::None => Ok(()),
        FunctionArguments::Subquery(_) => Err(NotRoutable::Subquery),
        FunctionArguments::List(list) => {
            for arg in &list.args {
                match arg {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(_))
                    | FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => {}
                    FunctionArg::Unnamed(FunctionArgExpr::QualifiedWildcard(t)) => {
                        return Err(NotRoutable::column(
                            format!("{t}.*"),
                            "whole-row references are not rewritten",
                        ))
                    }
                    _ => {
                        return Err(NotRoutable::Unsupported(format!(
                            "this argument form in a call of {name}"
                        )))
                    }
                }
            }
            if list
                .clauses
                .iter()
                .any(|c| !matches!(c, FunctionArgumentClause::OrderBy(_)))
            {
                return Err(NotRoutable::Unsupported(format!(
                    "this argument clause in a call of {name}"
                )));
            }
            Ok(())
        }
    }
}

/// One table of the FROM clause.
struct Source<'r> {
    rule: &'r TableRule,
    /// The name the query refers to it by (folded): its alias, else the table's bare name.
    refname: String,
    /// The alias it has in the rewritten query.
    alias: Ident,
    /// The query gave it an alias.
    aliased: bool,
}

struct Scope<'r> {
    sources: Vec<Source<'r>>,
}

/// Which legacy columns of a rule are known: read-backs, catalog columns, keys, mapped reads.
fn knows_column(rule: &TableRule, column: &str) -> bool {
    rule.read_back.iter().any(|r| r.legacy == column)
        || rule.legacy_columns.iter().any(|c| c == column)
        || rule.legacy_keys.iter().any(|c| c == column)
        || rule
            .columns
            .iter()
            .any(|c| c.reads.iter().any(|r| r == column))
}

fn read_back_of<'a>(rule: &'a TableRule, column: &str) -> Option<&'a ReadBack> {
    rule.read_back.iter().find(|r| r.legacy == column)
}

/// The legacy table a FROM item names; unqualified names resolve to `public`.
fn table_name_of(name: &ObjectName) -> Result<TableName, NotRoutable> {
    let plain = name
        .0
        .iter()
        .all(|p| matches!(p, ObjectNamePart::Identifier(_)));
    plain
        .then(|| TableRef::of(name).resolve(DEFAULT_SCHEMA))
        .flatten()
        .ok_or_else(|| NotRoutable::Unsupported(format!("the table name {name}")))
}

impl<'r> Scope<'r> {
    fn build(select: &Select, rules: &'r RuleSet) -> Result<Scope<'r>, NotRoutable> {
        if select.from.is_empty() {
            return Err(NotRoutable::NoTable);
        }
        let mut sources: Vec<Source<'r>> = Vec::new();
        let mut add = |factor: &TableFactor| -> Result<(), NotRoutable> {
            let source = Self::source(factor, rules)?;
            if sources.iter().any(|s| s.refname == source.refname) {
                return Err(NotRoutable::Unsupported(format!(
                    "naming table {} twice in FROM",
                    quote_ident(&source.refname)
                )));
            }
            sources.push(source);
            Ok(())
        };
        for twj in &select.from {
            add(&twj.relation)?;
            for join in &twj.joins {
                if join.global {
                    return Err(unsupported("GLOBAL JOIN"));
                }
                let constraint = match &join.join_operator {
                    JoinOperator::Join(c)
                    | JoinOperator::Inner(c)
                    | JoinOperator::Left(c)
                    | JoinOperator::LeftOuter(c)
                    | JoinOperator::Right(c)
                    | JoinOperator::RightOuter(c)
                    | JoinOperator::FullOuter(c)
                    | JoinOperator::CrossJoin(c) => c,
                    _ => return Err(unsupported("this kind of JOIN")),
                };
                match constraint {
                    JoinConstraint::On(_) | JoinConstraint::None => {}
                    JoinConstraint::Using(cols) => {
                        let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
                        return Err(NotRoutable::column(
                            names.join(", "),
                            "JOIN ... USING is not rewritten",
                        ));
                    }
                    JoinConstraint::Natural => {
                        return Err(NotRoutable::column("*", "NATURAL JOIN is not rewritten"))
                    }
                }
                add(&join.relation)?;
            }
        }
        let databases: HashSet<TargetDatabase> = sources.iter().map(|s| s.rule.database).collect();
        if databases.len() > 1 {
            return Err(NotRoutable::MixedDatabases);
        }
        Ok(Scope { sources })
    }

    fn source(factor: &TableFactor, rules: &'r RuleSet) -> Result<Source<'r>, NotRoutable> {
        let (name, alias) = match factor {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_hints,
            } => {
                if args.is_some() {
                    return Err(NotRoutable::Function(name.to_string()));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_hints.is_empty()
                {
                    return Err(NotRoutable::Unsupported(format!(
                        "this form of FROM item {name}"
                    )));
                }
                (name, alias)
            }
            TableFactor::Derived { .. } => return Err(NotRoutable::Subquery),
            TableFactor::TableFunction { .. } | TableFactor::Function { .. } => {
                return Err(NotRoutable::Function(factor.to_string()))
            }
            _ => return Err(unsupported("this kind of FROM item")),
        };
        let legacy = table_name_of(name)?;
        let rule = rules
            .table(&legacy)
            .ok_or(NotRoutable::UnmappedTable(legacy))?;
        match alias {
            None => Ok(Source {
                rule,
                refname: rule.legacy.name.clone(),
                alias: ident(&rule.legacy.name),
                aliased: false,
            }),
            Some(a) => {
                if !a.columns.is_empty() || a.at.is_some() {
                    return Err(NotRoutable::column(
                        a.to_string(),
                        "column aliases on a table are not rewritten",
                    ));
                }
                Ok(Source {
                    rule,
                    refname: fold(&a.name),
                    alias: a.name.clone(),
                    aliased: true,
                })
            }
        }
    }

    /// True when every table's legacy columns are known from the catalog.
    fn complete(&self) -> bool {
        self.sources
            .iter()
            .all(|s| !s.rule.legacy_columns.is_empty())
    }

    /// Indexes of the tables that have a known legacy column of this name.
    fn columns_named(&self, column: &str) -> Vec<usize> {
        (0..self.sources.len())
            .filter(|&i| knows_column(self.sources[i].rule, column))
            .collect()
    }

    /// The table and legacy column a column reference names.
    fn resolve(&self, parts: &[Ident]) -> Result<(usize, String), NotRoutable> {
        let folded: Vec<String> = parts.iter().map(fold).collect();
        let written = || {
            folded
                .iter()
                .map(|p| quote_ident(p))
                .collect::<Vec<_>>()
                .join(".")
        };
        let (index, column) = match folded.as_slice() {
            [column] => match self.columns_named(column).as_slice() {
                [i] => (*i, column.clone()),
                [] => {
                    let problem = if self.complete() {
                        "not a column of the query's tables"
                    } else {
                        "not a known legacy column"
                    };
                    return Err(NotRoutable::column(written(), problem));
                }
                _ => {
                    return Err(NotRoutable::column(
                        written(),
                        "ambiguous: a column of more than one table",
                    ))
                }
            },
            [qualifier @ .., column] if folded.len() <= 3 => match self.qualified(qualifier) {
                Some(i) => (i, column.clone()),
                None => {
                    return Err(NotRoutable::column(
                        written(),
                        "its qualifier names no table of the query",
                    ))
                }
            },
            _ => {
                return Err(NotRoutable::column(
                    written(),
                    "this form of column reference is not rewritten",
                ))
            }
        };
        let rule = self.sources[index].rule;
        if !knows_column(rule, &column) {
            return Err(NotRoutable::column(
                format!("{}.{}", rule.legacy, quote_ident(&column)),
                "not a known legacy column",
            ));
        }
        Ok((index, column))
    }

    /// The table a qualifier (`alias`, `table` or `schema.table`, folded) names.
    fn qualified(&self, qualifier: &[String]) -> Option<usize> {
        self.sources.iter().position(|s| match qualifier {
            [r] => &s.refname == r,
            [schema, name] => {
                !s.aliased && &s.rule.legacy.schema == schema && &s.rule.legacy.name == name
            }
            _ => false,
        })
    }

    /// A legacy column's read-back expression over the table's alias, parenthesized unless
    /// it is a plain column.
    fn read_back(&self, index: usize, column: &str) -> Result<Expr, NotRoutable> {
        let source = &self.sources[index];
        let Some(rb) = read_back_of(source.rule, column) else {
            return Err(NotRoutable::column(
                format!("{}.{}", source.rule.legacy, quote_ident(column)),
                "has no read_back expression",
            ));
        };
        let mut expr = rb.expr.clone();
        let _ = sqlparser::ast::visit_expressions_mut(&mut expr, |e| {
            if let Expr::Identifier(id) = e {
                *e = Expr::CompoundIdentifier(vec![source.alias.clone(), ident(&fold(id))]);
            }
            ControlFlow::<()>::Continue(())
        });
        Ok(match expr {
            Expr::CompoundIdentifier(_) => expr,
            other => Expr::Nested(Box::new(other)),
        })
    }

    /// Points every FROM item at its new table, aliased.
    fn rename_tables(&self, select: &mut Select) {
        let mut sources = self.sources.iter();
        let mut rename = |factor: &mut TableFactor| {
            if let (TableFactor::Table { name, alias, .. }, Some(source)) = (factor, sources.next())
            {
                let new = &source.rule.new;
                *name = new.to_object_name();
                match alias {
                    Some(a) => a.explicit = true,
                    None => {
                        *alias = Some(TableAlias {
                            explicit: true,
                            name: source.alias.clone(),
                            columns: Vec::new(),
                            at: None,
                        })
                    }
                }
            }
        };
        for twj in &mut select.from {
            rename(&mut twj.relation);
            for join in &mut twj.joins {
                rename(&mut join.relation);
            }
        }
    }
}

/// One select-list item as it will be.
struct ItemPlan {
    /// The output column names it gives, when the planner knows them (one per column).
    names: Vec<Option<String>>,
    /// An unnamed column reference: give it `AS` this name.
    alias: Option<String>,
    /// For `*` and `t.*`: the items replacing it.
    expansion: Vec<SelectItem>,
    /// For `*` and `t.*`: the (source, legacy column) pairs it stands for.
    expanded: Vec<(usize, String)>,
}

/// The output name PostgreSQL gives an unnamed item that is a (cast, collated,
/// parenthesized or subscripted) column reference.
fn column_ref_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(id) => Some(fold(id)),
        Expr::CompoundIdentifier(ids) => ids.last().map(fold),
        Expr::Nested(e) | Expr::Cast { expr: e, .. } | Expr::Collate { expr: e, .. } => {
            column_ref_name(e)
        }
        Expr::CompoundFieldAccess { root, .. } => column_ref_name(root),
        _ => None,
    }
}

fn plan_projection(items: &[SelectItem], scope: &Scope) -> Result<Vec<ItemPlan>, NotRoutable> {
    let mut out = Vec::new();
    for item in items {
        let plan = match item {
            SelectItem::UnnamedExpr(expr) => {
                let column = column_ref_name(expr);
                let name = match (&column, expr) {
                    (Some(c), _) => Some(c.clone()),
                    (None, Expr::Function(f)) => f.name.0.last().and_then(|p| match p {
                        ObjectNamePart::Identifier(id) => Some(fold(id)),
                        _ => None,
                    }),
                    _ => None,
                };
                ItemPlan {
                    names: vec![name],
                    alias: column,
                    expansion: Vec::new(),
                    expanded: Vec::new(),
                }
            }
            SelectItem::ExprWithAlias { alias, .. } => ItemPlan {
                names: vec![Some(fold(alias))],
                alias: None,
                expansion: Vec::new(),
                expanded: Vec::new(),
            },
            SelectItem::Wildcard(options) => {
                plain_wildcard(options)?;
                let mut plan = ItemPlan {
                    names: Vec::new(),
                    alias: None,
                    expansion: Vec::new(),
                    expanded: Vec::new(),
                };
                for i in 0..scope.sources.len() {
                    expand(scope, i, &mut plan)?;
                }
                plan
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(t), o) => {
                plain_wildcard(o)?;
                let mut qualifier = Vec::new();
                for p in &t.0 {
                    match p {
                        ObjectNamePart::Identifier(id) => qualifier.push(fold(id)),
                        _ => return Err(unsupported("this select-list item")),
                    }
                }
                let Some(i) = scope.qualified(&qualifier) else {
                    return Err(NotRoutable::column(
                        format!("{t}.*"),
                        "its qualifier names no table of the query",
                    ));
                };
                let mut plan = ItemPlan {
                    names: Vec::new(),
                    alias: None,
                    expansion: Vec::new(),
                    expanded: Vec::new(),
                };
                expand(scope, i, &mut plan)?;
                plan
            }
            _ => return Err(unsupported("this select-list item")),
        };
        out.push(plan);
    }
    Ok(out)
}

fn plain_wildcard(o: &WildcardAdditionalOptions) -> Result<(), NotRoutable> {
    if o.opt_ilike.is_some()
        || o.opt_exclude.is_some()
        || o.opt_except.is_some()
        || o.opt_replace.is_some()
        || o.opt_rename.is_some()
        || o.opt_alias.is_some()
    {
        return Err(unsupported("* with options"));
    }
    Ok(())
}

/// `*` over one table: every legacy column, read back and named as on legacy.
fn expand(scope: &Scope, index: usize, plan: &mut ItemPlan) -> Result<(), NotRoutable> {
    let rule = scope.sources[index].rule;
    if rule.legacy_columns.is_empty() {
        return Err(NotRoutable::Star(rule.legacy.clone()));
    }
    for column in &rule.legacy_columns {
        let expr = scope.read_back(index, column)?;
        plan.expansion.push(SelectItem::ExprWithAlias {
            expr,
            alias: ident(column),
        });
        plan.names.push(Some(column.clone()));
        plan.expanded.push((index, column.clone()));
    }
    Ok(())
}

/// The WHERE clause's top-level AND chain.
fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

/// A literal or parameter, as a key value.
fn key_value(e: &Expr) -> Option<KeyRef> {
    match e {
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => key_value(inner),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(KeyRef::Literal(format!("-{n}"))),
                _ => None,
            },
            _ => None,
        },
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .map(KeyRef::Param),
            Value::Number(n, _) => Some(KeyRef::Literal(n.to_string())),
            Value::Boolean(b) => Some(KeyRef::Literal(b.to_string())),
            Value::Null => None,
            other => other.clone().into_string().map(KeyRef::Literal),
        },
        _ => None,
    }
}

/// The key columns' pinned values when the WHERE clause pins all of them.
fn pinned_key(selection: &Expr, scope: &Scope) -> Option<Vec<KeyRef>> {
    let mut all = Vec::new();
    conjuncts(selection, &mut all);
    let column_of = |e: &Expr| column_of(e, scope);
    let mut pinned: Vec<(String, KeyRef)> = Vec::new();
    for c in all {
        if let Expr::BinaryOp {
            left,
            op: sqlparser::ast::BinaryOperator::Eq,
            right,
        } = c
        {
            let found = match (column_of(left), key_value(right)) {
                (Some(col), Some(v)) => Some((col, v)),
                _ => match (column_of(right), key_value(left)) {
                    (Some(col), Some(v)) => Some((col, v)),
                    _ => None,
                },
            };
            if let Some(p) = found {
                pinned.push(p);
            }
        }
    }
    let rule = scope.sources.first()?.rule;
    rule.legacy_keys
        .iter()
        .map(|k| pinned.iter().find(|(c, _)| c == k).map(|(_, v)| v.clone()))
        .collect()
}

/// The legacy column an expression is a (parenthesized) reference to.
fn column_of(e: &Expr, scope: &Scope) -> Option<String> {
    match e {
        Expr::Identifier(id) => scope.resolve(std::slice::from_ref(id)).ok().map(|r| r.1),
        Expr::CompoundIdentifier(ids) => scope.resolve(ids).ok().map(|r| r.1),
        Expr::Nested(inner) => column_of(inner, scope),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::parse_rules;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    const RULES: &str = r#"
        [[table]]
        legacy = "public.users"
        new = "app.customers"
        keys = ["id"]
        [table.columns]
        customer_id = "id"
        full_name = "first_name || ' ' || last_name"
        email = "lower(email)"
        [table.read_back]
        first_name = "split_part(full_name, ' ', 1)"
        last_name = "split_part(full_name, ' ', 2)"
        email = "email"

        [[table]]
        legacy = "public.orders"
        new = "app.orders"
        keys = ["id", "line"]
        [table.columns]
        order_id = "id"
        line_no = "line"
        user_id = "user_id"
        amount_cents = "amount * 100"
        note_upper = "upper(note)"
        [table.read_back]
        amount = "amount_cents / 100.0"

        [[table]]
        legacy = "billing.invoices"
        new = "public.invoices_v2"
        database = "legacy"
        keys = ["id"]
        [table.columns]
        id = "id"
    "#;

    fn users() -> TableName {
        TableName {
            schema: "public".into(),
            name: "users".into(),
        }
    }

    fn rules() -> RuleSet {
        parse_rules(RULES, "t").unwrap()
    }

    /// The rules with the users' catalog columns known.
    fn rules_with_columns() -> RuleSet {
        let mut set = rules();
        set.set_legacy_columns(
            &users(),
            ["id", "first_name", "last_name", "email", "created_at"]
                .map(String::from)
                .to_vec(),
        );
        set.set_legacy_columns(
            &TableName {
                schema: "public".into(),
                name: "orders".into(),
            },
            ["id", "line", "user_id", "amount"]
                .map(String::from)
                .to_vec(),
        );
        set
    }

    /// The rules with users' `created_at` read back too.
    fn rules_with_created_at() -> RuleSet {
        let text = RULES.replacen(
            "email = \"email\"\n",
            "email = \"email\"\n        created_at = \"created\"\n",
            1,
        );
        let mut set = parse_rules(&text, "t").unwrap();
        set.set_legacy_columns(
            &users(),
            ["id", "first_name", "last_name", "email", "created_at"]
                .map(String::from)
                .to_vec(),
        );
        set
    }

    fn plan(sql: &str, rules: &RuleSet) -> ReadPlan {
        match plan_read(sql, rules) {
            Ok(p) => {
                assert!(
                    Parser::parse_sql(&PostgreSqlDialect {}, &p.sql).is_ok(),
                    "{sql} -> {} does not re-parse",
                    p.sql
                );
                p
            }
            Err(e) => panic!("{sql}: not routable: {e} ({})", e.reason()),
        }
    }

    #[test]
    fn literal_output_marks_select_lists_whose_shape_a_literal_can_change() {
        let rules = rules();
        for (sql, literal) in [
            ("SELECT id, email FROM users WHERE id = 7", false),
            ("SELECT id FROM users WHERE id = $1 AND email = 'x'", false),
            ("SELECT id, 'x' FROM users", true),
            ("SELECT coalesce(email, $1) FROM users", false),
            (
                "SELECT coalesce(email, 'none') FROM users WHERE id = 1",
                true,
            ),
        ] {
            assert_eq!(plan(sql, &rules).literal_output, literal, "{sql}");
        }
    }

    #[test]
    fn rewrites() {
        let cases: &[(&str, &str)] = &[
            (
                "SELECT id, email FROM users WHERE id = $1",
                "SELECT users.customer_id AS id, users.email AS email FROM app.customers AS users WHERE users.customer_id = $1",
            ),
            (
                "SELECT first_name FROM public.users u ORDER BY id",
                "SELECT (split_part(u.full_name, ' ', 1)) AS first_name FROM app.customers AS u ORDER BY u.customer_id",
            ),
            (
                "select u.ID, users2.email from users u join public.users as users2 on u.id = users2.id",
                "SELECT u.customer_id AS id, users2.email AS email FROM app.customers AS u JOIN app.customers AS users2 ON u.customer_id = users2.customer_id",
            ),
            (
                "SELECT public.users.email FROM public.users",
                "SELECT users.email AS email FROM app.customers AS users",
            ),
            (
                "SELECT count(*) FROM users WHERE email LIKE 'a%'",
                "SELECT count(*) FROM app.customers AS users WHERE users.email LIKE 'a%'",
            ),
            (
                "SELECT lower(first_name) AS f, count(*) FROM users GROUP BY first_name HAVING count(*) > 1",
                "SELECT lower((split_part(users.full_name, ' ', 1))) AS f, count(*) FROM app.customers AS users GROUP BY (split_part(users.full_name, ' ', 1)) HAVING count(*) > 1",
            ),
            (
                "SELECT first_name || '!' FROM users",
                "SELECT (split_part(users.full_name, ' ', 1)) || '!' FROM app.customers AS users",
            ),
            (
                "SELECT email AS e FROM users ORDER BY e DESC LIMIT $2 OFFSET 10",
                "SELECT users.email AS e FROM app.customers AS users ORDER BY e DESC LIMIT $2 OFFSET 10",
            ),
            (
                "SELECT id::text, (email) FROM users",
                "SELECT users.customer_id::TEXT AS id, (users.email) AS email FROM app.customers AS users",
            ),
            (
                "SELECT o.amount, u.email FROM orders o LEFT JOIN users u ON u.id = o.user_id WHERE o.amount > 10 ORDER BY 1",
                "SELECT (o.amount_cents / 100.0) AS amount, u.email AS email FROM app.orders AS o LEFT JOIN app.customers AS u ON u.customer_id = o.user_id WHERE (o.amount_cents / 100.0) > 10 ORDER BY 1",
            ),
            (
                "SELECT DISTINCT ON (email) email, id FROM users ORDER BY email, id",
                "SELECT DISTINCT ON (email) users.email AS email, users.customer_id AS id FROM app.customers AS users ORDER BY email, id",
            ),
            (
                "SELECT pg_catalog.upper(email), coalesce(first_name, 'x') FROM users WHERE id IN ($1, $2)",
                "SELECT pg_catalog.upper(users.email), coalesce((split_part(users.full_name, ' ', 1)), 'x') FROM app.customers AS users WHERE users.customer_id IN ($1, $2)",
            ),
            (
                "SELECT string_agg(email, ',' ORDER BY id) FROM users",
                "SELECT string_agg(users.email, ',' ORDER BY users.customer_id) FROM app.customers AS users",
            ),
            (
                "SELECT \"email\" FROM \"users\" WHERE \"id\" = 1",
                "SELECT users.email AS email FROM app.customers AS users WHERE users.customer_id = 1",
            ),
            (
                "SELECT email FROM users FETCH FIRST 5 ROWS ONLY",
                "SELECT users.email AS email FROM app.customers AS users FETCH FIRST 5 ROWS ONLY",
            ),
        ];
        let set = rules();
        let mut wrong = Vec::new();
        for (sql, want) in cases {
            let got = plan(sql, &set).sql;
            if got != *want {
                wrong.push(format!("{sql}\n  got:  {got}\n  want: {want}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn rewrites_with_catalog_columns() {
        let cases: &[(&str, &str)] = &[
            (
                "SELECT * FROM users WHERE id = 1",
                "SELECT users.customer_id AS id, (split_part(users.full_name, ' ', 1)) AS first_name, (split_part(users.full_name, ' ', 2)) AS last_name, users.email AS email, users.created AS created_at FROM app.customers AS users WHERE users.customer_id = 1",
            ),
            (
                "SELECT u.*, 1 AS one FROM users AS u",
                "SELECT u.customer_id AS id, (split_part(u.full_name, ' ', 1)) AS first_name, (split_part(u.full_name, ' ', 2)) AS last_name, u.email AS email, u.created AS created_at, 1 AS one FROM app.customers AS u",
            ),
            (
                "SELECT lower(email) AS full_name, count(*) FROM users GROUP BY full_name",
                "SELECT lower(users.email) AS full_name, count(*) FROM app.customers AS users GROUP BY 1",
            ),
            (
                "SELECT *, email AS e FROM users GROUP BY e ORDER BY created_at",
                "SELECT users.customer_id AS id, (split_part(users.full_name, ' ', 1)) AS first_name, (split_part(users.full_name, ' ', 2)) AS last_name, users.email AS email, users.created AS created_at, users.email AS e FROM app.customers AS users GROUP BY 6 ORDER BY created_at",
            ),
        ];
        let set = rules_with_created_at();
        let mut wrong = Vec::new();
        for (sql, want) in cases {
            let got = plan(sql, &set).sql;
            if got != *want {
                wrong.push(format!("{sql}\n  got:  {got}\n  want: {want}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn quoted_names_stay_quoted() {
        let text = r#"
            [[table]]
            legacy = 'public."Items"'
            new = "app.items"
            keys = ["id"]
            [table.columns]
            "ItemId" = "id"
            name = "lower(name)"
            [table.read_back]
            "Label" = "upper(name)"
        "#;
        let set = parse_rules(text, "t").unwrap();
        let cases: &[(&str, &str)] = &[
            (
                "SELECT \"Label\", id FROM \"Items\" i WHERE i.id = 3",
                "SELECT (upper(i.name)) AS \"Label\", i.\"ItemId\" AS id FROM app.items AS i WHERE i.\"ItemId\" = 3",
            ),
            (
                "SELECT \"Items\".\"Label\" FROM public.\"Items\" ORDER BY ID",
                "SELECT (upper(\"Items\".name)) AS \"Label\" FROM app.items AS \"Items\" ORDER BY \"Items\".\"ItemId\"",
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(plan(sql, &set).sql, *want, "{sql}");
        }
        for sql in ["SELECT label FROM \"Items\"", "SELECT id FROM items"] {
            assert!(plan_read(sql, &set).is_err(), "{sql}");
        }
    }

    #[test]
    fn columns_are_every_legacy_column_referenced_anywhere() {
        type TableColumns = (String, Vec<String>);
        let set = rules_with_created_at();
        let cols = |sql: &str| -> Vec<TableColumns> {
            plan(sql, &set)
                .columns
                .into_iter()
                .map(|(t, c)| (t.to_string(), c))
                .collect()
        };
        let users = |c: &[&str]| {
            (
                "public.users".to_string(),
                c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let orders = |c: &[&str]| {
            (
                "public.orders".to_string(),
                c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        #[rustfmt::skip]
        let cases: &[(&str, Vec<TableColumns>)] = &[
            ("SELECT email FROM users", vec![users(&["email"])]),
            ("SELECT count(*) FROM users", vec![users(&[])]),
            ("SELECT * FROM users", vec![users(&["created_at", "email", "first_name", "id", "last_name"])]),
            ("SELECT u.* FROM users u WHERE u.id = 1", vec![users(&["created_at", "email", "first_name", "id", "last_name"])]),
            ("SELECT id FROM users WHERE email = $1", vec![users(&["email", "id"])]),
            ("SELECT id FROM users ORDER BY last_name", vec![users(&["id", "last_name"])]),
            ("SELECT id AS x FROM users ORDER BY x", vec![users(&["id"])]),
            ("SELECT lower(first_name) FROM users GROUP BY first_name HAVING count(email) > 1", vec![users(&["email", "first_name"])]),
            ("SELECT DISTINCT ON (last_name) id FROM users", vec![users(&["id", "last_name"])]),
            ("SELECT coalesce(email, first_name) FROM users", vec![users(&["email", "first_name"])]),
            (
                "SELECT u.email FROM users u JOIN orders o ON o.user_id = u.id WHERE o.amount > 3",
                vec![users(&["email", "id"]), orders(&["amount", "user_id"])],
            ),
            (
                "SELECT a.email, b.first_name FROM users a JOIN users b ON a.id = b.id",
                vec![users(&["email", "first_name", "id"])],
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(&cols(sql), want, "{sql}");
        }
    }

    #[test]
    fn tables_ordering_and_keys() {
        let p = |s: &str| KeyRef::Param(s.parse().unwrap());
        let l = |s: &str| KeyRef::Literal(s.into());
        // (sql, tables, ordered, key)
        type Case<'a> = (&'a str, Vec<&'a str>, bool, Option<Vec<KeyRef>>);
        let cases: Vec<Case> = vec![
            ("SELECT email FROM users WHERE id = $1", vec!["users"], false, Some(vec![p("1")])),
            ("SELECT email FROM users WHERE $3 = id", vec!["users"], false, Some(vec![p("3")])),
            ("SELECT email FROM users u WHERE u.id = 42 AND email = 'x'", vec!["users"], false, Some(vec![l("42")])),
            ("SELECT email FROM users WHERE (email = 'x' AND (id = '7'))", vec!["users"], false, Some(vec![l("7")])),
            ("SELECT email FROM users WHERE id = $1::bigint", vec!["users"], false, Some(vec![p("1")])),
            ("SELECT email FROM users WHERE id = -5", vec!["users"], false, Some(vec![l("-5")])),
            ("SELECT email FROM users WHERE id = 1 OR id = 2", vec!["users"], false, None),
            ("SELECT email FROM users WHERE id > 1", vec!["users"], false, None),
            ("SELECT email FROM users WHERE id = NULL", vec!["users"], false, None),
            ("SELECT email FROM users WHERE id = id", vec!["users"], false, None),
            ("SELECT email FROM users ORDER BY email", vec!["users"], true, None),
            ("SELECT amount FROM orders WHERE id = $1 AND line = $2", vec!["orders"], false, Some(vec![p("1"), p("2")])),
            ("SELECT amount FROM orders WHERE line = 3 AND id = 'abc' ORDER BY 1", vec!["orders"], true, Some(vec![l("abc"), l("3")])),
            ("SELECT amount FROM orders WHERE id = $1", vec!["orders"], false, None),
            (
                "SELECT u.email FROM orders o JOIN users u ON u.id = o.user_id JOIN users u2 ON true WHERE o.id = 1 AND o.line = 1",
                vec!["orders", "users"],
                false,
                None,
            ),
        ];
        let set = rules();
        for (sql, tables, ordered, key) in cases {
            let got = plan(sql, &set);
            let names: Vec<&str> = got.tables.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, tables, "{sql}");
            assert_eq!(got.ordered, ordered, "{sql}");
            assert_eq!(got.key, key, "{sql}");
        }
    }

    #[test]
    fn not_routable() {
        let cases: &[(&str, &str, &str)] = &[
            ("SELEC 1", "parse", "does not parse"),
            ("", "empty", "no statement"),
            ("SELECT 1; SELECT 2", "multiple_statements", "2 statements"),
            ("INSERT INTO users (id) VALUES (1)", "not_select", "INSERT"),
            ("UPDATE users SET email = 'x'", "not_select", "UPDATE"),
            ("VALUES (1)", "not_select", "VALUES"),
            ("SELECT * INTO t2 FROM users", "not_select", "INTO"),
            (
                "SELECT email FROM users UNION SELECT email FROM users",
                "set_operation",
                "UNION",
            ),
            (
                "WITH x AS (SELECT 1) SELECT email FROM users",
                "with",
                "WITH",
            ),
            (
                "SELECT email FROM users WHERE id IN (SELECT id FROM users)",
                "subquery",
                "subqueries",
            ),
            (
                "SELECT email FROM users WHERE EXISTS (SELECT 1)",
                "subquery",
                "subqueries",
            ),
            (
                "SELECT (SELECT 1), email FROM users",
                "subquery",
                "subqueries",
            ),
            (
                "SELECT s.email FROM (SELECT email FROM users) s",
                "subquery",
                "subqueries",
            ),
            (
                "SELECT email FROM users WHERE id = ANY(ARRAY(SELECT 1))",
                "subquery",
                "subqueries",
            ),
            ("SELECT * FROM users FOR UPDATE", "locking", "FOR UPDATE"),
            (
                "SELECT email FROM users WHERE id = 1 FOR SHARE",
                "locking",
                "FOR UPDATE",
            ),
            // sqlparser 0.63 does not parse FOR NO KEY UPDATE; not routed either way.
            ("SELECT email FROM users FOR NO KEY UPDATE", "parse", "NO"),
            (
                "SELECT email FROM users FOR KEY SHARE SKIP LOCKED",
                "parse",
                "KEY",
            ),
            (
                "SELECT u.email FROM users u FOR UPDATE OF u NOWAIT",
                "locking",
                "FOR UPDATE",
            ),
            ("SELECT random() FROM users", "function", "function random"),
            (
                "SELECT email FROM users WHERE id = nextval('s')",
                "function",
                "function nextval",
            ),
            ("SELECT now(), email FROM users", "function", "function now"),
            (
                "SELECT CURRENT_TIMESTAMP, email FROM users",
                "function",
                "current_timestamp",
            ),
            ("SELECT pg_sleep(1) FROM users", "function", "pg_sleep"),
            (
                "SELECT myschema.lower(email) FROM users",
                "function",
                "myschema.lower",
            ),
            ("SELECT \"LOWER\"(email) FROM users", "function", "LOWER"),
            (
                "SELECT * FROM generate_series(1, 3)",
                "function",
                "generate_series",
            ),
            ("SELECT * FROM orderz", "unmapped_table", "public.orderz"),
            (
                "SELECT u.email FROM users u JOIN app.other o ON true",
                "unmapped_table",
                "app.other",
            ),
            ("SELECT 1", "no_table", "no table"),
            ("SELECT random()", "no_table", "no table"),
            ("SELECT * FROM users", "star", "public.users"),
            ("SELECT u.* FROM users u", "star", "public.users"),
            ("SELECT nickname FROM users", "column", "nickname"),
            (
                "SELECT u.nickname FROM users u",
                "column",
                "public.users.nickname",
            ),
            (
                "SELECT users.email FROM users u",
                "column",
                "names no table",
            ),
            ("SELECT x.email FROM users", "column", "names no table"),
            (
                "SELECT u FROM users u",
                "column",
                "not a known legacy column",
            ),
            (
                "SELECT row_to_json(u) FROM users u",
                "column",
                "not a known legacy column",
            ),
            (
                "SELECT row_to_json(u.*) FROM users u",
                "column",
                "whole-row",
            ),
            (
                "SELECT id FROM users a JOIN users b ON a.id = b.id",
                "column",
                "ambiguous",
            ),
            (
                "SELECT note FROM orders WHERE line = 1",
                "column",
                "public.orders.note: has no read_back",
            ),
            (
                "SELECT amount FROM orders ORDER BY upper(note)",
                "column",
                "public.orders.note: has no read_back",
            ),
            (
                "SELECT a.email FROM users a JOIN users b USING (id)",
                "column",
                "USING",
            ),
            (
                "SELECT a.email FROM users a NATURAL JOIN users b",
                "column",
                "NATURAL",
            ),
            (
                "SELECT u.email FROM users u(a, b)",
                "column",
                "column aliases",
            ),
            ("SELECT email FROM users GROUP BY nope", "column", "nope"),
            ("SELECT email FROM users ORDER BY nope", "column", "nope"),
            (
                "SELECT u.email FROM users u JOIN billing.invoices i ON true",
                "mixed_databases",
                "different databases",
            ),
            ("SELECT email FROM users, users", "unsupported", "twice"),
            (
                "SELECT email FROM (users u JOIN orders o ON true)",
                "unsupported",
                "FROM item",
            ),
            (
                "SELECT email FROM users LATERAL VIEW explode(x) t",
                "unsupported",
                "non-PostgreSQL",
            ),
            (
                "SELECT CURRENT_DATE, email FROM users",
                "function",
                "current_date",
            ),
            (
                "SELECT email FROM users WHERE id = current_setting('x')::int",
                "function",
                "current_setting",
            ),
            (
                "SELECT count(*) OVER (ORDER BY random()) FROM users",
                "function",
                "random",
            ),
            (
                "SELECT email FROM users ORDER BY (SELECT 1)",
                "subquery",
                "subqueries",
            ),
            (
                "SELECT (u).email FROM users u",
                "unsupported",
                "field access",
            ),
            (
                "SELECT format(fmt => email) FROM users",
                "unsupported",
                "argument form",
            ),
            ("EXPLAIN SELECT email FROM users", "not_select", "EXPLAIN"),
            ("TABLE users", "parse", "TABLE"),
        ];
        let set = rules();
        let mut wrong = Vec::new();
        for (sql, reason, text) in cases {
            match plan_read(sql, &set) {
                Ok(p) => wrong.push(format!("{sql} routed as {}", p.sql)),
                Err(e) => {
                    if e.reason() != *reason || !e.to_string().contains(text) {
                        wrong.push(format!("{sql}: {} {e}", e.reason()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn not_routable_with_catalog_columns() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "SELECT * FROM users",
                "column",
                "public.users.created_at: has no read_back",
            ),
            (
                "SELECT created_at FROM users",
                "column",
                "public.users.created_at: has no read_back",
            ),
            (
                "SELECT email FROM users ORDER BY created_at",
                "column",
                "created_at",
            ),
            (
                "SELECT nickname FROM users",
                "column",
                "not a column of the query's tables",
            ),
            (
                "SELECT lower(email) AS e, lower(email) AS e FROM users GROUP BY e",
                "column",
                "more than one output column",
            ),
            (
                "SELECT id FROM users u JOIN orders o ON o.user_id = u.id",
                "column",
                "ambiguous",
            ),
        ];
        let set = rules_with_columns();
        let mut wrong = Vec::new();
        for (sql, reason, text) in cases {
            match plan_read(sql, &set) {
                Ok(p) => wrong.push(format!("{sql} routed as {}", p.sql)),
                Err(e) => {
                    if e.reason() != *reason || !e.to_string().contains(text) {
                        wrong.push(format!("{sql}: {} {e}", e.reason()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // GROUP BY an output name that is not a legacy column needs the catalog columns.
        let err =
            plan_read("SELECT lower(email) AS e FROM users GROUP BY e", &rules()).unwrap_err();
        assert_eq!(err.reason(), "column", "{err}");
    }

    #[test]
    fn garbage_never_panics() {
        let set = rules_with_columns();
        let inputs = [
            "",
            " ; ",
            ";;;",
            "SELECT",
            "SELECT * FROM",
            "))))((((",
            "\0\u{7f}\u{fffd}",
            "SELECT $0 FROM users WHERE id = $0",
            "SELECT $99999999999999999999 FROM users WHERE id = $99999999999999999999",
            "SELECT email FROM users WHERE id = ?",
            "SELECT 'unterminated FROM users",
            "SELECT email FROM users WHERE id = 1 AND",
            "SELECT ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))))))))))))))))))) FROM users",
            "SELECT email FROM users AS",
            "SELECT u.* , * FROM users u",
            "SELECT email FROM a.b.c.d",
            "SELECT a.b.c.d FROM users",
            "SELECT \"\" FROM \"\"",
        ];
        for sql in inputs {
            let _ = plan_read(sql, &set).map(|p| {
                assert!(
                    Parser::parse_sql(&PostgreSqlDialect {}, &p.sql).is_ok(),
                    "{sql} -> {}",
                    p.sql
                )
            });
        }
        let mut deep = "SELECT email FROM users WHERE ".to_string();
        for _ in 0..500 {
            deep.push('(');
        }
        assert!(plan_read(&deep, &set).is_err());
    }

    #[test]
    fn long_texts_are_not_routed_and_deep_chains_do_not_overflow() {
        let set = rules();
        let head = "SELECT email FROM users WHERE id = 1";
        let deepest = format!("{head}{}", "+1".repeat(crate::sql::bounds::MAX_DEPTH - 8));
        assert!(plan_read(&deepest, &set).is_ok());
        let deep = format!("{head}{}", "+1".repeat(crate::sql::bounds::MAX_DEPTH));
        assert_eq!(plan_read(&deep, &set).unwrap_err().reason(), "too_deep");
        let long = format!("{head}{}", " OR id = 1".repeat(MAX_SQL_LEN / 10));
        assert_eq!(plan_read(&long, &set).unwrap_err().reason(), "too_long");
    }

    #[test]
    fn every_reason_has_a_sentence() {
        let all = [
            NotRoutable::Parse("x".into()),
            NotRoutable::Empty,
            NotRoutable::MultipleStatements(2),
            NotRoutable::NotSelect("INSERT".into()),
            NotRoutable::SetOperation,
            NotRoutable::With,
            NotRoutable::Subquery,
            NotRoutable::Locking,
            NotRoutable::Function("random".into()),
            NotRoutable::UnmappedTable(users()),
            NotRoutable::NoTable,
            NotRoutable::column("public.users.x", "has no read_back expression"),
            NotRoutable::Star(users()),
            NotRoutable::MixedDatabases,
            NotRoutable::TooLong(MAX_SQL_LEN + 1),
            NotRoutable::TooDeep,
            NotRoutable::Unsupported("this".into()),
        ];
        let reasons: HashSet<&str> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(reasons.len(), all.len());
        for e in &all {
            assert!(!e.to_string().is_empty());
            assert!(e
                .reason()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}
