//! The copy-by-key routine against two real servers: rows read from legacy by key,
//! transformed by a rule, upserted into new; keys gone from legacy deleted from new. Values
//! that replaying a statement would get wrong (serial keys, now(), random()) come out exact.

use pgdual::mirror::copy::CopyPlan;
use pgdual_integration_tests::*;
use serde_json::json;
use tokio_postgres::Client;

const RULES: &str = r#"
[[table]]
legacy = "public.cbk_users"
new = "app.customers"
keys = ["id"]
write = "on"
[table.columns]
customer_id = "id"
full_name = "first_name || ' ' || last_name"
email = "lower(email)"
created_at = "created_at"
score = "score"
avatar = "avatar"
source = "'legacy'"

[[table]]
legacy = "public.cbk_lines"
new = "app.order_lines"
keys = ["order_id", "line"]
[table.columns]
order_id = "order_id"
line_no = "line"
cents = "(amount * 100)::bigint"
"#;

/// The tests share tables: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn clients() -> (Client, Client) {
    let legacy = connect(legacy().port).await;
    let new = connect(new_db().port).await;
    legacy
        .batch_execute(
            "DROP TABLE IF EXISTS cbk_users, cbk_lines;
             CREATE TABLE cbk_users (
                 id bigserial PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL,
                 email text, created_at timestamptz NOT NULL DEFAULT now(),
                 score float8 NOT NULL DEFAULT random(), avatar bytea);
             CREATE TABLE cbk_lines (order_id int, line int, amount numeric(12,2),
                 PRIMARY KEY (order_id, line));",
        )
        .await
        .unwrap();
    new.batch_execute(
        "DROP SCHEMA IF EXISTS app CASCADE; CREATE SCHEMA app;
         CREATE TABLE app.customers (
             customer_id bigint PRIMARY KEY, full_name text NOT NULL, email text,
             created_at timestamptz NOT NULL, score float8 NOT NULL, avatar bytea,
             source text NOT NULL);
         CREATE TABLE app.order_lines (order_id int, line_no int, cents bigint,
             PRIMARY KEY (order_id, line_no));",
    )
    .await
    .unwrap();
    pgdual::mirror::copy::pin_session(&legacy).await.unwrap();
    pgdual::mirror::copy::pin_session(&new).await.unwrap();
    (legacy, new)
}

