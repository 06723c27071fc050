//! The `pgdual` commands: serving, checks, the admin API client, the jobs, and the demo.

pub mod admin_client;
pub mod demo;
pub mod jobs;
pub mod signals;
