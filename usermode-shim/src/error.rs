//! The shim's one error type: a Win32 error code, exactly what a QOS2 caller would read from
//! `GetLastError()`.

use core::fmt;
use qosmark_abi::status::Win32Error;

/// A failed QOS2 / qosmark call, carrying the Win32 error code (qos-api.md §7).
///
/// The code is the contract; [`QosError::message`] is a short English description for logs
/// and `qosmarkctl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QosError {
    code: Win32Error,
}

/// `Result` with [`QosError`].
pub type Result<T, E = QosError> = core::result::Result<T, E>;

impl QosError {
    /// `ERROR_SERVICE_DEPENDENCY_FAIL` (1068): the back end is absent (driver not installed or
    /// not started; `qosmarkd` not running). It is the code qWAVE's `QOSCreateHandle` gives
    /// when the qWAVE service cannot start (qos-api.md §5), so applications that already
    /// handle that case keep working.
    pub const BACKEND_ABSENT: QosError = QosError::new(Win32Error::SERVICE_DEPENDENCY_FAIL);
    /// `ERROR_INVALID_PARAMETER` (87).
    pub const INVALID_PARAMETER: QosError = QosError::new(Win32Error::INVALID_PARAMETER);
    /// `ERROR_INVALID_HANDLE` (6).
    pub const INVALID_HANDLE: QosError = QosError::new(Win32Error::INVALID_HANDLE);
    /// `ERROR_NOT_SUPPORTED` (50).
    pub const NOT_SUPPORTED: QosError = QosError::new(Win32Error::NOT_SUPPORTED);
    /// `ERROR_GEN_FAILURE` (31).
    pub const GEN_FAILURE: QosError = QosError::new(Win32Error::GEN_FAILURE);
    /// `ERROR_NOT_ENOUGH_MEMORY` (8).
    pub const NO_MEMORY: QosError = QosError::new(Win32Error::NOT_ENOUGH_MEMORY);
    /// `ERROR_DEVICE_REINITIALIZATION_NEEDED` (1164): the connection to the back end broke
    /// (daemon restarted, driver unloaded); close the handle and create a new one, as qWAVE
    /// callers already do for this code.
    pub const REINITIALIZE: QosError = QosError::new(Win32Error::DEVICE_REINITIALIZATION_NEEDED);

    /// An error with this Win32 code. A code of 0 is turned into `ERROR_GEN_FAILURE`, so an
    /// error never reads as success.
    #[must_use]
    pub const fn new(code: Win32Error) -> Self {
        if code.0 == 0 {
            QosError {
                code: Win32Error::GEN_FAILURE,
            }
        } else {
            QosError { code }
        }
    }

    /// The Win32 code.
    #[must_use]
    pub const fn code(self) -> Win32Error {
        self.code
    }

    /// The Win32 code as a number (`DWORD`).
    #[must_use]
    pub const fn raw(self) -> u32 {
        self.code.0
    }

    /// A short description of the codes qosmark produces; "Win32 error N" for the others.
    #[must_use]
    pub fn message(self) -> &'static str {
        match self.code.0 {
            2 => "qosmark back end not found (driver not installed or not started, or qosmarkd not running)",
            5 => "access denied (administrator privilege needed)",
            6 => "invalid handle",
            8 => "not enough memory",
            31 => "general failure",
            50 => "not supported",
            87 => "invalid parameter",
            122 => "buffer too small",
            183 => "already exists",
            995 => "operation aborted",
            997 => "I/O pending",
            1164 => "connection to the back end lost: create a new handle",
            1168 => "not found",
            1306 => "client and back end versions differ",
            1450 => "limit reached",
            _ => "Win32 error",
        }
    }
}

impl fmt::Display for QosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (error {})", self.message(), self.code.0)
    }
}

impl std::error::Error for QosError {}

impl From<qosmark_engine::EngineError> for QosError {
    fn from(e: qosmark_engine::EngineError) -> Self {
        QosError::new(e.win32())
    }
}

impl From<qosmark_abi::codec::AbiError> for QosError {
    fn from(e: qosmark_abi::codec::AbiError) -> Self {
        QosError::new(e.win32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_never_success() {
        assert_eq!(QosError::new(Win32Error(0)).raw(), 31);
        assert_eq!(QosError::new(Win32Error(1168)).raw(), 1168);
        assert_eq!(QosError::BACKEND_ABSENT.raw(), 1068);
        assert!(QosError::new(Win32Error(1306)).to_string().contains("1306"));
    }
}
