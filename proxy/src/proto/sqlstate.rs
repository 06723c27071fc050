//! SQLSTATE codes (PostgreSQL Appendix A), as tokio-postgres names them. pgdual answers with
//! a few of its own: 08001 (legacy unreachable), 08006 (legacy's connection failed), 08P01
//! (bytes that are not the protocol), 54000 (a message over `limits.max_message_bytes`),
//! 53300 (over `limits.max_client_connections`), 57P01 (shutting down), 0A000 (GSSAPI
//! encryption). Errors that come from legacy pass through untouched.

pub use tokio_postgres::error::SqlState;
