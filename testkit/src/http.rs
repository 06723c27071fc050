//! The admin API as tests see it: a request, its status code and body (any status, not only
//! 2xx), and samples read out of the Prometheus page.

use std::net::SocketAddr;
use std::time::Duration;

/// `GET path` on the admin API; returns status code and body.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http(addr, "GET", path, token, None)
}

/// `PUT path` with `body` on the admin API; returns status code and body.
pub fn http_put(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "PUT", path, None, Some(body))
}

/// `POST path` with `body` on the admin API; returns status code and body.
pub fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, None, Some(body))
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    let answer = match body {
        Some(b) => agent.run(request.body(b).expect("request")),
        None => agent.run(request.body(()).expect("request")),
    };
    let mut answer = answer.unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    let status = answer.status().as_u16();
    let bytes = answer
        .body_mut()
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: reading the body: {e}"));
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of an unlabelled or labelled sample in a Prometheus text page; labels match in
/// any order, as they do for Prometheus.
pub fn metric(page: &str, name_and_labels: &str) -> f64 {
    sample(page, name_and_labels)
        .unwrap_or_else(|| panic!("metric {name_and_labels} not found in:\n{page}"))
}

/// The value of a sample, if the page has it (labels in any order).
pub fn sample(page: &str, name_and_labels: &str) -> Option<f64> {
    let want = series(name_and_labels);
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (series(s) == want).then(|| v.trim().parse().ok())?
    })
}

/// A sample's name and its labels, sorted.
fn series(text: &str) -> (String, Vec<String>) {
    let Some((name, labels)) = text.split_once('{') else {
        return (text.to_string(), Vec::new());
    };
    let mut labels: Vec<String> = labels
        .trim_end_matches('}')
        .split("\",")
        .map(|l| l.trim_end_matches('"').to_string())
        .collect();
    labels.sort();
    (name.to_string(), labels)
}
