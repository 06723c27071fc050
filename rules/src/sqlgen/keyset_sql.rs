//! SQL that walks a mapped table in key order: the chunks a backfill copies and the digests a
//! verification compares.
//!
//! A key travels as the text forms of its columns, one `text` parameter per column, cast by
//! the receiving database to the column's type (`$1::text::pg_catalog.int8`), so composite
//! keys compare as rows, `(a, b) > ($1, $2)`, which a btree index on the key serves. A range
//! is open below and closed above, `(lower, upper]`; either bound may be absent.
//!
//! Verification hashes each row's text form on both sides: on legacy, the rule's expression
//! cast through text to the new column's type when that type is a built-in one (the path
//! the mirror's write takes), else the expression's text; on new, each column's text. Rows
//! become one record text, `ROW(...)::text`, which tells NULL from an empty string, and a
//! range's digest is the row count and the sum of the rows' 64-bit hashes, which does not
//! depend on row order.

use std::collections::HashMap;

use crate::copy_sql::{list, projection, ColumnTypes};
use crate::ruleset::TableRule;
use crate::sql::ident::quote_ident;

/// How each new column is compared: its type with modifier (`numeric(10,2)`), and whether
/// legacy casts its value through text to that type first (the type is built in, so legacy
/// knows it, and the value may change on the way: another type, or a modifier).
pub type VerifyTypes = HashMap<String, (String, bool)>;

/// SQL listing a table's columns: name, type with modifier, whether the type is built in
/// (in `pg_catalog`, not a domain), its OID, and whether it has a modifier; `$1` is the
/// table name as SQL text.
pub const VERIFY_TYPES: &str = "SELECT a.attname::text, \
     pg_catalog.format_type(a.atttypid, a.atttypmod), \
     t.typnamespace = 'pg_catalog'::pg_catalog.regnamespace AND t.typtype <> 'd', \
     a.atttypid, a.atttypmod <> -1 \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     WHERE a.attrelid = $1::text::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped";

/// Runs on legacy: no rows, but the type of each of the rule's expressions (from the
/// statement's description), in rule order.
pub fn expression_types(rule: &TableRule) -> String {
    let exprs: Vec<String> = rule
        .columns
        .iter()
        .map(|c| format!("({})", c.source))
        .collect();
    format!("SELECT {} FROM {} LIMIT 0", exprs.join(", "), rule.legacy)
}

/// Which bounds a range statement takes, in parameter order: the lower key's columns, then
/// the upper key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub lower: bool,
    pub upper: bool,
}

impl Bounds {
    /// How many parameters the bounds take for a key of `key_len` columns.
    pub fn params(self, key_len: usize) -> usize {
        (self.lower as usize + self.upper as usize) * key_len
    }
}

fn type_of<'a>(types: &'a ColumnTypes, col: &str) -> &'a str {
    types.get(col).map_or("pg_catalog.text", String::as_str)
}

/// `($n::text::type, ...)`: a key as parameters from `$first`.
fn key_params(names: &[String], types: &ColumnTypes, first: usize) -> String {
    let ps: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::text::{}", first + i, type_of(types, c)))
        .collect();
    format!("({})", ps.join(", "))
}

/// The WHERE condition of a range over `names` (typed by `types`), parameters from `$1`.
fn range(names: &[String], types: &ColumnTypes, b: Bounds) -> String {
    let row = format!("({})", list(names, ""));
    let mut parts = Vec::new();
    if b.lower {
        parts.push(format!("{row} > {}", key_params(names, types, 1)));
    }
    if b.upper {
        let first = 1 + b.lower as usize * names.len();
        parts.push(format!("{row} <= {}", key_params(names, types, first)));
    }
    if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" AND ")
    }
}

/// The key columns as text, in key order, named `key1`, `key2`...: an output column named
/// as the key column would make `ORDER BY` sort the text instead of the column.
fn key_texts(names: &[String]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}::text AS key{}", quote_ident(c), i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

