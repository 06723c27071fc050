//! SQL generated from the rules: the capture trigger and key log that record committed
//! writes, the statements that copy rows from legacy to new, and those that walk a table in
//! key order for backfill and verification.
//!
//! Pure functions of a table rule; the proxy runs what they return.

pub mod capture_sql;
pub mod copy_sql;
pub mod keyset_sql;
