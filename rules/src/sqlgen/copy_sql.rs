//! SQL for copying rows by key from legacy to new, transformed by a table rule: the routine
//! that mirrors row images, and later backfills and repairs.
//!
//! Every value travels as its text form: legacy turns each projected column into text
//! (`(expr)::text`, its output function) and new casts that text to the new column's type
//! (its input function), the way `pg_dump` and text-format COPY carry data. A type's text
//! form reads back as the same value for every built-in type once the session settings that
//! shape it are pinned on both sides (`extra_float_digits`, `DateStyle`, `IntervalStyle`,
//! `bytea_output`; see `pgdual::copy::SESSION_SETTINGS`): float `-0`, `NaN` and `±Infinity`
//! (also inside arrays and composites), numeric scale, `json` text as written. JSON numbers
//! could not do that (`jsonb` has no `-0`, and `json` inside `jsonb` loses its key order), so
//! JSON is only the envelope: one array parameter of row objects whose values are all JSON
//! strings, unpacked with `jsonb_to_recordset(...) AS r(col text, ...)`. Transforms are
//! evaluated by legacy, in SQL, exactly as the rule writes them.

use std::collections::HashMap;

use crate::ruleset::TableRule;
use crate::sql::ident::quote_ident;

/// The type of each column of a target table, as a schema-qualified type name without
/// type modifier (`pg_catalog.float8`, `app."Mood"`), to cast text values to. The column's
/// own modifier (`numeric(10,3)`, `varchar(20)`) is then applied on assignment, so a value
/// that does not fit fails loudly instead of being cut.
pub type ColumnTypes = HashMap<String, String>;

/// SQL listing a table's columns and [`ColumnTypes`]; `$1` is the table name as SQL text.
pub const COLUMN_TYPES: &str = "SELECT a.attname::text, \
     pg_catalog.format('%I.%I', n.nspname, t.typname) \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
     WHERE a.attrelid = $1::text::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped";

