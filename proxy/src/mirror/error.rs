//! The mirror's errors, and which of them are worth retrying.

use crate::telemetry::redact;

use super::copy::CopyError;
use crate::capture::logical::CaptureError;
use crate::capture::method::SetupError;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("legacy: {0}")]
    Legacy(tokio_postgres::Error),
    #[error("new: {0}")]
    New(tokio_postgres::Error),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error("connect: {0}")]
    Connect(String),
    #[error("the rules do not fit the databases, so nothing is captured yet:\n  - {}", .0.join("\n  - "))]
    Rules(Vec<String>),
    #[error("a target table's column types changed; reconnecting to learn them")]
    TypesChanged,
    #[error("capture: {0}")]
    Capture(#[from] CaptureError),
    #[error("capture: {0}")]
    Setup(#[from] SetupError),
}

/// Errors worth retrying: the connection, serialization and deadlocks, resources,
/// shutdowns. Everything else (constraints, types, missing objects) is permanent.
pub(crate) fn transient(code: Option<&str>) -> bool {
    match code {
        None => true,
        Some(c) => {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|p| c.starts_with(p))
                || c == "55P03"
        }
    }
}

impl MirrorError {
    pub fn code(&self) -> Option<&str> {
        match self {
            MirrorError::Legacy(e) | MirrorError::New(e) => e.code().map(|c| c.code()),
            MirrorError::Copy(e) => e.code(),
            MirrorError::Capture(CaptureError::Legacy(e))
            | MirrorError::Setup(SetupError::Legacy(e)) => e.code().map(|c| c.code()),
            MirrorError::Setup(SetupError::Conflict(_)) => Some("55000"),
            MirrorError::Connect(_)
            | MirrorError::Rules(_)
            | MirrorError::TypesChanged
            | MirrorError::Capture(_) => None,
        }
    }

    /// The rules must be checked against the catalogs again before mirroring goes on (a
    /// mapped table's definition changed under the capture).
    pub fn needs_recheck(&self) -> bool {
        matches!(self, MirrorError::Capture(CaptureError::Ddl(_)))
    }

    pub fn is_transient(&self) -> bool {
        transient(self.code())
    }

    /// The error for the log: no row values unless `show_values` (see [`crate::telemetry::redact`]).
    pub fn for_log(&self, show_values: bool) -> String {
        match self {
            MirrorError::Legacy(e) => format!("legacy: {}", redact::pg_error(e, show_values)),
            MirrorError::New(e) => format!("new: {}", redact::pg_error(e, show_values)),
            MirrorError::Copy(CopyError::Legacy { table, source }) => format!(
                "reading {table} from legacy: {}",
                redact::pg_error(source, show_values)
            ),
            MirrorError::Copy(CopyError::New { table, source }) => format!(
                "writing {table} in new: {}",
                redact::pg_error(source, show_values)
            ),
            other => other.to_string(),
        }
    }
}

/// The trigger source's errors are legacy's.
impl From<tokio_postgres::Error> for MirrorError {
    fn from(e: tokio_postgres::Error) -> Self {
        MirrorError::Legacy(e)
    }
}
