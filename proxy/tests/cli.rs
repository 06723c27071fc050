//! The `pgdual` binary: `config check`, `serve` with file, environment and flags, logs, and
//! SIGTERM draining.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgdual_testkit::{
    free_port, output_text, psql_to, wait_listening, ClusterOptions, KillOnDrop, PgCluster,
};

fn pgdual() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgdual"))
}

fn psql(port: u16, sql: &str) -> Command {
    let mut c = psql_to(port);
    c.args(["-A", "-t", "-c", sql]);
    c
}

/// Starts `pgdual serve` in front of `cluster` and waits until it answers.
fn serve(
    cluster: &PgCluster,
    extra_toml: &str,
    args: &[&str],
) -> (KillOnDrop, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let file = dir.path().join("pgdual.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\n{extra_toml}\n[legacy]\nport = {}\n[admin]\nlisten = \"\"\n",
            cluster.port
        ),
    )
    .unwrap();
    let child = KillOnDrop(
        pgdual()
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    (child, port, dir)
}

/// `pgdual flags ARGS --admin ADMIN`: whether it succeeded, and what it printed.
fn flags(admin: &str, args: &[&str]) -> (bool, String) {
    let out = pgdual()
        .arg("flags")
        .args(args)
        .args(["--admin", admin])
        .output()
        .unwrap();
    (out.status.success(), output_text(&out))
}

