use super::*;
use crate::ruleset::parse_rules;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

const RULES: &str = r#"
    [[table]]
    legacy = "public.users"
    new = "app.customers"
    keys = ["id"]
    [table.columns]
    customer_id = "id"
    full_name = "first_name || ' ' || last_name"
    email = "lower(email)"
    [table.read_back]
    first_name = "split_part(full_name, ' ', 1)"
    last_name = "split_part(full_name, ' ', 2)"
    email = "email"

    [[table]]
    legacy = "public.orders"
    new = "app.orders"
    keys = ["id", "line"]
    [table.columns]
    order_id = "id"
    line_no = "line"
    user_id = "user_id"
    amount_cents = "amount * 100"
    note_upper = "upper(note)"
    [table.read_back]
    amount = "amount_cents / 100.0"

    [[table]]
    legacy = "billing.invoices"
    new = "public.invoices_v2"
    database = "legacy"
    keys = ["id"]
    [table.columns]
    id = "id"
"#;

fn users() -> TableName {
    TableName {
        schema: "public".into(),
        name: "users".into(),
    }
}

fn rules() -> RuleSet {
    parse_rules(RULES, "t").unwrap()
}

/// The rules with the users' catalog columns known.
fn rules_with_columns() -> RuleSet {
    let mut set = rules();
    set.set_legacy_columns(
        &users(),
        ["id", "first_name", "last_name", "email", "created_at"]
            .map(String::from)
            .to_vec(),
    );
    set.set_legacy_columns(
        &TableName {
            schema: "public".into(),
            name: "orders".into(),
        },
        ["id", "line", "user_id", "amount"]
            .map(String::from)
            .to_vec(),
    );
    set
}

/// The rules with users' `created_at` read back too.
fn rules_with_created_at() -> RuleSet {
    let text = RULES.replacen(
        "email = \"email\"\n",
        "email = \"email\"\n        created_at = \"created\"\n",
        1,
    );
    let mut set = parse_rules(&text, "t").unwrap();
    set.set_legacy_columns(
        &users(),
        ["id", "first_name", "last_name", "email", "created_at"]
            .map(String::from)
            .to_vec(),
    );
    set
}

fn plan(sql: &str, rules: &RuleSet) -> ReadPlan {
    match plan_read(sql, rules) {
        Ok(p) => {
            assert!(
                Parser::parse_sql(&PostgreSqlDialect {}, &p.sql).is_ok(),
                "{sql} -> {} does not re-parse",
                p.sql
            );
            p
        }
        Err(e) => panic!("{sql}: not routable: {e} ({})", e.reason()),
    }
}

#[test]
fn literal_output_marks_select_lists_whose_shape_a_literal_can_change() {
    let rules = rules();
    for (sql, literal) in [
        ("SELECT id, email FROM users WHERE id = 7", false),
        ("SELECT id FROM users WHERE id = $1 AND email = 'x'", false),
        ("SELECT id, 'x' FROM users", true),
        ("SELECT coalesce(email, $1) FROM users", false),
        (
            "SELECT coalesce(email, 'none') FROM users WHERE id = 1",
            true,
        ),
    ] {
        assert_eq!(plan(sql, &rules).literal_output, literal, "{sql}");
    }
}

