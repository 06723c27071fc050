//! One client from accept to close: the startup exchange, the relay loop to legacy with the
//! hooks that analyse statements and route reads, the session's protocol state machine, and
//! the cancel keys handed to clients.

pub mod accept;
pub mod cancel;
pub mod relay;
pub mod state;
