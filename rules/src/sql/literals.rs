//! A simple query's literal values lifted out as parameters: `... WHERE aid = 17` becomes
//! `... WHERE aid = $1` with `17` typed `int4`, so that every text differing only in literal
//! values shares one plan and one statement prepared on new.
//!
//! Only what is sure to mean the same as a parameter is lifted:
//!
//! - numbers written in plain decimal (`42`, `4.2`, `.5`, `1e5`), typed as PostgreSQL types
//!   the constant: `int4` when it fits, else `int8`, else `numeric` (anything with a point
//!   or an exponent is `numeric`);
//! - standard string literals (`'abc'`, `'it''s'`), as parameters of unspecified type, which
//!   PostgreSQL resolves as it resolves an unknown-typed literal.
//!
//! A text with anything else that reads as a literal (a string with a backslash, whose
//! meaning depends on `standard_conforming_strings`; a prefixed string such as `E'..'`,
//! `B'..'` or `U&'..'`; hex or `_`-separated numbers) or with a `$n` already is not lifted
//! at all. Whether each parameter sits where a value may (not a type modifier, a typed
//! string's `date '..'`, an `INTERVAL '..'`, the select list, `ORDER BY 1`) is checked on
//! the parsed statement ([`crate::read_plan::plan_lifted`]). Dollar-quoted strings stay in
//! the text as they are.

use std::ops::ControlFlow;

use super::fingerprint::{is_ident, scan_values, Token};

/// PostgreSQL type OIDs of lifted literals (0: unspecified, as an unknown literal).
pub const UNKNOWN: u32 = 0;
pub const INT4: u32 = 23;
pub const INT8: u32 = 20;
pub const NUMERIC: u32 = 1700;

/// A text with its literals lifted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifted {
    /// The text with `$1`, `$2`, ... in place of the literals.
    pub sql: String,
    /// Each parameter's type OID, in order.
    pub types: Vec<u32>,
    /// Each parameter's value in text format, in order.
    pub values: Vec<String>,
}

/// Most literals lifted from one text: a longer list stays a literal text.
pub const MAX_LIFTED: usize = 1_000;

/// `sql` with its literal values lifted out, or `None` when it has none or has something that
/// must not be lifted (see the module docs).
pub fn lift(sql: &str) -> Option<Lifted> {
    let b = sql.as_bytes();
    let mut out = Lifted {
        sql: String::with_capacity(sql.len() + 8),
        types: Vec::new(),
        values: Vec::new(),
    };
    let mut copied = 0;
    let scan = scan_values(sql, |token, start, end| {
        let prev = if start > 0 { b[start - 1] } else { b' ' };
        let lifted = match token {
            Token::Param => None,
            // A prefixed string (`E'..'`, `U&'..'`, `B'..'`) is not a plain value.
            Token::String if is_ident(prev) || prev == b'&' => None,
            Token::String => sql
                .get(start + 1..end.saturating_sub(1))
                .filter(|body| !body.contains('\\') && closed(sql, start, end))
                .and_then(|body| out.push(sql, copied, start, UNKNOWN, body.replace("''", "'"))),
            Token::Number => {
                let text = &sql[start..end];
                number_type(text).and_then(|ty| out.push(sql, copied, start, ty, text.to_string()))
            }
        };
        copied = end;
        match lifted {
            Some(()) => ControlFlow::Continue(()),
            None => ControlFlow::Break(()),
        }
    });
    if scan.is_break() || out.values.is_empty() {
        return None;
    }
    out.sql.push_str(&sql[copied..]);
    Some(out)
}

impl Lifted {
    /// Copies `sql[from..at]` and a placeholder for the next value.
    fn push(&mut self, sql: &str, from: usize, at: usize, ty: u32, value: String) -> Option<()> {
        if self.values.len() == MAX_LIFTED {
            return None;
        }
        self.sql.push_str(&sql[from..at]);
        self.values.push(value);
        self.types.push(ty);
        self.sql.push('$');
        self.sql.push_str(&self.values.len().to_string());
        Some(())
    }
}

