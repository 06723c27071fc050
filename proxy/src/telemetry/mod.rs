//! What pgdual tells operators: metrics (Prometheus exposition) and the redaction that keeps
//! values and passwords out of logs unless asked for.

pub mod metrics;
pub mod redact;
