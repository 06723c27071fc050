use super::*;

fn table(schema: &str, name: &str) -> TableName {
    TableName {
        schema: schema.into(),
        name: name.into(),
    }
}

#[test]
fn unquoted_names_fold_only_ascii_letters() {
    assert_eq!(fold(&Ident::new("Orders")), "orders");
    assert_eq!(fold(&Ident::with_quote('"', "Orders")), "Orders");
    assert_eq!(fold_unquoted("ÜNITS"), "Ünits");
    assert_eq!(fold_unquoted("Straße"), "straße");
}

#[test]
fn identifiers_are_quoted_only_when_needed() {
    assert_eq!(quote_ident("users"), "users");
    assert_eq!(quote_ident("_x1"), "_x1");
    assert_eq!(quote_ident("Total"), "\"Total\"");
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(quote_ident("2x"), "\"2x\"");
    assert_eq!(quote_ident("a.b"), "\"a.b\"");
    assert_eq!(quote_ident("My Table"), "\"My Table\"");
    assert_eq!(sql_ident("Total").to_string(), "\"Total\"");
    assert_eq!(sql_ident("total").to_string(), "total");
}

#[test]
fn table_names_parse_fold_and_print_back() {
    let cases: &[(&str, TableName, &str)] = &[
        ("public.users", table("public", "users"), "public.users"),
        ("PUBLIC.ORDERS", table("public", "orders"), "public.orders"),
        (
            "\"PUBLIC\".\"ORDERS\"",
            table("PUBLIC", "ORDERS"),
            "\"PUBLIC\".\"ORDERS\"",
        ),
        (
            "public.\"Orders\"",
            table("public", "Orders"),
            "public.\"Orders\"",
        ),
        (
            "public.\"My Table\"",
            table("public", "My Table"),
            "public.\"My Table\"",
        ),
        ("public.\"a.b\"", table("public", "a.b"), "public.\"a.b\""),
        ("app.\"x\"\"y\"", table("app", "x\"y"), "app.\"x\"\"y\""),
    ];
    for (text, want, printed) in cases {
        let got = parse_table_name(text).unwrap();
        assert_eq!(&got, want, "{text}");
        assert_eq!(got.to_string(), *printed, "{text}");
        assert_eq!(parse_table_name(printed).unwrap(), got, "{printed}");
        assert_eq!(got.to_object_name().to_string(), *printed, "{text}");
    }
    for text in ["users", "\"a.b\"", "db.public.users", "public.users x", ""] {
        assert!(parse_table_name(text).is_err(), "{text}");
    }
}

fn reference(text: &str) -> TableRef {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(text).unwrap();
    TableRef::of(&parser.parse_object_name(false).unwrap())
}

#[test]
fn references_resolve_unqualified_names_to_the_default_schema() {
    let cases: &[(&str, Option<TableName>, &str)] = &[
        ("Orders", Some(table("public", "orders")), "orders"),
        ("\"Orders\"", Some(table("public", "Orders")), "\"Orders\""),
        ("\"a.b\"", Some(table("public", "a.b")), "\"a.b\""),
        (
            "public.\"Orders\"",
            Some(table("public", "Orders")),
            "public.\"Orders\"",
        ),
        ("app.t", Some(table("app", "t")), "app.t"),
        ("db.app.t", None, "db.app.t"),
    ];
    for (text, want, printed) in cases {
        let r = reference(text);
        assert_eq!(&r.resolve(DEFAULT_SCHEMA), want, "{text}");
        assert_eq!(r.to_string(), *printed, "{text}");
    }
    let r = reference("\"Db\".App.\"T\"");
    assert_eq!(r.qualifiers, ["Db"]);
    assert_eq!(r.schema.as_deref(), Some("app"));
    assert_eq!(r.name, "T");
    assert_eq!(reference("t").resolve("app"), Some(table("app", "t")));
}
