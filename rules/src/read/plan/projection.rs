//! The select list as it will be on new: output names, aliases for column references and
//! the expansion of `*`.

use sqlparser::ast::{
    Expr, ObjectNamePart, SelectItem, SelectItemQualifiedWildcardKind, WildcardAdditionalOptions,
};

use super::not_routable::{unsupported, NotRoutable};
use super::scope::Scope;
use crate::sql::ident::{fold, sql_ident as ident};

/// One select-list item as it will be.
pub(super) struct ItemPlan {
    /// The output column names it gives, when the planner knows them (one per column).
    pub(super) names: Vec<Option<String>>,
    /// An unnamed column reference: give it `AS` this name.
    pub(super) alias: Option<String>,
    /// For `*` and `t.*`: the items replacing it.
    pub(super) expansion: Vec<SelectItem>,
    /// For `*` and `t.*`: the (source, legacy column) pairs it stands for.
    pub(super) expanded: Vec<(usize, String)>,
}

/// The output name PostgreSQL gives an unnamed item that is a (cast, collated,
/// parenthesized or subscripted) column reference.
pub(super) fn column_ref_name(expr: &Expr) -> Option<String> {
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

pub(super) fn plan_projection(
    items: &[SelectItem],
    scope: &Scope,
) -> Result<Vec<ItemPlan>, NotRoutable> {
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

pub(super) fn plain_wildcard(o: &WildcardAdditionalOptions) -> Result<(), NotRoutable> {
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
pub(super) fn expand(scope: &Scope, index: usize, plan: &mut ItemPlan) -> Result<(), NotRoutable> {
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
