//! Checks a rule set against the live catalogs of legacy and new: tables and columns exist,
//! keys are unique, each transform runs on legacy, and its result type fits the new column.
//! Every problem is reported with the same `table[i] (name).field` position as offline
//! validation, so one listing covers both.

use pgdual_rules::ruleset::{RuleProblem, TargetDatabase, WriteMode};
use pgdual_rules::{ReadMode, RuleSet, TableName, TableRule};
use tokio_postgres::Client;

use crate::net::endpoint::Endpoints;

struct Columns {
    /// (name, type as format_type prints it, NOT NULL without default)
    list: Vec<(String, String, bool)>,
}

async fn columns(c: &Client, table: &TableName) -> Result<Option<Columns>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL), \
                    a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '' \
             FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table.to_string()],
        )
        .await?;
    if rows.is_empty() {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.to_string()])
            .await?
            .get(0);
        if !exists {
            return Ok(None);
        }
    }
    Ok(Some(Columns {
        list: rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    }))
}

/// Whether some unique index of `table` covers exactly `cols`.
async fn unique_on(
    c: &Client,
    table: &TableName,
    cols: &[String],
) -> Result<bool, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) \
               AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
               AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a \
                    WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) \
                   = (SELECT array_agg(x ORDER BY x) FROM unnest($2::text[]) x))",
            &[&table.to_string(), &cols],
        )
        .await?;
    Ok(row.get(0))
}

/// Whether a value of type `from` is assignable to a column of type `to` on this server. A
/// domain takes what its base type takes (legacy describes a domain column by its base type);
/// a type name this server does not know is not assignable.
async fn assignable(c: &Client, from: &str, to: &str) -> Result<bool, tokio_postgres::Error> {
    if from == to || from == "unknown" {
        return Ok(true);
    }
    let row = c
        .query_one(
            "WITH RECURSIVE t(oid) AS (SELECT to_regtype($2) \
               UNION SELECT p.typbasetype FROM pg_type p JOIN t ON p.oid = t.oid WHERE p.typtype = 'd') \
             SELECT coalesce(bool_or(t.oid = to_regtype($1) OR EXISTS (SELECT 1 FROM pg_cast \
               WHERE castsource = to_regtype($1) AND casttarget = t.oid \
               AND castcontext IN ('a', 'i'))), false) FROM t",
            &[&from, &to],
        )
        .await?;
    Ok(row.get(0))
}

/// Every catalog problem of `rules`. `new` is the new database's connection, if configured.
pub async fn check(rules: &RuleSet, legacy: &Client, new: Option<&Client>) -> Vec<RuleProblem> {
    check_and_learn(rules, legacy, new).await.0
}

/// Legacy tables' columns, in table order, as learned from the catalog.
pub type LegacyColumns = Vec<(TableName, Vec<String>)>;

/// Whether a rule needs the new database: its new table lives there and its writes are
/// mirrored or its reads routed.
pub fn uses_new(rule: &TableRule) -> bool {
    rule.database == TargetDatabase::New
        && (rule.write == WriteMode::On || rule.read != ReadMode::Legacy)
}

/// Whether `rule` must be checked against new on a reload, given the rule for the same
/// table in the rules in force (`previous`). Only what uses new needs it, and only when its
/// use grew: a new table, a changed mapping, writes turned on, reads turned to shadow or
/// new. Less use of new (reads back to legacy, writes off, a table removed, a smaller
/// percentage) never needs new, so the way back works while new is down.
pub fn needs_new_check(rule: &TableRule, previous: Option<&TableRule>) -> bool {
    if !uses_new(rule) {
        return false;
    }
    let Some(old) = previous.filter(|o| uses_new(o)) else {
        return true;
    };
    // The mapping itself, without the modes and what the catalog taught.
    let mapping = |r: &TableRule| TableRule {
        write: WriteMode::Off,
        read: ReadMode::Legacy,
        read_percent: 0,
        fallback_on_empty: false,
        legacy_columns: Vec::new(),
        ..r.clone()
    };
    let writes_covered = rule.write == WriteMode::Off || old.write == WriteMode::On;
    let reads_covered = rule.read == ReadMode::Legacy || old.read != ReadMode::Legacy;
    !(writes_covered && reads_covered && mapping(old) == mapping(rule))
}

