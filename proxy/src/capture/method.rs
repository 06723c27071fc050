//! Which capture method runs, and the legacy objects logical decoding needs: the
//! publication of the mapped tables, the replication slot, and pgdual's record of both (so a
//! slot that disappeared is noticed, not silently recreated).

use std::fmt;

use pgdual_config::{CaptureMode, MirrorConfig};
use pgdual_rules::ruleset::WriteMode;
use pgdual_rules::RuleSet;
use serde::Serialize;
use tokio_postgres::Client;
use tracing::{error, info, warn};

/// How committed writes are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Triggers,
    Logical,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Triggers => "triggers",
            Method::Logical => "logical",
        })
    }
}

/// The method chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub method: Method,
    pub reason: String,
}

const SERVER: &str = "SELECT pg_catalog.current_setting('wal_level'), \
    coalesce((SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false), \
    pg_catalog.current_setting('max_replication_slots')::int, \
    pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'), \
    current_user::text";

/// A table's replica identity, the columns it covers (sorted), and whether pgdual's role
/// owns the table (which adding it to a publication requires).
const IDENTITY: &str = "SELECT c.relreplident::text, \
    (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attname) \
       FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a \
         ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
      WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) \
                                 OR (c.relreplident = 'i' AND i.indisreplident))), \
    pg_catalog.pg_has_role(c.relowner, 'USAGE') \
    FROM pg_catalog.pg_class c WHERE c.oid = $1::text::pg_catalog.regclass";

/// What keeps logical decoding from capturing `rules`' written tables on `legacy`; empty
/// when nothing does.
pub async fn logical_obstacles(
    legacy: &Client,
    rules: &RuleSet,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let s = legacy.query_one(SERVER, &[]).await?;
    let (wal_level, may_replicate, slots, may_create, role): (String, bool, i32, bool, String) =
        (s.get(0), s.get(1), s.get(2), s.get(3), s.get(4));
    let mut out = Vec::new();
    if wal_level != "logical" {
        out.push(format!(
            "legacy runs with wal_level = {wal_level} (logical decoding needs wal_level = logical, \
             set in postgresql.conf and applied by a restart)"
        ));
    }
    if !may_replicate {
        out.push(format!(
            "role {role} may not replicate (ALTER ROLE {role} REPLICATION)"
        ));
    }
    if slots < 1 {
        out.push("legacy allows no replication slots (max_replication_slots = 0)".into());
    }
    if !may_create {
        out.push(format!(
            "role {role} may not create a publication in this database (GRANT CREATE ON DATABASE)"
        ));
    }
    for rule in rules.tables().iter().filter(|r| r.write == WriteMode::On) {
        let table = rule.legacy.to_string();
        let Some(row) = legacy.query_opt(IDENTITY, &[&table]).await? else {
            continue; // the catalog check names a missing table
        };
        let (identity, columns, owns): (String, Option<Vec<String>>, bool) =
            (row.get(0), row.get(1), row.get(2));
        let mut keys = rule.legacy_keys.clone();
        keys.sort();
        let covered = match identity.as_str() {
            "f" => true,
            "d" | "i" => columns.as_ref() == Some(&keys),
            _ => false,
        };
        if !covered {
            out.push(format!(
                "{table}: its replica identity does not name the rule's keys ({}), so a \
                 decoded delete could not say which row went (make the keys the primary key, \
                 or ALTER TABLE {table} REPLICA IDENTITY USING INDEX on a unique index of them)",
                rule.legacy_keys.join(", ")
            ));
        }
        if !owns {
            out.push(format!(
                "{table}: role {role} does not own it, which adding it to a publication needs"
            ));
        }
    }
    Ok(out)
}

