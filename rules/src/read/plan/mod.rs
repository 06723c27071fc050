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
use std::ops::ControlFlow;

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, OrderByKind, Query, Select, SelectItem, SetExpr, Statement, Value,
};

use crate::ruleset::RuleSet;
use crate::sql::bounds::{BoundedError, Exceeded};
use crate::sql::ident::{fold, sql_ident as ident, TableName};

mod checks;
mod key;
mod not_routable;
mod projection;
mod scope;

pub use not_routable::NotRoutable;

use checks::{check_expressions, check_no_subqueries, check_query_shape};
use key::pinned_key;
use projection::{plan_projection, ItemPlan};
use scope::Scope;

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
    /// The sticky bucket's hash fed the first table's name: a read's bucket goes on from
    /// here with its key values (see `bucket::Bucket`).
    pub table_bucket: crate::read::bucket::Bucket,
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

/// Longest SQL text planned, in bytes (tighter than the analysis bound: a plan is kept per
/// text). Deep texts are refused by `bounds::check` before they are parsed.
pub const MAX_SQL_LEN: usize = 32 * 1024;

/// Plans one client SQL text as a read on the new schema, or says why it cannot be.
pub fn plan_read(sql: &str, rules: &RuleSet) -> Result<ReadPlan, NotRoutable> {
    plan_query(parse_query(sql)?, rules)
}

/// Why a lifted text ([`crate::sql::literals::lift`]) cannot be planned with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotLifted {
    /// A parameter sits where a literal means more than its value (the select list, `ORDER
    /// BY 1`, a type modifier, `INTERVAL '1 day'`), or the text does not parse with them:
    /// plan the text with its literals instead.
    Literals,
    /// New cannot answer the statement whatever its literals.
    NotRoutable(NotRoutable),
}

/// Plans a text whose `params` literals were lifted into `$1..$params`: the plan's SQL keeps
/// the parameters, so one plan serves every text of this shape. Refused (as
/// [`NotLifted::Literals`]) unless each parameter appears once, as a value, outside the
/// select list, `ORDER BY`, `GROUP BY`, `DISTINCT ON` and `INTERVAL`.
pub fn plan_lifted(sql: &str, params: usize, rules: &RuleSet) -> Result<ReadPlan, NotLifted> {
    let query = match parse_query(sql) {
        Ok(q) => q,
        Err(NotRoutable::Parse(_)) => return Err(NotLifted::Literals),
        Err(e) => return Err(NotLifted::NotRoutable(e)),
    };
    if !lifted_in_value_places(&query, params) {
        return Err(NotLifted::Literals);
    }
    plan_query(query, rules).map_err(NotLifted::NotRoutable)
}

