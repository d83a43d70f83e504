//! The engine's one error type, mapped once to the Win32 code the QOS2 API documents.

use qosmark_abi::status::Win32Error;

/// Everything the engine can refuse. Small and `Copy`; the mapping to Win32 (and from there to
/// NTSTATUS, in `qosmark_abi::status`) happens at the boundary through [`EngineError::win32`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineError {
    /// A parameter is invalid (87): bad flags, bad flow id for the operation, address family
    /// mismatch, `DestAddr` that differs from the connected peer, DSCP above 63, ...
    InvalidParameter,
    /// Unknown flow id, socket or rule (1168).
    NotFound,
    /// The caller lacks the privilege (5).
    AccessDenied,
    /// The handle is closed or unknown (6).
    InvalidHandle,
    /// The answer does not fit (122); `required` is the size in bytes that would.
    InsufficientBuffer {
        /// Bytes needed.
        required: u32,
    },
    /// The operation is not supported by qosmark (50), e.g. adaptive-flow probing data.
    NotSupported,
    /// An allocation failed (8).
    NoMemory,
    /// A configured limit (handles, flows, sockets, rules) is reached (1450).
    LimitReached,
    /// The object already exists (183), e.g. a duplicate rule name.
    AlreadyExists,
    /// The request was aborted because its handle closed (995).
    Aborted,
    /// There is no data to return (232), e.g. `QOSQueryFlow(QOSQueryOutgoingRate)` on a flow
    /// that has no rate.
    NoData,
}

impl EngineError {
    /// The Win32 error code reported to QOS2 callers.
    #[must_use]
    pub const fn win32(self) -> Win32Error {
        match self {
            EngineError::InvalidParameter => Win32Error::INVALID_PARAMETER,
            EngineError::NotFound => Win32Error::NOT_FOUND,
            EngineError::AccessDenied => Win32Error::ACCESS_DENIED,
            EngineError::InvalidHandle => Win32Error::INVALID_HANDLE,
            EngineError::InsufficientBuffer { .. } => Win32Error::INSUFFICIENT_BUFFER,
            EngineError::NotSupported => Win32Error::NOT_SUPPORTED,
            EngineError::NoMemory => Win32Error::NOT_ENOUGH_MEMORY,
            EngineError::LimitReached => Win32Error::NO_SYSTEM_RESOURCES,
            EngineError::AlreadyExists => Win32Error::ALREADY_EXISTS,
            EngineError::Aborted => Win32Error::OPERATION_ABORTED,
            EngineError::NoData => Win32Error::NO_DATA,
        }
    }
}

impl From<alloc::collections::TryReserveError> for EngineError {
    fn from(_: alloc::collections::TryReserveError) -> Self {
        EngineError::NoMemory
    }
}
