//! SQL for copying rows by key from legacy to new, transformed by a table rule: the routine
//! that mirrors row images, and later backfills and repairs.
//!
//! Keys and rows travel as one `jsonb` array parameter and are turned back into typed rows
//! with `jsonb_populate_recordset(NULL::<table>, $1)`, so the statements need no knowledge of
//! column types and work for any batch size with one round trip each. Transforms are
//! evaluated by legacy, in SQL, exactly as the rule writes them.

use crate::ruleset::{quote_ident, TableRule};

fn list(cols: &[String], prefix: &str) -> String {
    cols.iter()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs on legacy. `$1`: the text of a JSON array of objects holding the legacy key columns.
/// Values travel as JSON text end to end, never through a client-side number type, so every
/// value (float8, numeric, bigint) arrives exact. Returns one row of two JSON arrays: the rows still present in legacy, as objects of the
/// new table's columns, and the keys no longer present, as objects of the new key columns
/// (to delete from new). Legacy compares the keys with their real types.
pub fn read_rows_by_keys(rule: &TableRule) -> String {
    let projection = rule
        .columns
        .iter()
        .map(|c| format!("{} AS {}", c.source, quote_ident(&c.new)))
        .collect::<Vec<_>>()
        .join(", ");
    let gone_object = rule
        .new_keys
        .iter()
        .zip(&rule.legacy_keys)
        .map(|(n, l)| format!("'{}', k.{}", n.replace('\'', "''"), quote_ident(l)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH k AS (SELECT * FROM jsonb_populate_recordset(NULL::{legacy}, $1::text::jsonb)), \
         r AS (SELECT coalesce(jsonb_agg(r), '[]'::jsonb) AS a FROM (SELECT {projection} FROM {legacy} \
           WHERE ({keys}) IN (SELECT {k_keys} FROM k)) AS r), \
         g AS (SELECT coalesce(jsonb_agg(jsonb_build_object({gone_object})), '[]'::jsonb) AS a FROM k \
           WHERE NOT EXISTS (SELECT 1 FROM {legacy} AS l WHERE ({l_keys}) = ({k_keys}))) \
         SELECT r.a::text, jsonb_array_length(r.a), g.a::text, jsonb_array_length(g.a) FROM r, g",
        legacy = rule.legacy,
        keys = list(&rule.legacy_keys, ""),
        k_keys = list(&rule.legacy_keys, "k."),
        l_keys = list(&rule.legacy_keys, "l."),
    )
}

/// Runs on new. `$1`: a jsonb array of new-table row objects. Inserts them, or updates the
/// rows with the same new keys.
pub fn upsert_rows(rule: &TableRule) -> String {
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
        "INSERT INTO {new} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{new}, $1::text::jsonb) \
         ON CONFLICT ({keys}) DO {action}",
        new = rule.new,
        cols = list(&cols, ""),
        keys = list(&rule.new_keys, ""),
    )
}

/// Runs on new. `$1`: a jsonb array of objects holding the new key columns.
pub fn delete_rows(rule: &TableRule) -> String {
    format!(
        "DELETE FROM {new} WHERE ({keys}) IN \
         (SELECT {k_keys} FROM jsonb_populate_recordset(NULL::{new}, $1::text::jsonb) AS k)",
        new = rule.new,
        keys = list(&rule.new_keys, ""),
        k_keys = list(&rule.new_keys, "k."),
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

    #[test]
    fn read_projects_the_rule_and_reports_gone_keys() {
        let sql = read_rows_by_keys(&rule());
        assert!(sql.starts_with(
            "WITH k AS (SELECT * FROM jsonb_populate_recordset(NULL::public.users, $1::text::jsonb))"
        ));
        assert!(sql.contains(
            "SELECT lower(email) AS \"Email\", id AS customer_id, first_name || ' ' || last_name AS full_name \
             FROM public.users WHERE (id) IN (SELECT k.id FROM k)"
        ));
        assert!(sql.contains("jsonb_build_object('customer_id', k.id)"));
        assert!(sql
            .contains("WHERE NOT EXISTS (SELECT 1 FROM public.users AS l WHERE (l.id) = (k.id))"));
    }

    #[test]
    fn upsert_updates_every_non_key_column() {
        assert_eq!(
            upsert_rows(&rule()),
            "INSERT INTO app.customers (\"Email\", customer_id, full_name) SELECT \"Email\", \
             customer_id, full_name FROM jsonb_populate_recordset(NULL::app.customers, $1::text::jsonb) \
             ON CONFLICT (customer_id) DO UPDATE SET \"Email\" = EXCLUDED.\"Email\", full_name = EXCLUDED.full_name"
        );
    }

    #[test]
    fn delete_by_new_keys() {
        assert_eq!(
            delete_rows(&rule()),
            "DELETE FROM app.customers WHERE (customer_id) IN (SELECT k.customer_id FROM \
             jsonb_populate_recordset(NULL::app.customers, $1::text::jsonb) AS k)"
        );
    }
}
