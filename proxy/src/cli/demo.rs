//! `pgdual demo`: throwaway legacy and new PostgreSQL servers, a `users` table in legacy and
//! its reshaped successor in new, pgdual in front of legacy with dual-write on, a short
//! workload through the proxy, then the table's reads switched to new live, so a newcomer
//! sees the relay, the mirror and read routing work end to end.

use std::process::Command;
use std::time::Duration;

use pgdual_config::Config;
use pgdual_testkit::{free_port, ClusterOptions, PgCluster};

use crate::app::Proxy;

pub struct DemoOptions {
    /// Where the proxy listens; default 127.0.0.1:6432, or a free port if that is taken.
    pub listen: Option<String>,
    /// Run the sample workload, print it, and exit instead of serving until Ctrl-C.
    pub once: bool,
}

const LEGACY_SCHEMA: &str = "
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    first_name text NOT NULL,
    last_name  text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);";

/// The successor: renamed table and columns, one name instead of two, emails lower-cased.
const NEW_SCHEMA: &str = "
CREATE SCHEMA app;
CREATE TABLE app.customers (
    customer_id  bigint PRIMARY KEY,
    full_name    text NOT NULL,
    email        text NOT NULL,
    signed_up_at timestamptz NOT NULL
);";

const RULES: &str = r#"
[[table]]
legacy = "public.users"
new = "app.customers"
keys = ["id"]
write = "on"
[table.columns]
customer_id = "id"
full_name = "first_name || ' ' || last_name"
email = "lower(email)"
signed_up_at = "created_at"
# How reads answered by new see legacy's columns (renames are read back on their own;
# email was lower-cased on the way in, so reads of email stay on legacy).
[table.read_back]
first_name = "split_part(full_name, ' ', 1)"
last_name = "substr(full_name, length(split_part(full_name, ' ', 1)) + 2)"
"#;

const LEGACY_VIEW: &str = "SELECT string_agg(concat_ws('|', id, first_name || ' ' || last_name, \
    lower(email), created_at), ',' ORDER BY id) FROM users";
const NEW_VIEW: &str = "SELECT string_agg(concat_ws('|', customer_id, full_name, email, \
    signed_up_at), ',' ORDER BY customer_id) FROM app.customers";

/// Each statement is sent as its own simple Query, as an application would.
const WORKLOAD: &[&str] = &[
    "INSERT INTO users (first_name, last_name, email) VALUES ('Ada', 'Lovelace', 'Ada@Example.com'), ('Alan', 'Turing', 'alan@example.com'), ('Grace', 'Hopper', 'GRACE@example.com')",
    "INSERT INTO users (first_name, last_name, email) VALUES ('Edsger', 'Dijkstra', 'edsger@example.com')",
    "UPDATE users SET last_name = 'Hopper-Murray' WHERE first_name = 'Grace'",
    "BEGIN; DELETE FROM users WHERE last_name = 'Turing'; ROLLBACK",
    "SELECT id, first_name, last_name, email FROM users ORDER BY id",
];

fn pick(addr: &str) -> String {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr.to_string(),
        Err(_) => format!("127.0.0.1:{}", free_port().map_or(0, |p| p)),
    }
}

pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    println!("Starting throwaway legacy and new PostgreSQL servers ...");
    let legacy = PgCluster::start(ClusterOptions::default())?;
    let new = PgCluster::start(ClusterOptions::default())?;
    legacy.psql(LEGACY_SCHEMA)?;
    new.psql(NEW_SCHEMA)?;
    println!(
        "  legacy: 127.0.0.1:{}  public.users (id, first_name, last_name, email, created_at)",
        legacy.port
    );
    println!(
        "  new:    127.0.0.1:{}  app.customers (customer_id, full_name, email, signed_up_at)",
        new.port
    );
    let dir = tempfile::tempdir()?;
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, RULES)?;
    println!("  rules:{RULES}");

    let proxy = start_proxy(opts.listen, &legacy, &new, &rules_path, dir.path())?;
    let addr = proxy.local_addr();
    let url = format!("postgres://postgres@{addr}/postgres");
    println!(
        "pgdual is relaying {addr} -> legacy 127.0.0.1:{}",
        legacy.port
    );
    if let Some(admin) = proxy.admin_addr() {
        println!("  metrics: http://{admin}/metrics");
    }

    workload(&url, &legacy, &new)?;

    if let Some(admin) = proxy.admin_addr() {
        reads_on_new(&admin.to_string(), &url, &legacy)?;
    }

    let drain = Duration::from_secs(5);
    if opts.once {
        proxy.shutdown(drain);
        return Ok(());
    }
    println!("\nConnect your application or psql to:\n  {url}\n  psql \"{url}\"");
    println!("Press Ctrl-C to stop pgdual and remove the demo database.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::cli::signals::terminated());
    println!("\nStopping ...");
    proxy.shutdown(drain);
    drop((legacy, new));
    Ok(())
}

