//! SQL generated from the rules: the capture trigger and key log that record committed
//! writes, and the statements that copy rows from legacy to new.
//!
//! Pure functions of a table rule; the proxy runs what they return.

pub mod capture_sql;
pub mod copy_sql;
