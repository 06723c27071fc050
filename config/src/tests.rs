use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("pgdual.toml"))
}

#[test]
fn empty_file_gives_defaults_that_validate() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.problems(), vec![]);
}

#[test]
fn full_file_parses() {
    let c = parse(
        r#"
        listen = "0.0.0.0:7432"
        workers = 2
        [legacy]
        host = "/var/run/postgresql"
        port = 5433
        [admin]
        listen = "0.0.0.0:9000"
        token = "s3cret"
        [log]
        level = "debug"
        format = "json"
        [limits]
        max_message_bytes = 1048576
        max_client_connections = 10
        connect_timeout_ms = 100
        drain_timeout_ms = 0
        "#,
    )
    .unwrap();
    assert_eq!(c.legacy.port, 5433);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.limits.max_client_connections, 10);
    assert_eq!(c.problems(), vec![]);
}

#[test]
fn unknown_field_is_named() {
    let err = parse("[legacy]\nhots = \"x\"\n").unwrap_err().to_string();
    assert!(err.contains("hots"), "{err}");
    assert!(err.contains("pgdual.toml"), "{err}");
}

#[test]
fn every_problem_is_listed_with_its_field() {
    let c = parse(
        r#"
        listen = "nowhere"
        [legacy]
        port = 0
        tls = "verify-full"
        [tls]
        cert_file = "/tmp/cert.pem"
        [admin]
        listen = "0.0.0.0:9187"
        [limits]
        max_message_bytes = 10
        max_client_connections = 0
        "#,
    )
    .unwrap();
    let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
    assert_eq!(
        fields,
        [
            "listen",
            "legacy.port",
            "legacy.tls_ca_file",
            "tls.key_file",
            "admin.token",
            "limits.max_message_bytes",
            "limits.max_client_connections",
        ]
    );
    let err = c.validate("pgdual.toml").unwrap_err().to_string();
    assert!(err.starts_with("7 problem(s) in pgdual.toml"), "{err}");
}

#[test]
fn env_overrides_apply_and_bad_values_are_named() {
    let mut c = Config::default();
    let problems = c.apply_env([
        ("PGDUAL_LEGACY_PORT", "6000"),
        ("PGDUAL_LOG_FORMAT", "json"),
        ("PGDUAL_WORKERS", "many"),
        ("HOME", "/root"),
    ]);
    assert_eq!(c.legacy.port, 6000);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "workers (from PGDUAL_WORKERS)");
}

#[test]
fn bad_enum_value_names_field() {
    let err = parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
    assert!(err.contains("format") || err.contains("xml"), "{err}");
}

#[test]
fn new_database_and_rules_file_settings() {
    let c = parse(
        r#"
        rules_file = "rules.toml"
        [legacy]
        user = "pgdual"
        [new]
        host = "10.0.0.2"
        port = 5433
        dbname = "app"
        "#,
    )
    .unwrap();
    assert_eq!(c.rules_file.as_deref(), Some(Path::new("rules.toml")));
    assert_eq!(c.new.port, 5433);
    assert_eq!(c.new.user, "postgres");
    assert_eq!(c.legacy.user, "pgdual");
    assert_eq!(c.problems(), vec![]);
    let mut c = Config::default();
    let problems = c.apply_env([("PGDUAL_NEW_PASSWORD", "pw"), ("PGDUAL_NEW_PORT", "x")]);
    assert_eq!(c.new.password.as_deref(), Some("pw"));
    assert_eq!(problems[0].field, "new.port (from PGDUAL_NEW_PORT)");
}

