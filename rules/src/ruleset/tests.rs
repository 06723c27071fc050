use super::*;

const GOOD: &str = r#"
    [[table]]
    legacy = "public.users"
    new = "app.customers"
    keys = ["id"]
    write = "on"
    [table.columns]
    customer_id = "id"
    full_name = "first_name || ' ' || last_name"
    email = "lower(email)"
    source = "'legacy'"

    [[table]]
    legacy = "public.Orders"
    new = "public.orders_v2"
    database = "legacy"
    keys = ["id", "line"]
    [table.columns]
    id = "id"
    line_no = "line"
    "Total" = "amount * 100"
"#;

#[test]
fn a_good_file_validates() {
    let set = parse_rules(GOOD, "rules.toml").unwrap();
    let users = set
        .table(&TableName {
            schema: "public".into(),
            name: "users".into(),
        })
        .unwrap();
    assert_eq!(users.new.to_string(), "app.customers");
    assert_eq!(users.new_keys, ["customer_id"]);
    assert_eq!(users.write, WriteMode::On);
    let full = users.columns.iter().find(|c| c.new == "full_name").unwrap();
    assert_eq!(full.reads, ["first_name", "last_name"]);
    assert_eq!(full.rename_of, None);
    assert_eq!(
        users.legacy_columns_read(),
        ["id", "email", "first_name", "last_name"]
    );
    let orders = &set.tables()[1];
    assert_eq!(
        orders.legacy.name, "orders",
        "unquoted names fold to lower case"
    );
    assert_eq!(orders.new_keys, ["id", "line_no"]);
    assert_eq!(orders.database, TargetDatabase::Legacy);
    assert_eq!(orders.write, WriteMode::Off, "writes are off by default");
}

#[test]
fn every_problem_is_listed_with_where_it_is() {
    let text = r#"
        [[table]]
        legacy = "users"
        new = "app.customers"
        keys = []
        [table.columns]
        email = "lower(email"

        [[table]]
        legacy = "public.a"
        new = "public.a"
        database = "legacy"
        keys = ["id"]
        [table.columns]
        ident = "id + 0"
        x = "(SELECT 1)"
        y = "t.col"
    "#;
    let err = parse_rules(text, "rules.toml").unwrap_err();
    let RulesError::Invalid { problems, .. } = &err else {
        panic!("{err}")
    };
    let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
    assert_eq!(
        at,
        [
            "table[0] (users).legacy",
            "table[0] (users).keys",
            "table[0] (users).columns.email",
            "table[1] (public.a).new",
            "table[1] (public.a).columns.x",
            "table[1] (public.a).columns.y",
            "table[1] (public.a).keys",
        ]
    );
    let text = err.to_string();
    assert!(
        text.starts_with("7 problem(s) in rules file rules.toml"),
        "{text}"
    );
    assert!(text.contains("must be schema-qualified"), "{text}");
}

#[test]
fn unknown_fields_and_bad_modes_are_named() {
    let err = parse_rules("[[table]]\nlegacy = \"public.a\"\nnew = \"public.b\"\nkeys = [\"id\"]\nwrite = \"maybe\"\ncolumns = { id = \"id\" }\n", "r.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("maybe") || err.contains("write"), "{err}");
    let err = parse_rules("[[table]]\nlegcy = \"x\"\n", "r.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("legcy"), "{err}");
}

#[test]
fn duplicate_tables_are_rejected() {
    let one = "[[table]]\nlegacy = \"public.a\"\nnew = \"app.a\"\nkeys = [\"id\"]\ncolumns = { id = \"id\" }\n";
    let err = parse_rules(&format!("{one}{one}"), "r.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("also the new table of table[0]"), "{err}");
    assert!(err.contains("more than one rule"), "{err}");
}

#[test]
fn quoted_table_names_keep_their_case_and_dots() {
    let text = r#"
        [[table]]
        legacy = 'public."Orders"'
        new = 'app."Orders V2"'
        keys = ["id"]
        columns = { id = "id" }

        [[table]]
        legacy = "PUBLIC.ORDERS"
        new = 'app."a.b"'
        keys = ["id"]
        columns = { id = "id" }

        [[table]]
        legacy = '"PUBLIC"."ORDERS"'
        new = "app.orders"
        keys = ["id"]
        columns = { id = "id" }

        [[table]]
        legacy = 'public."My Table"'
        new = "app.my_table"
        keys = ["id"]
        columns = { id = "id" }
    "#;
    let set = parse_rules(text, "t").unwrap();
    let name = |schema: &str, name: &str| TableName {
        schema: schema.into(),
        name: name.into(),
    };
    let news = |legacy: TableName| set.table(&legacy).map(|t| t.new.to_string());
    assert_eq!(
        news(name("public", "Orders")).as_deref(),
        Some("app.\"Orders V2\"")
    );
    assert_eq!(
        news(name("public", "orders")).as_deref(),
        Some("app.\"a.b\"")
    );
    assert_eq!(
        news(name("PUBLIC", "ORDERS")).as_deref(),
        Some("app.orders")
    );
    assert_eq!(
        news(name("public", "My Table")).as_deref(),
        Some("app.my_table")
    );
    assert_eq!(news(name("public", "ORDERS")), None);
    let printed: Vec<String> = set.tables().iter().map(|t| t.legacy.to_string()).collect();
    assert_eq!(
        printed,
        [
            "public.\"Orders\"",
            "public.orders",
            "\"PUBLIC\".\"ORDERS\"",
            "public.\"My Table\""
        ]
    );

    let edited = set_write_mode(text, "public.\"Orders\"", WriteMode::On).unwrap();
    let edited = parse_rules(&edited, "t").unwrap();
    let writes: Vec<WriteMode> = edited.tables().iter().map(|t| t.write).collect();
    assert_eq!(
        writes,
        [
            WriteMode::On,
            WriteMode::Off,
            WriteMode::Off,
            WriteMode::Off
        ]
    );
    assert!(set_write_mode(text, "public.\"ORDERS\"", WriteMode::On)
        .unwrap_err()
        .contains("no rule for table public.\"ORDERS\""));
}

#[test]
fn the_same_table_spelled_twice_is_one_table() {
    let one = |legacy: &str, new: &str| {
        format!("[[table]]\nlegacy = '{legacy}'\nnew = '{new}'\nkeys = [\"id\"]\ncolumns = {{ id = \"id\" }}\n")
    };
    let text = one("public.Orders", "app.a") + &one("\"public\".\"orders\"", "app.b");
    let err = parse_rules(&text, "r.toml").unwrap_err().to_string();
    assert!(
        err.contains("public.orders has more than one rule"),
        "{err}"
    );
    let text = one("public.\"Orders\"", "app.\"New\"") + &one("public.orders", "app.new");
    assert!(parse_rules(&text, "r.toml").is_ok());
}
