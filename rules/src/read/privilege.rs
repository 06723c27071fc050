//! Whether a read may be answered by new (or shadowed there) for the client's role: the role
//! must be the one legacy knows the session by, it must have SELECT on every legacy table and
//! column the read touches, and no table read may have row-level security.
//!
//! Pure: the proxy looks the role's privileges up on legacy and hands them in. Everything
//! here leans towards legacy: anything unknown or unsure is a refusal, never a pass.

use crate::read::plan::ReadPlan;
use crate::sql::ident::TableName;

/// What a role may read of one legacy table, as legacy's catalog says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableAccess {
    /// `USAGE` on the table's schema.
    pub usage: bool,
    /// Table-level `SELECT`.
    pub select: bool,
    /// The columns the role may `SELECT` (through table or column privileges), sorted.
    pub columns: Vec<String>,
    /// Row-level security is enabled on the table (`relrowsecurity`).
    pub row_security: bool,
}

/// Whether the session's role may have a read answered by new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// The role may read everything the read touches on legacy, and no table has
    /// row-level security (or legacy exempts the role from privileges altogether).
    Allowed,
    /// The role's privileges are not known yet (being looked up).
    #[default]
    Unchecked,
    /// The role lacks SELECT on a table or column the read touches, or USAGE on its schema.
    Denied,
    /// A table the read touches has row-level security enabled on legacy.
    RowSecurity,
    /// The session may run under another role than the one it logged in as (SET ROLE,
    /// SET SESSION AUTHORIZATION, set_config, ...), so what it may read is not known.
    RoleChanged,
}

/// The access a read's plan gets, given the role's access to each legacy table (`None`
/// when not known). Legacy requires SELECT on every column a query references, and for a
/// query that references no column of a table, SELECT on at least one of its columns.
pub fn access<'a>(
    plan: &ReadPlan,
    table: impl Fn(&TableName) -> Option<&'a TableAccess>,
) -> Access {
    for (name, columns) in &plan.columns {
        let Some(t) = table(name) else {
            return Access::Unchecked;
        };
        if t.row_security {
            return Access::RowSecurity;
        }
        let may = |c: &String| t.columns.binary_search(c).is_ok();
        let readable = t.usage
            && (t.select
                || if columns.is_empty() {
                    !t.columns.is_empty()
                } else {
                    columns.iter().all(may)
                });
        if !readable {
            return Access::Denied;
        }
    }
    Access::Allowed
}

/// How deep string literals and dollar-quoted bodies are scanned as SQL in their turn.
const MAX_NESTING: usize = 4;

