//! `CTL_CODE` values of the `\\.\QosMark` device interface.
//!
//! A Windows I/O control code packs four fields into 32 bits (`winioctl.h`, `CTL_CODE`):
//!
//! ```text
//!  31                 16 15  14 13                      2 1     0
//! +---------------------+------+-------------------------+-------+
//! |     DeviceType      |Access|        Function         |Method |
//! +---------------------+------+-------------------------+-------+
//! code = (DeviceType << 16) | (Access << 14) | (Function << 2) | Method
//! ```
//!
//! qosmark's choices:
//!
//! * **DeviceType = `FILE_DEVICE_NETWORK` (0x12).** Microsoft's rule for `CTL_CODE` is that the
//!   device type of a code matches the `DeviceType` of the device object that receives it, and
//!   the control device is created with `FILE_DEVICE_NETWORK` (wfp-driver.md §9, as the WFP
//!   samples do). Vendor ownership of the codes comes from the function numbers instead: values
//!   below 0x800 are Microsoft's, 0x800 and above are for vendors. A custom device type
//!   (≥ 0x8000) would also be legal, but would then have to be the device object's type too,
//!   which gains nothing: IOCTLs only ever reach our own device object.
//! * **Function ≥ 0x800**, one per request kind (0x800..=0x80E, [`RequestKind::function`]).
//! * **Method = `METHOD_BUFFERED`** for every code: the I/O manager copies the input into a
//!   system buffer and copies `IoStatus.Information` bytes back on success or warning, so the
//!   driver never touches user addresses (see [`crate::codec`] for the size protocol).
//! * **Access**: the I/O manager refuses a code unless the handle was opened with the access
//!   encoded in it ("Security Issues for I/O Control Codes"). Requests that only read state
//!   require `FILE_READ_ACCESS`; every request that changes state (flows, rules, tables) requires
//!   `FILE_WRITE_ACCESS`. `FILE_ANY_ACCESS` is never used. `NotifyFlow` observes a flow and is a
//!   read, and so is `WatchFlow`; `AddSocketToFlow` returns a flow id but creates state, so it is a write.
//!
//! The driver dispatches on the full 32-bit code with [`request_kind`]: a code that differs in any
//! bit (another method, another access, another device type) is not ours and is refused.

#![allow(
    clippy::doc_markdown,
    reason = "Windows names (DeviceType, RequiredAccess) in prose are not code items"
)]

use crate::types::Request;

/// NT name of the control device object (`IoCreateDevice*` / `WdfDeviceInitAssignName`).
pub const NT_DEVICE_NAME: &str = "\\Device\\QosMark";
/// Symbolic link created for it (`IoCreateSymbolicLink`).
pub const DOS_DEVICE_NAME: &str = "\\DosDevices\\QosMark";
/// Path user mode opens with `CreateFileW`.
pub const USER_DEVICE_PATH: &str = "\\\\.\\QosMark";

/// `FILE_DEVICE_NETWORK` (`winioctl.h`).
pub const FILE_DEVICE_NETWORK: u16 = 0x0012;
/// `METHOD_BUFFERED` (`winioctl.h`).
pub const METHOD_BUFFERED: u8 = 0;
/// `FILE_ANY_ACCESS` (`winioctl.h`). Not used by qosmark; named for tests and documentation.
pub const FILE_ANY_ACCESS: u8 = 0;
/// `FILE_READ_ACCESS` (`winioctl.h`).
pub const FILE_READ_ACCESS: u8 = 1;
/// `FILE_WRITE_ACCESS` (`winioctl.h`).
pub const FILE_WRITE_ACCESS: u8 = 2;

/// Device type used in every qosmark code.
pub const DEVICE_TYPE: u16 = FILE_DEVICE_NETWORK;
/// First vendor function number; [`RequestKind::QueryStatus`] uses it.
pub const FUNCTION_BASE: u16 = 0x800;

