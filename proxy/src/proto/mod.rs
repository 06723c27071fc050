//! The PostgreSQL wire protocol, without I/O: frames and the startup packet ([`codec`]),
//! typed frontend and backend messages with their decoders and encoders ([`frontend`],
//! [`backend`]), the streaming replication protocol and its `pgoutput` messages
//! ([`pgoutput`]), and SQLSTATE codes. Every message pgdual reads or writes is decoded and
//! encoded here, and only here.

pub mod backend;
pub mod codec;
pub mod frontend;
pub mod pgoutput;
pub mod sqlstate;

/// A big-endian `i16` at `at`, if `b` is long enough.
pub(crate) fn be_i16(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// A big-endian `i32` at `at`, if `b` is long enough.
pub(crate) fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
