//! SQL text as the proxy sees it: identifiers and table names, statement analysis (kind and
//! tables touched), the bounds checked before parsing, fingerprints and the analysis cache.
//!
//! The lowest layer: it knows nothing of the rules file, read planning or generated SQL.

pub mod analysis;
pub mod bounds;
pub mod cache;
pub mod fingerprint;
pub mod ident;
pub mod literals;
