//! Win32 error codes (the values the QOS2 API reports), NTSTATUS values, and the mapping
//! between them.
//!
//! The driver completes IRPs with an NTSTATUS; the Windows I/O manager converts it with
//! `RtlNtStatusToDosError` before `GetLastError` / `GetOverlappedResult` /
//! `GetQueuedCompletionStatus` report it. Each Win32 code the QOS2 API documents is paired
//! with an NTSTATUS whose conversion yields exactly that code, so synchronous and overlapped
//! callers see the QOS2 code without any help from the shim.
//!
//! # How `RtlNtStatusToDosError` converts (the facts this module relies on)
//!
//! From the Windows Research Kernel `base/ntos/rtl/error.c` (`RtlNtStatusToDosErrorNoTeb`) and
//! Wine's `dlls/ntdll/error.c`, which agree on these points:
//!
//! 1. `0` → `0`. A status with the customer bit (0x2000_0000) set is returned unchanged.
//! 2. `0x8007xxxx` (severity *warning*, `FACILITY_NTWIN32` = 7) → `xxxx`. This is the form
//!    `NTSTATUS_FROM_WIN32(x)` builds (`ntstatus.h`: `(x & 0xFFFF) | (7 << 16) |
//!    ERROR_SEVERITY_WARNING`).
//! 3. `0xDxxxxxxx` (`HRESULT_FROM_NT`) is first turned back into `0xCxxxxxxx`.
//! 4. Otherwise the status is looked up in a fixed table (the pairs below are from that table).
//! 5. Not found: `0xC001xxxx` → `xxxx` (the redirector's rule for unknown OS/2 errors);
//!    anything else → `ERROR_MR_MID_NOT_FOUND` (317).
//!
//! **`0xC007xxxx` is *not* mapped back**: neither the WRK nor Wine special-cases error-severity
//! facility-7 statuses, so they fall through to 317. Only the warning form `0x8007xxxx` carries a
//! Win32 code through. A warning status still makes `DeviceIoControl` / `GetOverlappedResult`
//! return `FALSE` (they test `NT_SUCCESS`, which is false for warnings), so
//! `NTSTATUS_FROM_WIN32` is a valid way to report any Win32 code that has no named NTSTATUS. The
//! driver must then complete with `IoStatus.Information = 0`, since for warnings the I/O manager
//! copies `Information` bytes of a `METHOD_BUFFERED` output back to the caller.
//!
//! `STATUS_TIMEOUT` (0x102) maps to `ERROR_TIMEOUT` (1460) but is a *success* status
//! (`DeviceIoControl` would return `TRUE`), so 1460 uses `NTSTATUS_FROM_WIN32` instead.
//! `STATUS_OPEN_FAILED` maps to `ERROR_NET_OPEN_FAILED` (570), not `ERROR_OPEN_FAILED` (110),
//! so 110 also uses `NTSTATUS_FROM_WIN32`.

#![allow(
    clippy::doc_markdown,
    reason = "hex status ranges and source paths in prose are not code items"
)]

/// A Win32 error code (`winerror.h`), as returned by `GetLastError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Win32Error(pub u32);

