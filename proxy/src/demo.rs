//! `pgdual demo`: a throwaway legacy PostgreSQL with a sample table, pgdual in front of it,
//! and a short workload through the proxy, so a newcomer sees the relay work end to end.

use std::process::Command;
use std::time::Duration;

use pgdual_config::Config;

use crate::cluster::{free_port, ClusterOptions, PgCluster};
use crate::proxy::Proxy;

pub struct DemoOptions {
    /// Where the proxy listens; default 127.0.0.1:6432, or a free port if that is taken.
    pub listen: Option<String>,
    /// Run the sample workload, print it, and exit instead of serving until Ctrl-C.
    pub once: bool,
}

const SETUP: &str = "
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    first_name text NOT NULL,
    last_name  text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO users (first_name, last_name, email) VALUES
    ('Ada', 'Lovelace', 'Ada@Example.com'),
    ('Alan', 'Turing', 'alan@example.com'),
    ('Grace', 'Hopper', 'GRACE@example.com');
";

/// Each statement is sent as its own simple Query, as an application would.
const WORKLOAD: &[&str] = &[
    "INSERT INTO users (first_name, last_name, email) VALUES ('Edsger', 'Dijkstra', 'edsger@example.com')",
    "UPDATE users SET email = lower(email)",
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
    println!("Starting a throwaway legacy PostgreSQL ...");
    let legacy = PgCluster::start(ClusterOptions::default())?;
    legacy.psql(SETUP)?;
    println!(
        "  legacy: 127.0.0.1:{} (data in a temporary directory)",
        legacy.port
    );

    let mut config = Config {
        listen: opts.listen.unwrap_or_else(|| pick("127.0.0.1:6432")),
        ..Config::default()
    };
    config.admin.listen = pick("127.0.0.1:9187");
    config.legacy.port = legacy.port;
    let proxy = Proxy::start(config)?;
    let addr = proxy.local_addr();
    let url = format!("postgres://postgres@{addr}/postgres");
    println!(
        "pgdual is relaying {addr} -> legacy 127.0.0.1:{}",
        legacy.port
    );
    if let Some(admin) = proxy.admin_addr() {
        println!("  metrics: http://{admin}/metrics");
    }

    println!("\nA short workload through pgdual (psql):");
    let mut psql = Command::new(legacy.bin_dir().join("psql"));
    psql.args(["-X", "-e", "-v", "ON_ERROR_STOP=1", &url]);
    for sql in WORKLOAD {
        psql.args(["-c", sql]);
    }
    let out = psql.output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "the sample workload failed");

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
    rt.block_on(crate::signals::terminated());
    println!("\nStopping ...");
    proxy.shutdown(drain);
    drop(legacy);
    Ok(())
}