/// `CTL_CODE(DeviceType, Function, Method, Access)` from `winioctl.h`.
///
/// `function` is 12 bits, `method` and `access` 2 bits each; higher bits are masked off so the
/// fields cannot overlap (the C macro would let them collide).
#[must_use]
pub const fn ctl_code(device_type: u16, function: u16, method: u8, access: u8) -> u32 {
    ((device_type as u32) << 16)
        | (((access & 0x3) as u32) << 14)
        | (((function & 0x0FFF) as u32) << 2)
        | ((method & 0x3) as u32)
}

/// One kind of control request; each has its own IOCTL code and record kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u16)]
pub enum RequestKind {
    /// [`Request::QueryStatus`].
    QueryStatus = 0,
    /// [`Request::AddSocketToFlow`].
    AddSocketToFlow = 1,
    /// [`Request::RemoveSocketFromFlow`].
    RemoveSocketFromFlow = 2,
    /// [`Request::SetFlow`].
    SetFlow = 3,
    /// [`Request::QueryFlow`].
    QueryFlow = 4,
    /// [`Request::NotifyFlow`].
    NotifyFlow = 5,
    /// [`Request::EnumerateFlows`].
    EnumerateFlows = 6,
    /// [`Request::AddRule`].
    AddRule = 7,
    /// [`Request::RemoveRule`].
    RemoveRule = 8,
    /// [`Request::ListRules`].
    ListRules = 9,
    /// [`Request::GetTrafficTable`].
    GetTrafficTable = 10,
    /// [`Request::SetTrafficTable`].
    SetTrafficTable = 11,
    /// [`Request::ListFlows`].
    ListFlows = 12,
    /// [`Request::ReplaceRules`].
    ReplaceRules = 13,
    /// [`Request::WatchFlow`] (qosmark extension for GQoS).
    WatchFlow = 14,
}

impl RequestKind {
    /// Every kind, in function-code order.
    pub const ALL: [RequestKind; 15] = [
        RequestKind::QueryStatus,
        RequestKind::AddSocketToFlow,
        RequestKind::RemoveSocketFromFlow,
        RequestKind::SetFlow,
        RequestKind::QueryFlow,
        RequestKind::NotifyFlow,
        RequestKind::EnumerateFlows,
        RequestKind::AddRule,
        RequestKind::RemoveRule,
        RequestKind::ListRules,
        RequestKind::GetTrafficTable,
        RequestKind::SetTrafficTable,
        RequestKind::ListFlows,
        RequestKind::ReplaceRules,
        RequestKind::WatchFlow,
    ];

    /// The kind of a decoded request.
    #[must_use]
    pub const fn of(request: &Request) -> RequestKind {
        match request {
            Request::QueryStatus => RequestKind::QueryStatus,
            Request::AddSocketToFlow { .. } => RequestKind::AddSocketToFlow,
            Request::RemoveSocketFromFlow { .. } => RequestKind::RemoveSocketFromFlow,
            Request::SetFlow { .. } => RequestKind::SetFlow,
            Request::QueryFlow { .. } => RequestKind::QueryFlow,
            Request::NotifyFlow { .. } => RequestKind::NotifyFlow,
            Request::EnumerateFlows => RequestKind::EnumerateFlows,
            Request::AddRule(_) => RequestKind::AddRule,
            Request::RemoveRule(_) => RequestKind::RemoveRule,
            Request::ListRules => RequestKind::ListRules,
            Request::GetTrafficTable => RequestKind::GetTrafficTable,
            Request::SetTrafficTable(_) => RequestKind::SetTrafficTable,
            Request::ListFlows { .. } => RequestKind::ListFlows,
            Request::ReplaceRules(_) => RequestKind::ReplaceRules,
            Request::WatchFlow { .. } => RequestKind::WatchFlow,
        }
    }

    /// Function number (12 bits, ≥ 0x800).
    #[must_use]
    pub const fn function(self) -> u16 {
        FUNCTION_BASE + self as u16
    }