impl Win32Error {
    /// `ERROR_SUCCESS`.
    pub const SUCCESS: Self = Self(0);
    /// `ERROR_INVALID_FUNCTION`.
    pub const INVALID_FUNCTION: Self = Self(1);
    /// `ERROR_FILE_NOT_FOUND`: the shim's code when the back end is absent (no `\\.\QosMark`
    /// device, no `qosmarkd` socket).
    pub const FILE_NOT_FOUND: Self = Self(2);
    /// `ERROR_ACCESS_DENIED`.
    pub const ACCESS_DENIED: Self = Self(5);
    /// `ERROR_INVALID_HANDLE`.
    pub const INVALID_HANDLE: Self = Self(6);
    /// `ERROR_NOT_ENOUGH_MEMORY`.
    pub const NOT_ENOUGH_MEMORY: Self = Self(8);
    /// `ERROR_NOT_READY`.
    pub const NOT_READY: Self = Self(21);
    /// `ERROR_GEN_FAILURE`.
    pub const GEN_FAILURE: Self = Self(31);
    /// `ERROR_NOT_SUPPORTED`.
    pub const NOT_SUPPORTED: Self = Self(50);
    /// `ERROR_NETWORK_BUSY`.
    pub const NETWORK_BUSY: Self = Self(54);
    /// `ERROR_ADAP_HDW_ERR`.
    pub const ADAP_HDW_ERR: Self = Self(57);
    /// `ERROR_UNEXP_NET_ERR`.
    pub const UNEXP_NET_ERR: Self = Self(59);
    /// `ERROR_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: Self = Self(87);
    /// `ERROR_OPEN_FAILED`.
    pub const OPEN_FAILED: Self = Self(110);
    /// `ERROR_INSUFFICIENT_BUFFER`.
    pub const INSUFFICIENT_BUFFER: Self = Self(122);
    /// `ERROR_SIGNAL_PENDING`.
    pub const SIGNAL_PENDING: Self = Self(162);
    /// `ERROR_ALREADY_EXISTS`.
    pub const ALREADY_EXISTS: Self = Self(183);
    /// `ERROR_NO_DATA`.
    pub const NO_DATA: Self = Self(232);
    /// `ERROR_MORE_DATA`.
    pub const MORE_DATA: Self = Self(234);
    /// `ERROR_MR_MID_NOT_FOUND`: what `RtlNtStatusToDosError` returns for an unknown status.
    pub const MR_MID_NOT_FOUND: Self = Self(317);
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
    /// `ERROR_CONNECTION_REFUSED`.
    pub const CONNECTION_REFUSED: Self = Self(1225);
    /// `ERROR_NETWORK_UNREACHABLE`.
    pub const NETWORK_UNREACHABLE: Self = Self(1231);
    /// `ERROR_HOST_UNREACHABLE`.
    pub const HOST_UNREACHABLE: Self = Self(1232);
    /// `ERROR_REQUEST_ABORTED`.
    pub const REQUEST_ABORTED: Self = Self(1235);
    /// `ERROR_REVISION_MISMATCH`: client and back end speak different protocol versions.
    pub const REVISION_MISMATCH: Self = Self(1306);
    /// `ERROR_RETRY`.
    pub const RETRY: Self = Self(1237);
    /// `ERROR_ACCESS_DISABLED_BY_POLICY`.
    pub const ACCESS_DISABLED_BY_POLICY: Self = Self(1260);
    /// `ERROR_NO_SYSTEM_RESOURCES`.
    pub const NO_SYSTEM_RESOURCES: Self = Self(1450);
    /// `ERROR_TIMEOUT`.
    pub const TIMEOUT: Self = Self(1460);
    /// `ERROR_RESOURCE_DISABLED`.
    pub const RESOURCE_DISABLED: Self = Self(4309);
    /// `WSAENOBUFS`.
    pub const WSAENOBUFS: Self = Self(10055);
}

/// An NTSTATUS value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NtStatus(pub i32);

/// Reinterprets the 32 bits of an NTSTATUS written in hex (`0xC000_000D`) as the signed value.
const fn nt(bits: u32) -> NtStatus {
    NtStatus(i32::from_ne_bytes(bits.to_ne_bytes()))
}

