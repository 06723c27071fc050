//! Identifiers and table names as PostgreSQL resolves them: the one folding rule, the one
//! quoting rule, and the table-name types every other module uses.
//!
//! A name is folded once, where it is parsed, and from then on compared as exact text; it is
//! printed back with [`quote_ident`], so a folded name always reads back as itself.

use std::fmt;

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

/// The schema an unqualified table name resolves to under the default `search_path`.
pub const DEFAULT_SCHEMA: &str = "public";

/// An identifier as PostgreSQL resolves it: quoted identifiers keep their exact text,
/// unquoted ones fold to lower case.
pub fn fold(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        fold_unquoted(&id.value)
    }
}

/// An unquoted identifier's text folded as PostgreSQL folds it: only ASCII `A`-`Z` are
/// lowered (`downcase_identifier` in `scansup.c`; other letters are left alone in multibyte
/// encodings such as UTF8), so `Ünits` stays `Ünits`.
pub fn fold_unquoted(text: &str) -> String {
    text.to_ascii_lowercase()
}

/// An identifier as SQL text: bare when PostgreSQL would fold it to itself, else quoted.
pub fn quote_ident(id: &str) -> String {
    if is_plain(id) {
        id.to_string()
    } else {
        format!("\"{}\"", id.replace('"', "\"\""))
    }
}

/// A folded identifier as a sqlparser identifier that prints as [`quote_ident`] does.
pub fn sql_ident(name: &str) -> Ident {
    if is_plain(name) {
        Ident::new(name)
    } else {
        Ident::with_quote('"', name)
    }
}

fn is_plain(id: &str) -> bool {
    id.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A schema-qualified table name, folded as PostgreSQL folds identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// The name as a sqlparser object name, `schema.name`, quoted where needed.
    pub fn to_object_name(&self) -> ObjectName {
        ObjectName::from(vec![sql_ident(&self.schema), sql_ident(&self.name)])
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

/// A table as a statement names it, folded, before the search path resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    /// Names written before the schema: a database (`db.schema.table`), or more. Empty for
    /// nearly every reference; such a reference resolves to no [`TableName`].
    pub qualifiers: Vec<String>,
    /// The schema, when the name is qualified.
    pub schema: Option<String>,
    pub name: String,
}

impl TableRef {
    /// The reference an object name makes, each part folded. A part that is not an
    /// identifier (not PostgreSQL syntax) is kept as sqlparser prints it.
    pub fn of(name: &ObjectName) -> TableRef {
        let mut parts: Vec<String> = name
            .0
            .iter()
            .map(|part| match part {
                ObjectNamePart::Identifier(id) => fold(id),
                other => other.to_string(),
            })
            .collect();
        let name = parts.pop().unwrap_or_default();
        let schema = parts.pop();
        TableRef {
            qualifiers: parts,
            schema,
            name,
        }
    }

    /// The table this reference resolves to when unqualified names resolve to
    /// `default_schema`; `None` for a name qualified by a database, which no rule maps.
    pub fn resolve(&self, default_schema: &str) -> Option<TableName> {
        if !self.qualifiers.is_empty() {
            return None;
        }
        Some(TableName {
            schema: self
                .schema
                .clone()
                .unwrap_or_else(|| default_schema.to_string()),
            name: self.name.clone(),
        })
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in self.qualifiers.iter().chain(&self.schema) {
            write!(f, "{}.", quote_ident(part))?;
        }
        f.write_str(&quote_ident(&self.name))
    }
}

/// Parses `schema.table`, as written in the rules file or given to the admin API.
pub fn parse_table_name(text: &str) -> Result<TableName, String> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    let object = parser.parse_object_name(false).map_err(|e| e.to_string())?;
    if parser.peek_token().token != Token::EOF {
        return Err(format!("{text:?} is not a table name"));
    }
    let plain = object
        .0
        .iter()
        .all(|p| matches!(p, ObjectNamePart::Identifier(_)));
    match TableRef::of(&object) {
        TableRef {
            qualifiers,
            schema: Some(schema),
            name,
        } if plain && qualifiers.is_empty() => Ok(TableName { schema, name }),
        _ => Err(format!(
            "{text:?} must be schema-qualified, like public.users"
        )),
    }
}

#[cfg(test)]
mod tests;
