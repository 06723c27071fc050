//! The `pgdual` binary at `log.level = "debug"` with dual-write on and reads on new: the
//! literals and parameters of clients' statements, the rows the mirror copies or new refuses,
//! and the value a read on new fails on, never reach the log (dependencies' debug output
//! stays out; pgdual's own leaves values out).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgdual_testkit::{connect, free_port, wait_listening, ClusterOptions, KillOnDrop, PgCluster};

/// Values that appear only in the statements of this test.
const LITERAL: &str = "lit-7f3a9c-secret";
const LITERAL_NUMBER: &str = "31415.92653";
const PARAM: &str = "param-5c1b2e-secret";
const PARAM_NUMBER: f64 = 27182.818;
const REFUSED: &str = "forbidden-8e4f1d-secret";

async fn statements(port: u16) {
    let c = connect(port).await;
    // Simple protocol, literals.
    c.batch_execute(&format!(
        "INSERT INTO lv VALUES (1, '{LITERAL}', {LITERAL_NUMBER});
         UPDATE lv SET amount = amount + 1 WHERE secret = '{LITERAL}';
         SELECT * FROM lv WHERE secret = '{LITERAL}';
         INSERT INTO lv VALUES (3, '{REFUSED}', 0);"
    ))
    .await
    .unwrap();
    // Extended protocol, binary parameters.
    c.execute(
        "INSERT INTO lv VALUES ($1, $2, $3)",
        &[&2i32, &PARAM, &PARAM_NUMBER],
    )
    .await
    .unwrap();
    c.query("SELECT * FROM lv WHERE secret = $1", &[&PARAM])
        .await
        .unwrap();
}

/// A read of row 1 answered by new, where its read-back fails on the row's value (22P02,
/// `invalid input syntax for type integer: "lit-..."`): legacy answers it instead.
async fn read_failing_on_new(port: u16) {
    let c = connect(port).await;
    let row = c
        .query_one("SELECT secret FROM lv WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), LITERAL);
}

/// Waits until new holds rows 1 and 2 (the mirror copied them) and row 3 was refused.
async fn wait_mirrored(new_port: u16, dead_letters: &std::path::Path) {
    let n = connect(new_port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = n
            .query_one("SELECT count(*) FROM app.lv WHERE id IN (1, 2)", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        let refused = std::fs::read_to_string(dead_letters).unwrap_or_default();
        if rows == 2 && refused.contains("23514") {
            return;
        }
        assert!(Instant::now() < deadline, "the mirror never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn values_stay_out_of_the_log_at_debug() {
    let legacy = PgCluster::start(ClusterOptions::default()).unwrap();
    let new = PgCluster::start(ClusterOptions::default()).unwrap();
    legacy
        .psql("CREATE TABLE lv (id int PRIMARY KEY, secret text, amount float8)")
        .unwrap();
    new.psql(
        "CREATE SCHEMA app; CREATE TABLE app.lv (id int PRIMARY KEY,
             secret text CHECK (secret NOT LIKE 'forbidden%'), amount float8)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[table]]\nlegacy = \"public.lv\"\nnew = \"app.lv\"\nkeys = [\"id\"]\nwrite = \"on\"\n\
         read = \"new\"\n\
         [table.columns]\nid = \"id\"\nsecret = \"secret\"\namount = \"amount\"\n\
         [table.read_back]\nsecret = \"(secret::int)::text\"\n",
    )
    .unwrap();
    let dead = dir.path().join("dead.jsonl");
    let port = free_port().unwrap();
    let config = dir.path().join("pgdual.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nrules_file = {rules:?}\n\
             [legacy]\nport = {}\n[new]\nhost = \"127.0.0.1\"\nport = {}\n\
             [admin]\nlisten = \"\"\n[log]\nlevel = \"debug\"\n\
             [mirror]\npoll_interval_ms = 50\ndead_letter_file = {dead:?}\n",
            legacy.port, new.port
        ),
    )
    .unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_pgdual"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The mirror installs its triggers a moment after pgdual listens.
        let l = connect(legacy.port).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while l
            .query_one(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.lv'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            < 4
        {
            assert!(
                Instant::now() < deadline,
                "capture triggers never installed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        statements(port).await;
        wait_mirrored(new.port, &dead).await;
        read_failing_on_new(port).await;
    });
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let _ = child.0.wait();
    let mut logs = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("DEBUG"), "the log is at debug:\n{logs}");
    assert!(
        logs.contains("batch refused"),
        "the refused row was logged, without its values:\n{logs}"
    );
    assert!(
        logs.contains("new answered a read with an error") && logs.contains("22P02"),
        "the read failed on new and was logged, without its value:\n{logs}"
    );
    for value in [
        LITERAL,
        LITERAL_NUMBER,
        PARAM,
        &PARAM_NUMBER.to_string(),
        REFUSED,
    ] {
        assert!(!logs.contains(value), "{value} is in the log:\n{logs}");
    }
}
