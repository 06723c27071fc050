//! The CLI face of the admin API (`pgdual flags`): a small blocking HTTP/1.1 client for the
//! admin address, which is loopback unless an operator exposed it (then with a token).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};

/// One request; returns the status code and the body.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)
        .with_context(|| format!("cannot reach the pgdual admin API at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        bail!("malformed answer from {addr}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed status line")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `pgdual flags status`: the rules version, each table's modes, and the mirror.
pub fn print_status(addr: &str, token: Option<&str>) -> anyhow::Result<()> {
    let (code, body) = request(addr, "GET", "/status", token, None)?;
    if code != 200 {
        bail!("GET /status answered {code}: {}", body.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    println!("rules version {}", v["rules_version"]);
    println!(
        "{:<28} {:<28} {:<8} {:<5} {:<11} {:>6} {:>6} {:>9} {:>8}",
        "legacy", "new", "database", "write", "read", "legacy", "new", "fallbacks", "match"
    );
    for t in v["tables"].as_array().into_iter().flatten() {
        let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
        let r = &v["reads"][s("legacy")];
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let fallbacks: u64 = r["fallbacks"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
        let rate = r["shadow_match_rate"]
            .as_f64()
            .map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
        println!(
            "{:<28} {:<28} {:<8} {:<5} {:<11} {:>6} {:>6} {:>9} {:>8}",
            s("legacy"),
            s("new"),
            s("database"),
            s("write"),
            format!("{} {}%", s("read"), t["read_percent"]),
            n("legacy"),
            n("new"),
            fallbacks,
            rate
        );
    }
    let m = &v["mirror"];
    println!(
        "mirror: ready={} rules_version={} backlog={} batches={} changes={} dead_letters={} retries={}",
        m["ready"], m["rules_version"], m["backlog_changes"], m["batches"], m["changes"],
        m["dead_letters"], m["retries"]
    );
    Ok(())
}

/// `pgdual flags set TABLE write on|off`.
pub fn set_write(addr: &str, token: Option<&str>, table: &str, mode: &str) -> anyhow::Result<()> {
    if !matches!(mode, "on" | "off") {
        bail!("write mode must be on or off, not {mode:?}");
    }
    let body = serde_json::json!({ "mode": mode }).to_string();
    put_flag(
        addr,
        token,
        &format!("/tables/{table}/write"),
        &body,
        &format!("{table}: write {mode}"),
    )
}

/// `pgdual flags set TABLE read legacy|shadow|new [PERCENT]`.
pub fn set_read(
    addr: &str,
    token: Option<&str>,
    table: &str,
    mode: &str,
    percent: Option<u8>,
) -> anyhow::Result<()> {
    if pgdual_rules::ReadMode::parse(mode).is_none() {
        bail!("read mode must be legacy, shadow or new, not {mode:?}");
    }
    if percent.is_some_and(|p| p > 100) {
        bail!("the percentage must be 0-100");
    }
    let body = serde_json::json!({ "mode": mode, "percent": percent }).to_string();
    let what = match percent {
        Some(p) => format!("{table}: read {mode} {p}%"),
        None => format!("{table}: read {mode}"),
    };
    put_flag(addr, token, &format!("/tables/{table}/read"), &body, &what)
}

fn put_flag(
    addr: &str,
    token: Option<&str>,
    path: &str,
    body: &str,
    what: &str,
) -> anyhow::Result<()> {
    let (code, answer) = request(addr, "PUT", path, token, Some(body))?;
    let v: serde_json::Value = serde_json::from_str(&answer)
        .with_context(|| format!("PUT {path} answered {code}: {}", answer.trim()))?;
    match v["outcome"].as_str() {
        Some("reloaded") => println!("{what} (rules version {})", v["version"]),
        Some("unchanged") => println!("{what}: already so (rules version {})", v["version"]),
        _ => {
            let reasons: Vec<String> = v["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(|s| format!("  - {s}")))
                .collect();
            bail!(
                "rejected (rules version {} stays):\n{}",
                v["version"],
                reasons.join("\n")
            );
        }
    }
    Ok(())
}