/// Whether `$1..$params` each appear exactly once in `query`, every one where a value goes.
fn lifted_in_value_places(query: &Query, params: usize) -> bool {
    let mut seen = vec![false; params];
    let all_once = sqlparser::ast::visit_expressions(query, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                match p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) if (1..=params).contains(&n) && !seen[n - 1] => seen[n - 1] = true,
                    _ => return ControlFlow::Break(()),
                }
            }
        }
        ControlFlow::Continue(())
    })
    .is_continue();
    if !all_once || seen.contains(&false) {
        return false;
    }
    let Ok(select) = select_of(query) else {
        return false;
    };
    let in_interval = sqlparser::ast::visit_expressions(query, |e| match e {
        Expr::Interval(i) if has_placeholder(&i.value) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break();
    !in_interval
        && !has_placeholder(&select.projection)
        && !has_placeholder(&select.group_by)
        && !has_placeholder(&select.distinct)
        && !has_placeholder(&query.order_by)
}

fn has_placeholder<V: sqlparser::ast::Visit>(node: &V) -> bool {
    sqlparser::ast::visit_expressions(node, |e| match e {
        Expr::Value(v) if matches!(v.value, Value::Placeholder(_)) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

fn plan_query(mut query: Box<Query>, rules: &RuleSet) -> Result<ReadPlan, NotRoutable> {
    check_query_shape(&query)?;
    check_no_subqueries(&query)?;
    let select = select_of(&query)?;
    let scope = Scope::build(select, rules)?;
    check_expressions(&query)?;

    let tables = legacy_tables(&scope);
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
    let literal_output = has_literal_output(select);
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

    number_group_by_output_names(select_mut(&mut query)?, &scope, &output_names)?;
    let keep = output_name_references(&query, &output_names);
    substitute_columns(&mut query, &scope, &keep, &mut touched)?;
    let select = select_mut(&mut query)?;
    apply_projection(select, projection);
    scope.rename_tables(select);

    // Not parsed again here: a rewrite new cannot run is a fallback, counted as an error.
    let sql = query.to_string();
    let columns = columns_by_table(&tables, &scope, touched);
    let mut table_bucket = crate::read::bucket::Bucket::default();
    if let Some(t) = tables.first() {
        use std::fmt::Write;
        let _ = write!(table_bucket, "{t}");
    }
    Ok(ReadPlan {
        sql,
        table_bucket,
        tables,
        ordered,
        key,
        literal_output,
        columns,
    })
}

/// The text's one statement, when it is a query, parsed within the bounds.
fn parse_query(sql: &str) -> Result<Box<Query>, NotRoutable> {
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
    match statements.pop() {
        None => Err(NotRoutable::Empty),
        Some(Statement::Query(q)) => Ok(q),
        Some(other) => Err(NotRoutable::NotSelect(statement_word(&other))),
    }
}

fn select_of(query: &Query) -> Result<&Select, NotRoutable> {
    match query.body.as_ref() {
        SetExpr::Select(select) => Ok(select),
        _ => Err(NotRoutable::NotSelect("the query".into())),
    }
}

fn select_mut(query: &mut Query) -> Result<&mut Select, NotRoutable> {
    match query.body.as_mut() {
        SetExpr::Select(select) => Ok(select),
        _ => Err(NotRoutable::NotSelect("the query".into())),
    }
}

/// The legacy tables read, in order of appearance, deduplicated.
fn legacy_tables(scope: &Scope) -> Vec<TableName> {
    let mut out: Vec<TableName> = Vec::new();
    for s in &scope.sources {
        if !out.contains(&s.rule.legacy) {
            out.push(s.rule.legacy.clone());
        }
    }
    out
}

/// The select list holds a literal (not a parameter) or a cast.
fn has_literal_output(select: &Select) -> bool {
    select.projection.iter().any(|item| {
        sqlparser::ast::visit_expressions(item, |e| match e {
            Expr::Value(v) if !matches!(v.value, Value::Placeholder(_)) => ControlFlow::Break(()),
            // A type modifier (`::numeric(10,2)`) reads as a literal to the fingerprint.
            Expr::Cast { .. } | Expr::TypedString { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .is_break()
    })
}

/// Bare `GROUP BY` names that are no legacy column but name an output column become that
/// column's position.
fn number_group_by_output_names(
    select: &mut Select,
    scope: &Scope,
    output_names: &[Option<String>],
) -> Result<(), NotRoutable> {
    let GroupByExpr::Expressions(exprs, _) = &mut select.group_by else {
        return Ok(());
    };
    for e in exprs.iter_mut() {
        let Expr::Identifier(id) = e else { continue };
        let name = fold(id);
        if !scope.columns_named(&name).is_empty() {
            continue;
        }
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
    Ok(())
}

/// The `ORDER BY` and `DISTINCT ON` expressions that are bare output-column names, by
/// address: they stay as written.
fn output_name_references(query: &Query, output_names: &[Option<String>]) -> HashSet<usize> {
    let mut keep: HashSet<usize> = HashSet::new();
    let is_output_name = |e: &Expr| match e {
        Expr::Identifier(id) => output_names.iter().flatten().any(|n| *n == fold(id)),
        _ => false,
    };
    if let SetExpr::Select(select) = query.body.as_ref() {
        if let Some(Distinct::On(exprs)) = &select.distinct {
            for e in exprs.iter().filter(|e| is_output_name(e)) {
                keep.insert(e as *const Expr as usize);
            }
        }
    }
    if let Some(OrderByKind::Expressions(items)) = query.order_by.as_ref().map(|o| &o.kind) {
        for item in items.iter().filter(|i| is_output_name(&i.expr)) {
            keep.insert(&item.expr as *const Expr as usize);
        }
    }
    keep
}

/// Every column reference in every expression, everywhere in the query (but those in
/// `keep`), becomes its read-back expression; each legacy column met is added to `touched`.
fn substitute_columns(
    query: &mut Query,
    scope: &Scope,
    keep: &HashSet<usize>,
    touched: &mut Vec<(usize, String)>,
) -> Result<(), NotRoutable> {
    let rewritten = sqlparser::ast::visit_expressions_mut(query, |e| {
        if keep.contains(&(e as *const Expr as usize)) {
            return ControlFlow::Continue(());
        }
        let parts = match e {
            Expr::Identifier(id) => std::slice::from_ref(id),
            Expr::CompoundIdentifier(ids) => ids.as_slice(),
            _ => return ControlFlow::Continue(()),
        };
        let substituted = scope
            .resolve(parts)
            .and_then(|(index, column)| Ok((scope.read_back(index, &column)?, index, column)));
        match substituted {
            Ok((new, index, column)) => {
                *e = new;
                touched.push((index, column));
                ControlFlow::Continue(())
            }
            Err(err) => ControlFlow::Break(err),
        }
    });
    match rewritten {
        ControlFlow::Break(err) => Err(err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The select list as planned: `*` expanded, unnamed column references aliased.
fn apply_projection(select: &mut Select, projection: Vec<ItemPlan>) {
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

#[cfg(test)]
mod tests;
