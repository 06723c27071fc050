//! `pgdual rules check` run as pgdual's own roles that are not superusers: one line per
//! grant the rules need and the role lacks, with the statement that gives it, and a pass
//! once those statements ran.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgdual_testkit::{free_port, output_text, ClusterOptions, KillOnDrop, PgCluster};

const RULES: &str = r#"
[[table]]
legacy = "shop.items"
new = "app.items"
keys = ["id"]
write = "on"
read = "new"
[table.columns]
id = "id"
name = "lower(name)"
"#;

#[test]
fn missing_grants_are_listed_one_per_line_and_granting_them_passes() {
    let legacy = PgCluster::start(ClusterOptions::default()).unwrap();
    let new = PgCluster::start(ClusterOptions::default()).unwrap();
    // The application owns its table; pgdual's role may use the schema and read one column.
    legacy
        .psql(
            "CREATE ROLE gr_app; CREATE ROLE gr_pgdual LOGIN;
             CREATE SCHEMA shop AUTHORIZATION gr_app;
             CREATE TABLE shop.items (id int PRIMARY KEY, name text, secret text);
             ALTER TABLE shop.items OWNER TO gr_app;
             GRANT USAGE ON SCHEMA shop TO gr_pgdual;
             GRANT SELECT (id, secret) ON shop.items TO gr_pgdual;",
        )
        .unwrap();
    new.psql(
        "CREATE ROLE gr_pgdual LOGIN; CREATE SCHEMA app;
         CREATE TABLE app.items (id int PRIMARY KEY, name text);
         GRANT USAGE ON SCHEMA app TO gr_pgdual;
         GRANT SELECT, INSERT ON app.items TO gr_pgdual;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgdual.toml");
    std::fs::write(
        &config,
        format!(
            "[legacy]\nport = {}\nuser = \"gr_pgdual\"\n\
             [new]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"gr_pgdual\"\n",
            legacy.port, new.port
        ),
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_pgdual"))
            .args(["rules", "check", "--config"])
            .arg(&config)
            .arg(&rules)
            .output()
            .unwrap()
    };

    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let msg = output_text(&out);
    let expect = [
        "legacy: database postgres: missing CREATE; fix: GRANT CREATE ON DATABASE postgres TO gr_pgdual;",
        "legacy: table shop.items: missing ownership (owned by gr_app); fix: GRANT gr_app TO gr_pgdual;",
        "legacy: table shop.items: missing SELECT (name); fix: GRANT SELECT (name) ON TABLE shop.items TO gr_pgdual;",
        "new: table app.items: missing UPDATE; fix: GRANT UPDATE ON TABLE app.items TO gr_pgdual;",
        "new: table app.items: missing DELETE; fix: GRANT DELETE ON TABLE app.items TO gr_pgdual;",
        "new: table app.items: missing TRUNCATE; fix: GRANT TRUNCATE ON TABLE app.items TO gr_pgdual;",
    ];
    let got: Vec<&str> = msg.lines().filter_map(|l| l.strip_prefix("  - ")).collect();
    assert_eq!(got, expect, "{msg}");
    assert!(msg.contains("6 missing grant(s)"), "{msg}");
    assert!(!msg.contains("problem(s)"), "{msg}");

    // The statements printed are exactly what it takes.
    let fix = |line: &str| line.split("; fix: ").nth(1).unwrap().to_string();
    let on_legacy: Vec<String> = expect[..3].iter().map(|l| fix(l)).collect();
    let on_new: Vec<String> = expect[3..].iter().map(|l| fix(l)).collect();
    legacy.psql(&on_legacy.join("\n")).unwrap();
    new.psql(&on_new.join("\n")).unwrap();
    let out = check();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("ok (1 tables, checked against legacy and new)"),
        "{}",
        output_text(&out)
    );

    // And they are enough: pgdual, as these roles, installs its triggers and mirrors a row.
    mirrors_with(&legacy, &new, &config, &rules);

    // Once the schema exists, owning it is what counts; a superuser lacks nothing.
    legacy
        .psql(
            "DROP SCHEMA pgdual CASCADE; CREATE SCHEMA pgdual;
             REVOKE CREATE ON DATABASE postgres FROM gr_pgdual;",
        )
        .unwrap();
    let out = check();
    assert!(
        output_text(&out).contains(
            "  - legacy: schema pgdual: missing ownership (owned by postgres); \
             fix: ALTER SCHEMA pgdual OWNER TO gr_pgdual;"
        ),
        "{}",
        output_text(&out)
    );
    legacy.psql("ALTER ROLE gr_pgdual SUPERUSER").unwrap();
    new.psql("REVOKE ALL ON app.items FROM gr_pgdual").unwrap();
    new.psql("ALTER ROLE gr_pgdual SUPERUSER").unwrap();
    let out = check();
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Runs `pgdual serve` with `config` and `rules` until a row written on legacy is in new.
fn mirrors_with(legacy: &PgCluster, new: &PgCluster, config: &Path, rules: &Path) {
    let port = free_port().unwrap();
    let mut toml = std::fs::read_to_string(config).unwrap();
    toml = format!(
        "listen = \"127.0.0.1:{port}\"\nrules_file = {rules:?}\n\
         [admin]\nlisten = \"\"\n[mirror]\npoll_interval_ms = 50\n\
         dead_letter_file = {:?}\n{toml}",
        config.with_file_name("dead.jsonl")
    );
    let serve_config = config.with_file_name("serve.toml");
    std::fs::write(&serve_config, toml).unwrap();
    let _child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_pgdual"))
            .arg("serve")
            .arg("--config")
            .arg(&serve_config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let triggers = "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.items'::regclass";
    wait("installing the capture triggers", &|| {
        legacy.psql(triggers).unwrap().trim() == "4"
    });
    legacy
        .psql("INSERT INTO shop.items VALUES (1, 'Ada', 'kept on legacy')")
        .unwrap();
    wait("mirroring the row", &|| {
        new.psql("SELECT name FROM app.items WHERE id = 1")
            .unwrap()
            .trim()
            == "ada"
    });
}
