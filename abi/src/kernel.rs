//! The kernel-mode interface: a versioned function table other drivers obtain from qosmark to
//! register flows by 5-tuple, without a user-mode hop.
//!
//! Unlike the IOCTL records of [`crate::codec`], this is a C binary interface between two
//! drivers in the same address space: `#[repr(C)]` structures and `extern "system"` (`NTAPI`)
//! function pointers, mirrored field by field in `include/qosmark_kernel.h`. A test compiles a
//! C file generated from the sizes and offsets below against that header with the mingw-w64
//! DDK headers, so the two cannot drift apart (`kernel-client/tests/c_header.rs`).
//!
//! # Obtaining the table
//!
//! In the spirit of `IRP_MN_QUERY_INTERFACE`: the client opens `\Device\QosMark`
//! ([`crate::ioctl::NT_DEVICE_NAME`]) with `IoGetDeviceObjectPointer` and sends
//! [`IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE`] as an `IRP_MJ_INTERNAL_DEVICE_CONTROL` request
//! (`IoBuildDeviceIoControlRequest` with `InternalDeviceIoControl = TRUE`, `IRQL <= APC_LEVEL`;
//! `IoGetDeviceObjectPointer` needs `PASSIVE_LEVEL`):
//!
//! ```text
//! input  QOSMARK_QUERY_INTERFACE_INPUT (24 bytes)     output QOSMARK_KERNEL_INTERFACE (96 bytes)
//!  0 u16 Size     = sizeof(QOSMARK_KERNEL_INTERFACE)   0 u16 Size     (bytes qosmark filled)
//!  2 u16 Version  = QOSMARK_KERNEL_INTERFACE_VERSION   2 u16 Version
//!  4 u32 Reserved = 0                                  8 PVOID Context
//!  8 GUID InterfaceType = QOSMARK_KERNEL_INTERFACE_GUID 16 InterfaceReference
//!                                                     24 InterfaceDereference
//!                                                     32 u64 Generation
//!                                                     40 OpenHandle   48 CloseHandle
//!                                                     56 AddFlow      64 ChangeFlow
//!                                                     72 QueryFlow    80 RemoveFlow
//!                                                     88 u32 MaxIrql  92 u32 Reserved
//! ```
//!
//! The first five fields are exactly the WDK's `INTERFACE` header (checked against
//! `ntddk.h` by the C test). On success qosmark has already taken one reference for the
//! caller (as with `IRP_MN_QUERY_INTERFACE`): the caller calls `InterfaceDereference(Context)`
//! exactly once when it stops using the table. `IoStatus.Information` is the number of bytes
//! written ([`KERNEL_INTERFACE_SIZE`]). Refusals, with nothing written and no reference taken:
//!
//! | condition | status |
//! |---|---|
//! | input shorter than 24 bytes, `Reserved` ≠ 0, `Size` < [`KERNEL_INTERFACE_SIZE`] | `STATUS_INVALID_PARAMETER` |
//! | output buffer shorter than [`KERNEL_INTERFACE_SIZE`] | `STATUS_BUFFER_TOO_SMALL` |
//! | unknown `InterfaceType` or `Version` ≠ [`KERNEL_INTERFACE_VERSION`] | `STATUS_NOT_SUPPORTED` |
//! | qosmark is unloading | [`STATUS_QOSMARK_UNLOADING`] |
//!
//! # Entries, IRQL and statuses
//!
//! Every entry takes the table's `Context` first and returns an `NTSTATUS`. Every entry may be
//! called at `IRQL <= DISPATCH_LEVEL` ([`KERNEL_INTERFACE_MAX_IRQL`]): they take qosmark's
//! flow-table spin lock, allocate (if at all) from non-paged pool and never wait; the
//! structures they read or write may live on the caller's stack and are copied before the
//! entry returns (non-paged memory is required at `DISPATCH_LEVEL`, as for any access there).
//!
//! | entry | does | statuses besides `STATUS_SUCCESS` |
//! |---|---|---|
//! | `OpenHandle(Context, Flags, *Handle)` | a new kernel handle (`Privilege::Kernel`) | `INVALID_PARAMETER` (flags ≠ 0, null out pointer), `INSUFFICIENT_RESOURCES` (handle limit), `NO_MEMORY` |
//! | `CloseHandle(Context, Handle)` | closes it, removing every flow it added | `INVALID_HANDLE` |
//! | `AddFlow(Context, Handle, *Spec, *FlowId)` | registers a 5-tuple or local-port flow | `INVALID_HANDLE`, `INVALID_PARAMETER`, `OBJECT_NAME_COLLISION` (5-tuple taken), `INSUFFICIENT_RESOURCES`, `NO_MEMORY` |
//! | `ChangeFlow(Context, Handle, FlowId, *Mark)` | replaces the flow's mark | `INVALID_HANDLE`, `NOT_FOUND`, `INVALID_PARAMETER` |
//! | `QueryFlow(Context, Handle, FlowId, *Info)` | the flow's mark and counters | `INVALID_HANDLE`, `NOT_FOUND`, `INVALID_PARAMETER` (null) |
//! | `RemoveFlow(Context, Handle, FlowId)` | removes the flow | `INVALID_HANDLE`, `NOT_FOUND` |
//!
//! The statuses are the ones the IOCTL path completes with for the same engine error
//! (`EngineError::win32` → [`crate::status::ntstatus_for`]), so a kernel client and a QOS2
//! application see the same decision. After qosmark has begun to unload, every entry except
//! `CloseHandle` answers [`STATUS_QOSMARK_UNLOADING`]; `CloseHandle` answers success (the
//! unload closes every handle anyway). qosmark's unload waits until every reference taken by
//! the query and by `InterfaceReference` has been released, so the function pointers stay valid
//! for as long as the client holds its reference.
//!
//! # Handles and generations
//!
//! A [`KernelHandle`] is an opaque 64-bit value, never 0. `Generation` is different for every
//! load of qosmark; handles embed it, so a handle from an earlier load is refused with
//! `STATUS_INVALID_HANDLE` instead of naming someone else's handle. A client that got
//! [`STATUS_QOSMARK_UNLOADING`] releases its reference, and later queries the interface again;
//! a different `Generation` tells it that its earlier handles and flows are gone.
//!
//! # Flow specification
//!
//! ```text
//! QOSMARK_FLOW_SPEC (56 bytes)                    QOSMARK_FLOW_MARK (12 bytes)
//!  0 u16 Family  AF_INET 2 / AF_INET6 23           0 u32 Kind   0 traffic type, 1 DSCP
//!  2 u8  Protocol IPPROTO_TCP 6 / IPPROTO_UDP 17    4 u32 Value  QOS_TRAFFIC_TYPE 0..=5 / DSCP 0..=63
//!  3 u8  Flags   QOSMARK_FLOW_ANY_REMOTE = 1        8 u32 Pcp    0..=7, or QOSMARK_PCP_NONE
//!  4 u16 LocalPort   network byte order
//!  6 u16 RemotePort  network byte order           QOSMARK_FLOW_INFO (40 bytes)
//!  8 u8  LocalAddress[16]  (IPv4: 4 octets, 12 0)  0 u32 Dscp  (QOSMARK_DSCP_NONE = not added)
//! 24 u8  RemoteAddress[16]                          4 u32 Pcp   (QOSMARK_PCP_NONE = not requested)
//! 40 QOSMARK_FLOW_MARK Mark                         8 u64 Packets   16 u64 Bytes
//! 52 u32 Reserved = 0                              24 u64 Marked    32 u64 AlreadyMarked
//! ```
//!
//! Ports and addresses are as in `SOCKADDR_IN` / `SOCKADDR_IN6` (`sin_port`, `sin_addr`,
//! `sin6_addr`), so a client copies them from the addresses it bound and connected, or from
//! `WskGetLocalAddress` / `WskGetRemoteAddress`. IPv6 scope ids and flow labels are not part
//! of a flow. With [`FLOW_ANY_REMOTE`] the remote fields must be zero and the flow matches every
//! packet sent from the local address and port (a listening or unconnected datagram socket);
//! an unspecified local address (`0.0.0.0` / `::`) matches any local address. See the engine's
//! `control` module for the lookup order between these flows, socket flows and rules.

