//! Clients of a server (PostgreSQL or pgdual in front of it) at 127.0.0.1: psql and
//! tokio-postgres, as `postgres` on database `postgres` unless told otherwise.

use std::process::Command;
use std::time::Duration;

use crate::cluster::{find_bin_dir, PgCluster};
use crate::shared::legacy;

/// psql (from the installed PostgreSQL) as `postgres` on database `postgres` at
/// 127.0.0.1:`port`, without the user's psqlrc; add `-c`, `-f` or other arguments.
pub fn psql_to(port: u16) -> Command {
    let bin = find_bin_dir().expect("PostgreSQL client binaries");
    let mut cmd = Command::new(bin.join("psql"));
    cmd.args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"]);
    cmd
}

/// A tokio-postgres connection string for `user` (and `password`) at 127.0.0.1:`port`.
pub fn conn_str(port: u16, user: &str, password: Option<&str>) -> String {
    let mut s = format!("host=127.0.0.1 port={port} user={user} dbname=postgres");
    if let Some(p) = password {
        s.push_str(&format!(
            " password='{}'",
            p.replace('\\', "\\\\").replace('\'', "\\'")
        ));
    }
    s
}

/// Connects tokio-postgres as `postgres` and drives the connection in the background.
pub async fn connect(port: u16) -> tokio_postgres::Client {
    connect_as(port, "postgres", None)
        .await
        .expect("connect through pgdual")
}

pub async fn connect_as(
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio_postgres::connect(&conn_str(port, user, password), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs `sql` (one text column per row) on a server.
pub async fn text_rows(port: u16, sql: &str) -> Vec<String> {
    let c = connect(port).await;
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

/// Waits until `legacy_sql` on legacy and `new_sql` on new return the same rows (the mirror
/// has caught up), then asserts they do; gives up after `secs`.
pub async fn assert_converges(
    new: &PgCluster,
    legacy_sql: &str,
    new_sql: &str,
    secs: u64,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let l = text_rows(legacy().port, legacy_sql).await;
        let n = text_rows(new.port, new_sql).await;
        if l == n {
            return n;
        }
        if std::time::Instant::now() > deadline {
            assert_eq!(l, n, "new never converged to legacy");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
