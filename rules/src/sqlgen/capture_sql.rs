//! SQL that makes legacy record which rows each committed transaction changed.
//!
//! Statement-level AFTER triggers with transition tables append the keys of every inserted,
//! updated or deleted row (and a marker for TRUNCATE) to `pgdual.changes`, in the same
//! transaction as the change. So a change is recorded exactly when it commits, never when it
//! rolls back (including rolled-back savepoints), whatever statement or client made it, and
//! the record is as durable as the write itself. The mirror then copies those keys' row
//! images to new. One generated function per table keeps the SQL static, so its plans cache.
//!
//! The trigger functions run as pgdual's role (`SECURITY DEFINER`, owned by `legacy.user`)
//! with a pinned `search_path` and every name schema-qualified, so any role that may write a
//! mapped table can, with no grant on `pgdual`: the changelog stays closed to every other role.
//! PostgreSQL checks no EXECUTE privilege when a trigger fires, so EXECUTE is revoked from
//! PUBLIC (and nobody can call a trigger function directly anyway).

use crate::ruleset::TableRule;
use crate::sql::ident::quote_ident;

/// The changelog (`keys` is NULL for a TRUNCATE marker); logical capture's record of the
/// slots pgdual made (one that disappears was lost, not never made) and of the tables whose
/// capture had a gap and need a backfill and a verify.
pub const INSTALL_SCHEMA: &str = "
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgdual install'));
CREATE SCHEMA IF NOT EXISTS pgdual;
CREATE TABLE IF NOT EXISTS pgdual.changes (
    id    bigserial PRIMARY KEY,
    tbl   text NOT NULL,
    keys  jsonb,
    txid  bigint NOT NULL DEFAULT txid_current(),
    at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS changes_txid ON pgdual.changes (txid);
CREATE TABLE IF NOT EXISTS pgdual.capture_slots (
    slot         text PRIMARY KEY,
    publication  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgdual.capture_gaps (
    tbl     text PRIMARY KEY,
    since   timestamptz NOT NULL DEFAULT now(),
    reason  text NOT NULL
);
REVOKE ALL ON TABLE pgdual.capture_slots, pgdual.capture_gaps FROM PUBLIC;
REVOKE ALL ON SCHEMA pgdual FROM PUBLIC;
REVOKE ALL ON TABLE pgdual.changes FROM PUBLIC;
REVOKE ALL ON SEQUENCE pgdual.changes_id_seq FROM PUBLIC;
";

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The capture function's name for a legacy table.
pub fn function_name(rule: &TableRule) -> String {
    format!(
        "pgdual.{}",
        quote_ident(&format!(
            "capture_{}_{}",
            rule.legacy.schema, rule.legacy.name
        ))
    )
}

fn keys_object(rule: &TableRule, alias: &str) -> String {
    let pairs = rule
        .legacy_keys
        .iter()
        .map(|k| format!("{}, {alias}.{}", literal(k), quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("pg_catalog.jsonb_build_object({pairs})")
}

/// Creates (or replaces, so an install by an older pgdual is upgraded) the capture function
/// and triggers of one table.
pub fn install_capture(rule: &TableRule) -> String {
    let table = rule.legacy.to_string();
    let tbl = literal(&table);
    let func = function_name(rule);
    let (old, new) = (keys_object(rule, "o"), keys_object(rule, "n"));
    format!(
        "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgdual$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pgdual.changes (tbl, keys) SELECT {tbl}, {new} FROM pgdual_new n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO pgdual.changes (tbl, keys)
            SELECT {tbl}, k FROM (SELECT {old} FROM pgdual_old o UNION SELECT {new} FROM pgdual_new n) AS s(k);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgdual.changes (tbl, keys) SELECT {tbl}, {old} FROM pgdual_old o;
    ELSE
        INSERT INTO pgdual.changes (tbl, keys) VALUES ({tbl}, NULL);
    END IF;
    RETURN NULL;
END
$pgdual$;
REVOKE ALL ON FUNCTION {func}() FROM PUBLIC;
CREATE OR REPLACE TRIGGER pgdual_capture_insert AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS pgdual_new FOR EACH STATEMENT EXECUTE FUNCTION {func}();
CREATE OR REPLACE TRIGGER pgdual_capture_update AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS pgdual_old NEW TABLE AS pgdual_new FOR EACH STATEMENT EXECUTE FUNCTION {func}();
CREATE OR REPLACE TRIGGER pgdual_capture_delete AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS pgdual_old FOR EACH STATEMENT EXECUTE FUNCTION {func}();
CREATE OR REPLACE TRIGGER pgdual_capture_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {func}();
"
    )
}

/// Removes the capture triggers and function of one table (changes already recorded stay).
pub fn remove_capture(rule: &TableRule) -> String {
    let table = rule.legacy.to_string();
    let mut sql = String::new();
    for t in ["insert", "update", "delete", "truncate"] {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS pgdual_capture_{t} ON {table};\n"
        ));
    }
    sql.push_str(&format!(
        "DROP FUNCTION IF EXISTS {}();\n",
        function_name(rule)
    ));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::parse_rules;

    fn rule() -> TableRule {
        parse_rules(
            "[[table]]\nlegacy = \"public.Order_Lines\"\nnew = \"app.lines\"\nkeys = [\"order_id\", \"line\"]\n\
             [table.columns]\norder_id = \"order_id\"\nline_no = \"line\"\n",
            "t",
        )
        .unwrap()
        .tables()[0]
            .clone()
    }

    #[test]
    fn capture_records_keys_of_each_row_with_static_sql() {
        let sql = install_capture(&rule());
        assert!(sql.contains("CREATE OR REPLACE FUNCTION pgdual.capture_public_order_lines()"));
        assert!(sql.contains(
            "SELECT 'public.order_lines', pg_catalog.jsonb_build_object('order_id', n.order_id, 'line', n.line) FROM pgdual_new n"
        ));
        assert!(sql.contains("AFTER TRUNCATE ON public.order_lines"));
        assert_eq!(sql.matches("CREATE OR REPLACE TRIGGER").count(), 4);
        assert!(sql.contains("SECURITY DEFINER SET search_path = pg_catalog, pg_temp"));
        assert!(
            sql.contains("REVOKE ALL ON FUNCTION pgdual.capture_public_order_lines() FROM PUBLIC")
        );
    }

    #[test]
    fn removal_drops_all_four_triggers_and_the_function() {
        let sql = remove_capture(&rule());
        assert_eq!(sql.matches("DROP TRIGGER IF EXISTS").count(), 4);
        assert!(sql.contains("DROP FUNCTION IF EXISTS pgdual.capture_public_order_lines();"));
    }
}