fn order(names: &[String], dir: &str) -> String {
    names
        .iter()
        .map(|c| format!("{} {dir}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs on legacy: the highest key, as one text column per key column; no row when the
/// table is empty.
pub fn last_key(rule: &TableRule) -> String {
    format!(
        "SELECT {} FROM {} ORDER BY {} LIMIT 1",
        key_texts(&rule.legacy_keys),
        rule.legacy,
        order(&rule.legacy_keys, "DESC"),
    )
}

/// Runs on legacy: the key `$last` (an int8, 0-based) places after the lower bound, within
/// `b`; no row when the range holds fewer keys. `$last` follows the bounds' parameters.
pub fn chunk_end(rule: &TableRule, legacy_types: &ColumnTypes, b: Bounds) -> String {
    format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT 1 OFFSET ${}",
        key_texts(&rule.legacy_keys),
        rule.legacy,
        range(&rule.legacy_keys, legacy_types, b),
        order(&rule.legacy_keys, "ASC"),
        b.params(rule.legacy_keys.len()) + 1,
    )
}

/// Runs on legacy: the rows of a range as the new table's rows, in the envelope
/// `copy_sql::upsert_rows` takes, and their count.
pub fn read_range(rule: &TableRule, legacy_types: &ColumnTypes, b: Bounds) -> String {
    format!(
        "SELECT coalesce(jsonb_agg(r), '[]'::jsonb)::text, count(*)::int4 FROM \
         (SELECT {} FROM {} WHERE {}) AS r",
        projection(rule),
        rule.legacy,
        range(&rule.legacy_keys, legacy_types, b),
    )
}

/// Legacy's text for each new column, in rule order: cast through text to the new column's
/// type when legacy knows it, as the mirror's write does.
fn legacy_values(rule: &TableRule, types: &VerifyTypes) -> Vec<String> {
    rule.columns
        .iter()
        .map(|c| match types.get(&c.new) {
            Some((ty, true)) => format!("(({})::text::{ty})::text", c.source),
            _ => format!("({})::text", c.source),
        })
        .collect()
}

fn new_values(rule: &TableRule) -> Vec<String> {
    rule.columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(&c.new)))
        .collect()
}

fn row_hash(values: &[String]) -> String {
    format!("hashtextextended(ROW({})::text, 0)", values.join(", "))
}

/// The digest of a range: `count(*)` (int8) and the sum of row hashes (as text: a numeric).
fn digest(values: &[String], table: &str, cond: &str) -> String {
    format!(
        "SELECT count(*)::int8, coalesce(sum({}), 0)::text FROM {table} WHERE {cond}",
        row_hash(values)
    )
}

/// Runs on legacy: the digest of a range of the table as new should hold it.
pub fn legacy_digest(
    rule: &TableRule,
    legacy_types: &ColumnTypes,
    types: &VerifyTypes,
    b: Bounds,
) -> String {
    digest(
        &legacy_values(rule, types),
        &rule.legacy.to_string(),
        &range(&rule.legacy_keys, legacy_types, b),
    )
}

/// Runs on new: the digest of a range, bounds given as legacy keys.
pub fn new_digest(rule: &TableRule, new_types: &ColumnTypes, b: Bounds) -> String {
    digest(
        &new_values(rule),
        &rule.new.to_string(),
        &range(&rule.new_keys, new_types, b),
    )
}

/// Each row of a range: its key's texts (legacy key order), then its hash.
fn hashes(values: &[String], keys: &[String], table: &str, cond: &str) -> String {
    format!(
        "SELECT {}, {} FROM {table} WHERE {cond}",
        key_texts(keys),
        row_hash(values)
    )
}

/// Runs on legacy: each row of a range, by key, with its hash.
pub fn legacy_hashes(
    rule: &TableRule,
    legacy_types: &ColumnTypes,
    types: &VerifyTypes,
    b: Bounds,
) -> String {
    hashes(
        &legacy_values(rule, types),
        &rule.legacy_keys,
        &rule.legacy.to_string(),
        &range(&rule.legacy_keys, legacy_types, b),
    )
}

/// Runs on new: each row of a range, by key, with its hash.
pub fn new_hashes(rule: &TableRule, new_types: &ColumnTypes, b: Bounds) -> String {
    hashes(
        &new_values(rule),
        &rule.new_keys,
        &rule.new.to_string(),
        &range(&rule.new_keys, new_types, b),
    )
}

/// `(k1, k2) IN (SELECT k.l1::type, ... FROM jsonb_to_recordset($1) AS k(l1 text, ...))`:
/// the rows whose keys are in `$1`, a JSON array of objects of legacy key columns as text.
fn in_keys(names: &[String], types: &ColumnTypes, legacy_keys: &[String]) -> String {
    let casts: Vec<String> = names
        .iter()
        .zip(legacy_keys)
        .map(|(n, l)| format!("k.{}::{}", quote_ident(l), type_of(types, n)))
        .collect();
    let shape: Vec<String> = legacy_keys
        .iter()
        .map(|l| format!("{} text", quote_ident(l)))
        .collect();
    format!(
        "({}) IN (SELECT {} FROM jsonb_to_recordset($1::text::jsonb) AS k({}))",
        list(names, ""),
        casts.join(", "),
        shape.join(", ")
    )
}

/// Runs on legacy: the rows with the keys in `$1` (as for [`in_keys`]), by key, with the
/// text of each new column and the row's hash.
pub fn legacy_rows_by_keys(
    rule: &TableRule,
    legacy_types: &ColumnTypes,
    types: &VerifyTypes,
) -> String {
    rows_by_keys(
        &legacy_values(rule, types),
        &rule.legacy_keys,
        &rule.legacy.to_string(),
        &in_keys(&rule.legacy_keys, legacy_types, &rule.legacy_keys),
    )
}

