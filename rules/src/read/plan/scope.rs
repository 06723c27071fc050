//! The tables of a query's FROM clause, each with its rule, and how column references
//! resolve against them.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Select, TableAlias,
    TableFactor,
};

use super::not_routable::{unsupported, NotRoutable};
use crate::ruleset::{ReadBack, RuleSet, TableRule, TargetDatabase};
use crate::sql::ident::{
    fold, quote_ident, sql_ident as ident, TableName, TableRef, DEFAULT_SCHEMA,
};

/// One table of the FROM clause.
pub(super) struct Source<'r> {
    pub(super) rule: &'r TableRule,
    /// The name the query refers to it by (folded): its alias, else the table's bare name.
    pub(super) refname: String,
    /// The alias it has in the rewritten query.
    pub(super) alias: Ident,
    /// The query gave it an alias.
    pub(super) aliased: bool,
}

pub(super) struct Scope<'r> {
    pub(super) sources: Vec<Source<'r>>,
}

/// Which legacy columns of a rule are known: read-backs, catalog columns, keys, mapped reads.
pub(super) fn knows_column(rule: &TableRule, column: &str) -> bool {
    rule.read_back.iter().any(|r| r.legacy == column)
        || rule.legacy_columns.iter().any(|c| c == column)
        || rule.legacy_keys.iter().any(|c| c == column)
        || rule
            .columns
            .iter()
            .any(|c| c.reads.iter().any(|r| r == column))
}

pub(super) fn read_back_of<'a>(rule: &'a TableRule, column: &str) -> Option<&'a ReadBack> {
    rule.read_back.iter().find(|r| r.legacy == column)
}

/// The legacy table a FROM item names; unqualified names resolve to `public`.
pub(super) fn table_name_of(name: &ObjectName) -> Result<TableName, NotRoutable> {
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
    pub(super) fn build(select: &Select, rules: &'r RuleSet) -> Result<Scope<'r>, NotRoutable> {
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

    pub(super) fn source(
        factor: &TableFactor,
        rules: &'r RuleSet,
    ) -> Result<Source<'r>, NotRoutable> {
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
    pub(super) fn complete(&self) -> bool {
        self.sources
            .iter()
            .all(|s| !s.rule.legacy_columns.is_empty())
    }

    /// Indexes of the tables that have a known legacy column of this name.
    pub(super) fn columns_named(&self, column: &str) -> Vec<usize> {
        (0..self.sources.len())
            .filter(|&i| knows_column(self.sources[i].rule, column))
            .collect()
    }

    /// The table and legacy column a column reference names.
    pub(super) fn resolve(&self, parts: &[Ident]) -> Result<(usize, String), NotRoutable> {
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
    pub(super) fn qualified(&self, qualifier: &[String]) -> Option<usize> {
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
    pub(super) fn read_back(&self, index: usize, column: &str) -> Result<Expr, NotRoutable> {
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
    pub(super) fn rename_tables(&self, select: &mut Select) {
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
