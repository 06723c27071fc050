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
