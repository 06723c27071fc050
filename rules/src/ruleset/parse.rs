//! Reading the rules text: TOML into a `RulesFile`, validated; column expressions parsed.

use std::ops::ControlFlow;

use sqlparser::ast::Expr;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::model::{RuleSet, RulesError, RulesFile};
use crate::sql::ident::fold;

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
pub(super) fn parse_column_expr(text: &str) -> Result<(Expr, Vec<String>), String> {
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
