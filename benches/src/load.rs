//! pgdual-load: N clients running a statement mix against PostgreSQL directly and through
//! pgdual, alternating rounds (direct, pgdual, direct, pgdual, ...) in one run, printing
//! throughput and the p50/p99/p99.9 latency each side saw and what pgdual adds.
//!
//! With no `--direct`/`--proxy`, it starts a throwaway PostgreSQL and pgdual in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio_postgres::{Client, NoTls};

#[derive(Parser)]
#[command(about = "Latency pgdual adds: direct vs through pgdual, side by side")]
struct Args {
    /// PostgreSQL host:port to compare against (default: a throwaway server).
    #[arg(long)]
    direct: Option<String>,
    /// pgdual host:port in front of --direct (default: an in-process pgdual).
    #[arg(long)]
    proxy: Option<String>,
    #[arg(long, default_value = "postgres")]
    user: String,
    #[arg(long, default_value = "postgres")]
    database: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds per round per target.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds per target (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, value_enum, default_value = "mixed")]
    mix: Mix,
    #[arg(long, value_enum, default_value = "prepared")]
    protocol: Protocol,
    /// Rows in the benchmark table.
    #[arg(long, default_value_t = 10_000)]
    rows: i32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mix {
    /// Point selects by key.
    Read,
    /// Point updates by key.
    Write,
    /// 80% point selects, 20% point updates.
    Mixed,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Protocol {
    /// Simple query protocol, literal values.
    Simple,
    /// Extended protocol, unnamed statement parsed every time.
    Extended,
    /// Extended protocol, statements prepared once per client.
    Prepared,
}

struct Round {
    tps: f64,
    hist: Histogram<u64>,
}

async fn connect(addr: &str, args: &Args) -> Client {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host={host} port={port} user={} dbname={}",
            args.user, args.database
        ),
        NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tokio::spawn(conn);
    c
}

async fn client_loop(
    c: Client,
    args: Arc<Args>,
    seed: u64,
    until: Instant,
) -> (u64, Histogram<u64>) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let read = "SELECT v, note FROM pgdual_load WHERE id = $1";
    let write = "UPDATE pgdual_load SET v = v + 1 WHERE id = $1";
    let (pr, pw) = if args.protocol == Protocol::Prepared {
        (
            Some(c.prepare(read).await.unwrap()),
            Some(c.prepare(write).await.unwrap()),
        )
    } else {
        (None, None)
    };
    let mut x = seed | 1;
    let mut n = 0;
    while Instant::now() < until {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = (x % args.rows as u64) as i32 + 1;
        let is_write = match args.mix {
            Mix::Read => false,
            Mix::Write => true,
            Mix::Mixed => x.is_multiple_of(5),
        };
        let sql = if is_write { write } else { read };
        let started = Instant::now();
        let r = match (args.protocol, is_write) {
            (Protocol::Simple, _) => c
                .simple_query(&sql.replace("$1", &id.to_string()))
                .await
                .map(drop),
            (Protocol::Extended, _) => c.query(sql, &[&id]).await.map(drop),
            (Protocol::Prepared, false) => c.query(pr.as_ref().unwrap(), &[&id]).await.map(drop),
            (Protocol::Prepared, true) => c.query(pw.as_ref().unwrap(), &[&id]).await.map(drop),
        };
        r.expect("statement failed");
        let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
        n += 1;
    }
    (n, hist)
}

async fn round(addr: &str, args: &Arc<Args>, r: usize) -> Round {
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(connect(addr, args).await);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(client_loop(
                c,
                args.clone(),
                (r * 1000 + i) as u64 * 0x9E37_79B9,
                until,
            ))
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut total = 0;
    for t in tasks {
        let (n, h) = t.await.unwrap();
        total += n;
        hist.add(h).unwrap();
    }
    Round {
        tps: total as f64 / started.elapsed().as_secs_f64(),
        hist,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    // Embedded targets live as long as the run.
    let mut _cluster = None;
    let mut _proxy = None;
    let (direct, proxied) = match (&args.direct, &args.proxy) {
        (Some(d), Some(p)) => (d.clone(), p.clone()),
        (None, None) => {
            let cluster = pgdual_testkit::PgCluster::start(Default::default())?;
            let mut config = pgdual_config::Config {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            };
            config.admin.listen = String::new();
            config.legacy.port = cluster.port;
            config.log.level = "warn".into();
            let proxy = pgdual::Proxy::start(config)?;
            let pair = (
                format!("127.0.0.1:{}", cluster.port),
                proxy.local_addr().to_string(),
            );
            _cluster = Some(cluster);
            _proxy = Some(proxy);
            pair
        }
        _ => anyhow::bail!("give both --direct and --proxy, or neither"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let setup = connect(&direct, &args).await;
        setup
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS pgdual_load;
                 CREATE TABLE pgdual_load (id int PRIMARY KEY, v int NOT NULL, note text NOT NULL);
                 INSERT INTO pgdual_load SELECT g, 0, md5(g::text) FROM generate_series(1, {}) g;",
                args.rows
            ))
            .await
            .expect("create the benchmark table");
        setup
            .batch_execute("VACUUM ANALYZE pgdual_load")
            .await
            .expect("vacuum the benchmark table");
        println!(
            "{} clients, {:?} protocol, {} mix, {} rounds x {} s per target, alternating",
            args.clients,
            args.protocol.to_possible_value().unwrap().get_name(),
            args.mix.to_possible_value().unwrap().get_name(),
            args.rounds,
            args.seconds
        );
        let mut results: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
        for r in 0..args.rounds {
            for (i, addr) in [&direct, &proxied].into_iter().enumerate() {
                let res = round(addr, &args, r).await;
                println!(
                    "round {} {:7} {:>9.0} tps  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us",
                    r + 1,
                    ["direct", "pgdual"][i],
                    res.tps,
                    res.hist.value_at_quantile(0.5),
                    res.hist.value_at_quantile(0.99),
                    res.hist.value_at_quantile(0.999)
                );
                results[i].push(res);
            }
        }
        let med = |i: usize, f: &dyn Fn(&Round) -> f64| median(results[i].iter().map(f).collect());
        println!("\nmedian of {} rounds:", args.rounds);
        println!(
            "{:8} {:>10} {:>9} {:>9} {:>9}",
            "", "tps", "p50 us", "p99 us", "p99.9 us"
        );
        let q = |q: f64| move |r: &Round| r.hist.value_at_quantile(q) as f64;
        for (i, name) in ["direct", "pgdual"].into_iter().enumerate() {
            println!(
                "{name:8} {:>10.0} {:>9.0} {:>9.0} {:>9.0}",
                med(i, &|r| r.tps),
                med(i, &q(0.5)),
                med(i, &q(0.99)),
                med(i, &q(0.999))
            );
        }
        println!(
            "{:8} {:>9.2}x {:>+9.0} {:>+9.0} {:>+9.0}",
            "added",
            med(1, &|r| r.tps) / med(0, &|r| r.tps),
            med(1, &q(0.5)) - med(0, &q(0.5)),
            med(1, &q(0.99)) - med(0, &q(0.99)),
            med(1, &q(0.999)) - med(0, &q(0.999))
        );
    });
    Ok(())
}
