//! The `pgdual` commands: serving, checks, the admin API client, and the demo.

pub mod admin_client;
pub mod demo;
pub mod signals;