    /// Whether the request changes driver state (and so needs `FILE_WRITE_ACCESS`).
    #[must_use]
    pub const fn is_mutation(self) -> bool {
        match self {
            RequestKind::QueryStatus
            | RequestKind::QueryFlow
            | RequestKind::NotifyFlow
            | RequestKind::EnumerateFlows
            | RequestKind::ListRules
            | RequestKind::GetTrafficTable
            | RequestKind::ListFlows
            | RequestKind::WatchFlow => false,
            RequestKind::AddSocketToFlow
            | RequestKind::RemoveSocketFromFlow
            | RequestKind::SetFlow
            | RequestKind::AddRule
            | RequestKind::RemoveRule
            | RequestKind::SetTrafficTable
            | RequestKind::ReplaceRules => true,
        }
    }

    /// Required access encoded in the code: [`FILE_WRITE_ACCESS`] for mutations,
    /// [`FILE_READ_ACCESS`] otherwise.
    #[must_use]
    pub const fn access(self) -> u8 {
        if self.is_mutation() {
            FILE_WRITE_ACCESS
        } else {
            FILE_READ_ACCESS
        }
    }

    /// The full 32-bit IOCTL code.
    #[must_use]
    pub const fn code(self) -> u32 {
        ctl_code(DEVICE_TYPE, self.function(), METHOD_BUFFERED, self.access())
    }
}

/// The request kind of an IOCTL code, matching all 32 bits; `None` for any other code.
#[must_use]
pub fn request_kind(code: u32) -> Option<RequestKind> {
    RequestKind::ALL
        .into_iter()
        .find(|kind| kind.code() == code)
}

/// `IOCTL_QOSMARK_QUERY_STATUS`.
pub const IOCTL_QOSMARK_QUERY_STATUS: u32 = RequestKind::QueryStatus.code();
/// `IOCTL_QOSMARK_ADD_SOCKET_TO_FLOW`.
pub const IOCTL_QOSMARK_ADD_SOCKET_TO_FLOW: u32 = RequestKind::AddSocketToFlow.code();
/// `IOCTL_QOSMARK_REMOVE_SOCKET_FROM_FLOW`.
pub const IOCTL_QOSMARK_REMOVE_SOCKET_FROM_FLOW: u32 = RequestKind::RemoveSocketFromFlow.code();
/// `IOCTL_QOSMARK_SET_FLOW`.
pub const IOCTL_QOSMARK_SET_FLOW: u32 = RequestKind::SetFlow.code();
/// `IOCTL_QOSMARK_QUERY_FLOW`.
pub const IOCTL_QOSMARK_QUERY_FLOW: u32 = RequestKind::QueryFlow.code();
/// `IOCTL_QOSMARK_NOTIFY_FLOW`.
pub const IOCTL_QOSMARK_NOTIFY_FLOW: u32 = RequestKind::NotifyFlow.code();
/// `IOCTL_QOSMARK_ENUMERATE_FLOWS`.
pub const IOCTL_QOSMARK_ENUMERATE_FLOWS: u32 = RequestKind::EnumerateFlows.code();
/// `IOCTL_QOSMARK_ADD_RULE`.
pub const IOCTL_QOSMARK_ADD_RULE: u32 = RequestKind::AddRule.code();
/// `IOCTL_QOSMARK_REMOVE_RULE`.
pub const IOCTL_QOSMARK_REMOVE_RULE: u32 = RequestKind::RemoveRule.code();
/// `IOCTL_QOSMARK_LIST_RULES`.
pub const IOCTL_QOSMARK_LIST_RULES: u32 = RequestKind::ListRules.code();
/// `IOCTL_QOSMARK_GET_TRAFFIC_TABLE`.
pub const IOCTL_QOSMARK_GET_TRAFFIC_TABLE: u32 = RequestKind::GetTrafficTable.code();
/// `IOCTL_QOSMARK_SET_TRAFFIC_TABLE`.
pub const IOCTL_QOSMARK_SET_TRAFFIC_TABLE: u32 = RequestKind::SetTrafficTable.code();
/// `IOCTL_QOSMARK_LIST_FLOWS`.
pub const IOCTL_QOSMARK_LIST_FLOWS: u32 = RequestKind::ListFlows.code();
/// `IOCTL_QOSMARK_REPLACE_RULES`.
pub const IOCTL_QOSMARK_REPLACE_RULES: u32 = RequestKind::ReplaceRules.code();
/// `WatchFlow` (qosmark extension: a flow's state, held until it changes).
pub const IOCTL_QOSMARK_WATCH_FLOW: u32 = RequestKind::WatchFlow.code();