/// Runs `sql` with psql on `port`; its output, trimmed. Fails the test on an error.
fn run(port: u16, sql: &str) -> String {
    let out = psql(port, sql).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A rules file mapping `public.{t}` to `{t}.{new_table}` (key `id`, `write = "on"`, the
/// given `[table.columns]` lines) and a config for pgdual in front of the shared servers with
/// it and `mirror_toml` under `[mirror]`; in the returned directory.
fn mirroring_config(
    t: &str,
    new_table: &str,
    columns: &str,
    mirror_toml: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let (legacy, new) = (pgdual_testkit::legacy(), pgdual_testkit::new_db());
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[[table]]\nlegacy = \"public.{t}\"\nnew = \"{t}.{new_table}\"\nkeys = [\"id\"]\n\
             write = \"on\"\n[table.columns]\n{columns}"
        ),
    )
    .unwrap();
    let config = dir.path().join("pgdual.toml");
    let port = free_port().unwrap();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nrules_file = {:?}\n[legacy]\nport = {}\n\
             [new]\nhost = \"127.0.0.1\"\nport = {}\n[admin]\nlisten = \"\"\n\
             [mirror]\npoll_interval_ms = 50\ndead_letter_file = {:?}\n{mirror_toml}",
            rules,
            legacy.port,
            new.port,
            dir.path().join("dead.jsonl")
        ),
    )
    .unwrap();
    (dir, config)
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgdual did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn config_check_accepts_a_good_file_and_lists_every_problem_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:7000\"\n[legacy]\nhost = \"db\"\n",
    )
    .unwrap();
    let out = pgdual()
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("ok"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"nope\"\n[legacy]\nport = 0\n[limits]\nmax_client_connections = 0\n",
    )
    .unwrap();
    let out = pgdual()
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = output_text(&out);
    for field in ["listen:", "legacy.port:", "limits.max_client_connections:"] {
        assert!(msg.contains(field), "{field} missing from:\n{msg}");
    }
    assert!(msg.contains("bad.toml"), "{msg}");

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[legacy]\nprot = 5432\n").unwrap();
    let out = pgdual()
        .args(["config", "check"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(output_text(&out).contains("prot"), "{}", output_text(&out));

    // The rules file a config names is checked too.
    let with_rules = dir.path().join("with-rules.toml");
    std::fs::write(&with_rules, "rules_file = \"missing-rules.toml\"\n").unwrap();
    let out = pgdual()
        .args(["config", "check"])
        .arg(&with_rules)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        output_text(&out).contains("rules_file: cannot read missing-rules.toml"),
        "{}",
        output_text(&out)
    );

    let out = pgdual()
        .args(["config", "check"])
        .arg(&good)
        .env("PGDUAL_LEGACY_PORT", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        output_text(&out).contains("PGDUAL_LEGACY_PORT"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn serve_relays_logs_json_and_drains_on_sigterm() {
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap();
    let (mut child, port, _dir) = serve(&cluster, "", &["--log-format", "json"]);
    let out = psql(port, "SELECT 40 + 2").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        output_text(&out)
    );

    // A query in flight when SIGTERM arrives finishes; new clients are refused.
    let in_flight = psql(port, "SELECT pg_sleep(1.5), 'finished'")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    sigterm(&child);
    std::thread::sleep(Duration::from_millis(200));
    let refused = psql(port, "SELECT 1").output().unwrap();
    assert!(
        !refused.status.success(),
        "new connections are refused while draining"
    );
    let finished = in_flight.wait_with_output().unwrap();
    assert!(finished.status.success(), "{}", output_text(&finished));
    assert!(String::from_utf8_lossy(&finished.stdout).contains("finished"));
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let first = logs.lines().next().unwrap_or_default();
    assert!(
        first.starts_with('{') && first.contains("pgdual listening"),
        "{logs}"
    );
    assert!(
        !logs.contains("SELECT"),
        "statements are not logged by default"
    );
}

#[test]
fn drain_timeout_closes_remaining_sessions_with_57p01() {
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap();
    let (mut child, port, _dir) = serve(&cluster, "[limits]\ndrain_timeout_ms = 500", &[]);
    let long = psql(port, "SELECT pg_sleep(30)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    sigterm(&child);
    let out = long.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("pgdual is shutting down"),
        "{}",
        output_text(&out)
    );
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn passwords_come_from_files_or_the_environment_never_from_flags() {
    // No flag takes a password (it would show in `ps`).
    for flag in ["--legacy-password", "--new-password", "--password"] {
        let out = pgdual()
            .args(["serve", flag, "secret"])
            .env_remove("PGDUAL_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", output_text(&out));
        assert!(
            output_text(&out).contains("unexpected argument"),
            "{}",
            output_text(&out)
        );
    }
    // config check reads the password files: a missing one is named, a loose one warned.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = dir.path().join("pgdual.toml");
    let legacy = format!("[legacy]\npassword_file = {:?}\n", pw.display().to_string());
    std::fs::write(&file, &legacy).unwrap();
    let check = || {
        let out = pgdual()
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        (out.status.code(), output_text(&out))
    };
    let (code, msg) = check();
    assert_eq!(code, Some(0), "{msg}");
    assert!(
        msg.contains("warning: legacy.password_file: ") && msg.contains("644"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
    std::fs::write(
        &file,
        format!("{legacy}[new]\npassword_file = \"missing-pw\"\n"),
    )
    .unwrap();
    let (code, msg) = check();
    assert_eq!(code, Some(1), "{msg}");
    assert!(
        msg.contains("new.password_file: cannot read missing-pw"),
        "{msg}"
    );
    // Both a password and a password file: a problem naming both.
    let out = pgdual()
        .args(["config", "check"])
        .arg(&file)
        .env("PGDUAL_LEGACY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    let msg = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(
        msg.contains("legacy.password: set either legacy.password or legacy.password_file"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
}

#[test]
fn bad_flags_are_named() {
    let out = pgdual()
        .args(["serve", "--legacy-port", "abc", "--listen", "x"])
        .env_remove("PGDUAL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = output_text(&out);
    assert!(msg.contains("legacy.port (from --legacy-port)"), "{msg}");
    assert!(msg.contains("listen:"), "{msg}");
}

#[test]
fn rules_check_offline_and_against_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[table]]\nlegacy = \"users\"\nnew = \"public.u2\"\nkeys = []\ncolumns = { id = \"id(\" }\n",
    )
    .unwrap();
    let out = pgdual()
        .args(["rules", "check", "--offline"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = output_text(&out);
    for at in [
        "table[0] (users).legacy",
        "table[0] (users).keys",
        "table[0] (users).columns.id",
    ] {
        assert!(msg.contains(at), "{at} missing from:\n{msg}");
    }

    let cluster = PgCluster::start(ClusterOptions::default()).unwrap();
    cluster
        .psql(
            "CREATE TABLE users (id int PRIMARY KEY, email text);
             CREATE TABLE users_v2 (user_id int PRIMARY KEY, email_lower text)",
        )
        .unwrap();
    let config = dir.path().join("pgdual.toml");
    std::fs::write(&config, format!("[legacy]\nport = {}\n", cluster.port)).unwrap();
    let rules = dir.path().join("rules.toml");
    let write_rules = |email_col: &str| {
        std::fs::write(
            &rules,
            format!(
                "[[table]]\nlegacy = \"public.users\"\nnew = \"public.users_v2\"\ndatabase = \"legacy\"\n\
                 keys = [\"id\"]\n[table.columns]\nuser_id = \"id\"\n{email_col} = \"lower(email)\"\n"
            ),
        )
        .unwrap()
    };
    write_rules("email_lower");
    let out = pgdual()
        .args(["rules", "check", "--config"])
        .arg(&config)
        .arg(&rules)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("ok (1 tables, checked against legacy)"),
        "{}",
        output_text(&out)
    );
    write_rules("email_typo");
    let out = pgdual()
        .args(["rules", "check", "--config"])
        .arg(&config)
        .arg(&rules)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        output_text(&out).contains("table[0] (public.users).columns.email_typo: public.users_v2 has no column \"email_typo\""),
        "{}",
        output_text(&out)
    );
}

#[test]
fn demo_once_mirrors_the_workload_and_routes_reads_to_new() {
    let out = pgdual()
        .args(["demo", "--once", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let msg = output_text(&out);
    assert!(out.status.success(), "{msg}");
    // The new side shows the reshaped rows: one name, lower-cased email.
    assert!(msg.contains("Grace Hopper-Murray"), "{msg}");
    assert!(msg.contains("| ada@example.com"), "{msg}");
    assert!(
        msg.contains("Ada@Example.com"),
        "legacy keeps its own values: {msg}"
    );
    assert!(
        msg.contains("Alan Turing"),
        "the rolled-back delete left Turing in new: {msg}"
    );
    // Then the table's reads move to new, live: the name read back from new's full_name
    // comes out as legacy's two columns, and the read of email stays on legacy.
    assert!(
        msg.contains("public.users: read new 100% (rules version 2)"),
        "{msg}"
    );
    assert!(msg.contains(" Grace      | Hopper-Murray |"), "{msg}");
    assert!(msg.contains("answered by new: 1, by legacy: 1"), "{msg}");
    assert!(!msg.contains("WARN"), "a clean run logs no warning: {msg}");
}

#[test]
fn sighup_reloads_rules_instead_of_killing_the_proxy() {
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap();
    let (mut child, port, _dir) = serve(&cluster, "", &[]);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop pgdual"
    );
    let out = psql(port, "SELECT 'alive'").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "alive",
        "{}",
        output_text(&out)
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("SIGHUP: reloading the rules file"), "{logs}");
    assert!(logs.contains("no rules_file is configured"), "{logs}");
}

#[test]
fn flags_cli_shows_and_sets_write_and_read_modes_live() {
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap();
    cluster
        .psql(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             CREATE SCHEMA v2; CREATE TABLE v2.items (item_id int PRIMARY KEY, name text)",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "# items move to v2\n[[table]]\nlegacy = \"public.items\"\nnew = \"v2.items\"\n\
         database = \"legacy\"\nkeys = [\"id\"]\nwrite = \"off\"\n\
         [table.columns]\nitem_id = \"id\"\nname = \"upper(name)\"\n",
    )
    .unwrap();
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let extra = format!(
        "rules_file = {:?}\n[mirror]\ndead_letter_file = {:?}\npoll_interval_ms = 50",
        rules.display().to_string(),
        dir.path().join("dead.jsonl").display().to_string()
    );
    let (mut child, port, _cfg_dir) = serve(&cluster, &extra, &["--admin-listen", &admin]);
    let flags = |args: &[&str]| flags(&admin, args);
    // The mirror starts with the rules as read: wait until it reports ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, msg) = flags(&["status"]);
        if ok && msg.contains("ready=true") {
            assert!(msg.contains("public.items") && msg.contains("off"), "{msg}");
            break;
        }
        assert!(Instant::now() < deadline, "{msg}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, msg) = flags(&["set", "public.items", "write", "on"]);
    assert!(ok, "{msg}");
    assert!(
        msg.contains("public.items: write on (rules version 2)"),
        "{msg}"
    );
    assert!(std::fs::read_to_string(&rules)
        .unwrap()
        .starts_with("# items move to v2"));
    let (ok, msg) = flags(&["set", "public.missing", "write", "on"]);
    assert!(
        !ok && msg.contains("no rule for table public.missing"),
        "{msg}"
    );
    // Once the mirror has installed version 2's triggers, writes through pgdual reach v2.items.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !flags(&["status"]).1.contains("ready=true rules_version=2 ") {
        assert!(Instant::now() < deadline, "mirror never followed version 2");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = psql(port, "INSERT INTO items VALUES (1, 'bolt')")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    loop {
        let mirrored = cluster
            .psql("SELECT name FROM v2.items WHERE item_id = 1")
            .unwrap();
        if mirrored == "BOLT" {
            break;
        }
        assert!(Instant::now() < deadline, "never mirrored");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reads: a mode and a ramp, written back to the file and shown by status.
    let (ok, msg) = flags(&["set", "public.items", "read", "shadow", "25"]);
    assert!(ok, "{msg}");
    assert!(
        msg.contains("public.items: read shadow 25% (rules version 3)"),
        "{msg}"
    );
    let file = std::fs::read_to_string(&rules).unwrap();
    assert!(
        file.starts_with("# items move to v2")
            && file.contains("read = \"shadow\"")
            && file.contains("read_percent = 25"),
        "{file}"
    );
    let (ok, msg) = flags(&["status"]);
    assert!(ok && msg.contains("shadow 25%"), "{msg}");
    for (args, reason) in [
        (
            &["set", "public.items", "read", "sideways"][..],
            "read mode must be legacy, shadow or new",
        ),
        (
            &["set", "public.items", "read", "new", "150"][..],
            "the percentage must be 0-100",
        ),
    ] {
        let (ok, msg) = flags(args);
        assert!(!ok && msg.contains(reason), "{msg}");
    }
    let (_, msg) = flags(&["status"]);
    assert!(msg.contains("rules version 3"), "{msg}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn flags_set_read_legacy_works_with_the_new_database_stopped() {
    let legacy = PgCluster::start(ClusterOptions::default()).unwrap();
    let new = PgCluster::start(ClusterOptions::default()).unwrap();
    legacy
        .psql("CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'bolt')")
        .unwrap();
    new.psql(
        "CREATE SCHEMA v2; CREATE TABLE v2.items (item_id int PRIMARY KEY, name text);
         INSERT INTO v2.items VALUES (1, 'bolt')",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[table]]\nlegacy = \"public.items\"\nnew = \"v2.items\"\nkeys = [\"id\"]\n\
         write = \"on\"\nread = \"new\"\n[table.columns]\nitem_id = \"id\"\nname = \"name\"\n",
    )
    .unwrap();
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let extra = format!(
        "rules_file = {:?}\n[mirror]\ndead_letter_file = {:?}\n[new]\nhost = \"127.0.0.1\"\nport = {}",
        rules.display().to_string(),
        dir.path().join("dead.jsonl").display().to_string(),
        new.port
    );
    let (mut child, port, _cfg_dir) = serve(&legacy, &extra, &["--admin-listen", &admin]);
    let flags = |args: &[&str]| flags(&admin, args);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !flags(&["status"]).1.contains("ready=true") {
        assert!(Instant::now() < deadline, "the mirror never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    new.stop();
    let (ok, msg) = flags(&["set", "public.items", "read", "legacy"]);
    assert!(ok, "{msg}");
    assert!(
        msg.contains("public.items: read legacy (rules version 2)"),
        "{msg}"
    );
    assert!(std::fs::read_to_string(&rules)
        .unwrap()
        .contains("read = \"legacy\""));
    let out = psql(port, "SELECT name FROM items WHERE id = 1")
        .output()
        .unwrap();
    assert_eq!(output_text(&out).trim(), "bolt");
    // Back onto new while new is down: refused, saying why.
    let (ok, msg) = flags(&["set", "public.items", "read", "new"]);
    assert!(!ok && msg.contains("cannot connect to new"), "{msg}");
    assert!(msg.contains("rules version 2 stays"), "{msg}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}

/// `pgdual backfill` killed mid-way resumes from its checkpoint; `pgdual verify` proves
/// parity, reports drift with a failing exit status, and `--repair` fixes it.
#[test]
fn backfill_resumes_after_sigkill_and_verify_reports_and_repairs_drift() {
    let (legacy, new) = (pgdual_testkit::legacy(), pgdual_testkit::new_db());
    let t = "cli_backfill";
    let qualified = format!("public.{t}");
    run(
        legacy.port,
        &format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id bigint PRIMARY KEY, name text, v int);
             INSERT INTO {t} SELECT g, 'n' || g, g % 7 FROM generate_series(1, 200000) g; ANALYZE {t};"
        ),
    );
    run(
        new.port,
        &format!(
            "DROP SCHEMA IF EXISTS {t} CASCADE; CREATE SCHEMA {t};
             CREATE TABLE {t}.customers (customer_id bigint PRIMARY KEY, name text, v int);"
        ),
    );
    let (_dir, config) = mirroring_config(
        t,
        "customers",
        "customer_id = \"id\"\nname = \"name\"\nv = \"v\"\n",
        "capture = \"triggers\"\n[backfill]\nmax_latency_ratio = 0.0\n",
    );
    let job = |args: &[&str]| {
        let mut c = pgdual();
        c.args(args).arg("--config").arg(&config);
        c
    };
    // Without dual-write on, a backfill is refused and says why.
    let out = job(&["backfill", &qualified]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("dual-write is not on"),
        "{}",
        output_text(&out)
    );

    let mut serve = KillOnDrop(
        pgdual()
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while run(
        legacy.port,
        &format!(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = '{t}'::regclass AND NOT tgisinternal"
        ),
    ) == "0"
    {
        assert!(Instant::now() < deadline, "capture never installed");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = job(&["backfill", &qualified, "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("rows (estimate): 200000"),
        "{}",
        output_text(&out)
    );

    let mut first = KillOnDrop(
        job(&[
            "backfill",
            &qualified,
            "--batch-size",
            "2000",
            "--rate",
            "20000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let copied = || {
        run(
            legacy.port,
            &format!("SELECT coalesce((SELECT rows_copied FROM pgdual.backfills WHERE tbl = 'public.{t}'), 0)"),
        )
        .parse::<i64>()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while copied() < 40_000 {
        assert!(Instant::now() < deadline, "the backfill never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let checkpoint = |what: &str| {
        run(
            legacy.port,
            &format!("SELECT {what} FROM pgdual.backfills WHERE tbl = 'public.{t}'"),
        )
    };
    assert_eq!(
        checkpoint("state"),
        "running",
        "killed, it could not say otherwise"
    );
    let (killed_at, started) = (copied(), checkpoint("started_at"));
    assert!(killed_at < 200_000, "{killed_at}");

    let out = job(&["backfill", &qualified, "--batch-size", "5000"])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("backfill resumes from its checkpoint"),
        "{text}"
    );
    assert!(
        text.contains("backfill of public.cli_backfill done: 200000 rows"),
        "{text}"
    );
    assert_eq!(checkpoint("state"), "done");
    assert_eq!(checkpoint("started_at"), started, "it started over");

    let out = job(&["verify", &qualified]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("parity: 100%"),
        "{}",
        output_text(&out)
    );

    run(
        new.port,
        &format!("UPDATE {t}.customers SET v = -1 WHERE customer_id = 5"),
    );
    let out = job(&["verify", &qualified, "--show-values"])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("(id)=(5)  differs in column v: legacy \"5\", new \"-1\""),
        "{text}"
    );
    assert!(
        text.contains("1 row(s) differ between legacy and new (--repair fixes them)"),
        "{text}"
    );
    let out = job(&["verify", &qualified, "--repair", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["repaired"], 1, "{report}");
    assert_eq!(report["after_repair"], 0, "{report}");
    assert_eq!(
        run(
            new.port,
            &format!("SELECT v FROM {t}.customers WHERE customer_id = 5")
        ),
        "5"
    );
    serve.0.kill().unwrap();
    let _ = serve.0.wait();
}

/// pgdual killed (SIGKILL) while it streams from its capture slot under a stream of
/// committed writes, then started again: the slot hands out again whatever was not
/// confirmed, so nothing is lost, and what is applied twice changes nothing.
#[test]
fn logical_capture_killed_mid_stream_loses_nothing_after_a_restart() {
    let (legacy, new) = (pgdual_testkit::legacy(), pgdual_testkit::new_db());
    let t = "cli_kill";
    run(
        legacy.port,
        &format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id bigint PRIMARY KEY, v int NOT NULL, s text)"
        ),
    );
    run(
        new.port,
        &format!(
            "DROP SCHEMA IF EXISTS {t} CASCADE; CREATE SCHEMA {t};
             CREATE TABLE {t}.items (id bigint PRIMARY KEY, v int NOT NULL, s text)"
        ),
    );
    let (_dir, config) = mirroring_config(
        t,
        "items",
        "id = \"id\"\nv = \"v\"\ns = \"s\"\n",
        &format!(
            "capture = \"logical\"\nslot = \"{t}\"\npublication = \"{t}\"\n\
             retry_initial_ms = 50\nretry_max_ms = 500\n"
        ),
    );
    let start = || {
        KillOnDrop(
            pgdual()
                .args(["serve", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let streaming = || {
        run(
            legacy.port,
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{t}' AND active"
            ),
        ) == "1"
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: timed out");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut serve = start();
    wait("streaming from the slot", &streaming);

    // One session commits 3000 small transactions: inserts, updates, deletes.
    let writer = std::thread::spawn({
        let port = legacy.port;
        move || {
            psql(
                port,
                &format!(
                    "DO $$ BEGIN FOR i IN 1..3000 LOOP
                       INSERT INTO {t} VALUES (i, 0, 'row ' || i);
                       UPDATE {t} SET v = v + 1, s = s || '+' WHERE id = i / 2;
                       DELETE FROM {t} WHERE id = i / 3 AND i % 3 = 0;
                       COMMIT;
                       PERFORM pg_sleep(0.002);
                     END LOOP; END $$"
                ),
            )
            .output()
            .unwrap()
        }
    });
    let in_new = || {
        run(new.port, &format!("SELECT count(*) FROM {t}.items"))
            .parse::<i64>()
            .unwrap()
    };
    wait("some rows mirrored", &|| in_new() > 200);
    assert!(!writer.is_finished(), "the kill must land mid-stream");
    serve.0.kill().unwrap();
    serve.0.wait().unwrap();
    let at_kill = in_new();
    std::thread::sleep(Duration::from_millis(500));
    let _serve = start();
    let out = writer.join().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let legacy_view =
        format!("SELECT md5(string_agg(concat_ws('|', id, v, s), ',' ORDER BY id)) FROM {t}");
    let new_view =
        format!("SELECT md5(string_agg(concat_ws('|', id, v, s), ',' ORDER BY id)) FROM {t}.items");
    let expected = run(legacy.port, &legacy_view);
    wait("new converges to legacy", &|| {
        run(new.port, &new_view) == expected
    });
    assert!(at_kill < in_new(), "killed mid-way: {at_kill} rows then");
    assert_eq!(
        run(legacy.port, &format!("SELECT count(*) FROM {t}")),
        in_new().to_string()
    );
}
