//! Reads answered by new: planning a client SELECT onto the new schema, the privilege checks
//! a routed read must pass, and the routing decision itself.
//!
//! Pure functions of SQL text, the rule set and what the proxy hands in; no I/O.

pub mod bucket;
pub mod plan;
pub mod privilege;
pub mod route;
