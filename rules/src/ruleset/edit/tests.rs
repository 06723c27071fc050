use super::*;
use crate::ruleset::parse_rules;

#[test]
fn write_mode_changes_in_place_keeping_comments() {
    let text = "# the users table\n[[table]]\nlegacy = \"public.users\" # keep me\nnew = \"app.c\"\nkeys = [\"id\"]\ncolumns = { id = \"id\" }\n\n[[table]]\nlegacy = \"public.orders\"\nnew = \"app.o\"\nkeys = [\"id\"]\nwrite = \"on\"\ncolumns = { id = \"id\" }\n";
    let on = set_write_mode(text, "public.USERS", WriteMode::On).unwrap();
    assert!(
        on.contains("# the users table") && on.contains("# keep me"),
        "{on}"
    );
    let set = parse_rules(&on, "t").unwrap();
    assert_eq!(set.tables()[0].write, WriteMode::On);
    assert_eq!(set.tables()[1].write, WriteMode::On);
    let off = set_write_mode(&on, "public.orders", WriteMode::Off).unwrap();
    assert_eq!(
        parse_rules(&off, "t").unwrap().tables()[1].write,
        WriteMode::Off
    );
    assert_eq!(
        set_write_mode(text, "public.nope", WriteMode::On).unwrap_err(),
        "no rule for table public.nope"
    );
    assert!(set_write_mode(text, "nope", WriteMode::On)
        .unwrap_err()
        .contains("schema-qualified"));
    let shadow = set_read_mode(&off, "public.users", ReadMode::Shadow, Some(25)).unwrap();
    let set = parse_rules(&shadow, "t").unwrap();
    assert_eq!(set.tables()[0].read, ReadMode::Shadow);
    assert_eq!(set.tables()[0].read_percent, 25);
    assert_eq!(
        set.tables()[1].read,
        ReadMode::Legacy,
        "reads stay on legacy by default"
    );
    assert_eq!(set.tables()[1].read_percent, 100);
    assert!(set.routes_reads());
}

#[test]
fn read_settings_validate() {
    let text = "[[table]]\nlegacy = \"public.users\"\nnew = \"app.c\"\nkeys = [\"id\"]\nread = \"new\"\nread_percent = 150\ncolumns = { customer_id = \"id\", full_name = \"first || last\" }\nread_back = { first = \"split_part(full_name, ' ', 1)\", last = \"(\" }\n";
    let err = parse_rules(text, "r.toml").unwrap_err().to_string();
    assert!(
        err.contains("table[0] (public.users).read_percent: 150 is not a percentage"),
        "{err}"
    );
    assert!(
        err.contains("table[0] (public.users).read_back.last"),
        "{err}"
    );
    let ok = text.replace("150", "40").replace(", last = \"(\"", "");
    let set = parse_rules(&ok, "r.toml").unwrap();
    let t = &set.tables()[0];
    let backs: Vec<(&str, &str)> = t
        .read_back
        .iter()
        .map(|r| (r.legacy.as_str(), r.source.as_str()))
        .collect();
    assert_eq!(
        backs,
        [
            ("first", "split_part(full_name, ' ', 1)"),
            ("id", "customer_id")
        ]
    );
    assert_eq!(t.read_back[0].reads, ["full_name"]);
    assert_eq!(t.read, ReadMode::New);
    let err = parse_rules(
        &ok.replace("\"new\"\nread_percent", "\"sometimes\"\nread_percent"),
        "r.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("sometimes"), "{err}");
}
