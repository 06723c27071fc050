//! Opens many idle client sessions (raw protocol: StartupMessage, read to ReadyForQuery) and
//! holds them until standard input closes, for measuring what an idle session costs a proxy.
//!
//!   pgdual-idle --port 6432 --sessions 10000 [--user postgres] [--database postgres]
//!              [--large-first BYTES]
//!
//! Prints `ready N` once every session is idle. With `--large-first`, the first session sends
//! one query of about BYTES bytes before idling (to see whether buffers shrink back).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use clap::Parser;
use pgdual::proto::codec::{put_initial, put_message, PROTOCOL_3_0};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    #[arg(long, default_value = "postgres")]
    user: String,
    #[arg(long, default_value = "postgres")]
    database: String,
    /// Sessions opening at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// The first session sends one query of about this many bytes before idling.
    #[arg(long)]
    large_first: Option<usize>,
}

fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    let params = format!("user\0{user}\0database\0{database}\0\0");
    put_initial(&mut out, PROTOCOL_3_0, params.as_bytes());
    out.to_vec()
}

fn query(sql: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_message(&mut out, b'Q', |b| {
        b.extend_from_slice(sql.as_bytes());
        b.extend_from_slice(&[0]);
    });
    out.to_vec()
}

/// Reads messages until ReadyForQuery; fails on ErrorResponse.
async fn until_ready(s: &mut TcpStream) -> Result<()> {
    loop {
        let tag = s.read_u8().await?;
        let len = s.read_i32().await? as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut body).await?;
        match tag {
            b'Z' => return Ok(()),
            b'E' => bail!("server error: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

async fn open(args: &Args, large: Option<usize>) -> Result<TcpStream> {
    let mut s = TcpStream::connect((args.host.as_str(), args.port))
        .await
        .context("connect")?;
    s.write_all(&startup(&args.user, &args.database)).await?;
    until_ready(&mut s).await?;
    if let Some(n) = large {
        let sql = format!("SELECT length('{}')", "x".repeat(n));
        s.write_all(&query(&sql)).await?;
        until_ready(&mut s).await?;
    }
    Ok(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut held = Vec::with_capacity(args.sessions);
    let mut pending = tokio::task::JoinSet::new();
    let args = std::sync::Arc::new(args);
    for i in 0..args.sessions {
        if pending.len() >= args.parallel {
            held.push(pending.join_next().await.expect("a task")??);
        }
        let a = args.clone();
        let large = if i == 0 { a.large_first } else { None };
        pending.spawn(async move { open(&a, large).await });
    }
    while let Some(r) = pending.join_next().await {
        held.push(r??);
    }
    println!("ready {}", held.len());
    // Hold until standard input closes, checking now and then that nothing was closed.
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => if line?.is_none() { break },
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
    Ok(())
}
