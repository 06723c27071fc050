//! Dual-write through pgdual: committed writes reach the new schema transformed, exactly;
//! rolled-back ones never do; the new side going away costs clients nothing.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use pgdual_integration_tests::*;
use tokio_postgres::types::ToSql;

/// Rules for a `users`-style table named `table`, mirrored to `<table>.customers` in new.
fn rules(table: &str) -> String {
    format!(
        r#"
[[table]]
legacy = "public.{table}"
new = "{table}.customers"
keys = ["id"]
write = "on"
[table.columns]
customer_id = "id"
full_name = "first_name || ' ' || last_name"
email = "lower(email)"
created_at = "created_at"
score = "score"
"#
    )
}

async fn create(table: &str) {
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id bigserial PRIMARY KEY, first_name text NOT NULL,
             last_name text NOT NULL, email text UNIQUE, created_at timestamptz NOT NULL DEFAULT now(),
             score float8 NOT NULL DEFAULT random())"
    ))
    .await
    .unwrap();
    let n = connect(new_db().port).await;
    n.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {table} CASCADE; CREATE SCHEMA {table};
         CREATE TABLE {table}.customers (customer_id bigint PRIMARY KEY, full_name text NOT NULL,
             email text CHECK (email NOT LIKE '%forbidden%'), created_at timestamptz NOT NULL,
             score float8 NOT NULL)"
    ))
    .await
    .unwrap();
}

fn legacy_view(table: &str) -> String {
    format!(
        "SELECT concat_ws('|', id, first_name || ' ' || last_name, lower(email), created_at, score) \
         FROM {table} ORDER BY id"
    )
}

fn new_view(table: &str) -> String {
    format!(
        "SELECT concat_ws('|', customer_id, full_name, email, created_at, score) \
         FROM {table}.customers ORDER BY customer_id"
    )
}

#[tokio::test]
async fn every_kind_of_committed_write_lands_transformed_and_rollbacks_never_do() {
    let t = "dw_kinds";
    create(t).await;
    let (p, _dir) = proxy_with_rules(&rules(t), new_db());
    wait_mirror_ready(&p).await;
    let c = connect(p.local_addr().port()).await;
    // Autocommit writes in the simple protocol; serial keys, now() and random() defaults.
    c.batch_execute(&format!(
        "INSERT INTO {t} (first_name, last_name, email) VALUES ('Ada', 'Lovelace', 'ADA@x.org');
         INSERT INTO {t} (first_name, last_name, email) VALUES ('Alan', 'Turing', 'alan@x.org'), ('Grace', 'Hopper', 'Grace@X.org');
         UPDATE {t} SET created_at = now(), score = random() WHERE first_name = 'Alan';
         INSERT INTO {t} (first_name, last_name, email) VALUES ('Ada', 'King', 'ada@x.org')
             ON CONFLICT (email) DO UPDATE SET last_name = EXCLUDED.last_name;"
    ))
    .await
    .unwrap();
    // Extended protocol with binary parameters, pipelined.
    let ins = c
        .prepare(&format!(
            "INSERT INTO {t} (first_name, last_name, email) VALUES ($1, $2, $3)"
        ))
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> = (0..20)
        .map(|i| (format!("P{i}"), "Pipe".to_string(), format!("p{i}@X.org")))
        .collect();
    let futures: Vec<_> = rows
        .iter()
        .map(|(a, b, e)| {
            let params: [&(dyn ToSql + Sync); 3] = [a, b, e];
            let (c, ins) = (&c, &ins);
            async move { c.execute(ins, &params).await }
        })
        .collect();
    for r in futures_util::future::join_all(futures).await {
        r.unwrap();
    }
    c.execute(&format!("DELETE FROM {t} WHERE email = $1"), &[&"p3@X.org"])
        .await
        .unwrap();
    // COPY FROM STDIN.
    copy_two_rows(&c, t).await;
    // An explicit transaction, committed, with a rolled-back savepoint inside.
    c.batch_execute(&format!(
        "BEGIN;
         UPDATE {t} SET last_name = 'Committed' WHERE first_name = 'Grace';
         SAVEPOINT s;
         INSERT INTO {t} (first_name, last_name, email) VALUES ('Ghost', 'Savepoint', 'ghost1@x.org');
         ROLLBACK TO SAVEPOINT s;
         COMMIT;"
    ))
    .await
    .unwrap();
    // Rolled back, and failed: never mirrored.
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO {t} (first_name, last_name, email) VALUES ('Ghost', 'Rollback', 'ghost2@x.org'); ROLLBACK;"
    ))
    .await
    .unwrap();
    let err = c
        .batch_execute(&format!(
            "INSERT INTO {t} (first_name, last_name, email) VALUES ('Ghost', 'Failed', 'ghost3@x.org'); SELECT 1/0;"
        ))
        .await;
    assert!(err.is_err());
    let rows = assert_converges(new_db(), &legacy_view(t), &new_view(t), 30).await;
    assert_eq!(rows.len(), 4 + 19 + 2);
    assert!(rows.iter().all(|r| !r.contains("Ghost")), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.contains("Ada King|ada@x.org")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("Grace Committed|grace@x.org")),
        "{rows:?}"
    );

    // TRUNCATE is mirrored too, and writes after it.
    c.batch_execute(&format!(
        "BEGIN; TRUNCATE {t}; INSERT INTO {t} (first_name, last_name, email) VALUES ('After', 'Truncate', 'a@t.org'); COMMIT;"
    ))
    .await
    .unwrap();
    let rows = assert_converges(new_db(), &legacy_view(t), &new_view(t), 30).await;
    assert_eq!(rows.len(), 1);
    // The counters follow new's commit by a moment: the batch is acknowledged on legacy
    // after it.
    let m = &p.metrics().mirror;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.changes_total.get() < 30 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        m.batches_total.get() >= 2,
        "one batch before the TRUNCATE, one after"
    );
    assert!(
        m.changes_total.get() >= 30,
        "every captured row change was consumed"
    );
    assert_eq!(m.dead_letters_total.get(), 0);
}

