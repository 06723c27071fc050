//! TLS: clients to pgdual (rustls, certificate from config), pgdual to legacy
//! (`legacy.tls = require | verify-full`), and pgdual's own connections (catalog checks, the
//! mirror, reads on new) to servers that refuse plaintext.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgdual::net::tls::TlsTarget;
use pgdual::Proxy;
use pgdual_config::{Config, TlsMode};
use pgdual_integration_tests::*;

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a certificate it signed for localhost/127.0.0.1: (ca, cert, key) paths.
fn certificates(dir: &Path) -> (String, String, String) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pgdual test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
        dir,
    );
    let path = |f: &str| dir.join(f).display().to_string();
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(legacy().bin_dir().join("psql"))
        .args(["-X", "-A", "-t", conninfo, "-c", sql])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[test]
fn clients_connect_to_pgdual_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let p = proxy_with(|c| {
        c.tls.cert_file = Some(cert.clone().into());
        c.tls.key_file = Some(key.into());
    });
    let port = p.local_addr().port();
    let base =
        format!("host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres");
    // verify-full: the certificate pgdual presents is the configured one.
    let info = psql(
        &format!("{base} sslmode=verify-full sslrootcert={ca}"),
        "SELECT 'over tls'",
    )
    .unwrap();
    assert_eq!(info, "over tls");
    // Plain connections still work when the client does not ask for TLS.
    assert_eq!(
        psql(&format!("{base} sslmode=disable"), "SELECT 1").unwrap(),
        "1"
    );
    // Without a certificate configured, a client that insists on TLS is refused cleanly.
    let plain = proxy();
    let err = psql(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
            plain.local_addr().port()
        ),
        "SELECT 1",
    )
    .unwrap_err();
    assert!(err.contains("does not support SSL"), "{err}");
}