async fn text_rows(c: &Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Both sides as text rows, legacy transformed by hand the way the rule says.
async fn both(legacy: &Client, new: &Client) -> (Vec<String>, Vec<String>) {
    let l = text_rows(
        legacy,
        "SELECT concat_ws('|', id, first_name || ' ' || last_name, lower(email), created_at, \
         score, avatar, 'legacy') FROM cbk_users ORDER BY id",
    )
    .await;
    let n = text_rows(
        new,
        "SELECT concat_ws('|', customer_id, full_name, email, created_at, score, avatar, source) \
         FROM app.customers ORDER BY customer_id",
    )
    .await;
    (l, n)
}

/// The copy plan of rule `i`, cast to the tables' column types as the databases have them.
async fn plan(i: usize, legacy: &Client, new: &Client) -> CopyPlan {
    let rules = pgdual_rules::parse_rules(RULES, "test").unwrap();
    CopyPlan::learn(&rules.tables()[i], legacy, new)
        .await
        .unwrap()
}

#[tokio::test]
async fn rows_copy_exactly_and_deletes_follow() {
    let _serial = SERIAL.lock().await;
    let (legacy, mut new) = clients().await;
    let users = plan(0, &legacy, &new).await;
    legacy
        .batch_execute(
            "INSERT INTO cbk_users (first_name, last_name, email, avatar) VALUES
               ('Ada', 'Lovelace', 'Ada@Example.COM', '\\x00ff10'),
               ('Alan', 'Turing', NULL, NULL),
               ('Grâce', 'Hopper', 'grace@example.com', '');
             UPDATE cbk_users SET score = 'NaN' WHERE first_name = 'Alan';",
        )
        .await
        .unwrap();
    let keys = json!([{"id": 1}, {"id": 2}, {"id": 3}]);
    let out = users.copy(&legacy, &new, &keys.to_string()).await.unwrap();
    assert_eq!((out.upserted, out.deleted), (3, 0));
    let (l, n) = both(&legacy, &new).await;
    assert_eq!(l, n);
    assert_eq!(n.len(), 3);

    // Updates and deletes in legacy; copying the same keys again converges.
    legacy
        .batch_execute(
            "UPDATE cbk_users SET email = 'NEW@x.org', created_at = now() WHERE id = 1;
             DELETE FROM cbk_users WHERE id = 2;",
        )
        .await
        .unwrap();
    let tx = new.transaction().await.unwrap();
    let out = users.copy(&legacy, &tx, &keys.to_string()).await.unwrap();
    assert_eq!((out.upserted, out.deleted), (2, 1));
    tx.commit().await.unwrap();
    let (l, n) = both(&legacy, &new).await;
    assert_eq!(l, n);
    assert!(n[0].contains("new@x.org"), "{n:?}");

    // Copying a key that never existed anywhere is a no-op, not an error.
    let out = users
        .copy(&legacy, &new, &json!([{"id": 999}]).to_string())
        .await
        .unwrap();
    assert_eq!((out.upserted, out.deleted), (0, 0));

    // Inside a transaction that rolls back, new is untouched.
    legacy
        .batch_execute("UPDATE cbk_users SET last_name = 'Rolled' WHERE id = 3")
        .await
        .unwrap();
    let tx = new.transaction().await.unwrap();
    users.copy(&legacy, &tx, &keys.to_string()).await.unwrap();
    tx.rollback().await.unwrap();
    let (l, n) = both(&legacy, &new).await;
    assert_ne!(l, n, "the rolled-back copy left new as it was");
}

#[tokio::test]
async fn composite_keys_and_typed_transforms() {
    let _serial = SERIAL.lock().await;
    let (legacy, new) = clients().await;
    let lines = plan(1, &legacy, &new).await;
    legacy
        .batch_execute(
            "INSERT INTO cbk_lines VALUES (1, 1, 9.99), (1, 2, 0.01), (2, 1, 1000000.50)",
        )
        .await
        .unwrap();
    // Keys as strings work too: legacy parses them with the column's type.
    let keys = json!([{"order_id": 1, "line": 1}, {"order_id": "1", "line": "2"}, {"order_id": 2, "line": 1}]);
    let out = lines.copy(&legacy, &new, &keys.to_string()).await.unwrap();
    assert_eq!(out.upserted, 3);
    let cents: Vec<i64> = new
        .query(
            "SELECT cents FROM app.order_lines ORDER BY order_id, line_no",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cents, [999, 1, 100000050]);
    legacy
        .batch_execute("DELETE FROM cbk_lines WHERE order_id = 1")
        .await
        .unwrap();
    let out = lines.copy(&legacy, &new, &keys.to_string()).await.unwrap();
    assert_eq!((out.upserted, out.deleted), (1, 2));
}

#[tokio::test]
async fn a_new_side_error_names_the_table_and_carries_its_sqlstate() {
    let _serial = SERIAL.lock().await;
    let (legacy, new) = clients().await;
    new.batch_execute("ALTER TABLE app.customers DROP COLUMN source")
        .await
        .unwrap();
    legacy
        .batch_execute("INSERT INTO cbk_users (first_name, last_name) VALUES ('a', 'b')")
        .await
        .unwrap();
    let err = plan(0, &legacy, &new)
        .await
        .copy(&legacy, &new, &json!([{"id": 1}]).to_string())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42703"), "{err}");
    assert!(err.to_string().contains("app.customers"), "{err}");
}
