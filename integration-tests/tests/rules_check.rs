//! Rules checked against the live catalogs of legacy and new.

use pgdual_integration_tests::*;

const GOOD: &str = r#"
[[table]]
legacy = "public.rc_users"
new = "app.rc_customers"
keys = ["id"]
[table.columns]
customer_id = "id"
full_name = "first_name || ' ' || last_name"
email = "lower(email)"
signup = "created_at"
tier = "'basic'"
"#;

async fn setup() -> (tokio_postgres::Client, tokio_postgres::Client) {
    let legacy = connect(legacy().port).await;
    let new = connect(new_db().port).await;
    legacy
        .batch_execute(
            "DROP TABLE IF EXISTS rc_users;
             CREATE TABLE rc_users (id int PRIMARY KEY, first_name text, last_name text,
                 email varchar(200), created_at timestamp)",
        )
        .await
        .unwrap();
    new.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS app; DROP TABLE IF EXISTS app.rc_customers;
         CREATE TABLE app.rc_customers (customer_id bigint PRIMARY KEY, full_name text,
             email text, signup timestamptz, tier text NOT NULL)",
    )
    .await
    .unwrap();
    (legacy, new)
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn matching_catalogs_have_no_problems() {
    let _serial = SERIAL.lock().await;
    let (legacy, new) = setup().await;
    let rules = pgdual_rules::parse_rules(GOOD, "rules.toml").unwrap();
    let problems = pgdual::control::catalog::check(&rules, &legacy, Some(&new)).await;
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test]
async fn every_mismatch_is_reported_where_it_is() {
    let _serial = SERIAL.lock().await;
    let (legacy, new) = setup().await;
    new.batch_execute(
        "ALTER TABLE app.rc_customers DROP CONSTRAINT rc_customers_pkey;
         ALTER TABLE app.rc_customers ALTER COLUMN email TYPE int USING 0;
         ALTER TABLE app.rc_customers ADD COLUMN region text NOT NULL;",
    )
    .await
    .unwrap();
    let text = GOOD.to_string()
        + r#"
[[table]]
legacy = "public.rc_users"
new = "app.rc_missing"
database = "legacy"
keys = ["id"]
[table.columns]
id = "id"
nick = "no_such_fn(first_name)"
phone = "phone"
"#;
    // Two rules for one legacy table are an offline error; check them one by one.
    let first = pgdual_rules::parse_rules(&text[..GOOD.len()], "rules.toml").unwrap();
    let second = pgdual_rules::parse_rules(&text[GOOD.len()..], "rules.toml").unwrap();
    let mut got: Vec<String> = Vec::new();
    for rules in [first, second] {
        for p in pgdual::control::catalog::check(&rules, &legacy, Some(&new)).await {
            got.push(p.to_string());
        }
    }
    let expect = [
        "table[0] (public.rc_users).columns.email: yields text on legacy, which does not fit app.rc_customers.email of type integer",
        "table[0] (public.rc_users).columns: app.rc_customers.region is NOT NULL without a default but no mapping fills it",
        "table[0] (public.rc_users).keys: no primary key or unique index on (customer_id) in app.rc_customers",
        "table[0] (public.rc_users).columns.nick: does not run on legacy: function no_such_fn(text) does not exist",
        "table[0] (public.rc_users).columns.phone: reads [\"phone\"], which public.rc_users does not have",
        "table[0] (public.rc_users).new: app.rc_missing does not exist in the legacy database",
    ];
    assert_eq!(got, expect);
}

#[tokio::test]
async fn missing_legacy_table_and_unconfigured_new_database() {
    let _serial = SERIAL.lock().await;
    let (legacy, _new) = setup().await;
    let rules = pgdual_rules::parse_rules(
        &GOOD.replace("public.rc_users", "public.rc_nowhere"),
        "rules.toml",
    )
    .unwrap();
    let got: Vec<String> = pgdual::control::catalog::check(&rules, &legacy, None)
        .await
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        got,
        ["table[0] (public.rc_nowhere).legacy: public.rc_nowhere does not exist in legacy"]
    );
    let rules = pgdual_rules::parse_rules(GOOD, "rules.toml").unwrap();
    let got: Vec<String> = pgdual::control::catalog::check(&rules, &legacy, None)
        .await
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        got,
        ["table[0] (public.rc_users).database: is \"new\" but no [new] database is configured"]
    );
}

/// Read-backs are checked when the table's reads are routed: each must run on new and yield
/// the legacy column's type, and the reason says how to cast one that does not.
#[tokio::test]
async fn routed_reads_need_read_backs_of_legacy_types() {
    let _serial = SERIAL.lock().await;
    let (legacy, new) = setup().await;
    let check = |text: String| {
        let (legacy, new) = (&legacy, &new);
        async move {
            let rules = pgdual_rules::parse_rules(&text, "rules.toml").unwrap();
            pgdual::control::catalog::check(&rules, legacy, Some(new))
                .await
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        }
    };
    let shadow = GOOD.replace("keys = [\"id\"]", "keys = [\"id\"]\nread = \"shadow\"");
    assert_eq!(
        check(shadow.clone() + "[table.read_back]\nfirst_name = \"nope(full_name)\"\n").await,
        [
            "table[0] (public.rc_users).read_back.first_name: does not run on app.rc_customers: function nope(text) does not exist",
            "table[0] (public.rc_users).read_back.id: yields int8 on new, but public.rc_users.id is integer; a read_back can cast it: id = \"(customer_id)::integer\"",
            "table[0] (public.rc_users).read_back.created_at: yields timestamptz on new, but public.rc_users.created_at is timestamp without time zone; a read_back can cast it: created_at = \"(signup)::timestamp without time zone\"",
        ]
    );
    let fixed = shadow
        + "[table.read_back]\nid = \"customer_id::int\"\ncreated_at = \"signup::timestamp\"\n\
           first_name = \"split_part(full_name, ' ', 1)\"\n";
    assert_eq!(check(fixed).await, Vec::<String>::new());
}