#![allow(
    clippy::doc_markdown,
    reason = "C names (InterfaceReference, sin6_addr, NTAPI) in prose are not code items"
)]

use core::ffi::c_void;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::ioctl::{ctl_code, DEVICE_TYPE, FILE_ANY_ACCESS, METHOD_BUFFERED};
use crate::status::NtStatus;
use crate::types::{Family, Mark, Protocol, TrafficType};
use crate::CounterSnapshot;

/// A Windows `GUID`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Guid {
    /// First 32 bits.
    pub data1: u32,
    /// Next 16 bits.
    pub data2: u16,
    /// Next 16 bits.
    pub data3: u16,
    /// Last 64 bits, in string order.
    pub data4: [u8; 8],
}

/// `QOSMARK_KERNEL_INTERFACE_GUID` = `{5a658248-013e-4f12-a300-64b7cdce919d}`.
pub const KERNEL_INTERFACE_GUID: Guid = Guid {
    data1: 0x5a65_8248,
    data2: 0x013e,
    data3: 0x4f12,
    data4: [0xa3, 0x00, 0x64, 0xb7, 0xcd, 0xce, 0x91, 0x9d],
};

/// `QOSMARK_KERNEL_INTERFACE_VERSION`: bumped on any incompatible change of the table or of a
/// structure it uses. Compatible additions append entries and grow [`KERNEL_INTERFACE_SIZE`].
pub const KERNEL_INTERFACE_VERSION: u16 = 1;

/// `QOSMARK_KERNEL_INTERFACE_SIZE`: bytes of [`KernelInterface`] in this version.
pub const KERNEL_INTERFACE_SIZE: u16 = core::mem::size_of::<KernelInterface>() as u16;

/// Function number of the query (vendor range, apart from the user IOCTLs' 0x800..).
pub const QUERY_KERNEL_INTERFACE_FUNCTION: u16 = 0x900;

