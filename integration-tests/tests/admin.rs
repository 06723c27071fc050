//! The admin API: health, readiness against legacy, Prometheus metrics, bearer token.

use pgdual_integration_tests::*;

#[tokio::test]
async fn healthz_readyz_and_metrics_reflect_traffic() {
    let p = proxy();
    let admin = p.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/healthz", None), (200, "ok\n".into()));
    assert_eq!(http_get(admin, "/readyz", None).0, 200);

    let c = connect(p.local_addr().port()).await;
    c.batch_execute("CREATE TEMP TABLE m (id int)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO m VALUES (1); INSERT INTO m VALUES (2)")
        .await
        .unwrap();
    c.query("SELECT * FROM m", &[]).await.unwrap();
    c.batch_execute("BEGIN; COMMIT").await.unwrap();
    let _ = c.batch_execute("SELEC oops").await;
    let _ = c.batch_execute("SELECT 1/0").await;

    let (status, page) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics", None))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(metric(&page, "pgdual_client_connections"), 1.0);
    assert_eq!(
        metric(&page, "pgdual_statements_total{kind=\"write\"}"),
        2.0
    );
    assert_eq!(metric(&page, "pgdual_statements_total{kind=\"ddl\"}"), 1.0);
    assert_eq!(
        metric(&page, "pgdual_statements_total{kind=\"transaction\"}"),
        2.0
    );
    assert!(metric(&page, "pgdual_statements_total{kind=\"read\"}") >= 2.0);
    assert_eq!(
        metric(&page, "pgdual_statements_total{kind=\"unknown\"}"),
        1.0
    );
    assert_eq!(metric(&page, "pgdual_parse_failures_total"), 1.0);
    assert_eq!(metric(&page, "pgdual_legacy_error_responses_total"), 2.0);
    assert!(
        metric(
            &page,
            "pgdual_relayed_bytes_total{direction=\"client_to_legacy\"}"
        ) > 100.0
    );
    assert!(
        metric(
            &page,
            "pgdual_relayed_bytes_total{direction=\"legacy_to_client\"}"
        ) > 100.0
    );
    assert!(metric(&page, "pgdual_added_latency_seconds_count") > 10.0);
    assert!(page.contains("pgdual_added_latency_seconds_bucket{le=\"+Inf\"}"));
    assert!(page.contains("pgdual_errors_total{source=\"client\"} 0"));
}

#[test]
fn readyz_fails_while_legacy_is_down() {
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap();
    let p = pgdual::Proxy::start(config_for(&cluster)).unwrap();
    let admin = p.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/readyz", None).0, 200);
    cluster.stop();
    let (status, body) = http_get(admin, "/readyz", None);
    assert_eq!(status, 503);
    assert!(
        body.contains(&format!("127.0.0.1:{}", cluster.port)),
        "{body}"
    );
    assert_eq!(
        http_get(admin, "/healthz", None).0,
        200,
        "the proxy itself is healthy"
    );
}

#[test]
fn token_is_required_when_configured() {
    let p = proxy_with(|c| c.admin.token = Some("s3cret".into()));
    let admin = p.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/metrics", None).0, 401);
    assert_eq!(http_get(admin, "/metrics", Some("wrong")).0, 401);
    assert_eq!(http_get(admin, "/metrics", Some("s3cret")).0, 200);
    assert_eq!(http_get(admin, "/readyz", Some("s3cret")).0, 200);
    // Health checks (Docker, load balancers) need no token.
    assert_eq!(http_get(admin, "/healthz", None).0, 200);
}

#[test]
fn exposing_admin_without_a_token_is_refused_at_start() {
    let mut c = config_for(legacy());
    c.admin.listen = "0.0.0.0:0".into();
    let err = pgdual::Proxy::start(c).expect_err("refused").to_string();
    assert!(err.contains("admin.token"), "{err}");
}