/// The method `settings.capture` asks for, on this legacy. `Err` lists why logical decoding
/// cannot run when it was asked for explicitly.
pub async fn choose(
    legacy: &Client,
    rules: &RuleSet,
    settings: &MirrorConfig,
) -> Result<Result<Choice, Vec<String>>, tokio_postgres::Error> {
    if settings.capture == CaptureMode::Triggers {
        return Ok(Ok(Choice {
            method: Method::Triggers,
            reason: "mirror.capture = \"triggers\"".into(),
        }));
    }
    let obstacles = logical_obstacles(legacy, rules).await?;
    Ok(match (settings.capture, obstacles.is_empty()) {
        (_, true) => Ok(Choice {
            method: Method::Logical,
            reason: if settings.capture == CaptureMode::Logical {
                "mirror.capture = \"logical\"".into()
            } else {
                "mirror.capture = \"auto\" and legacy allows logical decoding".into()
            },
        }),
        (CaptureMode::Logical, false) => Err(obstacles
            .into_iter()
            .map(|o| format!("mirror.capture = \"logical\", but {o}"))
            .collect()),
        (_, false) => Ok(Choice {
            method: Method::Triggers,
            reason: format!(
                "mirror.capture = \"auto\" and logical decoding cannot run: {}",
                obstacles.join("; ")
            ),
        }),
    })
}

/// The slot as legacy has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotState {
    /// WAL legacy keeps for the slot (from its restart position), bytes.
    pub retained_bytes: i64,
    /// WAL written since the position pgdual confirmed, bytes.
    pub behind_bytes: i64,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: String,
    /// The process streaming from it, if any.
    pub active_pid: Option<i32>,
}

const SLOT: &str = "SELECT coalesce((pg_catalog.pg_current_wal_lsn() - restart_lsn)::int8, 0), \
    coalesce((pg_catalog.pg_current_wal_lsn() - confirmed_flush_lsn)::int8, 0), \
    coalesce(wal_status, ''), active_pid, plugin::text, database::text = pg_catalog.current_database() \
    FROM pg_catalog.pg_replication_slots WHERE slot_name = $1";

/// The slot `name`, if legacy has it.
pub async fn slot(legacy: &Client, name: &str) -> Result<Option<SlotState>, tokio_postgres::Error> {
    Ok(legacy.query_opt(SLOT, &[&name]).await?.map(|r| SlotState {
        retained_bytes: r.get(0),
        behind_bytes: r.get(1),
        wal_status: r.get(2),
        active_pid: r.get(3),
    }))
}

/// Why setting up logical capture failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("legacy: {0}")]
    Legacy(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Conflict(String),
}

/// What [`prepare`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// The slot was gone or invalidated: changes were lost, the tables need a backfill.
    pub slot_lost: bool,
}

/// Keeps the publication in step with `rules`' written tables and makes sure the slot
/// exists. A slot pgdual made before that is gone or invalidated means changes were lost:
/// said loudly, the tables recorded as needing a backfill and verify, the slot made again.
pub async fn prepare(
    legacy: &Client,
    rules: &RuleSet,
    settings: &MirrorConfig,
) -> Result<Prepared, SetupError> {
    let tables: Vec<String> = written_tables(rules);
    let (slot_name, publication) = (&settings.slot, &settings.publication);
    publish(legacy, publication, &tables).await?;
    let prepared = Prepared {
        slot_lost: ensure_slot(legacy, slot_name).await?,
    };
    if prepared.slot_lost {
        legacy
            .execute(
                "INSERT INTO pgdual.capture_gaps (tbl, reason) SELECT t, $2 \
                 FROM pg_catalog.unnest($1::text[]) AS t \
                 ON CONFLICT (tbl) DO UPDATE SET since = now(), reason = EXCLUDED.reason",
                &[&tables, &format!("capture slot {slot_name} lost")],
            )
            .await?;
    }
    legacy
        .execute(
            "INSERT INTO pgdual.capture_slots (slot, publication) VALUES ($1, $2) \
             ON CONFLICT (slot) DO UPDATE SET publication = EXCLUDED.publication",
            &[slot_name, publication],
        )
        .await?;
    Ok(prepared)
}

/// Makes `publication` publish exactly `tables`.
async fn publish(legacy: &Client, publication: &str, tables: &[String]) -> Result<(), SetupError> {
    let exists = legacy
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    let list = tables.join(", ");
    let sql = if exists {
        format!("ALTER PUBLICATION {publication} SET TABLE {list}")
    } else {
        format!("CREATE PUBLICATION {publication} FOR TABLE {list}")
    };
    legacy.batch_execute(&sql).await?;
    info!(publication = %publication, tables = %list, "publication in step with the rules");
    Ok(())
}

