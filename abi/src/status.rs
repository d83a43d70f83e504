//! Win32 error codes (the values the QOS2 API reports), NTSTATUS values, and the mapping
//! between them.
//!
//! The driver completes IRPs with an NTSTATUS; the Windows I/O manager converts it with
//! `RtlNtStatusToDosError` before `GetLastError` / `GetOverlappedResult` /
//! `GetQueuedCompletionStatus` report it. Each Win32 code the QOS2 API documents is paired
//! with an NTSTATUS whose conversion yields exactly that code, so synchronous and overlapped
//! callers see the QOS2 code without any help from the shim.

/// A Win32 error code (`winerror.h`), as returned by `GetLastError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Win32Error(pub u32);

impl Win32Error {
    /// `ERROR_SUCCESS`.
    pub const SUCCESS: Self = Self(0);
    /// `ERROR_ACCESS_DENIED`.
    pub const ACCESS_DENIED: Self = Self(5);
    /// `ERROR_INVALID_HANDLE`.
    pub const INVALID_HANDLE: Self = Self(6);
    /// `ERROR_NOT_ENOUGH_MEMORY`.
    pub const NOT_ENOUGH_MEMORY: Self = Self(8);
    /// `ERROR_GEN_FAILURE`.
    pub const GEN_FAILURE: Self = Self(31);
    /// `ERROR_NOT_SUPPORTED`.
    pub const NOT_SUPPORTED: Self = Self(50);
    /// `ERROR_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: Self = Self(87);
    /// `ERROR_INSUFFICIENT_BUFFER`.
    pub const INSUFFICIENT_BUFFER: Self = Self(122);
    /// `ERROR_ALREADY_EXISTS`.
    pub const ALREADY_EXISTS: Self = Self(183);
    /// `ERROR_MORE_DATA`.
    pub const MORE_DATA: Self = Self(234);
    /// `ERROR_OPERATION_ABORTED`.
    pub const OPERATION_ABORTED: Self = Self(995);
    /// `ERROR_IO_PENDING`.
    pub const IO_PENDING: Self = Self(997);
    /// `ERROR_SERVICE_DEPENDENCY_FAIL`.
    pub const SERVICE_DEPENDENCY_FAIL: Self = Self(1068);
    /// `ERROR_IO_DEVICE`.
    pub const IO_DEVICE: Self = Self(1117);
    /// `ERROR_DEVICE_REINITIALIZATION_NEEDED`.
    pub const DEVICE_REINITIALIZATION_NEEDED: Self = Self(1164);
    /// `ERROR_NOT_FOUND`.
    pub const NOT_FOUND: Self = Self(1168);
    /// `ERROR_NO_SYSTEM_RESOURCES`.
    pub const NO_SYSTEM_RESOURCES: Self = Self(1450);
}

/// An NTSTATUS value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NtStatus(pub i32);
