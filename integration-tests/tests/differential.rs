//! Differential suite: the same SQL directly against legacy and through pgdual must give
//! identical command tags, column names, column types, rows and errors (SQLSTATE, message,
//! detail, hint, position), in both the simple and the extended protocol.

use pgdual_integration_tests::*;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

const SETUP: &str = "
DROP SCHEMA IF EXISTS diff CASCADE;
CREATE SCHEMA diff;
CREATE TABLE diff.items (
    id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), tags text[],
    meta jsonb, seen timestamptz, ratio float8, flag bool, raw bytea, uid uuid
);
INSERT INTO diff.items VALUES
  (1, 'apple', 1.50, '{red,fruit}', '{\"k\": 1}', '2024-01-02 03:04:05+00', 0.5, true, '\\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
  (2, 'Ber''ry', NULL, '{}', 'null', NULL, 'NaN', false, '', NULL),
  (3, 'ünïcödé ✓', 99999999.99, NULL, '[1,2,{\"a\":null}]', 'infinity', -0.0, NULL, NULL, NULL);
CREATE FUNCTION diff.noisy() RETURNS int LANGUAGE plpgsql AS
  $$ BEGIN RAISE NOTICE 'noisy %', 1; RETURN 1; END $$;
";

const CASES: &[&str] = &[
    "SELECT 1",
    "SELECT * FROM diff.items ORDER BY id",
    "SELECT id, name, price * 2 AS doubled FROM diff.items WHERE price IS NOT NULL ORDER BY 1",
    "SELECT count(*), sum(price), avg(ratio) FILTER (WHERE ratio = ratio) FROM diff.items",
    "SELECT name, unnest(tags) FROM diff.items ORDER BY 1, 2",
    "SELECT meta -> 'k', meta ->> 'k', jsonb_typeof(meta) FROM diff.items ORDER BY id",
    "SELECT g, g * 1.5 AS f, g::text || 'x' AS s FROM generate_series(1, 500) g",
    "SELECT NULL::int AS n, ''::text AS e, ' '::char(3) AS c",
    "SELECT '2024-02-29'::date + 1, interval '1 day 2 hours', '12:34'::time",
    "SELECT ARRAY[1, 2, NULL], ROW(1, 'a'), '{\"a\": [1, 2]}'::json",
    "SELECT * FROM diff.items WHERE false",
    "VALUES (1, 'one'), (2, 'two')",
    "TABLE diff.items",
    "SELECT diff.noisy()",
    "SHOW server_version_num",
    "SELECT current_setting('DateStyle'), current_setting('client_encoding')",
    "SELECT 1 / 0",
    "SELECT * FROM diff.missing",
    "SELEC 1",
    "SELECT 'abc'::int",
    "SELECT id FROM diff.items WHERE id = 'x'",
    "INSERT INTO diff.items (id, name) VALUES (1, 'dup')",
    "INSERT INTO diff.items (id) VALUES (9)",
    "SELECT repeat('ab', 50000)",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "EXPLAIN (COSTS OFF) SELECT * FROM diff.items WHERE id = 1",
    "DO $$ BEGIN RAISE EXCEPTION 'custom failure' USING DETAIL = 'd', HINT = 'h', ERRCODE = 'P0042'; END $$",
    "",
];

/// Simple-protocol-only cases: several statements in one Query.
const MULTI: &[&str] = &[
    "SELECT 1; SELECT 2, 3",
    "BEGIN; UPDATE diff.items SET price = price + 1 WHERE id = 1 RETURNING id, price; ROLLBACK",
    "BEGIN; INSERT INTO diff.items (id, name) VALUES (50, 'tmp'); SELECT count(*) FROM diff.items; ROLLBACK",
    "SELECT 1; SELECT 1/0; SELECT 3",
    "CREATE TEMP TABLE tt (a int); INSERT INTO tt VALUES (1), (2); SELECT sum(a) FROM tt; DROP TABLE tt",
];

#[derive(Debug, PartialEq)]
enum Outcome {
    Rows {
        columns: Vec<(String, Option<u32>)>,
        rows: Vec<Vec<Option<Vec<u8>>>>,
    },
    Command(u64),
    Error(Vec<Option<String>>),
}

fn error(e: tokio_postgres::Error) -> Outcome {
    let db = e.as_db_error().expect("an ErrorResponse");
    Outcome::Error(vec![
        Some(db.severity().to_string()),
        Some(db.code().code().to_string()),
        Some(db.message().to_string()),
        db.detail().map(str::to_string),
        db.hint().map(str::to_string),
        db.position().map(|p| format!("{p:?}")),
        db.where_().map(str::to_string),
    ])
}

async fn simple(c: &Client, sql: &str) -> Vec<Outcome> {
    match c.simple_query(sql).await {
        Err(e) => vec![error(e)],
        Ok(msgs) => {
            let mut out = Vec::new();
            let mut current: Option<Outcome> = None;
            for m in msgs {
                match m {
                    SimpleQueryMessage::RowDescription(cols) => {
                        current = Some(Outcome::Rows {
                            columns: cols.iter().map(|c| (c.name().to_string(), None)).collect(),
                            rows: vec![],
                        })
                    }
                    SimpleQueryMessage::Row(r) => {
                        if let Some(Outcome::Rows { rows, .. }) = &mut current {
                            rows.push(
                                (0..r.len())
                                    .map(|i| r.get(i).map(|v| v.as_bytes().to_vec()))
                                    .collect(),
                            );
                        }
                    }
                    SimpleQueryMessage::CommandComplete(n) => {
                        out.extend(current.take());
                        out.push(Outcome::Command(n));
                    }
                    _ => {}
                }
            }
            out
        }
    }
}

/// Any value, as the raw bytes the server sent.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

async fn extended(c: &Client, sql: &str) -> Vec<Outcome> {
    let stmt = match c.prepare(sql).await {
        Ok(s) => s,
        Err(e) => return vec![error(e)],
    };
    let columns = stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), Some(c.type_().oid())))
        .collect();
    match c.query(&stmt, &[]).await {
        Err(e) => vec![error(e)],
        Ok(rows) => vec![Outcome::Rows {
            columns,
            rows: rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<Raw>>(i).map(|v| v.0))
                        .collect()
                })
                .collect(),
        }],
    }
}

#[tokio::test]
async fn direct_and_through_pgdual_are_identical() {
    let direct = connect(legacy().port).await;
    direct.batch_execute(SETUP).await.unwrap();
    let p = proxy();
    let proxied = connect(p.local_addr().port()).await;
    let mut compared = 0;
    for sql in CASES {
        let a = simple(&direct, sql).await;
        let b = simple(&proxied, sql).await;
        assert_eq!(a, b, "simple protocol differs for {sql:?}");
        compared += 1;
        if !sql.is_empty() {
            let a = extended(&direct, sql).await;
            let b = extended(&proxied, sql).await;
            assert_eq!(a, b, "extended protocol differs for {sql:?}");
            compared += 1;
        }
        // Leave both sessions outside any transaction the case opened.
        let _ = direct.batch_execute("ROLLBACK").await;
        let _ = proxied.batch_execute("ROLLBACK").await;
    }
    for sql in MULTI {
        assert_eq!(
            simple(&direct, sql).await,
            simple(&proxied, sql).await,
            "{sql:?}"
        );
        compared += 1;
    }
    assert_eq!(compared, CASES.len() * 2 - 1 + MULTI.len());
    // The suite exercised real outcomes, not just empty results.
    let errors = simple(&proxied, "SELECT 1/0").await;
    assert!(matches!(&errors[..], [Outcome::Error(f)] if f[1].as_deref() == Some("22012")));
}