/// Runs on new: the rows with the legacy keys in `$1`, as [`legacy_rows_by_keys`].
pub fn new_rows_by_keys(rule: &TableRule, new_types: &ColumnTypes) -> String {
    rows_by_keys(
        &new_values(rule),
        &rule.new_keys,
        &rule.new.to_string(),
        &in_keys(&rule.new_keys, new_types, &rule.legacy_keys),
    )
}

fn rows_by_keys(values: &[String], keys: &[String], table: &str, cond: &str) -> String {
    format!(
        "SELECT {}, ARRAY[{}]::text[], {} FROM {table} WHERE {cond}",
        key_texts(keys),
        values.join(", "),
        row_hash(values)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::parse_rules;

    fn rule() -> TableRule {
        parse_rules(
            r#"
            [[table]]
            legacy = "public.orders"
            new = "app.orders"
            keys = ["region", "id"]
            [table.columns]
            region = "region"
            order_id = "id"
            total = "amount * 100"
            "#,
            "t",
        )
        .unwrap()
        .tables()[0]
            .clone()
    }

    fn types(pairs: &[(&str, &str)]) -> ColumnTypes {
        pairs
            .iter()
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect()
    }

    fn legacy_types() -> ColumnTypes {
        types(&[("region", "pg_catalog.text"), ("id", "pg_catalog.int8")])
    }

    #[test]
    fn ranges_compare_composite_keys_as_rows_with_typed_parameters() {
        // The order is the columns', never their text's (`ORDER BY id` would sort an output
        // column named `id` as text: 10 before 9).
        let both = Bounds {
            lower: true,
            upper: true,
        };
        assert_eq!(
            chunk_end(&rule(), &legacy_types(), both),
            "SELECT region::text AS key1, id::text AS key2 FROM public.orders WHERE \
             (region, id) > ($1::text::pg_catalog.text, $2::text::pg_catalog.int8) AND \
             (region, id) <= ($3::text::pg_catalog.text, $4::text::pg_catalog.int8) \
             ORDER BY region ASC, id ASC LIMIT 1 OFFSET $5"
        );
        let upper_only = Bounds {
            lower: false,
            upper: true,
        };
        assert!(chunk_end(&rule(), &legacy_types(), upper_only).contains(
            "WHERE (region, id) <= ($1::text::pg_catalog.text, $2::text::pg_catalog.int8) \
             ORDER BY region ASC, id ASC LIMIT 1 OFFSET $3"
        ));
        let none = Bounds {
            lower: false,
            upper: false,
        };
        assert!(read_range(&rule(), &legacy_types(), none).ends_with("WHERE true) AS r"));
        assert_eq!(
            last_key(&rule()),
            "SELECT region::text AS key1, id::text AS key2 FROM public.orders ORDER BY region DESC, \
             id DESC LIMIT 1"
        );
    }

    #[test]
    fn legacy_digest_casts_through_known_types_and_leaves_others_as_text() {
        let vt: VerifyTypes = [
            ("region".to_string(), ("app.region".to_string(), false)),
            ("order_id".to_string(), ("bigint".to_string(), true)),
            ("total".to_string(), ("numeric(12,2)".to_string(), true)),
        ]
        .into();
        let b = Bounds {
            lower: true,
            upper: false,
        };
        let sql = legacy_digest(&rule(), &legacy_types(), &vt, b);
        assert!(sql.starts_with(
            "SELECT count(*)::int8, coalesce(sum(hashtextextended(ROW(\
             ((id)::text::bigint)::text, (region)::text, ((amount * 100)::text::numeric(12,2))::text\
             )::text, 0)), 0)::text FROM public.orders WHERE (region, id) > ("
        ));
        let new = new_digest(&rule(), &types(&[("order_id", "pg_catalog.int8")]), b);
        assert!(new.contains(
            "ROW(order_id::text, region::text, total::text)::text, 0)), 0)::text FROM app.orders \
             WHERE (region, order_id) > ($1::text::pg_catalog.text, $2::text::pg_catalog.int8)"
        ));
    }

    #[test]
    fn rows_by_keys_take_legacy_key_names_on_both_sides() {
        let sql = new_rows_by_keys(&rule(), &types(&[("order_id", "pg_catalog.int8")]));
        assert!(
            sql.starts_with("SELECT region::text AS key1, order_id::text AS key2, ARRAY["),
            "{sql}"
        );
        assert!(sql.ends_with(
            "WHERE (region, order_id) IN (SELECT k.region::pg_catalog.text, k.id::pg_catalog.int8 \
             FROM jsonb_to_recordset($1::text::jsonb) AS k(region text, id text))"
        ));
    }
}
