//! The backfill, verify and repair suite again, with committed writes captured by logical
//! decoding instead of triggers (the harness runs binaries named `*_logical` with
//! `mirror.capture = "logical"`).

#[path = "jobs.rs"]
mod jobs;