impl NtStatus {
    /// `STATUS_SUCCESS`.
    pub const SUCCESS: Self = nt(0x0000_0000);
    /// `STATUS_PENDING` (success severity) → `ERROR_IO_PENDING` (997).
    pub const PENDING: Self = nt(0x0000_0103);
    /// `STATUS_BUFFER_OVERFLOW` (warning) → `ERROR_MORE_DATA` (234). The I/O manager still copies
    /// `IoStatus.Information` bytes of a `METHOD_BUFFERED` output.
    pub const BUFFER_OVERFLOW: Self = nt(0x8000_0005);
    /// `STATUS_UNSUCCESSFUL` → `ERROR_GEN_FAILURE` (31).
    pub const UNSUCCESSFUL: Self = nt(0xC000_0001);
    /// `STATUS_INVALID_HANDLE` → `ERROR_INVALID_HANDLE` (6).
    pub const INVALID_HANDLE: Self = nt(0xC000_0008);
    /// `STATUS_INVALID_PARAMETER` → `ERROR_INVALID_PARAMETER` (87).
    pub const INVALID_PARAMETER: Self = nt(0xC000_000D);
    /// `STATUS_INVALID_DEVICE_REQUEST` → `ERROR_INVALID_FUNCTION` (1): an IOCTL code that is
    /// not one of ours.
    pub const INVALID_DEVICE_REQUEST: Self = nt(0xC000_0010);
    /// `STATUS_NO_MEMORY` → `ERROR_NOT_ENOUGH_MEMORY` (8).
    pub const NO_MEMORY: Self = nt(0xC000_0017);
    /// `STATUS_ACCESS_DENIED` → `ERROR_ACCESS_DENIED` (5).
    pub const ACCESS_DENIED: Self = nt(0xC000_0022);
    /// `STATUS_BUFFER_TOO_SMALL` → `ERROR_INSUFFICIENT_BUFFER` (122). An error: nothing is copied.
    pub const BUFFER_TOO_SMALL: Self = nt(0xC000_0023);
    /// `STATUS_OBJECT_NAME_NOT_FOUND` → `ERROR_FILE_NOT_FOUND` (2).
    pub const OBJECT_NAME_NOT_FOUND: Self = nt(0xC000_0034);
    /// `STATUS_REVISION_MISMATCH` → `ERROR_REVISION_MISMATCH` (1306).
    pub const REVISION_MISMATCH: Self = nt(0xC000_0059);
    /// `STATUS_OBJECT_NAME_COLLISION` → `ERROR_ALREADY_EXISTS` (183).
    pub const OBJECT_NAME_COLLISION: Self = nt(0xC000_0035);
    /// `STATUS_INSUFFICIENT_RESOURCES` → `ERROR_NO_SYSTEM_RESOURCES` (1450).
    pub const INSUFFICIENT_RESOURCES: Self = nt(0xC000_009A);
    /// `STATUS_DEVICE_NOT_READY` → `ERROR_NOT_READY` (21).
    pub const DEVICE_NOT_READY: Self = nt(0xC000_00A3);
    /// `STATUS_NOT_SUPPORTED` → `ERROR_NOT_SUPPORTED` (50).
    pub const NOT_SUPPORTED: Self = nt(0xC000_00BB);
    /// `STATUS_NETWORK_BUSY` → `ERROR_NETWORK_BUSY` (54).
    pub const NETWORK_BUSY: Self = nt(0xC000_00BF);
    /// `STATUS_ADAPTER_HARDWARE_ERROR` → `ERROR_ADAP_HDW_ERR` (57).
    pub const ADAPTER_HARDWARE_ERROR: Self = nt(0xC000_00C2);
    /// `STATUS_UNEXPECTED_NETWORK_ERROR` → `ERROR_UNEXP_NET_ERR` (59).
    pub const UNEXPECTED_NETWORK_ERROR: Self = nt(0xC000_00C4);
    /// `STATUS_PIPE_EMPTY` → `ERROR_NO_DATA` (232).
    pub const PIPE_EMPTY: Self = nt(0xC000_00D9);
    /// `STATUS_CANCELLED` → `ERROR_OPERATION_ABORTED` (995).
    pub const CANCELLED: Self = nt(0xC000_0120);
    /// `STATUS_IO_DEVICE_ERROR` → `ERROR_IO_DEVICE` (1117).
    pub const IO_DEVICE_ERROR: Self = nt(0xC000_0185);
    /// `STATUS_NOT_FOUND` → `ERROR_NOT_FOUND` (1168).
    pub const NOT_FOUND: Self = nt(0xC000_0225);
    /// `STATUS_RETRY` → `ERROR_RETRY` (1237).
    pub const RETRY: Self = nt(0xC000_022D);
    /// `STATUS_CONNECTION_REFUSED` → `ERROR_CONNECTION_REFUSED` (1225).
    pub const CONNECTION_REFUSED: Self = nt(0xC000_0236);
    /// `STATUS_NETWORK_UNREACHABLE` → `ERROR_NETWORK_UNREACHABLE` (1231).
    pub const NETWORK_UNREACHABLE: Self = nt(0xC000_023C);
    /// `STATUS_HOST_UNREACHABLE` → `ERROR_HOST_UNREACHABLE` (1232).
    pub const HOST_UNREACHABLE: Self = nt(0xC000_023D);
    /// `STATUS_REQUEST_ABORTED` → `ERROR_REQUEST_ABORTED` (1235).
    pub const REQUEST_ABORTED: Self = nt(0xC000_0240);
    /// `STATUS_REINITIALIZATION_NEEDED` → `ERROR_DEVICE_REINITIALIZATION_NEEDED` (1164).
    pub const REINITIALIZATION_NEEDED: Self = nt(0xC000_0287);
    /// `STATUS_ACCESS_DISABLED_BY_POLICY_DEFAULT` → `ERROR_ACCESS_DISABLED_BY_POLICY` (1260).
    pub const ACCESS_DISABLED_BY_POLICY_DEFAULT: Self = nt(0xC000_0361);