/// `IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE` = `CTL_CODE(FILE_DEVICE_NETWORK, 0x900,
/// METHOD_BUFFERED, FILE_ANY_ACCESS)` = `0x0012_2400`, sent only as
/// `IRP_MJ_INTERNAL_DEVICE_CONTROL`. Internal device controls come only from kernel mode and no
/// handle's access is checked for them, so the access bits carry no meaning; they are
/// `FILE_ANY_ACCESS`. The driver matches all 32 bits and the major function.
pub const IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE: u32 = ctl_code(
    DEVICE_TYPE,
    QUERY_KERNEL_INTERFACE_FUNCTION,
    METHOD_BUFFERED,
    FILE_ANY_ACCESS,
);

/// `QOSMARK_KERNEL_INTERFACE_MAX_IRQL`: every entry accepts `IRQL <= DISPATCH_LEVEL` (2).
pub const KERNEL_INTERFACE_MAX_IRQL: u32 = 2;

/// `STATUS_DEVICE_REMOVED` (`0xC00002B6`): what every entry but `CloseHandle` (and the query)
/// answers once qosmark has begun to unload.
pub const STATUS_QOSMARK_UNLOADING: NtStatus =
    NtStatus(i32::from_ne_bytes(0xC000_02B6_u32.to_ne_bytes()));

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6` (Windows value).
pub const AF_INET6: u16 = 23;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;
/// `QOSMARK_FLOW_ANY_REMOTE`: the flow has no remote endpoint (local-port flow).
pub const FLOW_ANY_REMOTE: u8 = 0x01;
/// `QOSMARK_MARK_TRAFFIC_TYPE`: [`FlowMark::value`] is a `QOS_TRAFFIC_TYPE`.
pub const MARK_TRAFFIC_TYPE: u32 = 0;
/// `QOSMARK_MARK_DSCP`: [`FlowMark::value`] is a DSCP.
pub const MARK_DSCP: u32 = 1;
/// `QOSMARK_PCP_NONE`: no 802.1p requested.
pub const PCP_NONE: u32 = u32::MAX;
/// `QOSMARK_DSCP_NONE`: no DSCP added (reported by `QueryFlow`).
pub const DSCP_NONE: u32 = u32::MAX;

/// `QOSMARK_KHANDLE`: an opaque kernel handle, never 0.
pub type KernelHandle = u64;

/// `PINTERFACE_REFERENCE` / `PINTERFACE_DEREFERENCE` (`wdm.h`): `VOID (NTAPI *)(PVOID)`.
pub type InterfaceReferenceFn = unsafe extern "system" fn(context: *mut c_void);
/// `QOSMARK_OPEN_HANDLE`.
pub type OpenHandleFn =
    unsafe extern "system" fn(context: *mut c_void, flags: u32, handle: *mut KernelHandle) -> i32;
/// `QOSMARK_CLOSE_HANDLE`.
pub type CloseHandleFn =
    unsafe extern "system" fn(context: *mut c_void, handle: KernelHandle) -> i32;
/// `QOSMARK_ADD_FLOW`.
pub type AddFlowFn = unsafe extern "system" fn(
    context: *mut c_void,
    handle: KernelHandle,
    spec: *const FlowSpec,
    flow_id: *mut u32,
) -> i32;
/// `QOSMARK_CHANGE_FLOW`.
pub type ChangeFlowFn = unsafe extern "system" fn(
    context: *mut c_void,
    handle: KernelHandle,
    flow_id: u32,
    mark: *const FlowMark,
) -> i32;
/// `QOSMARK_QUERY_FLOW`.
pub type QueryFlowFn = unsafe extern "system" fn(
    context: *mut c_void,
    handle: KernelHandle,
    flow_id: u32,
    info: *mut FlowInfo,
) -> i32;
/// `QOSMARK_REMOVE_FLOW`.
pub type RemoveFlowFn =
    unsafe extern "system" fn(context: *mut c_void, handle: KernelHandle, flow_id: u32) -> i32;

/// `QOSMARK_QUERY_INTERFACE_INPUT`: the query's input buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryInterfaceInput {
    /// Bytes of the caller's `QOSMARK_KERNEL_INTERFACE` (≥ [`KERNEL_INTERFACE_SIZE`]).
    pub size: u16,
    /// [`KERNEL_INTERFACE_VERSION`].
    pub version: u16,
    /// Must be 0.
    pub reserved: u32,
    /// [`KERNEL_INTERFACE_GUID`].
    pub interface_type: Guid,
}

/// Why a query is refused (module docs for the status of each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// Malformed input (`STATUS_INVALID_PARAMETER`).
    InvalidParameter,
    /// Output buffer too small (`STATUS_BUFFER_TOO_SMALL`).
    BufferTooSmall,
    /// Unknown interface or version (`STATUS_NOT_SUPPORTED`).
    NotSupported,
}

impl QueryError {
    /// The status the driver completes the query with.
    #[must_use]
    pub const fn status(self) -> NtStatus {
        match self {
            QueryError::InvalidParameter => NtStatus::INVALID_PARAMETER,
            QueryError::BufferTooSmall => NtStatus::BUFFER_TOO_SMALL,
            QueryError::NotSupported => NtStatus::NOT_SUPPORTED,
        }
    }
}

/// Size of [`QueryInterfaceInput`] in bytes.
pub const QUERY_INTERFACE_INPUT_SIZE: usize = core::mem::size_of::<QueryInterfaceInput>();

impl QueryInterfaceInput {
    /// The input a client of this version sends.
    #[must_use]
    pub const fn current() -> Self {
        QueryInterfaceInput {
            size: KERNEL_INTERFACE_SIZE,
            version: KERNEL_INTERFACE_VERSION,
            reserved: 0,
            interface_type: KERNEL_INTERFACE_GUID,
        }
    }

    /// Decodes the query's input buffer (the system buffer of a `METHOD_BUFFERED` request)
    /// and checks it against the output length. Byte-wise, so the buffer needs no alignment.
    ///
    /// # Errors
    /// [`QueryError`] in the order of the module docs' table.
    pub fn check(input: &[u8], output_len: usize) -> Result<Self, QueryError> {
        let bytes: &[u8; QUERY_INTERFACE_INPUT_SIZE] = input
            .get(..QUERY_INTERFACE_INPUT_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or(QueryError::InvalidParameter)?;
        let [s0, s1, v0, v1, r0, r1, r2, r3, g0, g1, g2, g3, g4, g5, g6, g7, d0, d1, d2, d3, d4, d5, d6, d7] =
            *bytes;
        let q = QueryInterfaceInput {
            size: u16::from_le_bytes([s0, s1]),
            version: u16::from_le_bytes([v0, v1]),
            reserved: u32::from_le_bytes([r0, r1, r2, r3]),
            interface_type: Guid {
                data1: u32::from_le_bytes([g0, g1, g2, g3]),
                data2: u16::from_le_bytes([g4, g5]),
                data3: u16::from_le_bytes([g6, g7]),
                data4: [d0, d1, d2, d3, d4, d5, d6, d7],
            },
        };
        if q.reserved != 0 || q.size < KERNEL_INTERFACE_SIZE {
            return Err(QueryError::InvalidParameter);
        }
        if output_len < usize::from(KERNEL_INTERFACE_SIZE) {
            return Err(QueryError::BufferTooSmall);
        }
        if q.interface_type != KERNEL_INTERFACE_GUID || q.version != KERNEL_INTERFACE_VERSION {
            return Err(QueryError::NotSupported);
        }
        Ok(q)
    }

    /// The 24 bytes a client sends (little-endian, as the C structure lies in memory on every
    /// Windows architecture).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; QUERY_INTERFACE_INPUT_SIZE] {
        let mut out = [0u8; QUERY_INTERFACE_INPUT_SIZE];
        let g = &self.interface_type;
        let parts: [&[u8]; 7] = [
            &self.size.to_le_bytes(),
            &self.version.to_le_bytes(),
            &self.reserved.to_le_bytes(),
            &g.data1.to_le_bytes(),
            &g.data2.to_le_bytes(),
            &g.data3.to_le_bytes(),
            &g.data4,
        ];
        let mut dst = out.iter_mut();
        for b in parts.into_iter().flatten() {
            if let Some(d) = dst.next() {
                *d = *b;
            }
        }
        out
    }
}

/// `QOSMARK_KERNEL_INTERFACE`: the function table. Starts with the WDK `INTERFACE` header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelInterface {
    /// Bytes filled in by qosmark ([`KERNEL_INTERFACE_SIZE`]).
    pub size: u16,
    /// [`KERNEL_INTERFACE_VERSION`].
    pub version: u16,
    /// Passed back as the first argument of every entry.
    pub context: *mut c_void,
    /// Takes one more reference (≤ `DISPATCH_LEVEL`; cannot fail).
    pub interface_reference: Option<InterfaceReferenceFn>,
    /// Releases one reference (≤ `DISPATCH_LEVEL`).
    pub interface_dereference: Option<InterfaceReferenceFn>,
    /// Different for every load of qosmark.
    pub generation: u64,
    /// `OpenHandle`.
    pub open_handle: Option<OpenHandleFn>,
    /// `CloseHandle`.
    pub close_handle: Option<CloseHandleFn>,
    /// `AddFlow`.
    pub add_flow: Option<AddFlowFn>,
    /// `ChangeFlow`.
    pub change_flow: Option<ChangeFlowFn>,
    /// `QueryFlow`.
    pub query_flow: Option<QueryFlowFn>,
    /// `RemoveFlow`.
    pub remove_flow: Option<RemoveFlowFn>,
    /// Highest IRQL at which the entries may be called ([`KERNEL_INTERFACE_MAX_IRQL`]).
    pub max_irql: u32,
    /// 0.
    pub reserved: u32,
}

/// `QOSMARK_FLOW_MARK`: what a flow's packets get.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowMark {
    /// [`MARK_TRAFFIC_TYPE`] or [`MARK_DSCP`].
    pub kind: u32,
    /// `QOS_TRAFFIC_TYPE` (0..=5) or DSCP (0..=63).
    pub value: u32,
    /// 802.1p 0..=7 or [`PCP_NONE`].
    pub pcp: u32,
}

/// The class part of a decoded [`FlowMark`]. The DSCP stays the caller's raw value: the engine
/// checks it (> 63 → 87), as it does for `QOSSetOutgoingDSCPValue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MarkClass {
    /// Marks from the traffic-type table (its DSCP; its 802.1p only if asked for).
    TrafficType(TrafficType),
    /// This DSCP (raw, unchecked).
    Dscp(u32),
}