#[test]
fn new_takes_the_same_tls_settings_as_legacy() {
    let c = parse(
        r#"
        [legacy]
        tls = "require"
        tls_server_name = "legacy.internal"
        [new]
        host = "10.0.0.2"
        tls = "verify-full"
        tls_ca_file = "/etc/pgdual/new-ca.pem"
        tls_server_name = "new.internal"
        "#,
    )
    .unwrap();
    assert_eq!(c.legacy.tls, TlsMode::Require);
    assert_eq!(c.new.tls, TlsMode::VerifyFull);
    assert_eq!(
        c.new.tls_ca_file.as_deref(),
        Some(Path::new("/etc/pgdual/new-ca.pem"))
    );
    assert_eq!(c.new.tls_server_name.as_deref(), Some("new.internal"));
    assert_eq!(c.problems(), vec![]);
    assert_eq!(Config::default().new.tls, TlsMode::Disable);
    let err = parse("[new]\ntls = \"verify-ca\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("verify-ca"), "{err}");
}

#[test]
fn tls_and_password_env_overrides() {
    let mut c = Config::default();
    let problems = c.apply_env([
        ("PGDUAL_NEW_TLS", "verify-full"),
        ("PGDUAL_NEW_TLS_CA_FILE", "/ca.pem"),
        ("PGDUAL_NEW_TLS_SERVER_NAME", "new.internal"),
        ("PGDUAL_NEW_PASSWORD_FILE", "/run/secrets/new"),
        ("PGDUAL_LEGACY_TLS", "prefer"),
        ("PGDUAL_LEGACY_TLS_CA_FILE", "/lca.pem"),
        ("PGDUAL_LEGACY_TLS_SERVER_NAME", "legacy.internal"),
        ("PGDUAL_LEGACY_PASSWORD_FILE", "/run/secrets/legacy"),
    ]);
    assert_eq!(problems, vec![]);
    assert_eq!(c.new.tls, TlsMode::VerifyFull);
    assert_eq!(c.new.tls_ca_file.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(c.new.tls_server_name.as_deref(), Some("new.internal"));
    assert_eq!(
        c.new.password_file.as_deref(),
        Some(Path::new("/run/secrets/new"))
    );
    assert_eq!(c.legacy.tls, TlsMode::Prefer);
    assert_eq!(c.legacy.tls_ca_file.as_deref(), Some(Path::new("/lca.pem")));
    assert_eq!(c.legacy.tls_server_name.as_deref(), Some("legacy.internal"));
    assert_eq!(
        c.legacy.password_file.as_deref(),
        Some(Path::new("/run/secrets/legacy"))
    );
    let problems = c.apply_env([("PGDUAL_NEW_TLS", "on")]);
    assert_eq!(problems[0].field, "new.tls (from PGDUAL_NEW_TLS)");
    assert!(problems[0].message.contains("verify-full"), "{problems:?}");
}

#[test]
fn tls_and_password_problems_name_their_fields() {
    let c = parse(
        r#"
        [legacy]
        password = "a"
        password_file = "/a"
        [new]
        host = "/var/run/postgresql"
        tls = "verify-full"
        password = "b"
        password_file = "/b"
        "#,
    )
    .unwrap();
    let problems = c.problems();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "new.tls_ca_file",
            "new.tls",
            "legacy.password",
            "new.password"
        ]
    );
    assert!(problems[0].message.contains("new.tls = \"verify-full\""));
    for p in &problems[2..] {
        let name = p.field.trim_end_matches(".password");
        assert!(
            p.message.contains(&format!("{name}.password_file")),
            "both fields named: {p}"
        );
    }
}

#[test]
fn password_files_are_read_trimmed_and_loose_modes_warned() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("legacy");
    std::fs::write(&private, "s3cret pass \n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shared = dir.path().join("new");
    std::fs::write(&shared, "n3w-secret\r\n").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = Config::default();
    c.legacy.password_file = Some(private);
    c.new.password_file = Some(shared.clone());
    let warnings = c.read_password_files("pgdual.toml").unwrap();
    assert_eq!(c.legacy.password.as_deref(), Some("s3cret pass "));
    assert_eq!(c.new.password.as_deref(), Some("n3w-secret"));
    assert_eq!(
        (&c.legacy.password_file, &c.new.password_file),
        (&None, &None)
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("new.password_file: "),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("644"), "{warnings:?}");
    assert!(
        !warnings[0].contains("n3w-secret"),
        "no secret in: {warnings:?}"
    );
    // Validation still passes once the files are read.
    assert_eq!(c.problems(), vec![]);

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let mut c = Config::default();
    c.legacy.password_file = Some(dir.path().join("missing"));
    c.new.password_file = Some(empty);
    let err = c
        .read_password_files("pgdual.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("2 problem(s) in pgdual.toml"), "{err}");
    assert!(err.contains("legacy.password_file: cannot read"), "{err}");
    assert!(
        err.contains("new.password_file: ") && err.contains("is empty"),
        "{err}"
    );
}

#[test]
fn the_example_file_shows_the_defaults() {
    let c = parse(include_str!("../../pgdual.example.toml")).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn job_settings_out_of_range_are_named() {
    let c = parse(
        r#"
        [backfill]
        target_chunk_ms = 0
        concurrency = 100
        max_latency_ratio = 0.5
        retry_initial_ms = 500
        retry_max_ms = 100
        [verify]
        chunk_rows = 0
        "#,
    )
    .unwrap();
    let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
    assert_eq!(
        fields,
        [
            "backfill.target_chunk_ms",
            "verify.chunk_rows",
            "backfill.max_latency_ratio",
            "backfill.concurrency",
            "backfill.retry_max_ms",
        ]
    );
}
