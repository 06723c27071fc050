//! psql and pgbench through pgdual, exactly as they behave directly.

use std::path::Path;
use std::process::{Command, Output};

use pgdual_integration_tests::*;

fn tool(name: &str) -> Command {
    Command::new(legacy().bin_dir().join(name))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run client tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const SCRIPT: &str = r#"
\set ON_ERROR_STOP 0
CREATE TEMP TABLE people (id serial PRIMARY KEY, name text, born date);
\copy people (name, born) FROM 'PEOPLE_CSV' WITH (FORMAT csv)
SELECT * FROM people ORDER BY id;
\copy (SELECT name FROM people ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)
PREPARE by_name(text) AS SELECT id, born FROM people WHERE name = $1;
EXECUTE by_name('Bob');
BEGIN;
UPDATE people SET born = born + 1 RETURNING *;
SAVEPOINT s1;
SELECT 1/0;
ROLLBACK TO SAVEPOINT s1;
SELECT count(*) FROM people WHERE born > '1990-01-01';
ROLLBACK;
SELECT 'not a date'::date;
DO $$ BEGIN RAISE NOTICE 'notice from a DO block'; RAISE WARNING 'and a warning'; END $$;
\echo done
"#;

fn psql_script(port: u16, dir: &Path) -> String {
    let csv = dir.join("people.csv");
    std::fs::write(
        &csv,
        "Alice,1990-05-01\nBob,1985-12-24\n\"Carol, Jr.\",2001-01-01\n",
    )
    .unwrap();
    let script = dir.join("script.sql");
    std::fs::write(
        &script,
        SCRIPT.replace("PEOPLE_CSV", &csv.display().to_string()),
    )
    .unwrap();
    let out = psql_to(port).arg("-f").arg(&script).output().unwrap();
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn psql_script_output_is_identical_direct_and_through_pgdual() {
    let p = proxy();
    let dir = tempfile::tempdir().unwrap();
    let direct = psql_script(legacy().port, dir.path());
    let proxied = psql_script(p.local_addr().port(), dir.path());
    assert_eq!(direct, proxied);
    assert!(proxied.contains("Carol, Jr."), "{proxied}");
    assert!(proxied.contains("division by zero"), "{proxied}");
    assert!(
        proxied.contains("NOTICE:  notice from a DO block"),
        "{proxied}"
    );
    assert!(proxied.contains("done"), "{proxied}");
}

#[test]
fn pgbench_in_all_three_protocols() {
    let p = proxy_with(|c| c.workers = 2);
    let port = p.local_addr().port().to_string();
    let conn = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres"];
    legacy().psql("DROP DATABASE IF EXISTS bench").unwrap();
    legacy().psql("CREATE DATABASE bench").unwrap();
    // Initialization goes through pgdual too (COPY of pgbench_accounts).
    run(tool("pgbench")
        .args(conn)
        .args(["-i", "-s", "1", "-q", "bench"]));
    for mode in ["simple", "extended", "prepared"] {
        let out = run(tool("pgbench")
            .args(conn)
            .args(["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "150", "bench"]));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("number of transactions actually processed: 600/600"),
            "{mode}: {text}"
        );
        assert!(
            text.contains("number of failed transactions: 0"),
            "{mode}: {text}"
        );
    }
    let history: i64 = legacy()
        .psql_db("bench", "SELECT count(*) FROM pgbench_history")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(history, 1800, "every TPC-B transaction reached legacy");
}