    /// The 32 bits as an unsigned value (`0xC000_000D`).
    #[must_use]
    pub const fn bits(self) -> u32 {
        u32::from_ne_bytes(self.0.to_ne_bytes())
    }

    /// `NTSTATUS_FROM_WIN32(code)` (`ntstatus.h`): `0` for 0, else
    /// `0x8007_0000 | (code & 0xFFFF)` (warning severity, `FACILITY_NTWIN32`).
    #[must_use]
    pub const fn from_win32(code: Win32Error) -> Self {
        if code.0 == 0 {
            Self::SUCCESS
        } else {
            nt(0x8007_0000 | (code.0 & 0xFFFF))
        }
    }

    /// `NT_SUCCESS`: severity success or informational (the value is not negative).
    #[must_use]
    pub const fn is_success(self) -> bool {
        self.0 >= 0
    }

    /// `NT_WARNING`: severity 2 (0x8xxx_xxxx..=0xBxxx_xxxx).
    #[must_use]
    pub const fn is_warning(self) -> bool {
        self.bits() >> 30 == 2
    }

    /// `NT_ERROR`: severity 3 (0xCxxx_xxxx..=0xFxxx_xxxx).
    #[must_use]
    pub const fn is_error(self) -> bool {
        self.bits() >> 30 == 3
    }

