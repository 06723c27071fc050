//! Connections: the client's stream, TLS both ways, and pgdual's own connections to legacy
//! and new (the relay's raw connection to legacy, pooled protocol connections for reads,
//! tokio-postgres clients for the control plane), all built from one endpoint's settings.

pub mod conn;
pub mod endpoint;
pub mod legacy;
pub mod pool;
pub mod postgres_tls;
pub mod stream;
pub mod tls;
