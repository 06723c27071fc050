//! Bounds on the work spent analysing one client SQL text, checked before it is parsed.
//!
//! sqlparser builds a chain of binary operators (`1+2+...`, `x = 1 OR x = 2 OR ...`,
//! `UNION ALL` arms, `::int::int` casts) iteratively, into a tree as deep as the chain is long;
//! walking that tree, printing it and dropping it then recurse once per level. A deep enough
//! tree overflows a worker's stack and aborts the whole process, so no text whose tree could
//! be that deep is ever parsed. One pass over the bytes (the lexing of `fingerprint`)
//! estimates, from above, how deep the tree can get; past `MAX_DEPTH` or `MAX_BYTES` the text
//! is not parsed at all and is treated as unknown (relayed unchanged, counted). The scan costs
//! O(length) time and constant stack whatever the input.

use std::fmt;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};

use crate::sql::fingerprint::{is_ident, number_end, opaque_at};

/// Longest text analysed, in bytes: parsing is linear, but a worker parsing megabytes stalls
/// every other session on it.
pub const MAX_BYTES: usize = 256 * 1024;

/// Deepest expression tree (as estimated by [`check`]) that is parsed.
pub const MAX_DEPTH: usize = 512;

/// Deepest nesting sqlparser's recursive descent may reach (it counts its own recursion and
/// fails cleanly past this).
pub const PARSER_RECURSION_LIMIT: usize = 48;

/// Why a text was not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// Longer than [`MAX_BYTES`].
    Length(usize),
    /// Its expression tree could be deeper than [`MAX_DEPTH`].
    Depth,
}

impl Exceeded {
    /// A short label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Exceeded::Length(_) => "too_long",
            Exceeded::Depth => "too_deep",
        }
    }
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exceeded::Length(n) => write!(f, "statement of {n} bytes is over {MAX_BYTES}"),
            Exceeded::Depth => write!(f, "statement nests deeper than {MAX_DEPTH}"),
        }
    }
}

/// Why a bounded parse gave no statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundedError {
    Exceeded(Exceeded),
    Parse(String),
}

impl fmt::Display for BoundedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundedError::Exceeded(e) => write!(f, "not analysed: {e}"),
            BoundedError::Parse(e) => f.write_str(e),
        }
    }
}

/// Parses `sql` with PostgreSQL's dialect, but only when [`check`] allows it, and with
/// sqlparser's own recursion limit lowered to [`PARSER_RECURSION_LIMIT`].
pub fn parse(sql: &str) -> Result<Vec<Statement>, BoundedError> {
    check(sql).map_err(BoundedError::Exceeded)?;
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e: ParserError| BoundedError::Parse(e.to_string()))
}

/// Whether `sql` is small and shallow enough to parse.
///
/// The estimate: each bracket (`(`, `[`) or `CASE` opens a level; within a level, every
/// operator (a run of operator characters, `::`, and the keywords that join two
/// expressions or queries) since the last separator (`,`, `;`, `WHEN`, `THEN`, `ELSE`) can
/// add one level to the tree. The sum over the open levels bounds the tree's depth from
/// above (a chain of k operators parses into at most k+1 levels whatever the precedences).
pub fn check(sql: &str) -> Result<(), Exceeded> {
    if sql.len() > MAX_BYTES {
        return Err(Exceeded::Length(sql.len()));
    }
    let b = sql.as_bytes();
    let mut levels: Vec<Level> = Vec::new();
    // Operators since the last separator at the current level, and the sum of (operators
    // + 1) over the enclosing levels.
    let (mut chain, mut outer) = (0usize, 0usize);
    // The first byte of the last token that was not white space.
    let mut last = b' ';
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        let next = if let Some((end, _)) = opaque_at(b, i) {
            end
        } else {
            match c {
                b'(' | b'[' => {
                    // `x[1][2]...` and `(x)[1]`: a bracket right after a closing one applies to
                    // it, one more level of the enclosing chain.
                    if matches!(last, b')' | b']') {
                        chain += 1;
                    }
                    levels.push(Level { chain, case: false });
                    outer += chain + 1;
                    chain = 0;
                    i + 1
                }
                b')' | b']' => {
                    close(&mut levels, &mut chain, &mut outer, false);
                    i + 1
                }
                b',' | b';' => {
                    chain = 0;
                    i + 1
                }
                b'0'..=b'9' if !is_ident(prev) => number_end(b, i),
                b'.' if !is_ident(prev) && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                    number_end(b, i)
                }
                _ if is_operator(c) => {
                    chain += 1;
                    i + 1 + count(b, i + 1, is_operator)
                }
                _ if is_ident(c) => {
                    let end = i + 1 + count(b, i + 1, is_ident);
                    match keyword(&b[i..end]) {
                        Keyword::Operator => chain += 1,
                        Keyword::Separator => chain = 0,
                        Keyword::Case => {
                            levels.push(Level { chain, case: true });
                            outer += chain + 1;
                            chain = 0;
                        }
                        Keyword::End => close(&mut levels, &mut chain, &mut outer, true),
                        Keyword::Other => {}
                    }
                    end
                }
                _ => i + 1,
            }
        };
        if outer + chain > MAX_DEPTH {
            return Err(Exceeded::Depth);
        }
        if !c.is_ascii_whitespace() {
            last = c;
        }
        i = next.max(i + 1).min(b.len());
    }
    Ok(())
}

/// An open bracket or CASE, with the operator count of the level it interrupted.
struct Level {
    chain: usize,
    case: bool,
}

/// Closes the innermost level when it is of the right sort (a stray `)` or `END` closes
/// nothing; the parser will reject or treat it as it does).
fn close(levels: &mut Vec<Level>, chain: &mut usize, outer: &mut usize, case: bool) {
    if levels.last().is_some_and(|l| l.case == case) {
        let l = levels.pop().expect("checked above");
        *outer -= l.chain + 1;
        // The closed level is one operand of its enclosing chain.
        *chain = l.chain;
    }
}

fn count(b: &[u8], from: usize, f: impl Fn(u8) -> bool) -> usize {
    b[from.min(b.len())..].iter().take_while(|&&c| f(c)).count()
}

/// Characters of PostgreSQL operators (`+ - * / < > = ~ ! @ # % ^ & | \` ?`), and `:` of `::`.
fn is_operator(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b':'
    )
}

enum Keyword {
    Operator,
    Separator,
    Case,
    End,
    Other,
}

fn keyword(word: &[u8]) -> Keyword {
    const OPERATORS: &[&[u8]] = &[
        b"and",
        b"or",
        b"not",
        b"is",
        b"isnull",
        b"notnull",
        b"like",
        b"ilike",
        b"similar",
        b"between",
        b"in",
        b"collate",
        b"at",
        b"overlaps",
        b"escape",
        b"union",
        b"intersect",
        b"except",
        b"join",
        b"any",
        b"some",
        b"all",
        b"array",
        b"operator",
    ];
    if word.len() > 9 {
        return Keyword::Other;
    }
    let mut lower = [0u8; 9];
    for (l, c) in lower.iter_mut().zip(word) {
        *l = c.to_ascii_lowercase();
    }
    let w = &lower[..word.len()];
    match w {
        b"case" => Keyword::Case,
        b"end" => Keyword::End,
        b"when" | b"then" | b"else" => Keyword::Separator,
        _ if OPERATORS.contains(&w) => Keyword::Operator,
        _ => Keyword::Other,
    }
}

#[cfg(test)]
mod tests;