#[cfg(test)]
mod tests {
    use super::*;

    /// `CTL_CODE` written out again, independently of [`ctl_code`]:
    /// `(DeviceType << 16) | (Access << 14) | (Function << 2) | Method`.
    const fn formula(device: u32, function: u32, method: u32, access: u32) -> u32 {
        (device << 16) | (access << 14) | (function << 2) | method
    }

    #[test]
    fn every_code_is_pinned() {
        // DeviceType 0x12 (FILE_DEVICE_NETWORK), METHOD_BUFFERED 0, FILE_READ_ACCESS 1,
        // FILE_WRITE_ACCESS 2. Hand-computed: 0x12 << 16 = 0x0012_0000; read 1 << 14 = 0x4000;
        // write 2 << 14 = 0x8000; 0x800 << 2 = 0x2000, each further function adds 4.
        let expected: [(RequestKind, u32, u32); 15] = [
            (
                RequestKind::QueryStatus,
                formula(0x12, 0x800, 0, 1),
                0x0012_6000,
            ),
            (
                RequestKind::AddSocketToFlow,
                formula(0x12, 0x801, 0, 2),
                0x0012_A004,
            ),
            (
                RequestKind::RemoveSocketFromFlow,
                formula(0x12, 0x802, 0, 2),
                0x0012_A008,
            ),
            (
                RequestKind::SetFlow,
                formula(0x12, 0x803, 0, 2),
                0x0012_A00C,
            ),
            (
                RequestKind::QueryFlow,
                formula(0x12, 0x804, 0, 1),
                0x0012_6010,
            ),
            (
                RequestKind::NotifyFlow,
                formula(0x12, 0x805, 0, 1),
                0x0012_6014,
            ),
            (
                RequestKind::EnumerateFlows,
                formula(0x12, 0x806, 0, 1),
                0x0012_6018,
            ),
            (
                RequestKind::AddRule,
                formula(0x12, 0x807, 0, 2),
                0x0012_A01C,
            ),
            (
                RequestKind::RemoveRule,
                formula(0x12, 0x808, 0, 2),
                0x0012_A020,
            ),
            (
                RequestKind::ListRules,
                formula(0x12, 0x809, 0, 1),
                0x0012_6024,
            ),
            (
                RequestKind::GetTrafficTable,
                formula(0x12, 0x80A, 0, 1),
                0x0012_6028,
            ),
            (
                RequestKind::SetTrafficTable,
                formula(0x12, 0x80B, 0, 2),
                0x0012_A02C,
            ),
            (
                RequestKind::ListFlows,
                formula(0x12, 0x80C, 0, 1),
                0x0012_6030,
            ),
            (
                RequestKind::ReplaceRules,
                formula(0x12, 0x80D, 0, 2),
                0x0012_A034,
            ),
            (
                RequestKind::WatchFlow,
                formula(0x12, 0x80E, 0, 1),
                0x0012_6038,
            ),
        ];
        for (kind, by_formula, literal) in expected {
            assert_eq!(by_formula, literal, "{kind:?}: test table inconsistent");
            assert_eq!(kind.code(), literal, "{kind:?}");
            assert_eq!(request_kind(literal), Some(kind), "{kind:?}");
        }
        assert_eq!(IOCTL_QOSMARK_QUERY_STATUS, 0x0012_6000);
        assert_eq!(IOCTL_QOSMARK_ADD_SOCKET_TO_FLOW, 0x0012_A004);
        assert_eq!(IOCTL_QOSMARK_REMOVE_SOCKET_FROM_FLOW, 0x0012_A008);
        assert_eq!(IOCTL_QOSMARK_SET_FLOW, 0x0012_A00C);
        assert_eq!(IOCTL_QOSMARK_QUERY_FLOW, 0x0012_6010);
        assert_eq!(IOCTL_QOSMARK_NOTIFY_FLOW, 0x0012_6014);
        assert_eq!(IOCTL_QOSMARK_ENUMERATE_FLOWS, 0x0012_6018);
        assert_eq!(IOCTL_QOSMARK_ADD_RULE, 0x0012_A01C);
        assert_eq!(IOCTL_QOSMARK_REMOVE_RULE, 0x0012_A020);
        assert_eq!(IOCTL_QOSMARK_LIST_RULES, 0x0012_6024);
        assert_eq!(IOCTL_QOSMARK_GET_TRAFFIC_TABLE, 0x0012_6028);
        assert_eq!(IOCTL_QOSMARK_SET_TRAFFIC_TABLE, 0x0012_A02C);
        assert_eq!(IOCTL_QOSMARK_LIST_FLOWS, 0x0012_6030);
        assert_eq!(IOCTL_QOSMARK_REPLACE_RULES, 0x0012_A034);
    }

