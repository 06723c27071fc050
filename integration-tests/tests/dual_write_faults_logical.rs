//! The dual_write_faults suite again, with committed writes captured by logical decoding instead of
//! triggers (the harness runs binaries named `*_logical` with `mirror.capture = "logical"`).

#[path = "dual_write_faults.rs"]
mod dual_write_faults;