/// Whether the string literal at `sql[start..end]` ends with its closing quote (and not at
/// the end of the text, inside a doubled quote).
fn closed(sql: &str, start: usize, end: usize) -> bool {
    let b = sql.as_bytes();
    if end < start + 2 || b[end - 1] != b'\'' {
        return false;
    }
    let mut i = start + 1;
    while i < end - 1 {
        if b[i] == b'\'' {
            if b.get(i + 1) != Some(&b'\'') || i + 1 >= end - 1 {
                return false;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    true
}

/// The type PostgreSQL gives a numeric constant written as `text`, when it is plain decimal.
fn number_type(text: &str) -> Option<u32> {
    let b = text.as_bytes();
    if b.is_empty()
        || b.iter()
            .any(|c| !matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    if !b.iter().all(u8::is_ascii_digit) {
        return Some(NUMERIC);
    }
    Some(match text.parse::<i64>() {
        Ok(v) if i32::try_from(v).is_ok() => INT4,
        Ok(_) => INT8,
        Err(_) => NUMERIC,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifted(sql: &str) -> Option<(String, Vec<u32>, Vec<String>)> {
        lift(sql).map(|l| (l.sql, l.types, l.values))
    }

    #[test]
    fn numbers_and_strings_become_typed_parameters() {
        let (sql, types, values) =
            lifted("SELECT a FROM t WHERE id = 42 AND name = 'it''s' AND x > 4.5e3").unwrap();
        assert_eq!(
            sql,
            "SELECT a FROM t WHERE id = $1 AND name = $2 AND x > $3"
        );
        assert_eq!(types, [INT4, UNKNOWN, NUMERIC]);
        assert_eq!(values, ["42", "it's", "4.5e3"]);
    }

    #[test]
    fn integer_types_follow_the_constant_s_size() {
        let types = |sql| lift(sql).unwrap().types;
        assert_eq!(types("SELECT 1 WHERE 2147483647 = 0"), [INT4, INT4, INT4]);
        assert_eq!(types("SELECT 2147483648"), [INT8]);
        assert_eq!(types("SELECT 9223372036854775808"), [NUMERIC]);
        assert_eq!(types("SELECT .5"), [NUMERIC]);
        assert_eq!(types("SELECT 1."), [NUMERIC]);
    }

    #[test]
    fn what_is_not_lifted() {
        // Nothing to lift, a parameter already, or literals whose meaning a parameter would not keep.
        for sql in [
            "SELECT a FROM t",
            "SELECT a FROM t WHERE id = $1 AND b = 2",
            "SELECT a FROM t WHERE b = 'a\\'' ",
            "SELECT a FROM t WHERE b = 0x1F",
            "SELECT a FROM t WHERE b = 1_000",
            "SELECT a FROM t WHERE b = 'unterminated",
            "SELECT a FROM t WHERE b = 'a''",
            "SELECT a FROM t WHERE b = '",
        ] {
            assert_eq!(lift(sql), None, "{sql}");
        }
    }

    #[test]
    fn names_comments_and_dollar_quotes_are_kept() {
        let (sql, _, values) =
            lifted("SELECT \"col 1\", t2.x FROM t2 /* 5 */ WHERE y = $$a'b$$ -- 'c'\n AND z = 7")
                .unwrap();
        assert_eq!(
            sql,
            "SELECT \"col 1\", t2.x FROM t2 /* 5 */ WHERE y = $$a'b$$ -- 'c'\n AND z = $1"
        );
        assert_eq!(values, ["7"]);
    }

    #[test]
    fn prefixed_strings_are_not_lifted() {
        for sql in [
            "SELECT E'a'",
            "SELECT U&'a'",
            "SELECT B'01'",
            "SELECT x'1f'",
        ] {
            assert_eq!(lift(sql), None, "{sql}");
        }
        // A type name before a string lifts into text that is no value's place: the plan
        // checks where each parameter sits.
        assert_eq!(
            lift("SELECT date '2020-01-01'").unwrap().sql,
            "SELECT date $1"
        );
    }

    /// Puts the values back where their placeholders are, quoting strings again.
    fn restore(l: &Lifted) -> String {
        let mut sql = l.sql.clone();
        for (n, (v, ty)) in l.values.iter().zip(&l.types).enumerate().rev() {
            let value = match *ty {
                UNKNOWN => format!("'{}'", v.replace('\'', "''")),
                _ => v.clone(),
            };
            sql = sql.replace(&format!("${}", n + 1), &value);
        }
        sql
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(" ".to_string()),
            Just("=".to_string()),
            Just("(".to_string()),
            Just(",".to_string()),
            Just("-".to_string()),
            Just(".".to_string()),
            Just("'".to_string()),
            Just("''".to_string()),
            Just("\"".to_string()),
            Just("/*".to_string()),
            Just("*/".to_string()),
            Just("--".to_string()),
            Just("\n".to_string()),
            "[a-zE_][a-z0-9_]{0,3}",
            "[0-9]{1,20}",
            "[0-9]{0,3}\\.[0-9]{0,3}(e-?[0-9])?",
            "'[a-z0-9 ']{0,6}'",
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Any text: no panic, and a lifted text with its values put back is the text.
        #[test]
        fn lifting_loses_nothing(parts in proptest::collection::vec(token(), 0..60)) {
            let sql: String = parts.concat();
            if let Some(l) = lift(&sql) {
                prop_assert_eq!(l.values.len(), l.types.len());
                prop_assert_eq!(restore(&l), sql);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(sql in "\\PC{0,200}") {
            let _ = lift(&sql);
        }
    }

    #[test]
    fn long_texts_stop_lifting_at_the_bound() {
        let many = (0..MAX_LIFTED + 1)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(lift(&format!("SELECT x FROM t WHERE x IN ({many})")), None);
        let deep = format!("SELECT {}1{}", "(".repeat(50_000), ")".repeat(50_000));
        assert_eq!(lift(&deep).unwrap().values, ["1"]);
    }
}
