//! The dual_write_values suite again, with committed writes captured by logical decoding instead of
//! triggers (the harness runs binaries named `*_logical` with `mirror.capture = "logical"`).

#[path = "dual_write_values.rs"]
mod dual_write_values;
