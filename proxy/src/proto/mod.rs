//! The PostgreSQL wire protocol, without I/O: frames, the startup packet, typed frontend and
//! backend messages with their decoders and encoders, and SQLSTATE codes. Every message
//! pgdual reads or writes is decoded and encoded here, and only here.

pub mod codec;
pub mod sqlstate;