/// A decoded [`FlowMark`]: class and the raw 802.1p request (checked by the engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelMark {
    /// Traffic type or DSCP.
    pub class: MarkClass,
    /// Explicit 802.1p priority (raw; `None` = [`PCP_NONE`]).
    pub pcp: Option<u32>,
}

/// Why a kernel structure was refused. Every case is `ERROR_INVALID_PARAMETER` (87) /
/// `STATUS_INVALID_PARAMETER`, as a malformed IOCTL record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSpecError {
    /// Family other than `AF_INET` / `AF_INET6`.
    BadFamily,
    /// Protocol other than TCP / UDP.
    BadProtocol,
    /// Unknown flag bits, or a non-zero reserved field.
    ReservedNotZero,
    /// Address bytes beyond the 4 of an IPv4 address, or remote fields with
    /// [`FLOW_ANY_REMOTE`], are not zero.
    BadAddress,
    /// Mark kind other than 0/1, or traffic type above 5.
    BadMark,
}

impl FlowMark {
    /// Decodes the mark.
    ///
    /// # Errors
    /// [`KernelSpecError::BadMark`].
    pub fn decode(&self) -> Result<KernelMark, KernelSpecError> {
        let class = match self.kind {
            MARK_TRAFFIC_TYPE => MarkClass::TrafficType(
                TrafficType::try_from_u32(self.value).map_err(|_| KernelSpecError::BadMark)?,
            ),
            MARK_DSCP => MarkClass::Dscp(self.value),
            _ => return Err(KernelSpecError::BadMark),
        };
        let pcp = (self.pcp != PCP_NONE).then_some(self.pcp);
        Ok(KernelMark { class, pcp })
    }

