//! Quoted mixed-case table names, end to end: a legacy `public."Orders"` mapped to new
//! `"Shop"."Order Lines"` is mirrored, its reads are routed to new under its own name, and
//! the metrics name it as PostgreSQL prints it; the unquoted `orders`, another table, is left
//! alone.

use pgdual_integration_tests::*;
use pgdual_rules::TableName;

const RULES: &str = r#"
[[table]]
legacy = 'public."Orders"'
new = '"Shop"."Order Lines"'
keys = ["id"]
write = "on"
read = "new"
[table.columns]
order_id = "id"
total = "total"
note = "note"
"#;

const LEGACY_VIEW: &str =
    "SELECT coalesce(string_agg(id || '|' || total || '|' || coalesce(note, ''), ',' ORDER BY id), '') FROM \"Orders\"";
const NEW_VIEW: &str = "SELECT coalesce(string_agg(order_id || '|' || total || '|' || coalesce(note, ''), ',' ORDER BY order_id), '') FROM \"Shop\".\"Order Lines\"";

#[tokio::test]
async fn a_quoted_mixed_case_table_is_mirrored_routed_and_counted_under_its_own_name() {
    let new = new_db();
    let l = connect(legacy().port).await;
    l.batch_execute(
        "DROP TABLE IF EXISTS \"Orders\", orders;
         CREATE TABLE \"Orders\" (id bigint PRIMARY KEY, total numeric(10,2) NOT NULL, note text);
         CREATE TABLE orders (id bigint PRIMARY KEY, note text);
         INSERT INTO orders VALUES (1, 'the other table');",
    )
    .await
    .unwrap();
    connect(new.port)
        .await
        .batch_execute(
            "DROP SCHEMA IF EXISTS \"Shop\" CASCADE; CREATE SCHEMA \"Shop\";
             CREATE TABLE \"Shop\".\"Order Lines\" (order_id bigint PRIMARY KEY,
                 total numeric(10,2) NOT NULL, note text);",
        )
        .await
        .unwrap();
    let (p, _dir) = proxy_with_rules(RULES, new);
    wait_mirror_ready(&p).await;
    wait_legacy_columns(&p).await;

    let c = connect(p.local_addr().port()).await;
    c.batch_execute(
        "INSERT INTO \"Orders\" VALUES (1, 10.50, 'first'), (2, 20, 'second'), (3, 30, NULL);
         UPDATE \"Orders\" SET note = 'changed' WHERE id = 2;
         DELETE FROM \"Orders\" WHERE id = 3;",
    )
    .await
    .unwrap();
    let rows = assert_converges(new, LEGACY_VIEW, NEW_VIEW, 30).await;
    assert_eq!(rows, ["1|10.50|first,2|20.00|changed"]);

    // Reads of the quoted table go to new; reads of `orders` are another table's. A fresh
    // session: the writer's own reads stay on legacy until the mirror says it has applied them.
    let c = connect(p.local_addr().port()).await;
    for sql in [
        "SELECT note FROM \"Orders\" WHERE id = $1",
        "SELECT note FROM public.\"Orders\" WHERE id = $1",
        "SELECT o.note FROM \"public\".\"Orders\" o WHERE o.id = $1",
    ] {
        let row = c.query_one(sql, &[&2i64]).await.unwrap();
        assert_eq!(row.get::<_, Option<&str>>(0), Some("changed"));
    }
    let other = c
        .query_one("SELECT note FROM orders WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(other.get::<_, &str>(0), "the other table");

    let page = p.metrics().render();
    let answered = |route: &str| {
        metric(
            &page,
            &format!("pgdual_reads_total{{table=\"public.\\\"Orders\\\"\",route=\"{route}\"}}"),
        )
    };
    assert!(answered("new") >= 3.0, "{page}");
    assert!(
        !page.contains("table=\"public.orders\""),
        "the unquoted table has no rule: {page}"
    );
    assert_eq!(
        p.reads()
            .table(&TableName {
                schema: "public".into(),
                name: "Orders".into(),
            })
            .new
            .get(),
        answered("new") as u64
    );
}