#[test]
fn rewrites() {
    let cases: &[(&str, &str)] = &[
        (
            "SELECT id, email FROM users WHERE id = $1",
            "SELECT users.customer_id AS id, users.email AS email FROM app.customers AS users WHERE users.customer_id = $1",
        ),
        (
            "SELECT first_name FROM public.users u ORDER BY id",
            "SELECT (split_part(u.full_name, ' ', 1)) AS first_name FROM app.customers AS u ORDER BY u.customer_id",
        ),
        (
            "select u.ID, users2.email from users u join public.users as users2 on u.id = users2.id",
            "SELECT u.customer_id AS id, users2.email AS email FROM app.customers AS u JOIN app.customers AS users2 ON u.customer_id = users2.customer_id",
        ),
        (
            "SELECT public.users.email FROM public.users",
            "SELECT users.email AS email FROM app.customers AS users",
        ),
        (
            "SELECT count(*) FROM users WHERE email LIKE 'a%'",
            "SELECT count(*) FROM app.customers AS users WHERE users.email LIKE 'a%'",
        ),
        (
            "SELECT lower(first_name) AS f, count(*) FROM users GROUP BY first_name HAVING count(*) > 1",
            "SELECT lower((split_part(users.full_name, ' ', 1))) AS f, count(*) FROM app.customers AS users GROUP BY (split_part(users.full_name, ' ', 1)) HAVING count(*) > 1",
        ),
        (
            "SELECT first_name || '!' FROM users",
            "SELECT (split_part(users.full_name, ' ', 1)) || '!' FROM app.customers AS users",
        ),
        (
            "SELECT email AS e FROM users ORDER BY e DESC LIMIT $2 OFFSET 10",
            "SELECT users.email AS e FROM app.customers AS users ORDER BY e DESC LIMIT $2 OFFSET 10",
        ),
        (
            "SELECT id::text, (email) FROM users",
            "SELECT users.customer_id::TEXT AS id, (users.email) AS email FROM app.customers AS users",
        ),
        (
            "SELECT o.amount, u.email FROM orders o LEFT JOIN users u ON u.id = o.user_id WHERE o.amount > 10 ORDER BY 1",
            "SELECT (o.amount_cents / 100.0) AS amount, u.email AS email FROM app.orders AS o LEFT JOIN app.customers AS u ON u.customer_id = o.user_id WHERE (o.amount_cents / 100.0) > 10 ORDER BY 1",
        ),
        (
            "SELECT DISTINCT ON (email) email, id FROM users ORDER BY email, id",
            "SELECT DISTINCT ON (email) users.email AS email, users.customer_id AS id FROM app.customers AS users ORDER BY email, id",
        ),
        (
            "SELECT pg_catalog.upper(email), coalesce(first_name, 'x') FROM users WHERE id IN ($1, $2)",
            "SELECT pg_catalog.upper(users.email), coalesce((split_part(users.full_name, ' ', 1)), 'x') FROM app.customers AS users WHERE users.customer_id IN ($1, $2)",
        ),
        (
            "SELECT string_agg(email, ',' ORDER BY id) FROM users",
            "SELECT string_agg(users.email, ',' ORDER BY users.customer_id) FROM app.customers AS users",
        ),
        (
            "SELECT \"email\" FROM \"users\" WHERE \"id\" = 1",
            "SELECT users.email AS email FROM app.customers AS users WHERE users.customer_id = 1",
        ),
        (
            "SELECT email FROM users FETCH FIRST 5 ROWS ONLY",
            "SELECT users.email AS email FROM app.customers AS users FETCH FIRST 5 ROWS ONLY",
        ),
    ];
    let set = rules();
    let mut wrong = Vec::new();
    for (sql, want) in cases {
        let got = plan(sql, &set).sql;
        if got != *want {
            wrong.push(format!("{sql}\n  got:  {got}\n  want: {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn rewrites_with_catalog_columns() {
    let cases: &[(&str, &str)] = &[
        (
            "SELECT * FROM users WHERE id = 1",
            "SELECT users.customer_id AS id, (split_part(users.full_name, ' ', 1)) AS first_name, (split_part(users.full_name, ' ', 2)) AS last_name, users.email AS email, users.created AS created_at FROM app.customers AS users WHERE users.customer_id = 1",
        ),
        (
            "SELECT u.*, 1 AS one FROM users AS u",
            "SELECT u.customer_id AS id, (split_part(u.full_name, ' ', 1)) AS first_name, (split_part(u.full_name, ' ', 2)) AS last_name, u.email AS email, u.created AS created_at, 1 AS one FROM app.customers AS u",
        ),
        (
            "SELECT lower(email) AS full_name, count(*) FROM users GROUP BY full_name",
            "SELECT lower(users.email) AS full_name, count(*) FROM app.customers AS users GROUP BY 1",
        ),
        (
            "SELECT *, email AS e FROM users GROUP BY e ORDER BY created_at",
            "SELECT users.customer_id AS id, (split_part(users.full_name, ' ', 1)) AS first_name, (split_part(users.full_name, ' ', 2)) AS last_name, users.email AS email, users.created AS created_at, users.email AS e FROM app.customers AS users GROUP BY 6 ORDER BY created_at",
        ),
    ];
    let set = rules_with_created_at();
    let mut wrong = Vec::new();
    for (sql, want) in cases {
        let got = plan(sql, &set).sql;
        if got != *want {
            wrong.push(format!("{sql}\n  got:  {got}\n  want: {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn quoted_names_stay_quoted() {
    let text = r#"
        [[table]]
        legacy = 'public."Items"'
        new = "app.items"
        keys = ["id"]
        [table.columns]
        "ItemId" = "id"
        name = "lower(name)"
        [table.read_back]
        "Label" = "upper(name)"
    "#;
    let set = parse_rules(text, "t").unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "SELECT \"Label\", id FROM \"Items\" i WHERE i.id = 3",
            "SELECT (upper(i.name)) AS \"Label\", i.\"ItemId\" AS id FROM app.items AS i WHERE i.\"ItemId\" = 3",
        ),
        (
            "SELECT \"Items\".\"Label\" FROM public.\"Items\" ORDER BY ID",
            "SELECT (upper(\"Items\".name)) AS \"Label\" FROM app.items AS \"Items\" ORDER BY \"Items\".\"ItemId\"",
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(plan(sql, &set).sql, *want, "{sql}");
    }
    for sql in ["SELECT label FROM \"Items\"", "SELECT id FROM items"] {
        assert!(plan_read(sql, &set).is_err(), "{sql}");
    }
}

#[test]
fn columns_are_every_legacy_column_referenced_anywhere() {
    type TableColumns = (String, Vec<String>);
    let set = rules_with_created_at();
    let cols = |sql: &str| -> Vec<TableColumns> {
        plan(sql, &set)
            .columns
            .into_iter()
            .map(|(t, c)| (t.to_string(), c))
            .collect()
    };
    let users = |c: &[&str]| {
        (
            "public.users".to_string(),
            c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    };
    let orders = |c: &[&str]| {
        (
            "public.orders".to_string(),
            c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    };
    #[rustfmt::skip]
    let cases: &[(&str, Vec<TableColumns>)] = &[
        ("SELECT email FROM users", vec![users(&["email"])]),
        ("SELECT count(*) FROM users", vec![users(&[])]),
        ("SELECT * FROM users", vec![users(&["created_at", "email", "first_name", "id", "last_name"])]),
        ("SELECT u.* FROM users u WHERE u.id = 1", vec![users(&["created_at", "email", "first_name", "id", "last_name"])]),
        ("SELECT id FROM users WHERE email = $1", vec![users(&["email", "id"])]),
        ("SELECT id FROM users ORDER BY last_name", vec![users(&["id", "last_name"])]),
        ("SELECT id AS x FROM users ORDER BY x", vec![users(&["id"])]),
        ("SELECT lower(first_name) FROM users GROUP BY first_name HAVING count(email) > 1", vec![users(&["email", "first_name"])]),
        ("SELECT DISTINCT ON (last_name) id FROM users", vec![users(&["id", "last_name"])]),
        ("SELECT coalesce(email, first_name) FROM users", vec![users(&["email", "first_name"])]),
        (
            "SELECT u.email FROM users u JOIN orders o ON o.user_id = u.id WHERE o.amount > 3",
            vec![users(&["email", "id"]), orders(&["amount", "user_id"])],
        ),
        (
            "SELECT a.email, b.first_name FROM users a JOIN users b ON a.id = b.id",
            vec![users(&["email", "first_name", "id"])],
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(&cols(sql), want, "{sql}");
    }
}

#[test]
fn tables_ordering_and_keys() {
    let p = |s: &str| KeyRef::Param(s.parse().unwrap());
    let l = |s: &str| KeyRef::Literal(s.into());
    // (sql, tables, ordered, key)
    type Case<'a> = (&'a str, Vec<&'a str>, bool, Option<Vec<KeyRef>>);
    let cases: Vec<Case> = vec![
        ("SELECT email FROM users WHERE id = $1", vec!["users"], false, Some(vec![p("1")])),
        ("SELECT email FROM users WHERE $3 = id", vec!["users"], false, Some(vec![p("3")])),
        ("SELECT email FROM users u WHERE u.id = 42 AND email = 'x'", vec!["users"], false, Some(vec![l("42")])),
        ("SELECT email FROM users WHERE (email = 'x' AND (id = '7'))", vec!["users"], false, Some(vec![l("7")])),
        ("SELECT email FROM users WHERE id = $1::bigint", vec!["users"], false, Some(vec![p("1")])),
        ("SELECT email FROM users WHERE id = -5", vec!["users"], false, Some(vec![l("-5")])),
        ("SELECT email FROM users WHERE id = 1 OR id = 2", vec!["users"], false, None),
        ("SELECT email FROM users WHERE id > 1", vec!["users"], false, None),
        ("SELECT email FROM users WHERE id = NULL", vec!["users"], false, None),
        ("SELECT email FROM users WHERE id = id", vec!["users"], false, None),
        ("SELECT email FROM users ORDER BY email", vec!["users"], true, None),
        ("SELECT amount FROM orders WHERE id = $1 AND line = $2", vec!["orders"], false, Some(vec![p("1"), p("2")])),
        ("SELECT amount FROM orders WHERE line = 3 AND id = 'abc' ORDER BY 1", vec!["orders"], true, Some(vec![l("abc"), l("3")])),
        ("SELECT amount FROM orders WHERE id = $1", vec!["orders"], false, None),
        (
            "SELECT u.email FROM orders o JOIN users u ON u.id = o.user_id JOIN users u2 ON true WHERE o.id = 1 AND o.line = 1",
            vec!["orders", "users"],
            false,
            None,
        ),
    ];
    let set = rules();
    for (sql, tables, ordered, key) in cases {
        let got = plan(sql, &set);
        let names: Vec<&str> = got.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, tables, "{sql}");
        assert_eq!(got.ordered, ordered, "{sql}");
        assert_eq!(got.key, key, "{sql}");
    }
}

#[test]
fn not_routable() {
    let cases: &[(&str, &str, &str)] = &[
        ("SELEC 1", "parse", "does not parse"),
        ("", "empty", "no statement"),
        ("SELECT 1; SELECT 2", "multiple_statements", "2 statements"),
        ("INSERT INTO users (id) VALUES (1)", "not_select", "INSERT"),
        ("UPDATE users SET email = 'x'", "not_select", "UPDATE"),
        ("VALUES (1)", "not_select", "VALUES"),
        ("SELECT * INTO t2 FROM users", "not_select", "INTO"),
        (
            "SELECT email FROM users UNION SELECT email FROM users",
            "set_operation",
            "UNION",
        ),
        (
            "WITH x AS (SELECT 1) SELECT email FROM users",
            "with",
            "WITH",
        ),
        (
            "SELECT email FROM users WHERE id IN (SELECT id FROM users)",
            "subquery",
            "subqueries",
        ),
        (
            "SELECT email FROM users WHERE EXISTS (SELECT 1)",
            "subquery",
            "subqueries",
        ),
        (
            "SELECT (SELECT 1), email FROM users",
            "subquery",
            "subqueries",
        ),
        (
            "SELECT s.email FROM (SELECT email FROM users) s",
            "subquery",
            "subqueries",
        ),
        (
            "SELECT email FROM users WHERE id = ANY(ARRAY(SELECT 1))",
            "subquery",
            "subqueries",
        ),
        ("SELECT * FROM users FOR UPDATE", "locking", "FOR UPDATE"),
        (
            "SELECT email FROM users WHERE id = 1 FOR SHARE",
            "locking",
            "FOR UPDATE",
        ),
        // sqlparser 0.63 does not parse FOR NO KEY UPDATE; not routed either way.
        ("SELECT email FROM users FOR NO KEY UPDATE", "parse", "NO"),
        (
            "SELECT email FROM users FOR KEY SHARE SKIP LOCKED",
            "parse",
            "KEY",
        ),
        (
            "SELECT u.email FROM users u FOR UPDATE OF u NOWAIT",
            "locking",
            "FOR UPDATE",
        ),
        ("SELECT random() FROM users", "function", "function random"),
        (
            "SELECT email FROM users WHERE id = nextval('s')",
            "function",
            "function nextval",
        ),
        ("SELECT now(), email FROM users", "function", "function now"),
        (
            "SELECT CURRENT_TIMESTAMP, email FROM users",
            "function",
            "current_timestamp",
        ),
        ("SELECT pg_sleep(1) FROM users", "function", "pg_sleep"),
        (
            "SELECT myschema.lower(email) FROM users",
            "function",
            "myschema.lower",
        ),
        ("SELECT \"LOWER\"(email) FROM users", "function", "LOWER"),
        (
            "SELECT * FROM generate_series(1, 3)",
            "function",
            "generate_series",
        ),
        ("SELECT * FROM orderz", "unmapped_table", "public.orderz"),
        (
            "SELECT u.email FROM users u JOIN app.other o ON true",
            "unmapped_table",
            "app.other",
        ),
        ("SELECT 1", "no_table", "no table"),
        ("SELECT random()", "no_table", "no table"),
        ("SELECT * FROM users", "star", "public.users"),
        ("SELECT u.* FROM users u", "star", "public.users"),
        ("SELECT nickname FROM users", "column", "nickname"),
        (
            "SELECT u.nickname FROM users u",
            "column",
            "public.users.nickname",
        ),
        (
            "SELECT users.email FROM users u",
            "column",
            "names no table",
        ),
        ("SELECT x.email FROM users", "column", "names no table"),
        (
            "SELECT u FROM users u",
            "column",
            "not a known legacy column",
        ),
        (
            "SELECT row_to_json(u) FROM users u",
            "column",
            "not a known legacy column",
        ),
        (
            "SELECT row_to_json(u.*) FROM users u",
            "column",
            "whole-row",
        ),
        (
            "SELECT id FROM users a JOIN users b ON a.id = b.id",
            "column",
            "ambiguous",
        ),
        (
            "SELECT note FROM orders WHERE line = 1",
            "column",
            "public.orders.note: has no read_back",
        ),
        (
            "SELECT amount FROM orders ORDER BY upper(note)",
            "column",
            "public.orders.note: has no read_back",
        ),
        (
            "SELECT a.email FROM users a JOIN users b USING (id)",
            "column",
            "USING",
        ),
        (
            "SELECT a.email FROM users a NATURAL JOIN users b",
            "column",
            "NATURAL",
        ),
        (
            "SELECT u.email FROM users u(a, b)",
            "column",
            "column aliases",
        ),
        ("SELECT email FROM users GROUP BY nope", "column", "nope"),
        ("SELECT email FROM users ORDER BY nope", "column", "nope"),
        (
            "SELECT u.email FROM users u JOIN billing.invoices i ON true",
            "mixed_databases",
            "different databases",
        ),
        ("SELECT email FROM users, users", "unsupported", "twice"),
        (
            "SELECT email FROM (users u JOIN orders o ON true)",
            "unsupported",
            "FROM item",
        ),
        (
            "SELECT email FROM users LATERAL VIEW explode(x) t",
            "unsupported",
            "non-PostgreSQL",
        ),
        (
            "SELECT CURRENT_DATE, email FROM users",
            "function",
            "current_date",
        ),
        (
            "SELECT email FROM users WHERE id = current_setting('x')::int",
            "function",
            "current_setting",
        ),
        (
            "SELECT count(*) OVER (ORDER BY random()) FROM users",
            "function",
            "random",
        ),
        (
            "SELECT email FROM users ORDER BY (SELECT 1)",
            "subquery",
            "subqueries",
        ),
        (
            "SELECT (u).email FROM users u",
            "unsupported",
            "field access",
        ),
        (
            "SELECT format(fmt => email) FROM users",
            "unsupported",
            "argument form",
        ),
        ("EXPLAIN SELECT email FROM users", "not_select", "EXPLAIN"),
        ("TABLE users", "parse", "TABLE"),
    ];
    let set = rules();
    let mut wrong = Vec::new();
    for (sql, reason, text) in cases {
        match plan_read(sql, &set) {
            Ok(p) => wrong.push(format!("{sql} routed as {}", p.sql)),
            Err(e) => {
                if e.reason() != *reason || !e.to_string().contains(text) {
                    wrong.push(format!("{sql}: {} {e}", e.reason()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn not_routable_with_catalog_columns() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "SELECT * FROM users",
            "column",
            "public.users.created_at: has no read_back",
        ),
        (
            "SELECT created_at FROM users",
            "column",
            "public.users.created_at: has no read_back",
        ),
        (
            "SELECT email FROM users ORDER BY created_at",
            "column",
            "created_at",
        ),
        (
            "SELECT nickname FROM users",
            "column",
            "not a column of the query's tables",
        ),
        (
            "SELECT lower(email) AS e, lower(email) AS e FROM users GROUP BY e",
            "column",
            "more than one output column",
        ),
        (
            "SELECT id FROM users u JOIN orders o ON o.user_id = u.id",
            "column",
            "ambiguous",
        ),
    ];
    let set = rules_with_columns();
    let mut wrong = Vec::new();
    for (sql, reason, text) in cases {
        match plan_read(sql, &set) {
            Ok(p) => wrong.push(format!("{sql} routed as {}", p.sql)),
            Err(e) => {
                if e.reason() != *reason || !e.to_string().contains(text) {
                    wrong.push(format!("{sql}: {} {e}", e.reason()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // GROUP BY an output name that is not a legacy column needs the catalog columns.
    let err = plan_read("SELECT lower(email) AS e FROM users GROUP BY e", &rules()).unwrap_err();
    assert_eq!(err.reason(), "column", "{err}");
}

#[test]
fn garbage_never_panics() {
    let set = rules_with_columns();
    let inputs = [
        "",
        " ; ",
        ";;;",
        "SELECT",
        "SELECT * FROM",
        "))))((((",
        "\0\u{7f}\u{fffd}",
        "SELECT $0 FROM users WHERE id = $0",
        "SELECT $99999999999999999999 FROM users WHERE id = $99999999999999999999",
        "SELECT email FROM users WHERE id = ?",
        "SELECT 'unterminated FROM users",
        "SELECT email FROM users WHERE id = 1 AND",
        "SELECT ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))))))))))))))))))) FROM users",
        "SELECT email FROM users AS",
        "SELECT u.* , * FROM users u",
        "SELECT email FROM a.b.c.d",
        "SELECT a.b.c.d FROM users",
        "SELECT \"\" FROM \"\"",
    ];
    for sql in inputs {
        let _ = plan_read(sql, &set).map(|p| {
            assert!(
                Parser::parse_sql(&PostgreSqlDialect {}, &p.sql).is_ok(),
                "{sql} -> {}",
                p.sql
            )
        });
    }
    let mut deep = "SELECT email FROM users WHERE ".to_string();
    for _ in 0..500 {
        deep.push('(');
    }
    assert!(plan_read(&deep, &set).is_err());
}

#[test]
fn long_texts_are_not_routed_and_deep_chains_do_not_overflow() {
    let set = rules();
    let head = "SELECT email FROM users WHERE id = 1";
    let deepest = format!("{head}{}", "+1".repeat(crate::sql::bounds::MAX_DEPTH - 8));
    assert!(plan_read(&deepest, &set).is_ok());
    let deep = format!("{head}{}", "+1".repeat(crate::sql::bounds::MAX_DEPTH));
    assert_eq!(plan_read(&deep, &set).unwrap_err().reason(), "too_deep");
    let long = format!("{head}{}", " OR id = 1".repeat(MAX_SQL_LEN / 10));
    assert_eq!(plan_read(&long, &set).unwrap_err().reason(), "too_long");
}

#[test]
fn every_reason_has_a_sentence() {
    let all = [
        NotRoutable::Parse("x".into()),
        NotRoutable::Empty,
        NotRoutable::MultipleStatements(2),
        NotRoutable::NotSelect("INSERT".into()),
        NotRoutable::SetOperation,
        NotRoutable::With,
        NotRoutable::Subquery,
        NotRoutable::Locking,
        NotRoutable::Function("random".into()),
        NotRoutable::UnmappedTable(users()),
        NotRoutable::NoTable,
        NotRoutable::column("public.users.x", "has no read_back expression"),
        NotRoutable::Star(users()),
        NotRoutable::MixedDatabases,
        NotRoutable::TooLong(MAX_SQL_LEN + 1),
        NotRoutable::TooDeep,
        NotRoutable::Unsupported("this".into()),
    ];
    let reasons: HashSet<&str> = all.iter().map(|e| e.reason()).collect();
    assert_eq!(reasons.len(), all.len());
    for e in &all {
        assert!(!e.to_string().is_empty());
        assert!(e
            .reason()
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_'));
    }
}

#[test]
fn quoted_table_names_plan_onto_quoted_new_names() {
    let text = r#"
        [[table]]
        legacy = 'public."Orders"'
        new = 'app."Orders V2"'
        keys = ["id"]
        columns = { id = "id" }

        [[table]]
        legacy = 'public."a.b"'
        new = 'app."x.y"'
        keys = ["id"]
        columns = { id = "id" }

        [[table]]
        legacy = '"PUBLIC"."ORDERS"'
        new = 'app."My Table"'
        keys = ["id"]
        columns = { id = "id" }
    "#;
    let set = parse_rules(text, "t").unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "SELECT id FROM \"Orders\"",
            "SELECT \"Orders\".id AS id FROM app.\"Orders V2\" AS \"Orders\"",
            "public.\"Orders\"",
        ),
        (
            "SELECT id FROM public.\"Orders\" o WHERE o.id = 1",
            "SELECT o.id AS id FROM app.\"Orders V2\" AS o WHERE o.id = 1",
            "public.\"Orders\"",
        ),
        (
            "SELECT \"a.b\".id FROM \"a.b\"",
            "SELECT \"a.b\".id AS id FROM app.\"x.y\" AS \"a.b\"",
            "public.\"a.b\"",
        ),
        (
            "SELECT id FROM \"PUBLIC\".\"ORDERS\"",
            "SELECT \"ORDERS\".id AS id FROM app.\"My Table\" AS \"ORDERS\"",
            "\"PUBLIC\".\"ORDERS\"",
        ),
    ];
    for (sql, want, legacy) in cases {
        let p = plan(sql, &set);
        assert_eq!(p.sql, *want, "{sql}");
        let tables: Vec<String> = p.tables.iter().map(|t| t.to_string()).collect();
        assert_eq!(tables, [*legacy], "{sql}");
    }
    for sql in [
        "SELECT id FROM Orders",
        "SELECT id FROM PUBLIC.ORDERS",
        "SELECT id FROM a.b",
        "SELECT id FROM db.public.\"Orders\"",
    ] {
        assert!(plan_read(sql, &set).is_err(), "{sql}");
    }
}

/// Lifts `sql` and plans it with its parameters.
fn lifted(sql: &str) -> Result<ReadPlan, NotLifted> {
    let l = crate::sql::literals::lift(sql).expect("literals to lift");
    plan_lifted(&l.sql, l.values.len(), &rules_with_columns())
}

#[test]
fn lifted_values_plan_once_with_their_parameters() {
    let p =
        lifted("SELECT email FROM users WHERE id = 42 AND first_name = 'Ann' LIMIT 10 OFFSET 5")
            .unwrap();
    assert!(p.sql.contains("$1") && p.sql.contains("$2"), "{}", p.sql);
    assert!(p.sql.ends_with("LIMIT $3 OFFSET $4"), "{}", p.sql);
    assert_eq!(p.key, Some(vec![KeyRef::Param(1)]));
    let p = lifted("SELECT id FROM users WHERE id IN (1, -2, 3) AND email = 'a@b'::text").unwrap();
    assert!(
        p.sql.contains("-$2") && p.sql.contains("$4::TEXT"),
        "{}",
        p.sql
    );
}

#[test]
fn literals_that_are_more_than_values_are_not_lifted() {
    for sql in [
        "SELECT email, 'x' FROM users WHERE id = 1",
        "SELECT email FROM users WHERE id = 1 ORDER BY 1",
        "SELECT email, count(*) FROM users WHERE id > 1 GROUP BY 1",
        "SELECT DISTINCT ON (1) email FROM users WHERE id > 1",
        "SELECT email FROM users WHERE created_at > now() - INTERVAL '1 day'",
        "SELECT email FROM users WHERE created_at > date '2020-01-01'",
        "SELECT email FROM users WHERE id::numeric(10, 2) = 1",
        "SELECT email FROM users WHERE id = 1e",
    ] {
        assert_eq!(lifted(sql), Err(NotLifted::Literals), "{sql}");
    }
}

#[test]
fn what_new_cannot_answer_stays_a_verdict_when_lifted() {
    assert!(matches!(
        lifted("SELECT email FROM users WHERE id = 1 FOR UPDATE"),
        Err(NotLifted::NotRoutable(NotRoutable::Locking))
    ));
}