/// Makes sure the slot exists and is usable; `true` when a slot pgdual had made was gone or
/// invalidated (and has been made again): the changes since were lost.
async fn ensure_slot(legacy: &Client, slot_name: &str) -> Result<bool, SetupError> {
    let recorded = legacy
        .query_opt(
            "SELECT 1 FROM pgdual.capture_slots WHERE slot = $1",
            &[&slot_name],
        )
        .await?
        .is_some();
    let Some(r) = legacy.query_opt(SLOT, &[&slot_name]).await? else {
        if recorded {
            error!(
                slot = %slot_name,
                "the capture slot is gone (dropped outside pgdual?): changes made since \
                 were lost; the mapped tables need a backfill and a verify"
            );
        }
        create_slot(legacy, slot_name).await?;
        return Ok(recorded);
    };
    let (wal_status, plugin, ours): (String, String, bool) = (r.get(2), r.get(4), r.get(5));
    if plugin != "pgoutput" || !ours {
        return Err(SetupError::Conflict(format!(
            "a replication slot named {slot_name} exists for another database or plugin \
             ({plugin}); set mirror.slot to another name"
        )));
    }
    if wal_status != "lost" {
        return Ok(false);
    }
    error!(
        slot = %slot_name,
        "the capture slot was invalidated (max_slot_wal_keep_size): changes were \
         lost; the mapped tables need a backfill and a verify"
    );
    let active: Option<i32> = r.get(3);
    if let Some(pid) = active {
        legacy
            .execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid])
            .await?;
    }
    legacy
        .execute(
            "SELECT pg_catalog.pg_drop_replication_slot($1)",
            &[&slot_name],
        )
        .await?;
    create_slot(legacy, slot_name).await?;
    Ok(true)
}

async fn create_slot(legacy: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    let lsn: String = legacy
        .query_one(
            "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await?
        .get(0);
    info!(slot = %name, lsn = %lsn, "capture slot created");
    Ok(())
}

/// The legacy tables whose writes are mirrored.
pub fn written_tables(rules: &RuleSet) -> Vec<String> {
    rules
        .tables()
        .iter()
        .filter(|r| r.write == WriteMode::On)
        .map(|r| r.legacy.to_string())
        .collect()
}

/// Whether pgdual's slot exists (logical capture ran and was not dropped).
pub async fn slot_exists(legacy: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(slot(legacy, name).await?.is_some())
}

/// Drops the slot and the publication, so a forgotten pgdual retains no WAL. A slot some
/// process streams from is dropped only when `force` (that stream is ended first).
pub async fn drop_capture(
    legacy: &Client,
    slot_name: &str,
    publication: &str,
    force: bool,
) -> Result<bool, SetupError> {
    let mut dropped = false;
    if let Some(s) = slot(legacy, slot_name).await? {
        if let Some(pid) = s.active_pid {
            if !force {
                return Err(SetupError::Conflict(format!(
                    "process {pid} is streaming from slot {slot_name} (a running pgdual?): stop \
                     it first, or turn every table's write off and let it drop the slot"
                )));
            }
            legacy
                .execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid])
                .await?;
        }
        // A stream just ended may hold the slot a moment longer.
        let mut tries = 0;
        loop {
            match legacy
                .execute(
                    "SELECT pg_catalog.pg_drop_replication_slot($1)",
                    &[&slot_name],
                )
                .await
            {
                Ok(_) => break,
                Err(e) if tries < 50 && e.code().is_some_and(|c| c.code() == "55006") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        dropped = true;
        warn!(slot = %slot_name, "capture slot dropped");
    }
    legacy
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {publication}"))
        .await?;
    // The record goes too: a later slot is a fresh start, not a lost one.
    if legacy
        .query_opt("SELECT to_regclass('pgdual.capture_slots')::text", &[])
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0))
        .is_some()
    {
        legacy
            .execute(
                "DELETE FROM pgdual.capture_slots WHERE slot = $1",
                &[&slot_name],
            )
            .await?;
    }
    Ok(dropped)
}

/// Tables whose capture had a gap (a lost slot) and that need a backfill and a verify.
pub async fn gaps(legacy: &Client) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    if legacy
        .query_one("SELECT to_regclass('pgdual.capture_gaps') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0)
    {
        let rows = legacy
            .query(
                "SELECT tbl, reason FROM pgdual.capture_gaps ORDER BY tbl",
                &[],
            )
            .await?;
        return Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    Ok(Vec::new())
}