    /// `Ok(())` when [`NtStatus::is_success`] (this includes `STATUS_PENDING`), otherwise
    /// `Err(self)`.
    ///
    /// # Errors
    /// The status itself when it is a warning or an error.
    pub const fn to_result(self) -> Result<(), NtStatus> {
        if self.is_success() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// Named statuses and the Win32 code `RtlNtStatusToDosError` gives each. Each pair appears in
/// Wine's `dlls/ntdll/error.c` conversion table (same values in ReactOS `lib/rtl/error.c`), e.g.
/// `ERROR_NOT_FOUND /* c0000225 (STATUS_NOT_FOUND) */`; `STATUS_BUFFER_OVERFLOW` →
/// `ERROR_MORE_DATA` and `STATUS_PENDING` → `ERROR_IO_PENDING` are in the same tables
/// (`table_80000001`, `table_00000102`). The first status listed for a code is the one
/// [`ntstatus_for`] chooses.
const NAMED: [(NtStatus, Win32Error); 30] = [
    (NtStatus::PENDING, Win32Error::IO_PENDING),
    (NtStatus::BUFFER_OVERFLOW, Win32Error::MORE_DATA),
    (NtStatus::UNSUCCESSFUL, Win32Error::GEN_FAILURE),
    (NtStatus::INVALID_HANDLE, Win32Error::INVALID_HANDLE),
    (NtStatus::INVALID_PARAMETER, Win32Error::INVALID_PARAMETER),
    (
        NtStatus::INVALID_DEVICE_REQUEST,
        Win32Error::INVALID_FUNCTION,
    ),
    (NtStatus::NO_MEMORY, Win32Error::NOT_ENOUGH_MEMORY),
    (NtStatus::ACCESS_DENIED, Win32Error::ACCESS_DENIED),
    (NtStatus::BUFFER_TOO_SMALL, Win32Error::INSUFFICIENT_BUFFER),
    (NtStatus::OBJECT_NAME_COLLISION, Win32Error::ALREADY_EXISTS),
    (NtStatus::OBJECT_NAME_NOT_FOUND, Win32Error::FILE_NOT_FOUND),
    (NtStatus::REVISION_MISMATCH, Win32Error::REVISION_MISMATCH),
    (
        NtStatus::INSUFFICIENT_RESOURCES,
        Win32Error::NO_SYSTEM_RESOURCES,
    ),
    (NtStatus::DEVICE_NOT_READY, Win32Error::NOT_READY),
    (NtStatus::NOT_SUPPORTED, Win32Error::NOT_SUPPORTED),
    (NtStatus::NETWORK_BUSY, Win32Error::NETWORK_BUSY),
    (NtStatus::ADAPTER_HARDWARE_ERROR, Win32Error::ADAP_HDW_ERR),
    (
        NtStatus::UNEXPECTED_NETWORK_ERROR,
        Win32Error::UNEXP_NET_ERR,
    ),
    (NtStatus::PIPE_EMPTY, Win32Error::NO_DATA),
    (NtStatus::CANCELLED, Win32Error::OPERATION_ABORTED),
    (NtStatus::IO_DEVICE_ERROR, Win32Error::IO_DEVICE),
    (NtStatus::NOT_FOUND, Win32Error::NOT_FOUND),
    (NtStatus::RETRY, Win32Error::RETRY),
    (NtStatus::CONNECTION_REFUSED, Win32Error::CONNECTION_REFUSED),
    (
        NtStatus::NETWORK_UNREACHABLE,
        Win32Error::NETWORK_UNREACHABLE,
    ),
    (NtStatus::HOST_UNREACHABLE, Win32Error::HOST_UNREACHABLE),
    (NtStatus::REQUEST_ABORTED, Win32Error::REQUEST_ABORTED),
    (
        NtStatus::REINITIALIZATION_NEEDED,
        Win32Error::DEVICE_REINITIALIZATION_NEEDED,
    ),
    (
        NtStatus::ACCESS_DISABLED_BY_POLICY_DEFAULT,
        Win32Error::ACCESS_DISABLED_BY_POLICY,
    ),
    (NtStatus::SUCCESS, Win32Error::SUCCESS),
];

/// The NTSTATUS a back end completes with so that `RtlNtStatusToDosError` yields exactly `code`.
///
/// A named status when one maps to `code` (table above); otherwise `NTSTATUS_FROM_WIN32(code)`
/// (`0x8007xxxx`), which the conversion maps back to `xxxx` (module docs, rule 2). Codes above
/// 0xFFFF cannot be carried (no Win32 error code is that large) and give `STATUS_UNSUCCESSFUL`
/// (→ 31, `ERROR_GEN_FAILURE`).
#[must_use]
pub fn ntstatus_for(code: Win32Error) -> NtStatus {
    if let Some((status, _)) = NAMED.iter().find(|(_, win32)| *win32 == code) {
        return *status;
    }
    if code.0 > 0xFFFF {
        return NtStatus::UNSUCCESSFUL;
    }
    NtStatus::from_win32(code)
}

/// `RtlNtStatusToDosError`, reproduced for the statuses qosmark produces: the named statuses of
/// this module and the rule-based ranges (module docs, rules 1, 2, 3 and 5). Any other status gives
/// [`Win32Error::MR_MID_NOT_FOUND`] here, even where Windows' full table knows a code.
#[must_use]
pub fn win32_for(status: NtStatus) -> Win32Error {
    let mut bits = status.bits();
    if bits == 0 {
        return Win32Error::SUCCESS;
    }
    if bits & 0x2000_0000 != 0 {
        return Win32Error(bits);
    }
    if bits & 0xFFFF_0000 == 0x8007_0000 {
        return Win32Error(bits & 0xFFFF);
    }
    if bits & 0xF000_0000 == 0xD000_0000 {
        bits &= 0xCFFF_FFFF;
    }
    if let Some((_, win32)) = NAMED.iter().find(|(named, _)| named.bits() == bits) {
        return *win32;
    }
    if bits >> 16 == 0xC001 {
        return Win32Error(bits & 0xFFFF);
    }
    Win32Error::MR_MID_NOT_FOUND
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(NTSTATUS, Win32)` pairs written out as literals from Wine's `dlls/ntdll/error.c` tables
    /// (and the WRK rule for 0x8007xxxx), independent of the constants above.
    const ORACLE: [(u32, u32); 30] = [
        (0x0000_0103, 997),  // STATUS_PENDING -> ERROR_IO_PENDING
        (0x8000_0005, 234),  // STATUS_BUFFER_OVERFLOW -> ERROR_MORE_DATA
        (0xC000_0001, 31),   // STATUS_UNSUCCESSFUL -> ERROR_GEN_FAILURE
        (0xC000_0008, 6),    // STATUS_INVALID_HANDLE
        (0xC000_000D, 87),   // STATUS_INVALID_PARAMETER
        (0xC000_0010, 1),    // STATUS_INVALID_DEVICE_REQUEST -> ERROR_INVALID_FUNCTION
        (0xC000_0017, 8),    // STATUS_NO_MEMORY -> ERROR_NOT_ENOUGH_MEMORY
        (0xC000_0022, 5),    // STATUS_ACCESS_DENIED
        (0xC000_0023, 122),  // STATUS_BUFFER_TOO_SMALL -> ERROR_INSUFFICIENT_BUFFER
        (0xC000_0035, 183),  // STATUS_OBJECT_NAME_COLLISION -> ERROR_ALREADY_EXISTS
        (0xC000_009A, 1450), // STATUS_INSUFFICIENT_RESOURCES -> ERROR_NO_SYSTEM_RESOURCES
        (0xC000_00A3, 21),   // STATUS_DEVICE_NOT_READY -> ERROR_NOT_READY
        (0xC000_00BB, 50),   // STATUS_NOT_SUPPORTED
        (0xC000_00BF, 54),   // STATUS_NETWORK_BUSY
        (0xC000_00C2, 57),   // STATUS_ADAPTER_HARDWARE_ERROR -> ERROR_ADAP_HDW_ERR
        (0xC000_00C4, 59),   // STATUS_UNEXPECTED_NETWORK_ERROR -> ERROR_UNEXP_NET_ERR
        (0xC000_00D9, 232),  // STATUS_PIPE_EMPTY -> ERROR_NO_DATA
        (0xC000_0120, 995),  // STATUS_CANCELLED -> ERROR_OPERATION_ABORTED
        (0xC000_0185, 1117), // STATUS_IO_DEVICE_ERROR -> ERROR_IO_DEVICE
        (0xC000_0225, 1168), // STATUS_NOT_FOUND
        (0xC000_022D, 1237), // STATUS_RETRY
        (0xC000_0236, 1225), // STATUS_CONNECTION_REFUSED
        (0xC000_023C, 1231), // STATUS_NETWORK_UNREACHABLE
        (0xC000_023D, 1232), // STATUS_HOST_UNREACHABLE
        (0xC000_0240, 1235), // STATUS_REQUEST_ABORTED
        (0xC000_0287, 1164), // STATUS_REINITIALIZATION_NEEDED
        (0xC000_0361, 1260), // STATUS_ACCESS_DISABLED_BY_POLICY_DEFAULT
        (0x8007_042C, 1068), // NTSTATUS_FROM_WIN32(ERROR_SERVICE_DEPENDENCY_FAIL)
        (0xC000_0034, 2),    // STATUS_OBJECT_NAME_NOT_FOUND -> ERROR_FILE_NOT_FOUND
        (0xC000_0059, 1306), // STATUS_REVISION_MISMATCH -> ERROR_REVISION_MISMATCH
    ];

    /// Every Win32 code of qos-api.md §7 (except the pseudo-entry "ERROR_ABORTED").
    const QOS2_CODES: [u32; 34] = [
        5, 6, 8, 21, 31, 50, 54, 57, 59, 87, 110, 122, 162, 183, 232, 234, 995, 997, 1068, 1117,
        1164, 1168, 1225, 1231, 1232, 1235, 1237, 1260, 1450, 1460, 4309, 10055, 0, 317,
    ];

    #[test]
    fn win32_for_reproduces_the_oracle() {
        for (status, code) in ORACLE {
            let s = NtStatus(i32::from_ne_bytes(status.to_ne_bytes()));
            assert_eq!(win32_for(s), Win32Error(code), "{status:#010x}");
        }
    }

    #[test]
    fn every_qos2_code_round_trips() {
        for code in QOS2_CODES {
            let status = ntstatus_for(Win32Error(code));
            assert_eq!(
                win32_for(status),
                Win32Error(code),
                "{code} via {:#010x}",
                status.bits()
            );
            // The status really reports a failure (except 0 and the pending success status), so
            // DeviceIoControl returns FALSE and the caller reads the code from GetLastError.
            if code != 0 && code != 997 {
                assert!(!status.is_success(), "{code}");
            }
        }
    }

    #[test]
    fn chosen_statuses_for_the_engine_codes() {
        // The statuses the driver completes with for every EngineError code, written out.
        let expected: [(u32, u32); 18] = [
            (2, 0xC000_0034),
            (1306, 0xC000_0059),
            (5, 0xC000_0022),
            (6, 0xC000_0008),
            (8, 0xC000_0017),
            (31, 0xC000_0001),
            (50, 0xC000_00BB),
            (87, 0xC000_000D),
            (122, 0xC000_0023),
            (183, 0xC000_0035),
            (234, 0x8000_0005),
            (995, 0xC000_0120),
            (1068, 0x8007_042C),
            (1117, 0xC000_0185),
            (1164, 0xC000_0287),
            (1168, 0xC000_0225),
            (1450, 0xC000_009A),
            (1460, 0x8007_05B4),
        ];
        for (code, status) in expected {
            assert_eq!(ntstatus_for(Win32Error(code)).bits(), status, "{code}");
        }
    }

    #[test]
    fn rule_based_ranges() {
        // 0xC007xxxx is not converted back (falls to 317), 0x8007xxxx is.
        assert_eq!(win32_for(nt(0xC007_0057)), Win32Error::MR_MID_NOT_FOUND);
        assert_eq!(win32_for(nt(0x8007_0057)), Win32Error(87));
        // HRESULT_FROM_NT form.
        assert_eq!(win32_for(nt(0xD000_0225)), Win32Error(1168));
        // Redirector rule.
        assert_eq!(win32_for(nt(0xC001_0005)), Win32Error(5));
        // Customer bit passes through unchanged.
        assert_eq!(win32_for(nt(0xE000_1234)), Win32Error(0xE000_1234));
        // Unknown.
        assert_eq!(win32_for(nt(0xC000_0999)), Win32Error::MR_MID_NOT_FOUND);
        assert_eq!(ntstatus_for(Win32Error(0x1_0000)), NtStatus::UNSUCCESSFUL);
    }

    #[test]
    fn severities_and_to_result() {
        assert!(NtStatus::SUCCESS.is_success());
        assert_eq!(NtStatus::SUCCESS.to_result(), Ok(()));
        assert_eq!(NtStatus::PENDING.to_result(), Ok(()));
        assert!(NtStatus::BUFFER_OVERFLOW.is_warning());
        assert!(!NtStatus::BUFFER_OVERFLOW.is_error());
        assert_eq!(
            NtStatus::BUFFER_OVERFLOW.to_result(),
            Err(NtStatus::BUFFER_OVERFLOW)
        );
        assert!(NtStatus::BUFFER_TOO_SMALL.is_error());
        assert!(!NtStatus::BUFFER_TOO_SMALL.is_warning());
        assert_eq!(NtStatus::INVALID_PARAMETER.bits(), 0xC000_000D);
        assert_eq!(NtStatus::INVALID_PARAMETER.0, -1_073_741_811);
        assert_eq!(NtStatus::from_win32(Win32Error(1460)).bits(), 0x8007_05B4);
    }
}
