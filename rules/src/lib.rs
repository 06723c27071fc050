//! pgdual-rules: statement analysis (kind and tables touched) and its bounded cache.
//!
//! Pure: no I/O, no async runtime, no clocks. The proxy calls in here; nothing here calls out.

pub mod analysis;
pub mod cache;
pub mod fingerprint;

pub use analysis::{analyze, Analysis, StatementInfo, StatementKind};
pub use cache::AnalysisCache;
pub use fingerprint::fingerprint;
