//! Least privilege: the grants pgdual's own roles (`legacy.user`, `new.user`) need for what a
//! rule set uses, as README's "Security" section lists them, and which of them a role lacks.
//! It only asks the catalogs (`has_*_privilege`, `pg_has_role`); it never grants anything.

use std::fmt;

use pgdual_rules::ruleset::{quote_ident, TargetDatabase, WriteMode};
use pgdual_rules::{ReadMode, RuleSet, TableName};
use tokio_postgres::Client;

/// Which of pgdual's connections a grant is needed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Legacy,
    New,
}

impl fmt::Display for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Db::Legacy => "legacy",
            Db::New => "new",
        })
    }
}

/// One grant a rule set needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// `CREATE SCHEMA pgdual` (or, once it exists, owning it): for the changelog and the
    /// capture functions.
    PgdualSchema,
    /// Ownership of a table, or membership in its owner: capture triggers are created and
    /// dropped on it (`DROP TRIGGER` needs the owner).
    Owner(TableName),
    /// `USAGE` on a schema.
    SchemaUsage(String),
    /// A table privilege (`SELECT`, `INSERT`, ...).
    Table(TableName, &'static str),
    /// `SELECT` on these columns (granted on the table, or column by column).
    Columns(TableName, Vec<String>),
}

/// Every grant `rules` needs, per database, in rule order without repeats: on legacy for
/// dual-write the `pgdual` schema, ownership of each mapped table, `USAGE` on its schema and
/// `SELECT` on the columns its rule reads; where each new table lives, `USAGE` on its schema
/// and `SELECT, INSERT, UPDATE, DELETE, TRUNCATE` when its writes are mirrored, `SELECT` when
/// its reads are routed. Privilege look-ups for clients' reads need nothing.
pub fn needed(rules: &RuleSet) -> Vec<(Db, Need)> {
    let mut out: Vec<(Db, Need)> = Vec::new();
    let mut add = |db: Db, need: Need| {
        if !out.contains(&(db, need.clone())) {
            out.push((db, need));
        }
    };
    let writing = |r: &&pgdual_rules::TableRule| r.write == WriteMode::On;
    if rules.tables().iter().any(|r| writing(&r)) {
        add(Db::Legacy, Need::PgdualSchema);
    }
    for rule in rules.tables().iter().filter(writing) {
        add(Db::Legacy, Need::Owner(rule.legacy.clone()));
        add(Db::Legacy, Need::SchemaUsage(rule.legacy.schema.clone()));
        add(
            Db::Legacy,
            Need::Columns(rule.legacy.clone(), rule.legacy_columns_read()),
        );
    }
    for rule in rules.tables() {
        let db = match rule.database {
            TargetDatabase::Legacy => Db::Legacy,
            TargetDatabase::New => Db::New,
        };
        let privileges: &[&str] = match (rule.write, rule.read) {
            (WriteMode::On, _) => &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"],
            (WriteMode::Off, ReadMode::Legacy) => &[],
            (WriteMode::Off, _) => &["SELECT"],
        };
        if privileges.is_empty() {
            continue;
        }
        add(db, Need::SchemaUsage(rule.new.schema.clone()));
        for p in privileges {
            add(db, Need::Table(rule.new.clone(), p));
        }
    }
    out
}

/// A grant the role lacks: where, on what, which privilege, and the statement that gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub db: Db,
    pub object: String,
    pub privilege: String,
    pub fix: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: missing {}; fix: {}",
            self.db, self.object, self.privilege, self.fix
        )
    }
}

