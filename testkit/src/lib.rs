//! What pgdual's demo, its test suites and its benches share: throwaway PostgreSQL clusters
//! (one-off or one per test binary, stopped at exit), child processes killed with the test,
//! raw protocol bytes, the admin API over HTTP, and tokio-postgres connections.
//! It must never depend on the `pgdual` crate (the demo uses it), so it builds no proxy and
//! no config: helpers that need those live in `integration-tests`.

mod client;
mod cluster;
mod http;
mod process;
mod raw;
mod shared;

pub use client::{assert_converges, conn_str, connect, connect_as, psql_to, text_rows};
pub use cluster::{find_bin_dir, free_port, ClusterError, ClusterOptions, PgCluster};
pub use http::{http_get, http_post, http_put, metric, sample};
pub use process::{output_text, wait_listening, KillOnDrop};
pub use raw::{message, query, startup_message, RawClient};
pub use shared::{
    legacy, new_db, start_cluster, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER,
};