    /// The C form of a typed mark.
    #[must_use]
    pub fn encode(mark: &KernelMark) -> Self {
        let (kind, value) = match mark.class {
            MarkClass::TrafficType(tt) => (MARK_TRAFFIC_TYPE, tt as u32),
            MarkClass::Dscp(d) => (MARK_DSCP, d),
        };
        FlowMark {
            kind,
            value,
            pcp: mark.pcp.unwrap_or(PCP_NONE),
        }
    }
}

/// `QOSMARK_FLOW_SPEC`: a flow by 5-tuple, or by local endpoint with [`FLOW_ANY_REMOTE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowSpec {
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u8,
    /// 0 or [`FLOW_ANY_REMOTE`].
    pub flags: u8,
    /// Local port, network byte order (as `sin_port`).
    pub local_port: u16,
    /// Remote port, network byte order; 0 with [`FLOW_ANY_REMOTE`].
    pub remote_port: u16,
    /// Local address octets (IPv4: the first 4, the rest 0).
    pub local_address: [u8; 16],
    /// Remote address octets; all 0 with [`FLOW_ANY_REMOTE`].
    pub remote_address: [u8; 16],
    /// The mark.
    pub mark: FlowMark,
    /// 0.
    pub reserved: u32,
}

/// A decoded [`FlowSpec`]. Addresses are as given (not yet normalized); the engine checks the
/// rest (ports, unspecified addresses, family agreement) exactly as for sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelFlow {
    /// Address family of the client's socket.
    pub family: Family,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote endpoint; `None` = any remote (local-port flow).
    pub remote: Option<SocketAddr>,
    /// The mark.
    pub mark: KernelMark,
}

fn address(family: Family, octets: [u8; 16], port_be: u16) -> Result<SocketAddr, KernelSpecError> {
    let ip = match family {
        Family::V4 => {
            let [a, b, c, d, rest @ ..] = octets;
            if rest != [0; 12] {
                return Err(KernelSpecError::BadAddress);
            }
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
        Family::V6 => IpAddr::V6(Ipv6Addr::from(octets)),
    };
    Ok(SocketAddr::new(ip, u16::from_be(port_be)))
}

fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        }
        IpAddr::V6(a) => a.octets(),
    }
}

impl FlowSpec {
    /// Decodes the specification. Only the structure is checked here; the engine applies the
    /// same endpoint rules as to sockets.
    ///
    /// # Errors
    /// [`KernelSpecError`] for the first malformed field.
    pub fn decode(&self) -> Result<KernelFlow, KernelSpecError> {
        let family = match self.family {
            AF_INET => Family::V4,
            AF_INET6 => Family::V6,
            _ => return Err(KernelSpecError::BadFamily),
        };
        let protocol = match self.protocol {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            _ => return Err(KernelSpecError::BadProtocol),
        };
        if self.flags & !FLOW_ANY_REMOTE != 0 || self.reserved != 0 {
            return Err(KernelSpecError::ReservedNotZero);
        }
        let local = address(family, self.local_address, self.local_port)?;
        let remote = if self.flags & FLOW_ANY_REMOTE == 0 {
            Some(address(family, self.remote_address, self.remote_port)?)
        } else {
            if self.remote_port != 0 || self.remote_address != [0; 16] {
                return Err(KernelSpecError::BadAddress);
            }
            None
        };
        Ok(KernelFlow {
            family,
            protocol,
            local,
            remote,
            mark: self.mark.decode()?,
        })
    }

