//! SQLSTATE codes pgdual itself answers with (PostgreSQL Appendix A). Errors that come from
//! legacy pass through untouched; these are only for failures that happen in the proxy.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(&'static str);

impl SqlState {
    /// 08001: the proxy could not reach legacy.
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: SqlState = SqlState("08001");
    /// 08006: the legacy connection failed after it was established.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// 08P01: the client sent bytes that are not the protocol.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// 54000: a message over `limits.max_message_bytes`.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    /// 53300: over `limits.max_client_connections`.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// 57P01: the proxy is shutting down.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// 0A000: a request the proxy does not support (GSSAPI encryption).
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");

    pub fn code(self) -> &'static str {
        self.0
    }
}