/// The catalog check of a rules reload: every table against legacy (which also teaches each
/// legacy table's columns), and against new only the tables [`needs_new_check`] names, with
/// `previous` the rules in force. Without such tables pgdual does not connect to new at
/// all. `Err` when a needed database is unreachable.
pub async fn check_reload(
    endpoints: &Endpoints,
    rules: &RuleSet,
    previous: Option<&RuleSet>,
) -> Result<(Vec<RuleProblem>, LegacyColumns), String> {
    let needing: Vec<String> = rules
        .tables()
        .iter()
        .enumerate()
        .filter(|(_, r)| needs_new_check(r, previous.and_then(|p| p.table(&r.legacy))))
        .map(|(i, r)| format!("table[{i}] ({})", r.legacy))
        .collect();
    let legacy = endpoints.legacy.client().await?;
    let new = match &endpoints.new {
        Some(new) if !needing.is_empty() => Some(new.client().await.map_err(|e| {
            format!(
                "{e}; new is needed to check {}, whose writes or reads would use it",
                needing.join(", ")
            )
        })?),
        _ => None,
    };
    Ok(check_tables(rules, &legacy, new.as_ref(), |r| {
        needs_new_check(r, previous.and_then(|p| p.table(&r.legacy)))
    })
    .await)
}

/// Every catalog problem of `rules`, and each legacy table's columns.
pub async fn check_and_learn(
    rules: &RuleSet,
    legacy: &Client,
    new: Option<&Client>,
) -> (Vec<RuleProblem>, LegacyColumns) {
    check_tables(rules, legacy, new, |_| true).await
}

/// Checks every table against legacy, and against its target database the tables for which
/// `check_new` holds (tables whose target is legacy itself are always checked whole).
async fn check_tables(
    rules: &RuleSet,
    legacy: &Client,
    new: Option<&Client>,
    check_new: impl Fn(&TableRule) -> bool,
) -> (Vec<RuleProblem>, LegacyColumns) {
    let mut problems = Vec::new();
    let mut learned = Vec::new();
    for (i, rule) in rules.tables().iter().enumerate() {
        let target = match rule.database {
            TargetDatabase::Legacy => Some(Some(legacy)),
            TargetDatabase::New if check_new(rule) => Some(new),
            TargetDatabase::New => None,
        };
        if let Err(e) = check_table(i, rule, legacy, target, &mut problems, &mut learned).await {
            problems.push(RuleProblem {
                at: format!("table[{i}] ({})", rule.legacy),
                message: format!("catalog query failed: {e}"),
            });
        }
    }
    (problems, learned)
}

/// Problems of one table, each placed at `table[i] (name).field`.
struct Report<'a> {
    at: String,
    problems: &'a mut Vec<RuleProblem>,
}

impl Report<'_> {
    fn bad(&mut self, field: &str, message: String) {
        self.problems.push(RuleProblem {
            at: format!("{}.{field}", self.at),
            message,
        })
    }
}

fn has(cols: &Columns, c: &str) -> bool {
    cols.list.iter().any(|(n, _, _)| n == c)
}

/// One table's checks. `target` is `None` when its target database is not to be checked,
/// `Some(None)` when it should be but is not configured.
async fn check_table(
    i: usize,
    rule: &TableRule,
    legacy: &Client,
    target: Option<Option<&Client>>,
    problems: &mut Vec<RuleProblem>,
    learned: &mut LegacyColumns,
) -> Result<(), tokio_postgres::Error> {
    let mut report = Report {
        at: format!("table[{i}] ({})", rule.legacy),
        problems,
    };
    let Some((lcols, types)) = check_legacy(rule, legacy, &mut report, learned).await? else {
        return Ok(());
    };
    let Some(target) = target else {
        return Ok(());
    };
    let Some(target) = target else {
        report.bad(
            "database",
            "is \"new\" but no [new] database is configured".into(),
        );
        return Ok(());
    };
    let Some(ncols) = columns(target, &rule.new).await? else {
        let db = match rule.database {
            TargetDatabase::New => "new",
            TargetDatabase::Legacy => "legacy",
        };
        report.bad(
            "new",
            format!("{} does not exist in the {db} database", rule.new),
        );
        return Ok(());
    };
    check_target_columns(rule, target, &ncols, &types, &mut report).await?;
    check_read_back(rule, target, &lcols, &mut report).await?;
    if !unique_on(target, &rule.new, &rule.new_keys).await? {
        report.bad(
            "keys",
            format!(
                "no primary key or unique index on ({}) in {}",
                rule.new_keys.join(", "),
                rule.new
            ),
        );
    }
    Ok(())
}

