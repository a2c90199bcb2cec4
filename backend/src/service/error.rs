//! The errors of the control methods: JSON-RPC 2.0 error codes (the
//! standard ones, then the service's own in -32000..-32099) and a message
//! that says what to do.

/// JSON-RPC error codes: the standard ones, then ours (-32000..-32099).
pub mod code {
    /// Not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC 2.0 request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Missing, unknown or mistyped parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// No controller of that name (or several and none named).
    pub const UNKNOWN_CONTROLLER: i64 = -32001;
    /// No LUN at that address.
    pub const UNKNOWN_LUN: i64 = -32002;
    /// A LUN already exists at that address.
    pub const LUN_EXISTS: i64 = -32003;
    /// The image cannot be served (missing, locked, too small, in use).
    pub const IMAGE: i64 = -32004;
    /// A size that cannot be served, or a shrink without force.
    pub const BAD_SIZE: i64 = -32005;
    /// Not possible for this kind of LUN (e.g. eject on a fixed disk).
    pub const NOT_SUPPORTED: i64 = -32006;
    /// The LUN is busy (commands still running, medium removal prevented).
    pub const BUSY: i64 = -32007;
    /// An I/O error on the image.
    pub const IO: i64 = -32008;
}

/// A JSON-RPC error: code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    /// Error code (see [`code`]).
    pub code: i64,
    /// What went wrong and what to do.
    pub message: String,
}

/// An error with `code` and `message`.
pub(crate) fn err(code: i64, message: impl Into<String>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
    }
}