#[tokio::test]
async fn a_change_new_refuses_is_dead_lettered_and_later_writes_still_flow() {
    let t = "dw_dead";
    create(t).await;
    let (p, dir) = proxy_with_rules(&rules(t), new_db());
    wait_mirror_ready(&p).await;
    let c = connect(p.local_addr().port()).await;
    c.batch_execute(&format!(
        "INSERT INTO {t} (first_name, last_name, email) VALUES ('Ok', 'One', 'ok1@x.org');
         INSERT INTO {t} (first_name, last_name, email) VALUES ('Bad', 'Row', 'forbidden@x.org');"
    ))
    .await
    .expect("legacy has no such constraint: the client sees success");
    c.batch_execute(&format!(
        "INSERT INTO {t} (first_name, last_name, email) VALUES ('Ok', 'Two', 'ok2@x.org')"
    ))
    .await
    .unwrap();
    let filter = "WHERE email IS DISTINCT FROM 'forbidden@x.org'";
    let lview = legacy_view(t).replace("ORDER BY", &format!("{filter} ORDER BY"));
    let rows = assert_converges(new_db(), &lview, &new_view(t), 30).await;
    assert_eq!(rows.len(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.metrics().mirror.dead_letters_total.get() == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!(line["table"], format!("public.{t}"));
    assert_eq!(line["sqlstate"], "23514");
    assert_eq!(line["keys"], serde_json::json!({"id": 2}));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("dead.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn rules_that_do_not_fit_the_catalogs_capture_nothing_and_clients_carry_on() {
    let t = "dw_misfit";
    create(t).await;
    // The new table lacks a column the rule fills.
    connect(new_db().port)
        .await
        .batch_execute(&format!("ALTER TABLE {t}.customers DROP COLUMN score"))
        .await
        .unwrap();
    let (p, _dir) = proxy_with_rules(&rules(t), new_db());
    let c = connect(p.local_addr().port()).await;
    c.batch_execute(&format!(
        "INSERT INTO {t} (first_name, last_name, email) VALUES ('Still', 'Works', 's@x.org')"
    ))
    .await
    .expect("clients are unaffected by a bad rule");
    // Give the mirror several attempts; it must keep refusing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let m = &p.metrics().mirror;
    assert_eq!(m.ready.get(), 0);
    assert!(m.retries_total.get() > 0);
    let triggers = text_rows(
        legacy().port,
        &format!(
            "SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'public.{t}'::regclass \
             AND tgname LIKE 'pgdual_capture_%'"
        ),
    )
    .await;
    assert_eq!(
        triggers,
        ["0"],
        "no capture triggers for rules that do not fit"
    );
}

/// An application role as production has them: may log in, is not a superuser, does not own
/// the table, and holds only the table's write privileges and its sequence's USAGE.
#[tokio::test]
async fn an_ordinary_application_role_writes_every_kind_of_statement_with_capture_on() {
    let t = "dw_app_role";
    let role = "dw_app_writer";
    create(t).await;
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
         GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {t} TO {role};
         GRANT USAGE ON SEQUENCE {t}_id_seq TO {role};"
    ))
    .await
    .unwrap();
    // A capture function as an older pgdual created it (the writer's rights, no pinned
    // search_path): starting pgdual must replace it.
    for attempt in 0.. {
        let old = l
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS pgdual;
                 CREATE OR REPLACE FUNCTION pgdual.capture_public_{t}() RETURNS trigger
                     LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;"
            ))
            .await;
        match old {
            Ok(()) => break,
            // Other tests' pgdual may be creating the schema at this moment.
            Err(e) if attempt < 5 => eprintln!("retrying: {e}"),
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (p, _dir) = proxy_with_rules(&rules(t), new_db());
    wait_mirror_ready(&p).await;
    let function = text_rows(
        legacy().port,
        &format!(
            "SELECT concat_ws('|', prosecdef, pg_get_userbyid(proowner), array_to_string(proconfig, ','), \
             has_function_privilege('{role}', oid, 'EXECUTE')) \
             FROM pg_proc WHERE oid = to_regprocedure('pgdual.capture_public_{t}()')"
        ),
    )
    .await;
    match capture_method() {
        CaptureMode::Triggers => {
            assert_eq!(function, ["t|postgres|search_path=pg_catalog, pg_temp|f"])
        }
        // Logical decoding needs no trigger: the old function stays, fired by nothing.
        _ => assert_eq!(
            text_rows(
                legacy().port,
                &format!(
                    "SELECT count(*)::text FROM pg_trigger \
                     WHERE tgrelid = 'public.{t}'::regclass AND tgname LIKE 'pgdual_capture_%'"
                )
            )
            .await,
            ["0"]
        ),
    }

    let c = connect_as(p.local_addr().port(), role, None).await.unwrap();
    // Autocommit, simple protocol: single and multi-row inserts, update, upsert, delete.
    c.batch_execute(&format!(
        "INSERT INTO {t} (first_name, last_name, email) VALUES ('Ada', 'Lovelace', 'ada@x.org');
         INSERT INTO {t} (first_name, last_name, email) VALUES ('Alan', 'Turing', 'alan@x.org'), ('Grace', 'Hopper', 'grace@x.org');
         UPDATE {t} SET last_name = 'Updated' WHERE first_name = 'Alan';
         INSERT INTO {t} (first_name, last_name, email) VALUES ('Ada', 'King', 'ada@x.org')
             ON CONFLICT (email) DO UPDATE SET last_name = EXCLUDED.last_name;
         DELETE FROM {t} WHERE first_name = 'Grace';"
    ))
    .await
    .expect("autocommit writes as an application role");
    // Extended protocol with parameters, autocommit.
    c.execute(
        &format!("INSERT INTO {t} (first_name, last_name, email) VALUES ($1, $2, $3)"),
        &[&"Ext", &"Param", &"ext@x.org"],
    )
    .await
    .expect("extended insert");
    c.execute(
        &format!("UPDATE {t} SET first_name = $1 WHERE email = $2"),
        &[&"Extended", &"ext@x.org"],
    )
    .await
    .expect("extended update");
    // COPY FROM STDIN.
    copy_two_rows(&c, t).await;
    // The same kinds inside an explicit transaction.
    c.batch_execute(&format!(
        "BEGIN;
         INSERT INTO {t} (first_name, last_name, email) VALUES ('Tx', 'One', 'tx1@x.org'), ('Tx', 'Two', 'tx2@x.org');
         UPDATE {t} SET last_name = 'Tx' WHERE first_name = 'Copy';
         INSERT INTO {t} (first_name, last_name, email) VALUES ('Tx', 'Again', 'tx1@x.org')
             ON CONFLICT (email) DO UPDATE SET last_name = EXCLUDED.last_name;
         DELETE FROM {t} WHERE email = 'c2@x.org';
         COMMIT;"
    ))
    .await
    .expect("transaction of writes as an application role");
    let rows = assert_converges(new_db(), &legacy_view(t), &new_view(t), 30).await;
    assert_eq!(rows.len(), 6, "{rows:?}");
    // TRUNCATE, in a transaction with an insert after it, then in autocommit.
    c.batch_execute(&format!(
        "BEGIN; TRUNCATE {t}; INSERT INTO {t} (first_name, last_name, email) VALUES ('After', 'Truncate', 'a@t.org'); COMMIT;"
    ))
    .await
    .expect("truncate in a transaction");
    let rows = assert_converges(new_db(), &legacy_view(t), &new_view(t), 30).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    c.batch_execute(&format!("TRUNCATE {t}"))
        .await
        .expect("truncate in autocommit");
    let rows = assert_converges(new_db(), &legacy_view(t), &new_view(t), 30).await;
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(dead_letters(&p), 0);

    // The changelog and the capture function stay closed to the application role.
    for sql in [
        "SELECT count(*) FROM pgdual.changes".to_string(),
        "INSERT INTO pgdual.changes (tbl) VALUES ('x')".to_string(),
        "DELETE FROM pgdual.changes".to_string(),
    ] {
        let err = c.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err}"
        );
    }
}

/// Two rows through `COPY ... FROM STDIN` (csv).
async fn copy_two_rows(c: &tokio_postgres::Client, t: &str) {
    let sink = c
        .copy_in(&format!(
            "COPY {t} (first_name, last_name, email) FROM STDIN WITH (FORMAT csv)"
        ))
        .await
        .expect("COPY FROM STDIN");
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(
        b"Copy,One,c1@x.org\nCopy,Two,c2@x.org\n",
    ))
    .await
    .unwrap();
    sink.finish().await.unwrap();
}