/// Whether a SQL text sent by a client may change the session's role: `SET [LOCAL|SESSION]
/// ROLE`, `RESET ROLE`, `SET|RESET SESSION AUTHORIZATION` (outside an UPDATE's SET list) or
/// any mention of `set_config`, also inside string literals and dollar-quoted bodies (`DO`,
/// `EXECUTE '...'`). A text scan, not a parse, so it cannot fail on what it does not
/// understand; it errs towards yes. A role changed by the body of a function called by name
/// is not visible in the text.
pub fn may_change_role(sql: &[u8]) -> bool {
    // Most statements name none of these: one pass over the bytes spares them the tokenizer
    // (this runs on every statement of a session whose reads may be routed).
    let at = |i: usize, needle: &[u8]| {
        sql.get(i..i + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    };
    let named = sql.iter().enumerate().any(|(i, &c)| match c | 0x20 {
        b'r' => at(i, b"role"),
        b'a' => at(i, b"authorization"),
        b's' => at(i, b"set_config"),
        _ => false,
    });
    named && scan(sql, 0)
}

#[derive(Debug, PartialEq)]
enum Token<'a> {
    /// A bare word, lowercased.
    Word(String),
    /// A double-quoted identifier, as written.
    Quoted(&'a [u8]),
    /// A string literal's or dollar-quoted body's contents.
    Text(&'a [u8]),
    Semicolon,
    Other,
}

fn scan(sql: &[u8], depth: usize) -> bool {
    let mut tokens = Tokens { sql, at: 0 };
    // The words since the statement began; an UPDATE's `SET role = ...` is a column.
    let mut in_update = false;
    let mut prev: [Option<String>; 2] = [None, None];
    while let Some(token) = tokens.next() {
        let name: Option<&[u8]> = match &token {
            Token::Word(w) => Some(w.as_bytes()),
            Token::Quoted(q) => Some(q),
            _ => None,
        };
        if let Some(name) = name {
            if name == b"set_config" {
                return true;
            }
            let after_set = |p: &Option<String>| matches!(p.as_deref(), Some("set" | "reset"));
            let modifier = matches!(prev[1].as_deref(), Some("local" | "session"));
            let set_before = after_set(&prev[1]) || (modifier && after_set(&prev[0]));
            if !in_update
                && set_before
                && matches!(name, b"role" | b"authorization" | b"session_authorization")
            {
                return true;
            }
        }
        match token {
            Token::Word(w) => {
                in_update |= w == "update";
                prev = [prev[1].take(), Some(w)];
            }
            Token::Text(inner) => {
                if depth < MAX_NESTING && scan(inner, depth + 1) {
                    return true;
                }
                prev = [prev[1].take(), None];
            }
            Token::Semicolon => {
                in_update = false;
                prev = [None, None];
            }
            Token::Quoted(_) | Token::Other => prev = [prev[1].take(), None],
        }
    }
    false
}

struct Tokens<'a> {
    sql: &'a [u8],
    at: usize,
}

impl<'a> Tokens<'a> {
    /// The position of `needle` at or after `from`, or the end.
    fn find(&self, from: usize, needle: &[u8]) -> usize {
        self.sql
            .get(from..)
            .and_then(|rest| rest.windows(needle.len()).position(|w| w == needle))
            .map_or(self.sql.len(), |p| from + p)
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let sql = self.sql;
        self.skip_space()?;
        let start = self.at;
        let c = sql[start];
        if c == b'\'' {
            return Some(self.string(start));
        }
        if c == b'"' {
            let end = self.find(start + 1, b"\"");
            self.at = (end + 1).min(sql.len());
            return Some(Token::Quoted(&sql[start + 1..end]));
        }
        if c == b'$' {
            // $tag$ ... $tag$ (a bare $n is a parameter).
            let tag_end = sql[start + 1..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .map(|p| start + 1 + p);
            if let Some(te) = tag_end.filter(|&te| sql[te] == b'$') {
                let tag = &sql[start..=te];
                if !tag[1..tag.len() - 1].iter().all(u8::is_ascii_digit) || tag.len() == 2 {
                    let end = self.find(te + 1, tag);
                    self.at = (end + tag.len()).min(sql.len());
                    return Some(Token::Text(&sql[te + 1..end]));
                }
            }
        }
        if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            let mut end = start;
            while end < sql.len()
                && (sql[end].is_ascii_alphanumeric()
                    || sql[end] == b'_'
                    || sql[end] == b'$'
                    || sql[end] >= 0x80)
            {
                end += 1;
            }
            self.at = end;
            let word = String::from_utf8_lossy(&sql[start..end]).to_lowercase();
            return Some(Token::Word(word));
        }
        self.at = start + 1;
        Some(if c == b';' {
            Token::Semicolon
        } else {
            Token::Other
        })
    }

    /// Skips whitespace and comments; `None` at the end of the text.
    fn skip_space(&mut self) -> Option<()> {
        let sql = self.sql;
        loop {
            let c = *sql.get(self.at)?;
            let next = sql.get(self.at + 1).copied();
            match c {
                b if b.is_ascii_whitespace() => self.at += 1,
                b'-' if next == Some(b'-') => self.at = self.find(self.at, b"\n"),
                b'/' if next == Some(b'*') => {
                    // Nested comments, as PostgreSQL has them.
                    let mut depth = 0usize;
                    while self.at < sql.len() {
                        if sql[self.at..].starts_with(b"/*") {
                            depth += 1;
                            self.at += 2;
                        } else if sql[self.at..].starts_with(b"*/") {
                            depth -= 1;
                            self.at += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            self.at += 1;
                        }
                    }
                }
                _ => break,
            }
        }
        Some(())
    }

    /// A string literal starting at `start` (its quote).
    fn string(&mut self, start: usize) -> Token<'a> {
        let sql = self.sql;
        // '' inside is a quote; the contents are scanned whole either way.
        let mut end = start + 1;
        while end < sql.len() {
            if sql[end] == b'\'' {
                if sql.get(end + 1) == Some(&b'\'') {
                    end += 2;
                    continue;
                }
                break;
            }
            end += 1;
        }
        self.at = (end + 1).min(sql.len());
        Token::Text(&sql[start + 1..end.min(sql.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::plan::plan_read;
    use crate::ruleset::parse_rules;

    #[test]
    fn role_changes_are_seen_and_look_alikes_are_not() {
        #[rustfmt::skip]
        let cases: &[(&str, bool)] = &[
            ("SET ROLE reader", true),
            ("set role = 'reader'", true),
            ("SET LOCAL ROLE reader", true),
            ("SET SESSION ROLE reader", true),
            ("RESET ROLE", true),
            ("SET SESSION AUTHORIZATION alice", true),
            ("RESET SESSION AUTHORIZATION", true),
            ("SET \"role\" TO reader", true),
            ("SET /* why */ ROLE reader", true),
            ("SET -- why\n ROLE reader", true),
            ("SET session_authorization = alice", true),
            ("SELECT set_config('role', 'reader', false)", true),
            ("SELECT pg_catalog.SET_CONFIG($1, $2, false)", true),
            ("DO $$BEGIN SET ROLE reader; END$$", true),
            ("DO $body$BEGIN EXECUTE 'SET ROLE ' || 'reader'; END$body$", true),
            ("SELECT 1; SET ROLE reader", true),
            ("UPDATE users SET x = 1; SET ROLE reader", true),
            ("SELECT '--'; SET ROLE reader", true),
            ("SELECT role FROM users", false),
            ("SELECT id, role FROM members WHERE role = 'admin'", false),
            ("UPDATE users SET role = 'admin' WHERE id = 1", false),
            ("INSERT INTO users VALUES (1) ON CONFLICT (id) DO UPDATE SET role = 'x'", false),
            ("SET search_path = app", false),
            ("SET app.role = 'tenant'", false),
            ("SELECT $1::text AS role", false),
            ("CREATE SCHEMA s AUTHORIZATION alice", false),
            ("SELECT 'set role'", true),
            ("", false),
        ];
        for (sql, want) in cases {
            assert_eq!(may_change_role(sql.as_bytes()), *want, "{sql:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        for sql in [
            "'",
            "\"",
            "$",
            "$$",
            "$a",
            "$a$",
            "/*",
            "/* /*",
            "--",
            "SET",
            "set role",
            "$1$",
            "E'\\'",
            "\u{fffd}$x$",
            "SET \"ro",
            "'''",
            "/**/*/",
        ] {
            may_change_role(sql.as_bytes());
        }
        let deep = "'".repeat(10_000);
        may_change_role(deep.as_bytes());
    }

    fn grant(select: bool, columns: &[&str], rls: bool) -> TableAccess {
        let mut columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        columns.sort();
        TableAccess {
            usage: true,
            select,
            columns,
            row_security: rls,
        }
    }

    #[test]
    fn access_table() {
        let mut rules = parse_rules(
            r#"
            [[table]]
            legacy = "public.users"
            new = "app.customers"
            keys = ["id"]
            [table.columns]
            customer_id = "id"
            email = "email"
            name = "name"
            "#,
            "t",
        )
        .unwrap();
        let users = TableName {
            schema: "public".into(),
            name: "users".into(),
        };
        rules.set_legacy_columns(&users, vec!["id".into(), "email".into(), "name".into()]);
        let all = grant(true, &["email", "id", "name"], false);
        let id_email = grant(false, &["email", "id"], false);
        let nothing = grant(false, &[], false);
        let rls = grant(true, &["email", "id", "name"], true);
        let no_usage = TableAccess {
            usage: false,
            ..all.clone()
        };
        use Access::*;
        #[rustfmt::skip]
        let cases: &[(&str, Option<&TableAccess>, Access)] = &[
            ("SELECT email FROM users", Some(&all), Allowed),
            ("SELECT email FROM users", None, Unchecked),
            ("SELECT email FROM users", Some(&nothing), Denied),
            ("SELECT count(*) FROM users", Some(&nothing), Denied),
            ("SELECT email FROM users", Some(&no_usage), Denied),
            ("SELECT id, email FROM users WHERE id = 1", Some(&id_email), Allowed),
            ("SELECT count(*) FROM users", Some(&id_email), Allowed),
            ("SELECT * FROM users", Some(&id_email), Denied),
            ("SELECT id FROM users WHERE name = 'x'", Some(&id_email), Denied),
            ("SELECT id FROM users ORDER BY name", Some(&id_email), Denied),
            ("SELECT * FROM users", Some(&all), Allowed),
            ("SELECT email FROM users", Some(&rls), RowSecurity),
        ];
        for (sql, grants, want) in cases {
            let plan = plan_read(sql, &rules).unwrap();
            let got = access(&plan, |t| (t == &users).then_some(*grants).flatten());
            assert_eq!(got, *want, "{sql} with {grants:?}");
        }
    }
}
