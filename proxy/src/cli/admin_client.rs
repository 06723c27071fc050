//! The CLI face of the admin API (`pgdual flags`): blocking HTTP requests to the admin
//! address, which is loopback unless an operator exposed it (then with a token). Any status
//! comes back to the caller with its body; only a server that cannot be reached or answers
//! something that is not HTTP is an error.

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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // The admin API is reached directly: an HTTP proxy from the environment must not
        // see the token or the flags.
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let answer = match body {
        Some(b) => agent.run(
            req.header("Content-Type", "application/json")
                .body(b)
                .with_context(|| format!("cannot build {method} {path} for {addr}"))?,
        ),
        None => agent.run(
            req.body(())
                .with_context(|| format!("cannot build {method} {path} for {addr}"))?,
        ),
    };
    let mut answer = answer.map_err(|e| match e {
        ureq::Error::Protocol(_) => {
            anyhow::Error::new(e).context(format!("malformed answer from {addr}"))
        }
        e => anyhow::Error::new(e).context(format!("cannot reach the pgdual admin API at {addr}")),
    })?;
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .read_to_vec()
        .with_context(|| format!("malformed answer from {addr}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
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

#[cfg(test)]
mod tests {
    use super::request;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Answers one request with `answer` and hands back what the client sent.
    fn one_answer(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (addr, server)
    }

    #[test]
    fn an_error_status_comes_back_with_its_body() {
        let (addr, server) = one_answer(
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\nConnection: close\r\n\r\nbad token\r\n\r\n",
        );
        let (code, body) = request(&addr, "GET", "/status", Some("t0k"), None).unwrap();
        assert_eq!((code, body.as_str()), (401, "bad token\r\n\r\n"));
        let sent = server.join().unwrap();
        assert!(sent.starts_with("GET /status HTTP/1.1\r\n"), "{sent}");
        assert!(
            sent.to_ascii_lowercase()
                .contains("authorization: bearer t0k\r\n"),
            "{sent}"
        );
    }

    #[test]
    fn a_chunked_body_is_joined() {
        let (addr, server) = one_answer(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        );
        let answer = request(&addr, "PUT", "/tables/t/write", None, Some("{}")).unwrap();
        assert_eq!(answer, (200, "{\"a\":1}".to_string()));
        let sent = server.join().unwrap().to_ascii_lowercase();
        assert!(
            sent.contains("content-type: application/json\r\n"),
            "{sent}"
        );
    }

    #[test]
    fn an_unreachable_api_is_named() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let err = request(&addr, "GET", "/status", None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach the pgdual admin API at {addr}")
        );
    }
}