/// The grants of [`needed`] that pgdual's roles lack: each looked up on its database (`new`
/// only when given). Objects that do not exist are skipped (the catalog check reports them);
/// a superuser lacks nothing.
pub async fn missing(
    rules: &RuleSet,
    legacy: &Client,
    new: Option<&Client>,
) -> Result<Vec<Missing>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for db in [Db::Legacy, Db::New] {
        let client = match db {
            Db::Legacy => legacy,
            Db::New => match new {
                Some(c) => c,
                None => continue,
            },
        };
        let needs: Vec<Need> = needed(rules)
            .into_iter()
            .filter(|(d, _)| *d == db)
            .map(|(_, n)| n)
            .collect();
        if needs.is_empty() {
            continue;
        }
        let me = client
            .query_one(
                "SELECT current_user::text, current_database()::text, \
                   (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
                &[],
            )
            .await?;
        if me.get::<_, bool>(2) {
            continue;
        }
        let role = quote_ident(me.get::<_, &str>(0));
        let dbname = quote_ident(me.get::<_, &str>(1));
        for need in &needs {
            if let Some((object, privilege, fix)) = lacks(client, need, &role, &dbname).await? {
                out.push(Missing {
                    db,
                    object,
                    privilege,
                    fix,
                });
            }
        }
    }
    Ok(out)
}

/// A table's oid from its schema (`$1`) and name (`$2`), NULL when missing. Unlike
/// `to_regclass`, a catalog join does not fail on a schema the role may not use.
const OID: &str = "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2";

/// What a missing grant is: (object, privilege, fix).
type Lack = Option<(String, String, String)>;

/// (object, privilege, fix) when the connection's role lacks `need`.
async fn lacks(
    c: &Client,
    need: &Need,
    role: &str,
    dbname: &str,
) -> Result<Lack, tokio_postgres::Error> {
    match need {
        Need::PgdualSchema => lacks_pgdual_schema(c, role, dbname).await,
        Need::Owner(t) => lacks_owner(c, role, t).await,
        Need::SchemaUsage(s) => lacks_schema_usage(c, role, s).await,
        Need::Table(t, privilege) => lacks_table(c, role, t, privilege).await,
        Need::Columns(t, cols) => lacks_columns(c, role, t, cols).await,
    }
}

/// Whether the role lacks the `pgdual` schema: its ownership, or CREATE on the database to
/// make it.
async fn lacks_pgdual_schema(
    c: &Client,
    role: &str,
    dbname: &str,
) -> Result<Lack, tokio_postgres::Error> {
    let owner = c
        .query_opt(
            "SELECT nspowner::regrole::text, pg_has_role(nspowner, 'USAGE') \
             FROM pg_namespace WHERE nspname = 'pgdual'",
            &[],
        )
        .await?;
    Ok(match owner {
        Some(row) if !row.get::<_, bool>(1) => Some((
            "schema pgdual".into(),
            format!("ownership (owned by {})", row.get::<_, String>(0)),
            format!("ALTER SCHEMA pgdual OWNER TO {role};"),
        )),
        Some(_) => None,
        None => {
            let can: bool = c
                .query_one(
                    "SELECT has_database_privilege(current_database(), 'CREATE')",
                    &[],
                )
                .await?
                .get(0);
            (!can).then(|| {
                (
                    format!("database {dbname}"),
                    "CREATE".into(),
                    format!("GRANT CREATE ON DATABASE {dbname} TO {role};"),
                )
            })
        }
    })
}

/// Whether the role lacks ownership of a table (to install triggers on it).
async fn lacks_owner(c: &Client, role: &str, t: &TableName) -> Result<Lack, tokio_postgres::Error> {
    let row = c
        .query_opt(
            &format!(
                "SELECT relowner::regrole::text, pg_has_role(relowner, 'USAGE') \
                 FROM pg_class WHERE oid = ({OID})"
            ),
            &[&t.schema, &t.name],
        )
        .await?;
    Ok(match row {
        Some(row) if !row.get::<_, bool>(1) => {
            let owner: String = row.get(0);
            Some((
                format!("table {t}"),
                format!("ownership (owned by {owner})"),
                format!("GRANT {owner} TO {role};"),
            ))
        }
        _ => None,
    })
}

/// Whether the role lacks USAGE on a schema.
async fn lacks_schema_usage(
    c: &Client,
    role: &str,
    s: &String,
) -> Result<Lack, tokio_postgres::Error> {
    let has: Option<bool> = c
        .query_opt(
            "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace \
             WHERE nspname = $1",
            &[s],
        )
        .await?
        .map(|r| r.get(0));
    let s = quote_ident(s);
    Ok((has == Some(false)).then(|| {
        (
            format!("schema {s}"),
            "USAGE".into(),
            format!("GRANT USAGE ON SCHEMA {s} TO {role};"),
        )
    }))
}