/// The legacy side: the table, its keys, and the type each transform yields there (from
/// legacy itself). `None` when the table does not exist.
async fn check_legacy(
    rule: &TableRule,
    legacy: &Client,
    report: &mut Report<'_>,
    learned: &mut LegacyColumns,
) -> Result<Option<(Columns, Vec<Option<String>>)>, tokio_postgres::Error> {
    let Some(lcols) = columns(legacy, &rule.legacy).await? else {
        report.bad(
            "legacy",
            format!("{} does not exist in legacy", rule.legacy),
        );
        return Ok(None);
    };
    learned.push((
        rule.legacy.clone(),
        lcols.list.iter().map(|(n, _, _)| n.clone()).collect(),
    ));
    for key in &rule.legacy_keys {
        if !has(&lcols, key) {
            report.bad("keys", format!("{} has no column {key:?}", rule.legacy));
        }
    }
    if !unique_on(legacy, &rule.legacy, &rule.legacy_keys).await? {
        report.bad(
            "keys",
            format!(
                "no primary key or unique index on ({}) in {}",
                rule.legacy_keys.join(", "),
                rule.legacy
            ),
        );
    }
    let mut types = Vec::new();
    for col in &rule.columns {
        let missing: Vec<&String> = col.reads.iter().filter(|r| !has(&lcols, r)).collect();
        if !missing.is_empty() {
            report.bad(
                &format!("columns.{}", col.new),
                format!("reads {missing:?}, which {} does not have", rule.legacy),
            );
            types.push(None);
            continue;
        }
        let sql = format!("SELECT {} FROM {}", col.source, rule.legacy);
        match legacy.prepare(&sql).await {
            Ok(stmt) => types.push(stmt.columns().first().map(|c| c.type_().name().to_string())),
            Err(e) => {
                let msg = e
                    .as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_string());
                report.bad(
                    &format!("columns.{}", col.new),
                    format!("does not run on legacy: {msg}"),
                );
                types.push(None);
            }
        }
    }
    Ok(Some((lcols, types)))
}

/// Every mapped column exists in the target and takes its transform's type; every NOT NULL
/// column without a default is filled.
async fn check_target_columns(
    rule: &TableRule,
    target: &Client,
    ncols: &Columns,
    types: &[Option<String>],
    report: &mut Report<'_>,
) -> Result<(), tokio_postgres::Error> {
    for (col, ty) in rule.columns.iter().zip(types) {
        let Some((_, new_ty, _)) = ncols.list.iter().find(|(n, _, _)| *n == col.new) else {
            report.bad(
                &format!("columns.{}", col.new),
                format!("{} has no column {:?}", rule.new, col.new),
            );
            continue;
        };
        if let Some(ty) = ty {
            if !assignable(target, &pg_type_name(ty), new_ty).await? {
                report.bad(
                    &format!("columns.{}", col.new),
                    format!(
                        "yields {ty} on legacy, which does not fit {}.{} of type {new_ty}",
                        rule.new, col.new
                    ),
                );
            }
        }
    }
    for (name, _, required) in &ncols.list {
        if *required && !rule.columns.iter().any(|c| &c.new == name) {
            report.bad(
                "columns",
                format!(
                    "{}.{name} is NOT NULL without a default but no mapping fills it",
                    rule.new
                ),
            );
        }
    }
    Ok(())
}