    /// The C form of a typed flow. Addresses of the other family than `flow.family` are
    /// written as they are (the engine refuses them, as it would refuse such a socket).
    #[must_use]
    pub fn encode(flow: &KernelFlow) -> Self {
        let (remote_port, remote_address, flags) = match flow.remote {
            Some(r) => (r.port().to_be(), octets(r.ip()), 0),
            None => (0, [0; 16], FLOW_ANY_REMOTE),
        };
        FlowSpec {
            family: match flow.family {
                Family::V4 => AF_INET,
                Family::V6 => AF_INET6,
            },
            protocol: flow.protocol.number(),
            flags,
            local_port: flow.local.port().to_be(),
            remote_port,
            local_address: octets(flow.local.ip()),
            remote_address,
            mark: FlowMark::encode(&flow.mark),
            reserved: 0,
        }
    }
}

/// `QOSMARK_FLOW_INFO`: `QueryFlow`'s answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowInfo {
    /// DSCP packets get, or [`DSCP_NONE`].
    pub dscp: u32,
    /// 802.1p requested, or [`PCP_NONE`].
    pub pcp: u32,
    /// Packets that matched.
    pub packets: u64,
    /// Bytes (IP length) of those packets.
    pub bytes: u64,
    /// Packets rewritten.
    pub marked: u64,
    /// Packets that already carried the mark.
    pub already_marked: u64,
}

impl FlowInfo {
    /// The answer for a flow with this resolved mark and these counters.
    #[must_use]
    pub fn new(mark: Mark, counters: CounterSnapshot) -> Self {
        FlowInfo {
            dscp: mark.dscp.map_or(DSCP_NONE, |d| u32::from(d.value())),
            pcp: mark.pcp.map_or(PCP_NONE, |p| u32::from(p.value())),
            packets: counters.packets,
            bytes: counters.bytes,
            marked: counters.marked,
            already_marked: counters.already_marked,
        }
    }
}