/// pgdual for the demo's servers, with its mirror ready.
fn start_proxy(
    listen: Option<String>,
    legacy: &PgCluster,
    new: &PgCluster,
    rules_path: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Proxy> {
    let mut config = Config {
        listen: listen.unwrap_or_else(|| pick("127.0.0.1:6432")),
        rules_file: Some(rules_path.to_path_buf()),
        ..Config::default()
    };
    config.admin.listen = pick("127.0.0.1:9187");
    config.legacy.port = legacy.port;
    config.new.host = "127.0.0.1".into();
    config.new.port = new.port;
    config.mirror.poll_interval_ms = 50;
    config.mirror.dead_letter_file = dir.join("dead-letters.jsonl");
    let proxy = Proxy::start(config)?;
    let ready = std::time::Instant::now() + Duration::from_secs(20);
    let mirror = &proxy.metrics().mirror;
    while mirror.ready.get() == 0 {
        anyhow::ensure!(
            std::time::Instant::now() < ready,
            "the mirror did not start; see the log above"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proxy)
}

/// Runs the sample workload through pgdual with psql, waits for new to catch up, and shows
/// both sides.
fn workload(url: &str, legacy: &PgCluster, new: &PgCluster) -> anyhow::Result<()> {
    println!("\nA short workload through pgdual (psql):");
    let mut psql = Command::new(legacy.bin_dir().join("psql"));
    psql.args(["-X", "-e", "-v", "ON_ERROR_STOP=1", url]);
    for sql in WORKLOAD {
        psql.args(["-c", sql]);
    }
    let out = psql.output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "the sample workload failed");

    // Dual-write is asynchronous: wait (briefly) for new to catch up, then show both sides.
    let caught_up = std::time::Instant::now() + Duration::from_secs(15);
    while legacy.psql(LEGACY_VIEW)? != new.psql(NEW_VIEW)? {
        anyhow::ensure!(
            std::time::Instant::now() < caught_up,
            "new did not catch up with legacy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, cluster, sql) in [
        (
            "legacy public.users",
            legacy,
            "SELECT id, first_name, last_name, email, created_at FROM users ORDER BY id",
        ),
        (
            "new app.customers (mirrored by pgdual)",
            new,
            "SELECT * FROM app.customers ORDER BY customer_id",
        ),
    ] {
        let out = Command::new(cluster.bin_dir().join("psql"))
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                "postgres",
                "-c",
                sql,
            ])
            .output()?;
        println!(
            "\n{name}:\n{}",
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
    }
    Ok(())
}

/// Switches the table's reads to new through the admin API, as an operator would, and
/// shows which reads new answered.
fn reads_on_new(admin: &str, url: &str, legacy: &PgCluster) -> anyhow::Result<()> {
    println!(
        "\nReads of public.users switched to new, live (pgdual flags set public.users read new):"
    );
    crate::cli::admin_client::set_read(admin, None, "public.users", "new", Some(100))?;
    let out = Command::new(legacy.bin_dir().join("psql"))
        .args(["-X", "-e", url])
        .args([
            "-c",
            "SELECT id, first_name, last_name, created_at FROM users ORDER BY id",
        ])
        .args(["-c", "SELECT email FROM users WHERE id = 1"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(
        out.status.success(),
        "the reads failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, metrics) = crate::cli::admin_client::request(admin, "GET", "/metrics", None, None)?;
    let count = |route: &str| {
        let name = format!("pgdual_reads_total{{route=\"{route}\",table=\"public.users\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .unwrap_or("0")
            .to_string()
    };
    println!(
        "Reads of public.users answered by new: {}, by legacy: {} (email has no read-back, so \
         that read stayed on legacy).",
        count("new"),
        count("legacy")
    );
    Ok(())
}
