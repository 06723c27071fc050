//! pgdual: a PostgreSQL wire-protocol proxy for expand-and-contract schema migrations.
//!
//! Clients connect to pgdual as they would to the legacy database; every byte they send is
//! relayed to legacy on the critical path and every answer comes back unchanged.

pub mod admin;
pub mod admin_client;
pub mod backend;
pub mod cancel;
pub mod catalog;
pub mod codec;
pub mod connection;
pub mod copy;
pub mod demo;
pub mod grants;
pub mod legacy;
pub mod metrics;
pub mod mirror;
pub mod postgres_tls;
pub mod privileges;
pub mod proxy;
pub mod reads;
pub mod redact;
pub mod relay;
pub mod rules_store;
pub mod runtime;
pub mod session;
pub mod signals;
pub mod sqlstate;
pub mod stream;
pub mod tls;

pub use proxy::{Proxy, Shared, StartError};
