//! Test harness: one throwaway legacy PostgreSQL per test binary (stopped and removed when
//! the binary exits, whether tests passed or not), pgdual started in-process per test on a
//! free port, and small real-protocol helpers for crafting bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use pgdual::cluster::{ClusterOptions, PgCluster};
use pgdual::Proxy;
use pgdual_config::Config;

pub const MD5_USER: &str = "md5user";
pub const MD5_PASSWORD: &str = "md5 pass'word";
pub const SCRAM_USER: &str = "scramuser";
pub const SCRAM_PASSWORD: &str = "scr@m-pass";

static LEGACY: OnceLock<PgCluster> = OnceLock::new();
static NEW: OnceLock<PgCluster> = OnceLock::new();

extern "C" fn stop_clusters_at_exit() {
    for c in [LEGACY.get(), NEW.get()].into_iter().flatten() {
        c.stop();
        let _ = std::fs::remove_dir_all(c.socket_dir());
    }
}

/// Stops the shared servers when the test binary exits, whatever the tests did.
fn stop_at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registering a plain extern "C" function with no captured state.
    ONCE.call_once(|| unsafe {
        libc::atexit(stop_clusters_at_exit);
    });
}

/// The new database shared by every test of this binary (a second, separate server).
pub fn new_db() -> &'static PgCluster {
    NEW.get_or_init(|| {
        let c = PgCluster::start(ClusterOptions::default()).expect("start new PostgreSQL");
        stop_at_exit();
        c
    })
}

/// The legacy server shared by every test of this binary: roles for md5 and SCRAM
/// authentication, and `pg_hba.conf` rules that demand them.
pub fn legacy() -> &'static PgCluster {
    LEGACY.get_or_init(|| {
        let opts = ClusterOptions {
            hba: vec![
                format!("host all {MD5_USER} 127.0.0.1/32 md5"),
                format!("host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256"),
            ],
            settings: vec![],
        };
        let c = PgCluster::start(opts).expect("start legacy PostgreSQL");
        stop_at_exit();
        c.psql(&format!(
            "SET password_encryption = 'md5';
             CREATE ROLE {MD5_USER} LOGIN PASSWORD '{}';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';",
            MD5_PASSWORD.replace('\'', "''")
        ))
        .expect("create roles");
        c
    })
}

/// A config for pgdual in front of `cluster`, on free ports, one worker.
pub fn config_for(cluster: &PgCluster) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        workers: 1,
        ..Config::default()
    };
    c.admin.listen = "127.0.0.1:0".into();
    c.legacy.port = cluster.port;
    c.limits.connect_timeout_ms = 3000;
    c
}

/// pgdual in front of the shared legacy server, with `tweak` applied to its config.
pub fn proxy_with(tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut c = config_for(legacy());
    tweak(&mut c);
    Proxy::start(c).expect("start pgdual")
}

pub fn proxy() -> Proxy {
    proxy_with(|_| {})
}

/// A tokio-postgres connection string for `port`.
/// psql (from the harness's PostgreSQL) as `postgres` on database `postgres` at
/// 127.0.0.1:`port`, without the user's psqlrc; add `-c`, `-f` or other arguments.
pub fn psql_to(port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new(legacy().bin_dir().join("psql"));
    cmd.args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"]);
    cmd
}

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

/// A client speaking raw protocol bytes, for crafted and malformed input.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        RawClient { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends a StartupMessage for `postgres` (trust auth) and reads up to ReadyForQuery.
    pub fn startup(port: u16) -> RawClient {
        let mut c = RawClient::connect(port);
        c.send(&startup_message("postgres", "postgres"));
        let msgs = c.read_until(b'Z');
        assert!(
            msgs.iter().any(|(t, _)| *t == b'R'),
            "authenticated: {msgs:?}"
        );
        c
    }

    /// One typed message, or `None` at end of stream.
    pub fn read_message(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        if self.stream.read_exact(&mut head).is_err() {
            return None;
        }
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.stream.read_exact(&mut body).ok()?;
        Some((head[0], body))
    }

    /// Messages up to and including the first with `tag` (or end of stream).
    pub fn read_until(&mut self, tag: u8) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(m) = self.read_message() {
            let done = m.0 == tag;
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    /// Reads one byte (the answer to SSLRequest or GSSENCRequest).
    pub fn read_byte(&mut self) -> Option<u8> {
        let mut b = [0u8; 1];
        self.stream.read_exact(&mut b).ok().map(|_| b[0])
    }

    /// True once the peer has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }
}

pub fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A typed frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// A field of an ErrorResponse body (`C` for SQLSTATE, `M` for the message).
pub fn error_field(body: &[u8], field: u8) -> Option<String> {
    pgdual::proto::backend::error_field(body, field)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `GET path` on the admin API; returns status code and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http(addr, "GET", path, token, "")
}

/// `PUT path` with `body` on the admin API; returns status code and body.
pub fn http_put(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "PUT", path, None, body)
}

fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let len = body.len();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The value of an unlabelled or labelled sample in a Prometheus text page; labels match in
/// any order, as they do for Prometheus.
pub fn metric(page: &str, name_and_labels: &str) -> f64 {
    let want = series(name_and_labels);
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (series(s) == want).then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("metric {name_and_labels} not found in:\n{page}"))
}

/// A sample's name and its labels, sorted.
fn series(text: &str) -> (String, Vec<String>) {
    let Some((name, labels)) = text.split_once('{') else {
        return (text.to_string(), Vec::new());
    };
    let mut labels: Vec<String> = labels
        .trim_end_matches('}')
        .split("\",")
        .map(|l| l.trim_end_matches('"').to_string())
        .collect();
    labels.sort();
    (name.to_string(), labels)
}

/// pgdual with dual-write: `rules` written to a file, the new database at `new`, a fast
/// poll, and the dead-letter file in the returned directory.
pub fn proxy_with_rules(rules: &str, new: &PgCluster) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, rules).expect("write rules");
    let p = proxy_with(|c| {
        c.rules_file = Some(path);
        c.new.host = "127.0.0.1".into();
        c.new.port = new.port;
        c.mirror.poll_interval_ms = 50;
        c.mirror.retry_initial_ms = 50;
        c.mirror.retry_max_ms = 500;
        c.mirror.dead_letter_file = dir.path().join("dead.jsonl");
    });
    (p, dir)
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

/// Waits until pgdual's mirror has installed its capture triggers.
pub async fn wait_mirror_ready(p: &Proxy) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ready = &p.metrics().mirror.ready;
    while ready.get() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "mirror never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changes the mirror dead-lettered so far.
pub fn dead_letters(p: &Proxy) -> u64 {
    p.metrics().mirror.dead_letters_total.get()
}
