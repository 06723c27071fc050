use super::*;
use crate::sql::ident::{TableName, DEFAULT_SCHEMA};
use StatementKind::*;

fn one(sql: &str) -> (StatementKind, Vec<String>) {
    let a = analyze(sql);
    assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
    let s = &a.statements[0];
    (s.kind, s.tables.iter().map(|t| t.to_string()).collect())
}

#[test]
fn kinds_and_tables() {
    let cases: &[(&str, StatementKind, &[&str])] = &[
        ("SELECT 1", Read, &[]),
        (
            "select * from Users u join public.orders o on o.uid = u.id",
            Read,
            &["users", "public.orders"],
        ),
        (
            "SELECT * FROM \"Mixed\" WHERE id = $1 FOR UPDATE",
            Read,
            &["\"Mixed\""],
        ),
        ("VALUES (1), (2)", Read, &[]),
        (
            "INSERT INTO users (id, email) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            Write,
            &["users"],
        ),
        (
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3",
            Write,
            &["pgbench_accounts"],
        ),
        (
            "DELETE FROM a USING b WHERE a.id = b.id",
            Write,
            &["a", "b"],
        ),
        ("TRUNCATE t1, t2", Write, &["t1", "t2"]),
        ("COPY users FROM STDIN", Write, &["users"]),
        ("COPY users TO STDOUT WITH (FORMAT csv)", Read, &["users"]),
        (
            "WITH gone AS (DELETE FROM t RETURNING *) SELECT count(*) FROM gone",
            Write,
            &["t", "gone"],
        ),
        ("SELECT * INTO newt FROM t", Ddl, &["newt", "t"]),
        ("CREATE TABLE t (id int primary key)", Ddl, &["t"]),
        ("ALTER TABLE t ADD COLUMN c text", Ddl, &["t"]),
        ("DROP TABLE IF EXISTS t", Ddl, &[]),
        ("CREATE INDEX ON t (c)", Ddl, &["t"]),
        ("BEGIN", Transaction, &[]),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Transaction,
            &[],
        ),
        ("COMMIT", Transaction, &[]),
        ("ROLLBACK TO SAVEPOINT s1", Transaction, &[]),
        ("SAVEPOINT s1", Transaction, &[]),
        ("SET search_path = app, public", Session, &[]),
        ("SHOW server_version", Session, &[]),
        ("LISTEN chan", Session, &[]),
        ("NOTIFY chan, 'hi'", Session, &[]),
        ("DISCARD ALL", Session, &[]),
        ("EXPLAIN SELECT 1", Other, &[]),
    ];
    for (sql, kind, tables) in cases {
        let (k, t) = one(sql);
        assert_eq!(k, *kind, "{sql}");
        assert_eq!(
            t,
            tables.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{sql}"
        );
    }
}

#[test]
fn multi_statement_text_gives_each_statement() {
    let a = analyze("BEGIN; INSERT INTO t VALUES (1); COMMIT");
    let kinds: Vec<_> = a.statements.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [Transaction, Write, Transaction]);
}

#[test]
fn unparsable_text_is_unknown_with_the_reason() {
    let a = analyze("SELEC 1");
    assert!(a.is_unknown());
    assert_eq!(a.statements[0].kind, Unknown);
    assert!(a.parse_error.as_deref().unwrap().contains("SELEC"));
}

#[test]
fn empty_text_has_no_statements() {
    assert_eq!(analyze("").statements, vec![]);
    assert_eq!(analyze(" ; ").statements.len(), 0);
}

/// The tables of a one-statement text, resolved as under the default search path.
fn resolved(sql: &str) -> Vec<Option<TableName>> {
    let a = analyze(sql);
    assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
    a.statements[0]
        .tables
        .iter()
        .map(|t| t.resolve(DEFAULT_SCHEMA))
        .collect()
}

fn table(schema: &str, name: &str) -> Option<TableName> {
    Some(TableName {
        schema: schema.into(),
        name: name.into(),
    })
}

#[test]
fn quoted_names_keep_their_case_and_dots() {
    let cases: &[(&str, &[Option<TableName>])] = &[
        ("SELECT * FROM \"Orders\"", &[table("public", "Orders")]),
        ("SELECT * FROM Orders", &[table("public", "orders")]),
        ("SELECT * FROM \"My Table\"", &[table("public", "My Table")]),
        ("SELECT * FROM \"a.b\"", &[table("public", "a.b")]),
        ("SELECT * FROM a.b", &[table("a", "b")]),
        (
            "SELECT * FROM public.\"Orders\"",
            &[table("public", "Orders")],
        ),
        ("SELECT * FROM PUBLIC.ORDERS", &[table("public", "orders")]),
        (
            "SELECT * FROM \"PUBLIC\".\"ORDERS\"",
            &[table("PUBLIC", "ORDERS")],
        ),
        ("SELECT * FROM ÜNITS", &[table("public", "Ünits")]),
        (
            "UPDATE \"Orders\" SET n = 1 FROM orders o",
            &[table("public", "Orders"), table("public", "orders")],
        ),
        ("COPY \"Orders\" TO STDOUT", &[table("public", "Orders")]),
        (
            "SELECT * INTO \"New\" FROM t",
            &[table("public", "New"), table("public", "t")],
        ),
        ("SELECT * FROM db.public.orders", &[None]),
    ];
    for (sql, want) in cases {
        assert_eq!(resolved(sql), *want, "{sql}");
    }
}

#[test]
fn tables_print_as_written_up_to_folding() {
    let (_, tables) =
        one("SELECT * FROM \"a.b\" JOIN Public.\"My Table\" ON true JOIN db.s.t ON true");
    assert_eq!(tables, ["\"a.b\"", "public.\"My Table\"", "db.s.t"]);
}