/// When the table's reads are routed, each read-back runs on new and yields the legacy
/// column's type, or every read of it would fall back.
async fn check_read_back(
    rule: &TableRule,
    target: &Client,
    lcols: &Columns,
    report: &mut Report<'_>,
) -> Result<(), tokio_postgres::Error> {
    let routed = rule.read != pgdual_rules::ReadMode::Legacy;
    for back in rule.read_back.iter().filter(|_| routed) {
        let field = format!("read_back.{}", back.legacy);
        let Some((_, legacy_ty, _)) = lcols.list.iter().find(|(n, _, _)| *n == back.legacy) else {
            report.bad(
                &field,
                format!("{} has no column {:?}", rule.legacy, back.legacy),
            );
            continue;
        };
        let sql = format!("SELECT {} FROM {} LIMIT 0", back.source, rule.new);
        match target.prepare(&sql).await {
            Ok(stmt) => {
                let Some(ty) = stmt
                    .columns()
                    .first()
                    .map(|c| pg_type_name(c.type_().name()))
                else {
                    continue;
                };
                let same: bool = target
                    .query_one(
                        "SELECT to_regtype($1)::oid = to_regtype($2)::oid",
                        &[&ty, legacy_ty],
                    )
                    .await?
                    .get(0);
                if !same {
                    report.bad(
                        &field,
                        format!(
                            "yields {ty} on new, but {}.{} is {legacy_ty}; a read_back \
                             can cast it: {} = \"({})::{legacy_ty}\"",
                            rule.legacy, back.legacy, back.legacy, back.source
                        ),
                    );
                }
            }
            Err(e) => {
                let msg = e
                    .as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_string());
                report.bad(&field, format!("does not run on {}: {msg}", rule.new));
            }
        }
    }
    Ok(())
}

/// tokio-postgres names types by their catalog name (`int8`, `_text`); `format_type` prints
/// SQL names (`bigint`, `text[]`). `to_regtype` accepts both, except the array spelling.
fn pg_type_name(name: &str) -> String {
    match name.strip_prefix('_') {
        Some(elem) => format!("{elem}[]"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(extra: &str) -> TableRule {
        let text = format!(
            "[[table]]\nlegacy = \"public.t\"\nnew = \"app.t\"\nkeys = [\"id\"]\n{extra}\n\
             [table.columns]\nid = \"id\"\nname = \"name\"\n"
        );
        pgdual_rules::parse_rules(&text, "t").unwrap().tables()[0].clone()
    }

    #[test]
    fn only_growing_use_of_new_needs_new() {
        let legacy_db = "database = \"legacy\"\nwrite = \"on\"\nread = \"new\"";
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>, bool)] = &[
            // the rule, the rule checked before (None: a new table), needs new
            ("read = \"legacy\"", Some("read = \"new\""), false),
            ("write = \"on\"", Some("write = \"on\"\nread = \"new\""), false),
            ("", Some("write = \"on\"\nread = \"new\""), false),
            ("read = \"new\"\nread_percent = 10", Some("read = \"new\""), false),
            ("read = \"shadow\"", Some("read = \"new\""), false),
            ("read = \"new\"", Some("read = \"shadow\""), false),
            ("read = \"new\"\nfallback_on_empty = true", Some("read = \"new\""), false),
            ("read = \"new\"", Some("read = \"legacy\""), true),
            ("read = \"new\"", Some("write = \"on\""), true),
            ("write = \"on\"", Some("read = \"new\""), true),
            ("read = \"new\"", None, true),
            ("read = \"legacy\"", None, false),
            (legacy_db, None, false),
        ];
        for (now, before, want) in cases {
            let before = before.map(rule);
            assert_eq!(
                needs_new_check(&rule(now), before.as_ref()),
                *want,
                "{now:?} after {before:?}"
            );
        }
        // A changed mapping is checked again, whatever the modes.
        let mut changed = rule("read = \"new\"");
        changed.new.name = "t2".into();
        assert!(needs_new_check(&changed, Some(&rule("read = \"new\""))));
    }
}
