//! The paths the proxy crate imports from pgdual-rules still resolve.

#[allow(unused_imports)]
use pgdual_rules::{
    analyze,
    bounds::Exceeded,
    capture_sql,
    copy_sql::ColumnTypes,
    fingerprint,
    fingerprint::fingerprint as fingerprint_fn,
    parse_rules, plan_read,
    privilege::{access, Access, TableAccess},
    read_plan::{plan_read as plan_read_fn, KeyRef as KeyRefFn},
    route::{bucket, route, Route, SessionView, Why},
    ruleset::{
        parse_table_name, quote_ident, set_read_mode, set_write_mode, RuleProblem, TargetDatabase,
        WriteMode,
    },
    Analysis, AnalysisCache, KeyRef, NotRoutable, ReadMode, ReadPlan, RuleSet, RulesError,
    StatementInfo, StatementKind, TableName, TableRule,
};

#[test]
fn root_items_are_usable() {
    let rules = parse_rules(
        "[[table]]\nlegacy = \"public.t\"\nnew = \"app.t\"\nkeys = [\"id\"]\ncolumns = { id = \"id\" }\n",
        "t",
    )
    .unwrap();
    let plan = plan_read("SELECT id FROM t WHERE id = 1", &rules).unwrap();
    assert_eq!(plan.key, Some(vec![KeyRef::Literal("1".into())]));
    assert_eq!(fingerprint("SELECT 1"), fingerprint_fn("SELECT 2"));
    assert_eq!(analyze("SELECT 1").statements[0].kind, StatementKind::Read);
    assert!(matches!(
        parse_rules("[[table]]\nlegacy = \"t\"\nnew = \"app.t\"\nkeys = [\"id\"]\ncolumns = { id = \"id\" }\n", "t"),
        Err(RulesError::Invalid { .. })
    ));
}
