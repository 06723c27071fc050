//! Reads answered by new, or shadowed there, never widen what the client's role may read:
//! ordinary roles (no SELECT, column SELECT, full SELECT, row-level security tenants, a
//! session that lowers its role with SET ROLE) get through pgdual exactly what legacy gives
//! them directly, in every read mode and both protocols, and nothing they may not read on
//! legacy runs on new.

use std::time::{Duration, Instant};

use pgdual::app::Proxy;
use pgdual_integration_tests::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Legacy table `t` (and, for row-level security, `{t}_rls`) mapped to new, reads in `read`.
fn rules(t: &str, read: &str) -> String {
    let table = |name: &str, extra: &str| {
        format!(
            r#"
[[table]]
legacy = "public.{name}"
new = "{t}.{name}"
keys = ["id"]
write = "on"
read = "{read}"
[table.columns]
id = "id"
first_name = "first_name"
email = "email"
secret = "secret"
{extra}
"#
        )
    };
    table(t, "") + &table(&format!("{t}_rls"), "tenant = \"tenant\"")
}

/// The tables on both sides, the roles on legacy (login, not superusers), and rows.
async fn setup(t: &str) {
    let legacy_sql = format!(
        "DROP TABLE IF EXISTS {t}, {t}_rls;
         CREATE TABLE {t} (id bigint PRIMARY KEY, first_name text, email text, secret text);
         CREATE TABLE {t}_rls (id bigint PRIMARY KEY, first_name text, email text, secret text,
             tenant text NOT NULL);
         DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{t}_none') THEN
             CREATE ROLE {t}_none LOGIN; CREATE ROLE {t}_cols LOGIN; CREATE ROLE {t}_full LOGIN;
             CREATE ROLE {t}_a LOGIN; CREATE ROLE {t}_b LOGIN;
           END IF;
         END $$;
         GRANT SELECT (id, first_name, email) ON {t} TO {t}_cols;
         GRANT SELECT ON {t} TO {t}_full;
         GRANT {t}_none TO {t}_full;
         GRANT SELECT ON {t}_rls TO {t}_a, {t}_b;
         ALTER TABLE {t}_rls ENABLE ROW LEVEL SECURITY;
         CREATE POLICY tenant_rows ON {t}_rls USING (tenant = current_user);"
    );
    connect(legacy().port)
        .await
        .batch_execute(&legacy_sql)
        .await
        .unwrap();
    connect(new_db().port)
        .await
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {t} CASCADE; CREATE SCHEMA {t};
             CREATE TABLE {t}.{t} (id bigint PRIMARY KEY, first_name text, email text, secret text);
             CREATE TABLE {t}.{t}_rls (id bigint PRIMARY KEY, first_name text, email text,
                 secret text, tenant text NOT NULL);"
        ))
        .await
        .unwrap();
}

async fn fill(t: &str, port: u16) {
    connect(port)
        .await
        .batch_execute(&format!(
            "INSERT INTO {t} SELECT i, 'First' || i, 'user' || i || '@example.com', 'secret' || i
               FROM generate_series(1, 30) i;
             INSERT INTO {t}_rls SELECT i, 'First' || i, 'user' || i || '@example.com',
               'secret' || i, CASE WHEN i % 2 = 0 THEN '{t}_a' ELSE '{t}_b' END
               FROM generate_series(1, 30) i;"
        ))
        .await
        .unwrap();
    for table in [t.to_string(), format!("{t}_rls")] {
        assert_converges(
            new_db(),
            &format!("SELECT count(*)::text FROM {table}"),
            &format!("SELECT count(*)::text FROM {t}.{table}"),
            30,
        )
        .await;
    }
}

type Answer = Result<Vec<Vec<Option<String>>>, (String, String)>;

fn db_error(e: tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_string(), d.message().to_string()),
        None => ("client".into(), e.to_string()),
    }
}