/// One structure's layout: C type name, size, and (C field name, offset) pairs.
pub type Layout = (&'static str, usize, &'static [(&'static str, usize)]);

/// Size and field offsets of every structure, for the C header check and the layout tests.
#[must_use]
pub fn layouts() -> [Layout; 5] {
    use core::mem::{offset_of, size_of};
    const INPUT: [(&str, usize); 4] = [
        ("Size", offset_of!(QueryInterfaceInput, size)),
        ("Version", offset_of!(QueryInterfaceInput, version)),
        ("Reserved", offset_of!(QueryInterfaceInput, reserved)),
        (
            "InterfaceType",
            offset_of!(QueryInterfaceInput, interface_type),
        ),
    ];
    const TABLE: [(&str, usize); 14] = [
        ("Size", offset_of!(KernelInterface, size)),
        ("Version", offset_of!(KernelInterface, version)),
        ("Context", offset_of!(KernelInterface, context)),
        (
            "InterfaceReference",
            offset_of!(KernelInterface, interface_reference),
        ),
        (
            "InterfaceDereference",
            offset_of!(KernelInterface, interface_dereference),
        ),
        ("Generation", offset_of!(KernelInterface, generation)),
        ("OpenHandle", offset_of!(KernelInterface, open_handle)),
        ("CloseHandle", offset_of!(KernelInterface, close_handle)),
        ("AddFlow", offset_of!(KernelInterface, add_flow)),
        ("ChangeFlow", offset_of!(KernelInterface, change_flow)),
        ("QueryFlow", offset_of!(KernelInterface, query_flow)),
        ("RemoveFlow", offset_of!(KernelInterface, remove_flow)),
        ("MaxIrql", offset_of!(KernelInterface, max_irql)),
        ("Reserved", offset_of!(KernelInterface, reserved)),
    ];
    const MARK: [(&str, usize); 3] = [
        ("Kind", offset_of!(FlowMark, kind)),
        ("Value", offset_of!(FlowMark, value)),
        ("Pcp", offset_of!(FlowMark, pcp)),
    ];
    const SPEC: [(&str, usize); 10] = [
        ("Family", offset_of!(FlowSpec, family)),
        ("Protocol", offset_of!(FlowSpec, protocol)),
        ("Flags", offset_of!(FlowSpec, flags)),
        ("LocalPort", offset_of!(FlowSpec, local_port)),
        ("RemotePort", offset_of!(FlowSpec, remote_port)),
        ("LocalAddress", offset_of!(FlowSpec, local_address)),
        ("RemoteAddress", offset_of!(FlowSpec, remote_address)),
        ("Mark", offset_of!(FlowSpec, mark)),
        ("Reserved", offset_of!(FlowSpec, reserved)),
        (
            "Mark.Pcp",
            offset_of!(FlowSpec, mark) + offset_of!(FlowMark, pcp),
        ),
    ];
    const INFO: [(&str, usize); 6] = [
        ("Dscp", offset_of!(FlowInfo, dscp)),
        ("Pcp", offset_of!(FlowInfo, pcp)),
        ("Packets", offset_of!(FlowInfo, packets)),
        ("Bytes", offset_of!(FlowInfo, bytes)),
        ("Marked", offset_of!(FlowInfo, marked)),
        ("AlreadyMarked", offset_of!(FlowInfo, already_marked)),
    ];
    [
        (
            "QOSMARK_QUERY_INTERFACE_INPUT",
            size_of::<QueryInterfaceInput>(),
            &INPUT,
        ),
        (
            "QOSMARK_KERNEL_INTERFACE",
            size_of::<KernelInterface>(),
            &TABLE,
        ),
        ("QOSMARK_FLOW_MARK", size_of::<FlowMark>(), &MARK),
        ("QOSMARK_FLOW_SPEC", size_of::<FlowSpec>(), &SPEC),
        ("QOSMARK_FLOW_INFO", size_of::<FlowInfo>(), &INFO),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;
    use crate::{Dscp, Pcp};

    /// The layout documented in the module docs, written out by hand (x86-64 / ARM64 Windows:
    /// 8-byte pointers; the same on 64-bit Linux, where this test runs).
    #[test]
    fn layout_is_pinned() {
        let expected: [Layout; 5] = [
            (
                "QOSMARK_QUERY_INTERFACE_INPUT",
                24,
                &[
                    ("Size", 0),
                    ("Version", 2),
                    ("Reserved", 4),
                    ("InterfaceType", 8),
                ],
            ),
            (
                "QOSMARK_KERNEL_INTERFACE",
                96,
                &[
                    ("Size", 0),
                    ("Version", 2),
                    ("Context", 8),
                    ("InterfaceReference", 16),
                    ("InterfaceDereference", 24),
                    ("Generation", 32),
                    ("OpenHandle", 40),
                    ("CloseHandle", 48),
                    ("AddFlow", 56),
                    ("ChangeFlow", 64),
                    ("QueryFlow", 72),
                    ("RemoveFlow", 80),
                    ("MaxIrql", 88),
                    ("Reserved", 92),
                ],
            ),
            (
                "QOSMARK_FLOW_MARK",
                12,
                &[("Kind", 0), ("Value", 4), ("Pcp", 8)],
            ),
            (
                "QOSMARK_FLOW_SPEC",
                56,
                &[
                    ("Family", 0),
                    ("Protocol", 2),
                    ("Flags", 3),
                    ("LocalPort", 4),
                    ("RemotePort", 6),
                    ("LocalAddress", 8),
                    ("RemoteAddress", 24),
                    ("Mark", 40),
                    ("Reserved", 52),
                    ("Mark.Pcp", 48),
                ],
            ),
            (
                "QOSMARK_FLOW_INFO",
                40,
                &[
                    ("Dscp", 0),
                    ("Pcp", 4),
                    ("Packets", 8),
                    ("Bytes", 16),
                    ("Marked", 24),
                    ("AlreadyMarked", 32),
                ],
            ),
        ];
        if core::mem::size_of::<usize>() != 8 {
            return;
        }
        let actual = layouts();
        for ((name, size, fields), (aname, asize, afields)) in expected.iter().zip(actual.iter()) {
            assert_eq!(name, aname);
            assert_eq!(size, asize, "{name}");
            assert_eq!(*fields, *afields, "{name}");
        }
        assert_eq!(KERNEL_INTERFACE_SIZE, 96);
        assert_eq!(core::mem::size_of::<Guid>(), 16);
    }

    #[test]
    fn ioctl_code_and_constants() {
        // CTL_CODE(0x12, 0x900, 0, 0) = (0x12 << 16) | (0x900 << 2) = 0x0012_2400.
        assert_eq!(IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE, 0x0012_2400);
        // Not one of the user IOCTLs.
        assert_eq!(
            crate::ioctl::request_kind(IOCTL_QOSMARK_QUERY_KERNEL_INTERFACE),
            None
        );
        assert_eq!(STATUS_QOSMARK_UNLOADING.bits(), 0xC000_02B6);
        assert!(STATUS_QOSMARK_UNLOADING.is_error());
    }

    #[test]
    fn query_input_checks_in_order() {
        let good = QueryInterfaceInput::current().to_bytes();
        // GUID bytes as they lie in memory: Data1..3 little-endian, Data4 as is.
        assert_eq!(&good[8..12], &[0x48, 0x82, 0x65, 0x5a]);
        assert_eq!(
            &good[16..24],
            &[0xa3, 0x00, 0x64, 0xb7, 0xcd, 0xce, 0x91, 0x9d]
        );
        assert_eq!(
            QueryInterfaceInput::check(&good, 96),
            Ok(QueryInterfaceInput::current())
        );
        // A longer input and a larger caller structure are fine.
        let mut longer = good.to_vec();
        longer.push(0xa5);
        assert!(QueryInterfaceInput::check(&longer, 200).is_ok());
        for n in 0..24 {
            assert_eq!(
                QueryInterfaceInput::check(&good[..n], 96),
                Err(QueryError::InvalidParameter),
                "{n}"
            );
        }
        let mut reserved = good;
        reserved[5] = 1;
        assert_eq!(
            QueryInterfaceInput::check(&reserved, 96),
            Err(QueryError::InvalidParameter)
        );
        let mut small = good;
        small[0] = 95;
        assert_eq!(
            QueryInterfaceInput::check(&small, 96),
            Err(QueryError::InvalidParameter)
        );
        assert_eq!(
            QueryInterfaceInput::check(&good, 95),
            Err(QueryError::BufferTooSmall)
        );
        let mut version = good;
        version[2] = 2;
        assert_eq!(
            QueryInterfaceInput::check(&version, 96),
            Err(QueryError::NotSupported)
        );
        let mut guid = good;
        guid[23] ^= 1;
        assert_eq!(
            QueryInterfaceInput::check(&guid, 96),
            Err(QueryError::NotSupported)
        );
        assert_eq!(QueryError::NotSupported.status(), NtStatus::NOT_SUPPORTED);
    }

    fn spec_v4() -> FlowSpec {
        FlowSpec {
            family: AF_INET,
            protocol: IPPROTO_UDP,
            flags: 0,
            local_port: 5004u16.to_be(),
            remote_port: 5060u16.to_be(),
            local_address: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_address: [192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            mark: FlowMark {
                kind: MARK_DSCP,
                value: 46,
                pcp: 5,
            },
            reserved: 0,
        }
    }

    #[test]
    fn spec_decodes_and_round_trips() {
        let flow = spec_v4().decode().unwrap();
        assert_eq!(flow.family, Family::V4);
        assert_eq!(flow.protocol, Protocol::Udp);
        assert_eq!(flow.local, "10.0.0.1:5004".parse().unwrap());
        assert_eq!(flow.remote, Some("192.0.2.7:5060".parse().unwrap()));
        assert_eq!(
            flow.mark,
            KernelMark {
                class: MarkClass::Dscp(46),
                pcp: Some(5)
            }
        );
        assert_eq!(FlowSpec::encode(&flow), spec_v4());
        // Ports are in network order in memory: 5004 = 0x138c → bytes 13 8c.
        let port_bytes = spec_v4().local_port.to_ne_bytes();
        assert_eq!(port_bytes, [0x13, 0x8c]);

        let mut any = spec_v4();
        any.family = AF_INET6;
        any.flags = FLOW_ANY_REMOTE;
        any.remote_port = 0;
        any.remote_address = [0; 16];
        any.local_address = [0; 16];
        any.mark = FlowMark {
            kind: MARK_TRAFFIC_TYPE,
            value: 4,
            pcp: PCP_NONE,
        };
        let flow = any.decode().unwrap();
        assert_eq!(flow.remote, None);
        assert_eq!(flow.local, "[::]:5004".parse().unwrap());
        assert_eq!(flow.mark.class, MarkClass::TrafficType(TrafficType::Voice));
        assert_eq!(flow.mark.pcp, None);
        assert_eq!(FlowSpec::encode(&flow), any);
    }

    #[test]
    fn spec_refusals() {
        type Edit = fn(&mut FlowSpec);
        let cases: [(Edit, KernelSpecError); 9] = [
            (|s| s.family = 10, KernelSpecError::BadFamily),
            (|s| s.protocol = 1, KernelSpecError::BadProtocol),
            (|s| s.flags = 2, KernelSpecError::ReservedNotZero),
            (|s| s.reserved = 1, KernelSpecError::ReservedNotZero),
            (|s| s.local_address[4] = 1, KernelSpecError::BadAddress),
            (|s| s.remote_address[15] = 1, KernelSpecError::BadAddress),
            (|s| s.flags = FLOW_ANY_REMOTE, KernelSpecError::BadAddress),
            (|s| s.mark.kind = 2, KernelSpecError::BadMark),
            (
                |s| {
                    s.mark.kind = MARK_TRAFFIC_TYPE;
                    s.mark.value = 6;
                },
                KernelSpecError::BadMark,
            ),
        ];
        for (i, (edit, err)) in cases.iter().enumerate() {
            let mut s = spec_v4();
            edit(&mut s);
            assert_eq!(s.decode(), Err(*err), "case {i}");
        }
        // Raw DSCP and PCP values pass through for the engine to judge.
        let mut s = spec_v4();
        s.mark.value = 64;
        s.mark.pcp = 8;
        let m = s.decode().unwrap().mark;
        assert_eq!((m.class, m.pcp), (MarkClass::Dscp(64), Some(8)));
    }

    #[test]
    fn info_reports_none_as_all_ones() {
        let i = FlowInfo::new(
            Mark {
                dscp: Some(Dscp::EF),
                pcp: None,
            },
            CounterSnapshot {
                packets: 3,
                bytes: 300,
                marked: 2,
                already_marked: 1,
            },
        );
        assert_eq!(
            (
                i.dscp,
                i.pcp,
                i.packets,
                i.bytes,
                i.marked,
                i.already_marked
            ),
            (46, PCP_NONE, 3, 300, 2, 1)
        );
        let i = FlowInfo::new(
            Mark {
                dscp: None,
                pcp: Some(Pcp::try_new(7).unwrap()),
            },
            CounterSnapshot::default(),
        );
        assert_eq!((i.dscp, i.pcp), (DSCP_NONE, 7));
    }
}
