//! A client's read request group, as it would go to legacy, and the session settings new
//! must share to print values as legacy would.

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::frontend;

/// Settings that change how values print, kept equal on new's connection to the session's.
pub const TRACKED_SETTINGS: [&str; 4] =
    ["TimeZone", "DateStyle", "IntervalStyle", "client_encoding"];

/// One read request group of the client, as it would go to legacy.
#[derive(Debug, Clone)]
pub enum Request {
    /// A simple Query; `lifted` when its literals run on new as parameters of one statement
    /// per shape.
    Simple {
        sql: Arc<str>,
        lifted: Option<Box<Lifted>>,
    },
    /// Bind (of a statement prepared on legacy, or of the unnamed statement parsed in the
    /// same batch), optional Describe of the portal, Execute, Sync.
    Extended {
        sql: Arc<str>,
        /// The parameter types the client gave in Parse (0 = unspecified).
        param_types: Vec<u32>,
        /// The Bind body after the portal and statement names.
        bind_rest: Bytes,
        /// What the client asked to have described in the batch.
        describe: Describe,
        /// The batch began with Parse of the unnamed statement: the answer begins with
        /// ParseComplete.
        parse: bool,
    },
}

/// A Describe in an extended-protocol read batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Describe {
    None,
    /// Of the portal: RowDescription in the result formats the Bind asked for.
    Portal,
    /// Of the statement: ParameterDescription, then RowDescription with formats unknown.
    Statement,
}

/// A simple query's literals, lifted to parameters of its plan's SQL.
#[derive(Debug, Clone)]
pub struct Lifted {
    /// The plan cache key of the shape (rules generation, lifted text).
    pub(super) key: (u64, Arc<str>),
    /// Parameter types (0: unspecified, as an unknown-typed literal).
    pub types: Vec<u32>,
    /// Parameter values, in text.
    pub values: Vec<String>,
}

impl Lifted {
    /// The Bind body after the portal and statement names: the values in text.
    pub fn bind_rest(&self) -> Bytes {
        frontend::text_bind_rest(&self.values)
    }
}

impl Request {
    pub fn sql(&self) -> &str {
        match self {
            Request::Simple { sql, .. } | Request::Extended { sql, .. } => sql,
        }
    }

    pub fn param_types(&self) -> &[u32] {
        match self {
            Request::Simple { .. } => &[],
            Request::Extended { param_types, .. } => param_types,
        }
    }

    /// The bytes of parameter `n` (1-based) in text or binary as the client sent it (for a
    /// simple query, its `n`th lifted literal).
    pub fn param(&self, n: usize) -> Option<Bytes> {
        match self {
            Request::Simple { lifted: None, .. } => None,
            Request::Simple {
                lifted: Some(l), ..
            } => l
                .values
                .get(n.checked_sub(1)?)
                .map(|v| Bytes::copy_from_slice(v.as_bytes())),
            Request::Extended { bind_rest, .. } => frontend::bind_param(bind_rest, n),
        }
    }

    /// Whether parameter `n` (from 1) was sent in binary format.
    pub fn param_binary(&self, n: usize) -> bool {
        match self {
            Request::Simple { .. } => false,
            Request::Extended { bind_rest, .. } => frontend::bind_param_binary(bind_rest, n),
        }
    }
}

/// The connection settings of a session that new must share: shared, as every routed read
/// of the session carries them.
pub type Settings = Arc<Vec<(String, String)>>;
