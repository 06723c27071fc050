use proptest::prelude::*;

use super::*;
use crate::sql::analysis::{analyze, StatementKind};

/// Stack given to the threads below: a sixteenth of what a relay worker has, in an
/// unoptimized build whose frames are larger than the release build's.
const TEST_STACK: usize = 512 * 1024;

/// Runs `f` on a thread with [`TEST_STACK`] bytes of stack; a stack overflow aborts the
/// test binary, which fails the test run.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(TEST_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// `t` mapped and read from new, so generated reads of it are planned and rewritten.
fn rules() -> crate::RuleSet {
    crate::parse_rules(
        r#"
        [[table]]
        legacy = "public.t"
        new = "app.t"
        keys = ["x"]
        read = "new"
        [table.columns]
        x = "x"
        y = "y"
        "#,
        "test rules",
    )
    .expect("valid rules")
}

fn sum(terms: usize) -> String {
    let list: Vec<String> = (1..=terms).map(|i| i.to_string()).collect();
    format!("SELECT {}", list.join("+"))
}

fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

/// The statements from the report, and deeper relatives of each construct.
fn too_deep_corpus() -> Vec<(&'static str, String)> {
    vec![
        ("50,000-term sum", sum(50_000)),
        (
            "20,000-term OR chain",
            format!(
                "SELECT count(*) FROM t WHERE {}",
                (1..=20_000)
                    .map(|i| format!("x = {i}"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
        ),
        (
            "3,000 parentheses",
            nested("SELECT ", "", "", 1) + &nested("(", "1", ")", 3000),
        ),
        (
            "CASE nesting",
            format!(
                "SELECT {}",
                nested("CASE WHEN true THEN ", "1", " END", 2000)
            ),
        ),
        (
            "ARRAY nesting",
            format!("SELECT {}", nested("ARRAY[", "1", "]", 2000)),
        ),
        (
            "function nesting",
            format!("SELECT {}", nested("abs(", "1", ")", 2000)),
        ),
        ("cast chain", format!("SELECT 1{}", "::int".repeat(20_000))),
        (
            "UNION ALL arms",
            vec!["SELECT 1"; 20_000].join(" UNION ALL "),
        ),
        ("unary minus", format!("SELECT {}1", "- ".repeat(5_000))),
        ("NOT chain", format!("SELECT {}true", "NOT ".repeat(5_000))),
        (
            "IS NULL chain",
            format!("SELECT 1{}", " IS NULL".repeat(5_000)),
        ),
        ("subscripts", format!("SELECT a{}", "[1]".repeat(5_000))),
        (
            "string concatenation",
            format!("SELECT 'a'{}", " || 'b'".repeat(5_000)),
        ),
    ]
}

#[test]
fn report_statements_are_not_parsed_and_do_not_overflow() {
    for (what, sql) in too_deep_corpus() {
        assert!(check(&sql).is_err(), "{what} passed the bounds");
        let a = on_small_stack(move || analyze(&sql));
        assert!(a.exceeded.is_some(), "{what}");
        assert_eq!(a.statements[0].kind, StatementKind::Unknown, "{what}");
    }
    let long = format!(
        "SELECT count(*) FROM t WHERE {}",
        "x = 1 OR ".repeat(200_000)
    );
    assert_eq!(check(&long), Err(Exceeded::Length(long.len())));
}

#[test]
fn ordinary_statements_are_parsed() {
    let in_list = format!(
        "SELECT * FROM t WHERE id IN ({})",
        (1..=5_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let values = format!(
        "INSERT INTO t (a, b) VALUES {}",
        vec!["(-1, 'x' || 'y')"; 2_000].join(",")
    );
    let case_arms = format!(
        "SELECT CASE {} ELSE 0 END FROM t",
        (1..=1_000)
            .map(|i| format!("WHEN a = {i} AND b > {i} THEN {i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let ands = format!(
        "UPDATE t SET v = 1 WHERE {}",
        (1..=100)
            .map(|i| format!("c{i} = ${i}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    );
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1".to_string(),
        "UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 7".to_string(),
        in_list,
        values,
        case_arms,
        ands,
        sum(MAX_DEPTH - 8),
        format!(
            "SELECT {}",
            nested("(", "1", ")", PARSER_RECURSION_LIMIT / 4)
        ),
    ] {
        assert_eq!(check(&sql), Ok(()), "{}", &sql[..sql.len().min(80)]);
        let a = on_small_stack(move || analyze(&sql));
        assert_eq!(a.parse_error, None);
        assert!(a.statements[0].kind != StatementKind::Unknown);
    }
}

#[test]
fn the_deepest_accepted_trees_fit_the_stack() {
    // Right at the bound, each construct is parsed (or refused by the parser's own
    // recursion limit), visited and dropped on the small stack.
    let d = MAX_DEPTH - 2;
    for sql in [
        sum(d),
        format!("SELECT 1{}", "::int".repeat(d)),
        vec!["SELECT 1"; d / 2].join(" UNION ALL "),
        format!(
            "SELECT count(*) FROM t WHERE {}",
            vec!["x = 1"; d / 2].join(" OR ")
        ),
        format!(
            "SELECT {}",
            nested(
                "(",
                &vec!["1"; d / PARSER_RECURSION_LIMIT].join("+"),
                ")",
                40
            )
        ),
    ] {
        assert_eq!(check(&sql), Ok(()), "{}", &sql[..80]);
        let planned = format!("{sql} FROM t WHERE x = 1");
        on_small_stack(move || {
            let plan = crate::read::plan::plan_read(&planned, &rules());
            let plannable = !planned.contains("UNION") && planned.matches("FROM").count() == 1;
            assert!(plan.is_ok() || !plannable, "{plan:?}");
            let a = analyze(&sql);
            drop(a);
            let _ = crate::read::plan::plan_read(&sql, &rules());
        });
    }
}

#[test]
fn strings_comments_and_quoted_names_do_not_count() {
    let hidden = format!(
        "SELECT '{0}', $${0}$$, \"{1}\" /* {0} */ -- {0}\n",
        "+".repeat(10_000),
        "(".repeat(10_000)
    );
    assert_eq!(check(&hidden), Ok(()));
}

/// One step of a generated statement: wraps or extends the expression built so far.
#[derive(Debug, Clone)]
enum Step {
    Paren,
    Case,
    Array,
    Call,
    Cast,
    Minus,
    Not,
    Plus(u8),
    Or,
    IsNull,
    Subscript,
    InList(u8),
    Subquery,
    Union,
    Comment,
    Literal,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Paren),
        Just(Step::Case),
        Just(Step::Array),
        Just(Step::Call),
        Just(Step::Cast),
        Just(Step::Minus),
        Just(Step::Not),
        any::<u8>().prop_map(Step::Plus),
        Just(Step::Or),
        Just(Step::IsNull),
        Just(Step::Subscript),
        any::<u8>().prop_map(Step::InList),
        Just(Step::Subquery),
        Just(Step::Union),
        Just(Step::Comment),
        Just(Step::Literal),
    ]
}

/// The text a step puts before and after the expression built so far.
fn wrap(s: &Step) -> (&'static str, String) {
    match s {
        Step::Paren => ("(", ")".into()),
        Step::Case => ("CASE WHEN x > 0 THEN ", " ELSE 0 END".into()),
        Step::Array => ("ARRAY[", ", 2]".into()),
        Step::Call => ("coalesce(", ", 0)".into()),
        Step::Cast => ("", "::int".into()),
        Step::Minus => ("- ", String::new()),
        Step::Not => ("NOT ", String::new()),
        Step::Plus(n) => ("", format!(" + {n}")),
        Step::Or => ("", " OR y = 1".into()),
        Step::IsNull => ("", " IS NULL".into()),
        Step::Subscript => ("(", ")[1]".into()),
        Step::InList(n) => ("", format!(" IN ({n}, 2, 3)")),
        Step::Subquery => ("(SELECT ", " FROM t)".into()),
        Step::Union => ("(SELECT ", " UNION ALL SELECT 2)".into()),
        Step::Comment => ("", " /* ) ] END ( */".into()),
        Step::Literal => ("", " || 'it''s ) ('".into()),
    }
}

/// Builds the statement in linear time, and without recursion: every step wraps the
/// expression so far, so the text is the steps' openings (innermost last) around `1` and
/// their closings (innermost first).
fn build(steps: &[(Step, u16)]) -> String {
    let (mut open, mut close) = (Vec::new(), String::new());
    for (s, times) in steps {
        let (pre, post) = wrap(s);
        for _ in 0..*times {
            if open.len() + close.len() > MAX_BYTES / 2 - 64 {
                break;
            }
            open.push(pre);
            close.push_str(&post);
        }
    }
    open.reverse();
    let e = format!("{}1{close}", open.concat());
    format!("SELECT {e} FROM t WHERE {e}")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Deep and long generated statements: analysis and read planning never overflow the
    /// stack, whatever mix of constructs, and a refusal always names a bound.
    #[test]
    fn generated_deep_statements_never_overflow(
        steps in proptest::collection::vec((step(), 1u16..30_000), 1..8)
    ) {
        let sql = build(&steps);
        let a = on_small_stack(move || {
            let a = analyze(&sql);
            let _ = crate::read::plan::plan_read(&sql, &rules());
            a
        });
        if let Some(e) = a.exceeded {
            prop_assert!(a.parse_error.unwrap().contains(&e.to_string()));
        }
    }

    /// Arbitrary text: the check never panics and is consistent with its own bounds.
    #[test]
    fn arbitrary_text_never_panics(sql in ".{0,2000}") {
        let _ = check(&sql);
        let _ = on_small_stack(move || analyze(&sql));
    }
}
