//! Statement fingerprints: SQL text with its literal values replaced by `?`, so that
//! `... WHERE aid = 17` and `... WHERE aid = 42` share one cache entry and one parse.
//!
//! The analysis (statement kinds, tables) never depends on a literal's value, only on where
//! literals are, so every text with one fingerprint has the same analysis. Quoted identifiers,
//! dollar-quoted bodies and comments are kept verbatim: they can change what a statement is.
//! One pass over the bytes, no allocation when the output buffer has room.

use std::ops::ControlFlow;

/// Writes the fingerprint of `sql` into `out` (cleared first).
pub fn fingerprint_into(sql: &str, out: &mut String) {
    out.clear();
    let mut copied = 0;
    let _ = scan_values(sql, |token, start, end| {
        if token != Token::Param {
            out.push_str(&sql[copied..start]);
            out.push('?');
            copied = end;
        }
        ControlFlow::Continue(())
    });
    out.push_str(&sql[copied.min(sql.len())..]);
}

/// A value in SQL text, as [`scan_values`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    /// A string literal, quotes (and an `E` prefix's escapes) included.
    String,
    /// A number.
    Number,
    /// A `$n` parameter.
    Param,
}

/// Calls `f(token, start, end)` for each string literal, number and `$n` parameter of `sql`
/// (`sql[start..end]`), in order, outside quoted names, comments and dollar-quoted bodies;
/// stops when `f` breaks. The one lexer of values that fingerprints and lifted literals share.
pub(crate) fn scan_values(
    sql: &str,
    mut f: impl FnMut(Token, usize, usize) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        let next = match c {
            b'\'' | b'"' | b'-' | b'/' | b'$' => match opaque_at(b, i) {
                Some((end, true)) => {
                    f(Token::String, i, end)?;
                    end
                }
                Some((end, false)) => {
                    if c == b'$' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                        f(Token::Param, i, end)?;
                    }
                    end
                }
                None => i + 1,
            },
            b'0'..=b'9' if !is_ident(prev) => {
                let end = number_end(b, i);
                f(Token::Number, i, end)?;
                end
            }
            b'.' if !is_ident(prev) && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = number_end(b, i);
                f(Token::Number, i, end)?;
                end
            }
            _ if is_ident(c) => i + 1 + count(b, i + 1, is_ident),
            _ => i + 1,
        };
        i = next.min(b.len());
    }
    ControlFlow::Continue(())
}

/// When a string literal, a quoted name, a comment, a dollar-quoted body or a `$n`
/// parameter starts at byte `i`: the index just past it, and whether it is a string literal
/// (a value). Their contents are opaque to every scan of SQL text here.
#[inline]
pub(crate) fn opaque_at(b: &[u8], i: usize) -> Option<(usize, bool)> {
    Some(match b[i] {
        b'\'' => {
            // E'...' strings honour backslash escapes; others only doubled quotes.
            let prev = if i > 0 { b[i - 1] } else { b' ' };
            let escapes = matches!(prev, b'e' | b'E') && (i < 2 || !is_ident(b[i - 2]));
            (string_end(b, i + 1, escapes), true)
        }
        b'"' => (skip_until(b, i + 1, b"\""), false),
        b'-' if b.get(i + 1) == Some(&b'-') => (skip_until(b, i + 2, b"\n"), false),
        b'/' if b.get(i + 1) == Some(&b'*') => (skip_until(b, i + 2, b"*/"), false),
        b'$' => match dollar_tag(b, i) {
            Some(tag_end) => (skip_until(b, tag_end, &b[i..tag_end]), false),
            None => (i + 1 + count(b, i + 1, |c| c.is_ascii_digit()), false),
        },
        _ => return None,
    })
}

/// The fingerprint of `sql` as a new string.
pub fn fingerprint(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    fingerprint_into(sql, &mut out);
    out
}

pub(crate) fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn count(b: &[u8], from: usize, f: impl Fn(u8) -> bool) -> usize {
    b[from.min(b.len())..].iter().take_while(|&&c| f(c)).count()
}

/// Index just past the closing quote of a string literal whose body starts at `from`.
fn string_end(b: &[u8], mut i: usize, escapes: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if escapes => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Index just past the first `end` at or after `from` (or the end of input).
fn skip_until(b: &[u8], from: usize, end: &[u8]) -> usize {
    if from >= b.len() {
        return b.len();
    }
    b[from..]
        .windows(end.len())
        .position(|w| w == end)
        .map_or(b.len(), |p| from + p + end.len())
}

/// For a `$` at `i` opening a dollar quote (`$$` or `$tag$`), the index past the opening tag.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let body = &b[i + 1..];
    let n = body
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80)
        .count();
    if body.first().is_some_and(u8::is_ascii_digit) {
        return None; // $1: a parameter
    }
    (body.get(n) == Some(&b'$')).then_some(i + n + 2)
}

pub(crate) fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |i: usize| i + count(b, i, |c| c.is_ascii_digit() || c == b'_');
    // Hex, octal and binary integers (PostgreSQL 16).
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        return i + 2 + count(b, i + 2, |c| c.is_ascii_hexdigit() || c == b'_');
    }
    i = digits(i);
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = digits(j);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::fingerprint as fp;

    #[test]
    fn literals_become_placeholders() {
        let cases = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 123456;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = ?;",
            ),
            (
                "UPDATE t SET v = v + 1.5e-3, s = 'it''s' WHERE id IN (1, 2, .5)",
                "UPDATE t SET v = v + ?, s = ? WHERE id IN (?, ?, ?)",
            ),
            (
                "SELECT E'a\\'b', e'x', 'plain\\' , 7",
                "SELECT E?, e?, ? , ?",
            ),
            ("SELECT x'ff', B'101', 0x1F, 1_000", "SELECT x?, B?, ?, ?"),
            (
                "SELECT t1.c2, $1, $12 FROM t1",
                "SELECT t1.c2, $1, $12 FROM t1",
            ),
            (
                "SELECT \"col 1\", \"it's\" FROM \"T2\" WHERE a = -4",
                "SELECT \"col 1\", \"it's\" FROM \"T2\" WHERE a = -?",
            ),
            (
                "SELECT 1 -- note 5\n, 2 /* 3 */",
                "SELECT ? -- note 5\n, ? /* 3 */",
            ),
            (
                "DO $$ BEGIN PERFORM 1; END $$",
                "DO $$ BEGIN PERFORM 1; END $$",
            ),
            ("SELECT $fn$ 'x' 1 $fn$, 2", "SELECT $fn$ 'x' 1 $fn$, ?"),
            ("SELECT 'ünï' || 'c', ü1", "SELECT ? || ?, ü1"),
        ];
        for (sql, want) in cases {
            assert_eq!(fp(sql), want, "{sql}");
        }
    }

    #[test]
    fn unterminated_input_is_handled() {
        for sql in [
            "SELECT 'open",
            "SELECT \"open",
            "/* open",
            "SELECT $a$ open",
            "SELECT 1e",
            "E'\\",
            "$",
        ] {
            let _ = fp(sql);
        }
        assert_eq!(fp("SELECT 'open"), "SELECT ?");
    }

    #[test]
    fn same_shape_same_fingerprint() {
        assert_eq!(
            fp("INSERT INTO t VALUES (1, 'a')"),
            fp("INSERT INTO t VALUES (99, 'bbb')")
        );
        assert_ne!(fp("SELECT * FROM a"), fp("SELECT * FROM b"));
    }
}
