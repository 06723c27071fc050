//! pgdual: a PostgreSQL wire-protocol proxy for expand-and-contract schema migrations.
//!
//! Clients connect to pgdual as they would to the legacy database; every byte they send is
//! relayed to legacy on the critical path and every answer comes back unchanged.
//!
//! The parts, from the bottom up (a part uses only those above it in this list):
//! [`proto`] (the wire protocol, no I/O), [`telemetry`] (metrics, log redaction), [`net`]
//! (connections to legacy and new), [`control`] (the rules in force, catalog and privilege
//! checks), [`capture`] (where committed changes come from), [`mirror`] (applying them to
//! new), [`jobs`] (backfill, verify and repair), [`reads`] (routing and answering reads), [`session`] (a client from accept to close),
//! [`admin`] (the HTTP API), [`app`] (builds and runs the parts), [`cli`] (the commands).

pub mod admin;
pub mod app;
pub mod capture;
pub mod cli;
pub mod control;
pub mod jobs;
pub mod mirror;
pub mod net;
pub mod proto;
pub mod reads;
pub mod runtime;
pub mod session;
pub mod telemetry;

pub use app::{Proxy, StartError};
