//! Edits to the rules text that keep everything else (comments, order, formatting) as
//! written: the admin API's mode switches.

use super::model::{ReadMode, WriteMode};
use crate::sql::ident::parse_table_name;

/// The rules text with one table's `write` set to `mode`, everything else (comments, order,
/// formatting) kept as written. `legacy` is matched as PostgreSQL would resolve it.
pub fn set_write_mode(text: &str, legacy: &str, mode: WriteMode) -> Result<String, String> {
    let value = match mode {
        WriteMode::On => "on",
        WriteMode::Off => "off",
    };
    edit_table(text, legacy, |entry| {
        entry["write"] = toml_edit::value(value);
    })
}

/// The rules text with one table's `read` set to `mode` and, when given, its `read_percent`,
/// everything else kept as written.
pub fn set_read_mode(
    text: &str,
    legacy: &str,
    mode: ReadMode,
    percent: Option<u8>,
) -> Result<String, String> {
    edit_table(text, legacy, |entry| {
        entry["read"] = toml_edit::value(mode.as_str());
        if let Some(p) = percent {
            entry["read_percent"] = toml_edit::value(i64::from(p));
        }
    })
}

fn edit_table(
    text: &str,
    legacy: &str,
    edit: impl FnOnce(&mut toml_edit::Table),
) -> Result<String, String> {
    let wanted = parse_table_name(legacy)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let tables = doc
        .get_mut("table")
        .and_then(|t| t.as_array_of_tables_mut())
        .ok_or_else(|| "the rules have no [[table]] entries".to_string())?;
    let entry = tables
        .iter_mut()
        .find(|t| {
            t.get("legacy")
                .and_then(|v| v.as_str())
                .and_then(|l| parse_table_name(l).ok())
                .is_some_and(|l| l == wanted)
        })
        .ok_or_else(|| format!("no rule for table {wanted}"))?;
    edit(entry);
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests;