    #[test]
    fn known_windows_codes_match_the_formula() {
        // Independent check of `ctl_code` against published codes:
        // IOCTL_STORAGE_MANAGE_BYPASS_IO = CTL_CODE(0x2d, 0x230, METHOD_BUFFERED,
        // FILE_ANY_ACCESS) = 0x002D08C0 (ntddstor.h).
        assert_eq!(
            ctl_code(0x2D, 0x230, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x002D_08C0
        );
        // FSCTL_GET_REPARSE_POINT =
        // CTL_CODE(FILE_DEVICE_FILE_SYSTEM 9, 42, METHOD_BUFFERED, FILE_ANY_ACCESS) = 0x000900A8.
        assert_eq!(
            ctl_code(0x09, 42, METHOD_BUFFERED, FILE_ANY_ACCESS),
            0x0009_00A8
        );
    }

    #[test]
    fn only_exact_codes_match() {
        for kind in RequestKind::ALL {
            let code = kind.code();
            // Any single-bit change of a valid code is either refused or is exactly another
            // kind's code (QueryStatus and QueryFlow differ in one function bit, for instance):
            // never the same kind again.
            for bit in 0..32 {
                let other = code ^ (1 << bit);
                let expected = RequestKind::ALL.iter().copied().find(|k| k.code() == other);
                assert_eq!(request_kind(other), expected, "{kind:?} bit {bit}");
                assert_ne!(request_kind(other), Some(kind));
            }
            // Same function with other methods or access is refused.
            for method in 0..4u8 {
                for access in 0..4u8 {
                    let c = ctl_code(DEVICE_TYPE, kind.function(), method, access);
                    let expected =
                        (method == METHOD_BUFFERED && access == kind.access()).then_some(kind);
                    assert_eq!(request_kind(c), expected, "{kind:?} m{method} a{access}");
                }
            }
        }
        assert_eq!(request_kind(0), None);
        assert_eq!(request_kind(u32::MAX), None);
    }

    #[test]
    fn device_names() {
        assert_eq!(NT_DEVICE_NAME.as_bytes(), br"\Device\QosMark");
        assert_eq!(DOS_DEVICE_NAME.as_bytes(), br"\DosDevices\QosMark");
        assert_eq!(USER_DEVICE_PATH.as_bytes(), br"\\.\QosMark");
    }

    #[test]
    fn access_and_function_rules() {
        for kind in RequestKind::ALL {
            assert!(kind.function() >= 0x800);
            assert_eq!(kind.code() & 0x3, u32::from(METHOD_BUFFERED));
            let access = (kind.code() >> 14) & 0x3;
            assert_ne!(access, u32::from(FILE_ANY_ACCESS), "{kind:?}");
            if kind.is_mutation() {
                assert_eq!(access, 2, "{kind:?}");
            } else {
                assert_eq!(access, 1, "{kind:?}");
            }
            assert_eq!(kind.code() >> 16, 0x12);
        }
    }
}
