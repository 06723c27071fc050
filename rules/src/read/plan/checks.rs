//! What the planner refuses before rewriting anything: query shapes, subqueries, expression
//! kinds and functions off the allowlist.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments, GroupByExpr,
    LimitClause, ObjectNamePart, OrderByKind, Query, SelectFlavor, SetExpr, Visit, Visitor,
};

use super::not_routable::{unsupported, NotRoutable};
use crate::sql::ident::fold;

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

/// Everything about the query except its expressions and FROM items.
pub(super) fn check_query_shape(query: &Query) -> Result<(), NotRoutable> {
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
pub(super) struct QueryCounter(usize);

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

pub(super) fn check_no_subqueries(query: &Query) -> Result<(), NotRoutable> {
    let mut counter = QueryCounter(0);
    match query.visit(&mut counter) {
        ControlFlow::Break(()) => Err(NotRoutable::Subquery),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Every expression is of a kind the planner understands, and calls only allowed functions.
pub(super) fn check_expressions(query: &Query) -> Result<(), NotRoutable> {
    let outcome = sqlparser::ast::visit_expressions(query, |e| match check_expr(e) {
        Ok(()) => ControlFlow::Continue(()),
        Err(err) => ControlFlow::Break(err),
    });
    match outcome {
        ControlFlow::Break(err) => Err(err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

pub(super) fn check_expr(e: &Expr) -> Result<(), NotRoutable> {
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

pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(max).collect();
        t.push_str("...");
        t
    }
}

pub(super) fn check_function(f: &sqlparser::ast::Function) -> Result<(), NotRoutable> {
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