#[test]
fn pgdual_connects_to_legacy_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let data = legacy().data_dir();
    std::fs::copy(&cert, data.join("server.crt")).unwrap();
    std::fs::copy(&key, data.join("server.key")).unwrap();
    // The server runs as its own user when the tests run as root.
    let owner = std::fs::metadata(data.join("PG_VERSION")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for f in ["server.crt", "server.key"] {
        std::os::unix::fs::chown(data.join(f), Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    legacy()
        .psql("ALTER SYSTEM SET ssl = on")
        .and_then(|_| legacy().psql("SELECT pg_reload_conf()"))
        .unwrap();
    let ssl_in_use = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let url = |p: &pgdual::Proxy| {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            p.local_addr().port()
        )
    };
    // Reload is asynchronous: wait until legacy offers TLS.
    let require = proxy_with(|c| c.legacy.tls = pgdual_config::LegacyTlsMode::Require);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while psql(&url(&require), ssl_in_use).as_deref() != Ok("t") {
        assert!(
            std::time::Instant::now() < deadline,
            "legacy never offered TLS"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let verified = proxy_with(|c| {
        c.legacy.tls = pgdual_config::LegacyTlsMode::VerifyFull;
        c.legacy.tls_ca_file = Some(ca.clone().into());
        c.legacy.tls_server_name = Some("localhost".into());
    });
    assert_eq!(psql(&url(&verified), ssl_in_use).unwrap(), "t");
    // A CA that did not sign legacy's certificate: refused with 08001, naming legacy.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = certificates(other_dir.path());
    let wrong = proxy_with(|c| {
        c.legacy.tls = pgdual_config::LegacyTlsMode::VerifyFull;
        c.legacy.tls_ca_file = Some(other_ca.into());
        c.legacy.tls_server_name = Some("localhost".into());
    });
    let err = psql(&url(&wrong), "SELECT 1").unwrap_err();
    assert!(err.contains("TLS handshake failed"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", legacy().port)),
        "{err}"
    );
    // Plain proxies still work against the same server.
    assert_eq!(psql(&url(&proxy()), ssl_in_use).unwrap(), "f");
}

/// pgdual's own role on the TLS-only servers: SCRAM, password from a file.
const OWN_USER: &str = "pgdual_own";
const OWN_PASSWORD: &str = "own-scr@m pass";

/// A server that accepts TCP connections over TLS only (`hostnossl ... reject`), with the
/// certificate `cert` (signed by the test CA for localhost and 127.0.0.1), and pgdual's own
/// role authenticated by SCRAM.
fn tls_only_cluster(cert: &str, key: &str) -> PgCluster {
    let c = PgCluster::start(ClusterOptions {
        hba: vec![
            "hostnossl all all 127.0.0.1/32 reject".into(),
            format!("hostssl all {OWN_USER} 127.0.0.1/32 scram-sha-256"),
        ],
        settings: vec![],
    })
    .expect("start PostgreSQL");
    let data = c.data_dir();
    std::fs::copy(cert, data.join("server.crt")).unwrap();
    std::fs::copy(key, data.join("server.key")).unwrap();
    let owner = std::fs::metadata(data.join("PG_VERSION")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for f in ["server.crt", "server.key"] {
        std::os::unix::fs::chown(data.join(f), Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(&mut conf, b"\nssl = on\n").unwrap();
    c.stop();
    c.start_server().expect("restart with ssl = on");
    // The harness's psql connects with libpq's default sslmode=prefer: over TLS here.
    c.psql(&format!(
        "CREATE ROLE {OWN_USER} LOGIN SUPERUSER PASSWORD '{OWN_PASSWORD}'"
    ))
    .expect("create pgdual's role");
    c
}

/// Legacy and new refusing plaintext, the CA that signed them, a CA that did not, and a
/// password file for pgdual's role (mode 0600).
struct TlsServers {
    legacy: PgCluster,
    new: PgCluster,
    ca: String,
    other_ca: String,
    password_file: std::path::PathBuf,
    dir: tempfile::TempDir,
    _other_dir: tempfile::TempDir,
}

async fn tls_servers() -> TlsServers {
    tokio::task::spawn_blocking(|| {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = certificates(dir.path());
        let other_dir = tempfile::tempdir().unwrap();
        let (other_ca, _, _) = certificates(other_dir.path());
        let password_file = dir.path().join("own-password");
        std::fs::write(&password_file, format!("{OWN_PASSWORD}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        TlsServers {
            legacy: tls_only_cluster(&cert, &key),
            new: tls_only_cluster(&cert, &key),
            ca,
            other_ca,
            password_file,
            dir,
            _other_dir: other_dir,
        }
    })
    .await
    .unwrap()
}

impl TlsServers {
    /// pgdual in front of these servers, both with `tls = "verify-full"` against `ca`, its
    /// own role's password read from the file. Legacy's name is checked as `localhost`, new's
    /// as its host, the IP address 127.0.0.1.
    fn config(&self, ca: &str) -> Config {
        let mut c = config_for(&self.legacy);
        c.legacy.tls = TlsMode::VerifyFull;
        c.legacy.tls_ca_file = Some(ca.into());
        c.legacy.tls_server_name = Some("localhost".into());
        c.legacy.user = OWN_USER.into();
        c.legacy.password_file = Some(self.password_file.clone());
        c.new.host = "127.0.0.1".into();
        c.new.port = self.new.port;
        c.new.tls = TlsMode::VerifyFull;
        c.new.tls_ca_file = Some(ca.into());
        c.new.user = OWN_USER.into();
        c.new.password_file = Some(self.password_file.clone());
        c
    }
}

const OWN_RULES: &str = r#"
[[table]]
legacy = "public.tls_users"
new = "app.tls_customers"
keys = ["id"]
write = "on"
read = "new"
[table.columns]
customer_id = "id"
full_name = "name"
"#;

/// Rows of `sql` on a server, one line each, through the harness's psql (over TLS).
fn rows(c: &PgCluster, sql: &str) -> String {
    c.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_connections_use_verify_full_tls_to_servers_that_refuse_plaintext() {
    let s = tls_servers().await;
    rows(
        &s.legacy,
        "CREATE TABLE tls_users (id bigint PRIMARY KEY, name text NOT NULL)",
    );
    rows(
        &s.new,
        "CREATE SCHEMA app; \
         CREATE TABLE app.tls_customers (customer_id bigint PRIMARY KEY, full_name text NOT NULL)",
    );
    let rules_file = s.dir.path().join("rules.toml");
    std::fs::write(&rules_file, OWN_RULES).unwrap();
    let mut config = s.config(&s.ca);
    config.rules_file = Some(rules_file);
    config.mirror.poll_interval_ms = 50;
    config.mirror.retry_initial_ms = 50;
    config.mirror.retry_max_ms = 500;
    config.mirror.dead_letter_file = s.dir.path().join("dead.jsonl");

    // Catalog checks (what `pgdual rules check` and rules reloads run), over TLS to both.
    let (legacy, new) = pgdual::net::endpoint::Endpoints::from_config(&config)
        .unwrap()
        .clients()
        .await
        .unwrap();
    let new = new.expect("new configured");
    let rules = pgdual_rules::parse_rules(OWN_RULES, "rules.toml").unwrap();
    let problems = pgdual::control::catalog::check(&rules, &legacy, Some(&new)).await;
    assert!(problems.is_empty(), "{problems:#?}");
    let ssl =
        "SELECT ssl::text || ' ' || current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for c in [&legacy, &new] {
        let row = c.query_one(ssl, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("true {OWN_USER}"));
    }

    // The mirror (SCRAM role, password from the file) converges.
    let p = Proxy::start(config.clone()).expect("start pgdual");
    wait_mirror_ready(&p).await;
    let port = p.local_addr().port();
    let client = connect(port).await;
    client
        .batch_execute(
            "INSERT INTO tls_users SELECT i, 'name ' || i FROM generate_series(1, 20) i;
             UPDATE tls_users SET name = 'renamed' WHERE id = 3; DELETE FROM tls_users WHERE id = 4",
        )
        .await
        .unwrap();
    let on_legacy = "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM tls_users";
    let on_new = "SELECT string_agg(customer_id || ':' || full_name, ',' ORDER BY customer_id) \
                  FROM app.tls_customers";
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows(&s.legacy, on_legacy) != rows(&s.new, on_new) {
        assert!(Instant::now() < deadline, "new never converged to legacy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rows(&s.new, on_new).contains("3:renamed"));

    // A read in `new` mode is answered by new, over TLS, exactly as legacy answers it.
    wait_legacy_columns(&p).await;
    let reader = connect(port).await;
    let read = "SELECT id, name FROM tls_users WHERE id = 3";
    let row = reader.query_one(read, &[]).await.unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        (3, "renamed".to_string())
    );
    let page = p.metrics().render();
    assert_eq!(
        metric(
            &page,
            "pgdual_reads_total{table=\"public.tls_users\",route=\"new\"}"
        ),
        1.0,
        "{page}"
    );
    // Every connection of pgdual's role was encrypted (the servers take nothing else).
    for c in [&s.legacy, &s.new] {
        let plain = rows(
            c,
            &format!(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl USING (pid) \
                 WHERE a.usename = '{OWN_USER}' AND NOT ssl"
            ),
        );
        assert_eq!(plain, "0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_connections_with_a_wrong_ca_or_without_tls_fail_naming_the_server() {
    let s = tls_servers().await;
    let (legacy_addr, new_addr) = (
        format!("legacy at 127.0.0.1:{}", s.legacy.port),
        format!("new at 127.0.0.1:{}", s.new.port),
    );
    // A CA that did not sign the certificates: catalog connections fail, naming the server.
    let wrong = s.config(&s.other_ca);
    let err = pgdual::net::endpoint::Endpoints::from_config(&wrong)
        .unwrap()
        .legacy
        .client()
        .await
        .unwrap_err();
    assert!(err.contains(&legacy_addr), "{err}");
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    let mut only_new = s.config(&s.ca);
    only_new.new = wrong.new.clone();
    let err = pgdual::net::endpoint::Endpoints::from_config(&only_new)
        .unwrap()
        .clients()
        .await
        .unwrap_err();
    assert!(err.contains(&new_addr), "{err}");
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");

    // The raw protocol connections of reads on new: the same check, the same naming.
    let target = |ca: &str, mode| TlsTarget {
        mode,
        ca_file: Some(ca.into()),
        server_name: "127.0.0.1".into(),
    };
    let connect_new = |tls: TlsTarget| async move {
        pgdual::net::conn::BackendConn::connect(
            "127.0.0.1",
            s.new.port,
            OWN_USER,
            Some(OWN_PASSWORD),
            "postgres",
            &tls,
            Duration::from_secs(10),
        )
        .await
    };
    let err = connect_new(target(&s.other_ca, TlsMode::VerifyFull))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{}", s.new.port)), "{err}");
    assert!(err.contains("TLS handshake failed"), "{err}");
    // A name the certificate does not carry is refused too.
    let mut other_name = target(&s.ca, TlsMode::VerifyFull);
    other_name.server_name = "db.example.com".into();
    let err = connect_new(other_name).await.unwrap_err().to_string();
    assert!(err.contains("TLS handshake failed"), "{err}");
    // The right CA: verified; `require` and `prefer` encrypt without checking.
    for mode in [TlsMode::VerifyFull, TlsMode::Require, TlsMode::Prefer] {
        connect_new(target(&s.ca, mode))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
    }
    // Without TLS the servers refuse pgdual's role: plaintext is really not accepted.
    let err = connect_new(TlsTarget::disabled())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no encryption"), "{err}");
    let mut plain = s.config(&s.ca);
    plain.new.tls = TlsMode::Disable;
    plain.new.tls_ca_file = None;
    let err = pgdual::net::endpoint::Endpoints::from_config(&plain)
        .unwrap()
        .clients()
        .await
        .unwrap_err();
    assert!(
        err.contains(&new_addr) && err.contains("no encryption"),
        "{err}"
    );
    // pgdual refuses to start with a CA file for new that is not there, naming the file.
    let mut missing = s.config(&s.ca);
    missing.new.tls_ca_file = Some(s.dir.path().join("nope.pem"));
    let Err(err) = Proxy::start(missing) else {
        panic!("started with a CA file that is not there");
    };
    let err = err.to_string();
    assert!(err.contains("nope.pem"), "{err}");
}