/// `prefix.col, ...`, each name quoted as needed.
pub(crate) fn list(cols: &[String], prefix: &str) -> String {
    cols.iter()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(expr)::text AS new_col, ...`: the rule's expressions over the legacy row, as the text of
/// the new table's columns.
pub(crate) fn projection(rule: &TableRule) -> String {
    rule.columns
        .iter()
        .map(|c| format!("({})::text AS {}", c.source, quote_ident(&c.new)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `r.col::type, ...`: text values cast to the target columns' types. A column the target
/// lacks gets `text`; the statement then fails on the missing column, as it must.
fn casts(cols: &[String], types: &ColumnTypes, alias: &str) -> String {
    cast_list(cols, types, alias).join(", ")
}

fn cast_list(cols: &[String], types: &ColumnTypes, alias: &str) -> Vec<String> {
    cols.iter()
        .map(|c| {
            let ty = types.get(c).map_or("pg_catalog.text", String::as_str);
            format!("{alias}.{}::{ty}", quote_ident(c))
        })
        .collect()
}

/// `col text, ...`: the record shape `jsonb_to_recordset` unpacks the envelope into.
fn text_columns(cols: &[String]) -> String {
    cols.iter()
        .map(|c| format!("{} text", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs on legacy. `$1`: the text of a JSON array of objects holding the legacy key columns
/// (the changelog's), cast to their types in `legacy_types`; only key columns are built, so
/// a NOT NULL domain on another column cannot refuse the key record. Returns one row of two
/// JSON arrays: the rows still present in legacy, as objects of the new table's columns,
/// and the keys no longer present, as objects of the new key columns (to delete from new),
/// every value as its text form. Legacy compares the keys with their real types.
pub fn read_rows_by_keys(rule: &TableRule, legacy_types: &ColumnTypes) -> String {
    let projection = projection(rule);
    let gone_object = rule
        .new_keys
        .iter()
        .zip(&rule.legacy_keys)
        .map(|(n, l)| format!("'{}', k.{}::text", n.replace('\'', "''"), quote_ident(l)))
        .collect::<Vec<_>>()
        .join(", ");
    let typed_keys = rule
        .legacy_keys
        .iter()
        .zip(cast_list(&rule.legacy_keys, legacy_types, "k"))
        .map(|(l, cast)| format!("{cast} AS {}", quote_ident(l)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH k AS (SELECT {typed_keys} FROM jsonb_to_recordset($1::text::jsonb) AS k({shape})), \
         r AS (SELECT coalesce(jsonb_agg(r), '[]'::jsonb) AS a FROM (SELECT {projection} FROM {legacy} \
           WHERE ({keys}) IN (SELECT {k_keys} FROM k)) AS r), \
         g AS (SELECT coalesce(jsonb_agg(jsonb_build_object({gone_object})), '[]'::jsonb) AS a FROM k \
           WHERE NOT EXISTS (SELECT 1 FROM {legacy} AS l WHERE ({l_keys}) = ({k_keys}))) \
         SELECT r.a::text, jsonb_array_length(r.a), g.a::text, jsonb_array_length(g.a) FROM r, g",
        legacy = rule.legacy,
        shape = text_columns(&rule.legacy_keys),
        keys = list(&rule.legacy_keys, ""),
        k_keys = list(&rule.legacy_keys, "k."),
        l_keys = list(&rule.legacy_keys, "l."),
    )
}

/// Runs on new. `$1`: a JSON array of new-table row objects of text values (what
/// [`read_rows_by_keys`] returns). Inserts them, or updates the rows with the same new keys.
pub fn upsert_rows(rule: &TableRule, types: &ColumnTypes) -> String {
    let cols: Vec<String> = rule.columns.iter().map(|c| c.new.clone()).collect();
    let updates: Vec<String> = cols
        .iter()
        .filter(|c| !rule.new_keys.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {new} ({cols}) SELECT {casts} FROM jsonb_to_recordset($1::text::jsonb) AS r({shape}) \
         ON CONFLICT ({keys}) DO {action}",
        new = rule.new,
        cols = list(&cols, ""),
        casts = casts(&cols, types, "r"),
        shape = text_columns(&cols),
        keys = list(&rule.new_keys, ""),
    )
}

/// Runs on new. `$1`: a JSON array of objects holding the new key columns as text.
pub fn delete_rows(rule: &TableRule, types: &ColumnTypes) -> String {
    format!(
        "DELETE FROM {new} WHERE ({keys}) IN \
         (SELECT {casts} FROM jsonb_to_recordset($1::text::jsonb) AS k({shape}))",
        new = rule.new,
        keys = list(&rule.new_keys, ""),
        casts = casts(&rule.new_keys, types, "k"),
        shape = text_columns(&rule.new_keys),
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
            legacy = "public.users"
            new = "app.Customers"  # unquoted: folds to app.customers
            keys = ["id"]
            [table.columns]
            customer_id = "id"
            full_name = "first_name || ' ' || last_name"
            "Email" = "lower(email)"
            "#,
            "t",
        )
        .unwrap()
        .tables()[0]
            .clone()
    }

    fn types() -> ColumnTypes {
        [
            ("customer_id", "pg_catalog.int8"),
            ("full_name", "pg_catalog.text"),
            ("Email", "app.\"Email\""),
        ]
        .into_iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect()
    }

    #[test]
    fn read_projects_the_rule_as_text_and_reports_gone_keys() {
        let legacy: ColumnTypes = [("id".to_string(), "pg_catalog.int8".to_string())].into();
        let sql = read_rows_by_keys(&rule(), &legacy);
        assert!(sql.starts_with(
            "WITH k AS (SELECT k.id::pg_catalog.int8 AS id FROM jsonb_to_recordset($1::text::jsonb) AS k(id text))"
        ));
        assert!(sql.contains(
            "SELECT (lower(email))::text AS \"Email\", (id)::text AS customer_id, \
             (first_name || ' ' || last_name)::text AS full_name \
             FROM public.users WHERE (id) IN (SELECT k.id FROM k)"
        ));
        assert!(sql.contains("jsonb_build_object('customer_id', k.id::text)"));
        assert!(sql
            .contains("WHERE NOT EXISTS (SELECT 1 FROM public.users AS l WHERE (l.id) = (k.id))"));
    }

    #[test]
    fn upsert_casts_text_to_each_column_type_and_updates_every_non_key_column() {
        assert_eq!(
            upsert_rows(&rule(), &types()),
            "INSERT INTO app.customers (\"Email\", customer_id, full_name) SELECT \
             r.\"Email\"::app.\"Email\", r.customer_id::pg_catalog.int8, r.full_name::pg_catalog.text \
             FROM jsonb_to_recordset($1::text::jsonb) AS r(\"Email\" text, customer_id text, full_name text) \
             ON CONFLICT (customer_id) DO UPDATE SET \"Email\" = EXCLUDED.\"Email\", full_name = EXCLUDED.full_name"
        );
    }

    #[test]
    fn delete_by_new_keys_cast_to_their_types() {
        assert_eq!(
            delete_rows(&rule(), &types()),
            "DELETE FROM app.customers WHERE (customer_id) IN (SELECT k.customer_id::pg_catalog.int8 FROM \
             jsonb_to_recordset($1::text::jsonb) AS k(customer_id text))"
        );
    }

    #[test]
    fn a_column_the_target_lacks_is_left_as_text() {
        let sql = delete_rows(&rule(), &ColumnTypes::new());
        assert!(sql.contains("k.customer_id::pg_catalog.text"), "{sql}");
    }
}