/// Every row of a simple query, as text, or legacy's SQLSTATE and message.
async fn simple(c: &Client, sql: &str) -> Answer {
    let msgs = c.simple_query(sql).await.map_err(db_error)?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The text columns of a prepared statement's rows for `id`, or the error.
async fn extended(c: &Client, sql: &str, id: i64) -> Answer {
    let stmt = c.prepare(sql).await.map_err(db_error)?;
    let rows = c.query(&stmt, &[&id]).await.map_err(db_error)?;
    Ok(text_columns(&rows))
}

/// Each row's columns, all text.
fn text_columns(rows: &[tokio_postgres::Row]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

/// The same through the unnamed statement, parsed and bound in one batch.
async fn unnamed(c: &Client, sql: &str, id: i64) -> Answer {
    let rows = c
        .query_typed(sql, &[(&id, tokio_postgres::types::Type::INT8)])
        .await
        .map_err(db_error)?;
    Ok(text_columns(&rows))
}

/// The value of `name{table="public.<table>",<label>}`, 0 before the table's first read.
fn counter(p: &Proxy, name: &str, table: &str, label: &str) -> f64 {
    let page = p.metrics().render();
    let key = format!("{name}{{table=\"public.{table}\",{label}}}");
    sample(&page, &key).unwrap_or(0.0)
}

/// Reads of `table` routed to new or to a shadow on new (counted when routed, before
/// anything runs there; the comparisons' outcomes come later, off the client's path).
fn on_new(p: &Proxy, table: &str) -> f64 {
    counter(p, "pgdual_reads_total", table, "route=\"new\"")
        + counter(p, "pgdual_reads_total", table, "route=\"shadow\"")
}

fn kept(p: &Proxy, table: &str, reason: &str) -> f64 {
    counter(
        p,
        "pgdual_reads_kept_on_legacy_total",
        table,
        &format!("reason=\"{reason}\""),
    )
}

/// Sets every table's read mode through the API and waits for the privilege cache to know
/// `roles` for the new rules version (their first read goes to legacy and fills it).
async fn set_mode(p: &Proxy, t: &str, mode: &str, roles: &[String]) {
    let admin = p.admin_addr().unwrap();
    for table in [t.to_string(), format!("{t}_rls")] {
        let body = format!("{{\"mode\": \"{mode}\"}}");
        let (status, answer) = tokio::task::spawn_blocking(move || {
            http_put(admin, &format!("/tables/public.{table}/read"), &body)
        })
        .await
        .unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    if mode == "legacy" {
        return;
    }
    let version = p.rules().load().version;
    for role in roles {
        let c = connect_as(p.local_addr().port(), role, None).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.privileges().knows(role, version) {
            assert!(
                Instant::now() < deadline,
                "{role}'s privileges never cached"
            );
            let _ = c
                .simple_query(&format!("SELECT id FROM {t} WHERE id = 1"))
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Each of `reads` as `role`, direct and through pgdual, in both protocols: same answers.
async fn same_answers(p: &Proxy, role: &str, reads: &[&str]) {
    let via = connect_as(p.local_addr().port(), role, None).await.unwrap();
    let direct = connect_as(legacy().port, role, None).await.unwrap();
    for sql in reads {
        assert_eq!(
            simple(&via, sql).await,
            simple(&direct, sql).await,
            "{role}: {sql}"
        );
    }
    let ext = format!("{} AND id = $1", reads[0]);
    for id in [2i64, 3] {
        assert_eq!(
            extended(&via, &ext, id).await,
            extended(&direct, &ext, id).await,
            "{role}: {ext}"
        );
        assert_eq!(
            unnamed(&via, &ext, id).await,
            unnamed(&direct, &ext, id).await,
            "{role}: {ext} (unnamed)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privilege_matrix_matches_legacy_in_every_read_mode() {
    let t = "rp_matrix";
    setup(t).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "legacy"), new_db());
    wait_mirror_ready(&p).await;
    fill(t, p.local_addr().port()).await;
    let role = |r: &str| format!("{t}_{r}");
    let roles: Vec<String> = ["none", "cols", "full", "a", "b"]
        .iter()
        .map(|r| role(r))
        .collect();
    let rls = format!("{t}_rls");
    // Reads each role may not make on legacy (42501 there, so through pgdual too).
    let refused: Vec<(String, Vec<String>)> = vec![
        (
            role("none"),
            vec![
                format!("SELECT first_name, email FROM {t} WHERE id > 0"),
                format!("SELECT count(*) FROM {t} WHERE true"),
            ],
        ),
        (
            role("cols"),
            vec![
                format!("SELECT * FROM {t} WHERE id > 0"),
                format!("SELECT first_name FROM {t} WHERE secret LIKE 's%'"),
                format!("SELECT first_name FROM {t} WHERE id > 0 ORDER BY secret"),
            ],
        ),
    ];
    // Reads each role may make, all or some of them answered by new in new mode.
    let allowed: Vec<(String, Vec<String>)> = vec![
        (
            role("cols"),
            vec![
                format!("SELECT first_name, email FROM {t} WHERE id > 0"),
                format!("SELECT count(*) FROM {t} WHERE true"),
            ],
        ),
        (
            role("full"),
            vec![
                format!("SELECT first_name, email FROM {t} WHERE id > 0"),
                format!("SELECT * FROM {t} WHERE id > 0 ORDER BY id"),
            ],
        ),
    ];
    let tenant_reads = [
        format!("SELECT first_name, email FROM {rls} WHERE id > 0"),
        format!("SELECT count(*) FROM {rls} WHERE true"),
    ];

    for mode in ["legacy", "shadow", "new"] {
        set_mode(&p, t, mode, &roles).await;
        // Refused on legacy: the same error through pgdual, and nothing ran on new.
        let before = on_new(&p, t);
        let privilege_before = kept(&p, t, "privilege");
        for (r, reads) in &refused {
            let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
            same_answers(&p, r, &reads).await;
            let c = connect_as(p.local_addr().port(), r, None).await.unwrap();
            let err = simple(&c, reads[0]).await.unwrap_err();
            assert_eq!(err.0, "42501", "{mode} {r}: {err:?}");
        }
        assert_eq!(on_new(&p, t), before, "{mode}: refused reads ran on new");
        if mode != "legacy" {
            assert!(
                kept(&p, t, "privilege") > privilege_before,
                "{mode}: refusals are counted"
            );
        }
        // Row-level security: each tenant sees its own rows, and new is never asked.
        let before = on_new(&p, &rls);
        for r in [role("a"), role("b")] {
            let reads: Vec<&str> = tenant_reads.iter().map(String::as_str).collect();
            same_answers(&p, &r, &reads).await;
            let c = connect_as(p.local_addr().port(), &r, None).await.unwrap();
            assert_eq!(
                simple(&c, &tenant_reads[1]).await.unwrap(),
                vec![vec![Some("15".to_string())]],
                "{mode} {r}"
            );
        }
        assert_eq!(
            on_new(&p, &rls),
            before,
            "{mode}: tenants' reads ran on new"
        );
        if mode != "legacy" {
            assert!(kept(&p, &rls, "rls") > 0.0, "{mode}");
        }
        // Allowed: the same rows, and new (or the shadow) takes them.
        let before = on_new(&p, t);
        for (r, reads) in &allowed {
            let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
            same_answers(&p, r, &reads).await;
        }
        if mode == "legacy" {
            assert_eq!(on_new(&p, t), before);
        } else {
            assert!(
                on_new(&p, t) > before,
                "{mode}: permitted reads still reach new:\n{}",
                p.metrics().render()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_changes_its_role_is_answered_as_legacy() {
    let t = "rp_setrole";
    setup(t).await;
    let (p, _dir) = proxy_with_rules(&rules(t, "legacy"), new_db());
    wait_mirror_ready(&p).await;
    fill(t, p.local_addr().port()).await;
    let full = format!("{t}_full");
    let none = format!("{t}_none");
    for mode in ["shadow", "new"] {
        set_mode(&p, t, mode, std::slice::from_ref(&full)).await;
        let read = format!("SELECT first_name, email FROM {t} WHERE id > 0");
        for lower in [
            format!("SET ROLE {none}"),
            format!("SELECT set_config('role', '{none}', false)"),
            format!("SET SESSION AUTHORIZATION {none}"),
        ] {
            let via = connect_as(p.local_addr().port(), &full, None)
                .await
                .unwrap();
            let direct = connect_as(legacy().port, &full, None).await.unwrap();
            // Before: the role may read it, and new (or the shadow) takes it.
            let before = on_new(&p, t);
            assert_eq!(simple(&via, &read).await, simple(&direct, &read).await);
            assert!(on_new(&p, t) > before, "{mode}: {full} reads on new");
            let lowered_via = simple(&via, &lower).await;
            let lowered_direct = simple(&direct, &lower).await;
            assert_eq!(lowered_via, lowered_direct, "{lower}");
            let before = on_new(&p, t);
            let (a, b) = (simple(&via, &read).await, simple(&direct, &read).await);
            assert_eq!(a, b, "{mode} after {lower}");
            if lowered_direct.is_ok() {
                assert_eq!(a.unwrap_err().0, "42501", "{mode} after {lower}");
            }
            // The prepared form too: refused on legacy, and refused the same way.
            let ext = format!("{read} AND id = $1");
            assert_eq!(
                extended(&via, &ext, 2).await,
                extended(&direct, &ext, 2).await
            );
            assert_eq!(on_new(&p, t), before, "{mode} after {lower}: ran on new");
            assert!(kept(&p, t, "role") > 0.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_legacy_gives_another_role_at_login_is_answered_as_legacy() {
    let t = "rp_dflt";
    setup(t).await;
    let dflt = format!("{t}_login");
    connect(legacy().port)
        .await
        .batch_execute(&format!(
            "CREATE ROLE {dflt} LOGIN; GRANT SELECT ON {t} TO {dflt};
             GRANT {t}_none TO {dflt}; ALTER ROLE {dflt} SET role = '{t}_none';"
        ))
        .await
        .unwrap();
    let (p, _dir) = proxy_with_rules(&rules(t, "legacy"), new_db());
    wait_mirror_ready(&p).await;
    fill(t, p.local_addr().port()).await;
    set_mode(&p, t, "new", std::slice::from_ref(&dflt)).await;
    let read = format!("SELECT first_name, email FROM {t} WHERE id > 0");
    let before = on_new(&p, t);
    same_answers(&p, &dflt, &[&read]).await;
    let c = connect_as(p.local_addr().port(), &dflt, None)
        .await
        .unwrap();
    assert_eq!(simple(&c, &read).await.unwrap_err().0, "42501");
    assert_eq!(on_new(&p, t), before, "ran on new");
    assert!(kept(&p, t, "role") > 0.0);
}
