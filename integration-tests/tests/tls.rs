//! TLS: clients to pgdual (rustls, certificate from config) and pgdual to legacy
//! (`legacy.tls = require | verify-full`).

use std::path::Path;
use std::process::Command;

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