/// Whether the role lacks a privilege on a table.
async fn lacks_table(
    c: &Client,
    role: &str,
    t: &TableName,
    privilege: &&'static str,
) -> Result<Lack, tokio_postgres::Error> {
    let has: Option<bool> = c
        .query_one(
            &format!("SELECT has_table_privilege(({OID}), $3)"),
            &[&t.schema, &t.name, privilege],
        )
        .await?
        .get(0);
    Ok((has == Some(false)).then(|| {
        (
            format!("table {t}"),
            privilege.to_string(),
            format!("GRANT {privilege} ON TABLE {t} TO {role};"),
        )
    }))
}

/// Whether the role lacks SELECT on columns of a table.
async fn lacks_columns(
    c: &Client,
    role: &str,
    t: &TableName,
    cols: &[String],
) -> Result<Lack, tokio_postgres::Error> {
    let lacking: Vec<String> = c
        .query(
            &format!(
                "SELECT attname::text FROM pg_attribute \
                 WHERE attrelid = ({OID}) AND attname = ANY($3) AND attnum > 0 \
                   AND NOT attisdropped \
                   AND NOT has_column_privilege(attrelid, attnum, 'SELECT') \
                 ORDER BY attnum"
            ),
            &[&t.schema, &t.name, &cols],
        )
        .await?
        .iter()
        .map(|r| quote_ident(r.get::<_, &str>(0)))
        .collect();
    Ok((!lacking.is_empty()).then(|| {
        let cols = lacking.join(", ");
        (
            format!("table {t}"),
            format!("SELECT ({cols})"),
            format!("GRANT SELECT ({cols}) ON TABLE {t} TO {role};"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(text: &str) -> Vec<String> {
        let rules = pgdual_rules::parse_rules(text, "t").unwrap();
        needed(&rules)
            .into_iter()
            .map(|(db, n)| format!("{db} {n:?}"))
            .collect()
    }

    const TABLE: &str = "[[table]]\nlegacy = \"public.t\"\nnew = \"app.t\"\nkeys = [\"id\"]\n";
    const COLUMNS: &str = "[table.columns]\nid = \"id\"\nname = \"lower(name)\"\n";

    #[test]
    fn grants_follow_the_features_used() {
        assert!(needs(&format!("{TABLE}{COLUMNS}")).is_empty());
        let t = |s: &str, n: &str| {
            format!("Table(TableName {{ schema: \"{s}\", name: \"t\" }}, \"{n}\")")
        };
        assert_eq!(
            needs(&format!("{TABLE}read = \"shadow\"\n{COLUMNS}")),
            [
                "new SchemaUsage(\"app\")".to_string(),
                format!("new {}", t("app", "SELECT")),
            ]
        );
        let write = needs(&format!("{TABLE}write = \"on\"\nread = \"new\"\n{COLUMNS}"));
        let want = [
            "legacy PgdualSchema".to_string(),
            "legacy Owner(TableName { schema: \"public\", name: \"t\" })".into(),
            "legacy SchemaUsage(\"public\")".into(),
            "legacy Columns(TableName { schema: \"public\", name: \"t\" }, [\"id\", \"name\"])"
                .into(),
            "new SchemaUsage(\"app\")".into(),
            format!("new {}", t("app", "SELECT")),
            format!("new {}", t("app", "INSERT")),
            format!("new {}", t("app", "UPDATE")),
            format!("new {}", t("app", "DELETE")),
            format!("new {}", t("app", "TRUNCATE")),
        ];
        assert_eq!(write, want);
        // A new table inside legacy: its grants are legacy's.
        let inside = needs(&format!(
            "{TABLE}database = \"legacy\"\nread = \"new\"\n{COLUMNS}"
        ));
        assert_eq!(
            inside,
            [
                "legacy SchemaUsage(\"app\")".to_string(),
                format!("legacy {}", t("app", "SELECT")),
            ]
        );
    }
}
