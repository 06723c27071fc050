//! The key values a WHERE clause pins, for sticky routing.

use sqlparser::ast::{Expr, UnaryOperator, Value};

use super::scope::Scope;
use super::KeyRef;

/// The WHERE clause's top-level AND chain.
pub(super) fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
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
pub(super) fn key_value(e: &Expr) -> Option<KeyRef> {
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
pub(super) fn pinned_key(selection: &Expr, scope: &Scope) -> Option<Vec<KeyRef>> {
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
pub(super) fn column_of(e: &Expr, scope: &Scope) -> Option<String> {
    match e {
        Expr::Identifier(id) => scope.resolve(std::slice::from_ref(id)).ok().map(|r| r.1),
        Expr::CompoundIdentifier(ids) => scope.resolve(ids).ok().map(|r| r.1),
        Expr::Nested(inner) => column_of(inner, scope),
        _ => None,
    }
}
