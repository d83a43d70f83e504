//! The wire format: versioned little-endian records carried by the IOCTLs (Windows) and the unix
//! socket (Linux).
//!
//! A protocol, not a struct cast: every field has a fixed width and a fixed offset, integers are
//! little-endian, nothing is `usize` or a pointer, and bytes become values only through
//! [`decode_request`] / [`decode_response`], which check every byte and never panic.
//!
//! # Record header (16 bytes, every request and every answer)
//!
//! ```text
//!  0               4       6       8               12              16
//! +---------------+-------+-------+---------------+---------------+
//! | magic u32     |version| kind  | flags u32     | length u32    |  payload ...
//! | "QMRK"        | u16   | u16   | see below     | header+payload|
//! +---------------+-------+-------+---------------+---------------+
//! ```
//!
//! * `magic` = [`MAGIC`], the bytes `51 4D 52 4B` ("QMRK").
//! * `version` = [`crate::PROTOCOL_VERSION`]; any other value is refused.
//! * `kind` = [`RecordKind`]: requests 0x0001..=0x000F, answers 0x8001..=0x800A, error 0x80FF.
//! * `flags`: 0, except bit 0 [`FLAG_QOS2_ANSWER`] on SetFlow, QueryFlow, NotifyFlow and WatchFlow requests
//!   (see *QOS2 answers* below; only [`decode_request_with_flags`] accepts it). Every other bit,
//!   the bit on any other request, and any bit on an answer is refused
//!   ([`AbiError::ReservedNotZero`] → 87).
//! * `length` is the whole record, header included, and must equal the buffer length.
//!
//! # Common fields
//!
//! Ports are plain little-endian `u16` like every other integer (not network order); address
//! bytes are the address octets in their usual order. "zero" = must be zero, else
//! [`AbiError::ReservedNotZero`]. Booleans and presence flags are one byte, 0 or 1
//! (else [`AbiError::BadValue`]); the slot of an absent value is all zero.
//!
//! ```text
//! ADDRESS (28 bytes) — a socket address
//!  0     1     2         4            8            12                         28
//! +-----+-----+---------+------------+------------+--------------------------+
//! | fam |zero | port u16| flowinfo   | scope_id   | address [16]             |
//! | 4|6 |     |         | u32 (v6)   | u32 (v6)   | v4: 4 octets + 12 zero   |
//! +-----+-----+---------+------------+------------+--------------------------+
//! For fam 4, flowinfo and scope_id are zero.
//!
//! PREFIX (20 bytes)
//!  0     1     2         4                          20
//! +-----+-----+---------+--------------------------+
//! | fam | len | zero    | address [16]             |  len <= 32 (v4) / 128 (v6),
//! +-----+-----+---------+--------------------------+  host bits zero
//!
//! NAME (68 bytes) — a rule name
//!  0     1           4                                  68
//! +-----+-----------+----------------------------------+
//! | len | zero [3]  | UTF-8 bytes [64], zero after len |  len 1..=64, no control chars
//! +-----+-----------+----------------------------------+
//!
//! RULE SPEC (136 bytes)
//!   0 NAME (68)
//!  68 u8 precedence          69 u8 protocol: 0 any, 6 TCP, 17 UDP
//!  70 u8 action: 0 DSCP, 1 traffic type          71 u8 action value (DSCP 0..=63 / type 0..=5)
//!  72 u8 pcp present         73 u8 pcp (0..=7)
//!  74 u8 local prefix present   75 u8 remote prefix present
//!  76 u8 local ports present    77 u8 remote ports present     78 u16 zero
//!  80 PREFIX local (20)     100 PREFIX remote (20)
//! 120 u16 local first, u16 local last        124 u16 remote first, u16 remote last
//!     (first <= last; both prefixes of one family)
//! 128 u64 throttle bit/s: 0 = none, else 12 000..=100 000 000 000 (`MIN_RATE_BPS`..=
//!     `MAX_RATE_BPS`; `ThrottleRateActionBitsPerSecond`). The spec was 128 bytes before
//!     throttles existed; the driver's registry loader upgrades such stored records.
//!
//! COUNTERS (32 bytes): u64 packets, u64 bytes, u64 marked, u64 already_marked
//!
//! TRAFFIC TABLE (40 bytes)
//!   0 6 x { u8 dscp present, u8 dscp (0..=63), u8 pcp present, u8 pcp (0..=7) }
//!     indexed by QOS_TRAFFIC_TYPE value
//!  24 u64 user DSCP allow-list (bit n = DSCP n)
//!  32 u8 tag adaptive flows (0|1)
//!  33 u8 non-conformant DSCP (0..=63)   34 u8 non-conformant 802.1p (0..=7)   35 zero [5]
//!     (the marks of packets above a `QOSUseNonConformantMarkings` rate; a table written
//!     before these existed has 0 here and decodes as DSCP 0 / 802.1p 0; the codec has no
//!     defaults — the engine's default table says DSCP 0 / 802.1p 1)
//! ```
//!
//! # Requests (payload after the header)
//!
//! ```text
//! 0x0001 QueryStatus, 0x0007 EnumerateFlows, 0x000A ListRules, 0x000B GetTrafficTable:
//!        no payload (record length 16)
//!
//! 0x0002 AddSocketToFlow (108)
//!   0 u64 socket     8 u8 family 4|6     9 u8 protocol 6|17
//!  10 u8 peer present      11 u8 dest present
//!  12 u32 traffic type (0..=5)     16 u32 flags (as given)     20 u32 flow id (0 = new)
//!  24 ADDRESS local     52 ADDRESS peer     80 ADDRESS dest
//!
//! 0x0003 RemoveSocketFromFlow (16)
//!   0 u64 socket (0 if absent)   8 u8 socket present   9 zero [3]   12 u32 flow id
//!
//! 0x0004 SetFlow (24)
//!   0 u32 flow id     4 u32 operation (QOS_SET_FLOW)
//!   op 0 SetTrafficType:      8 u32 traffic type (0..=5)          12 zero [12]
//!   op 1 SetOutgoingRate:     8 u64 bandwidth  16 u32 shaping (0..=2)  20 u32 reason (as given)
//!   op 2 SetOutgoingDSCPValue: 8 u32 DSCP DWORD (as given: the engine refuses > 63 with 87,
//!                              as qWAVE does)  12 zero [12]
//!   op 3 Service (qosmark extension, GQoS): 8 u32 SERVICETYPE (2, 3, 0xA or 0xD)
//!                              12 u8 DSCP present  13 u8 DSCP (0..=63)
//!                              14 u8 802.1p present  15 u8 802.1p (0..=7)  16 zero [8]
//!   op 4 ClearOutgoingRate (qosmark extension, GQoS): 8 zero [16]
//!
//! 0x0005 QueryFlow (8):   0 u32 flow id   4 u32 operation (QOS_QUERY_FLOW, 0..=2)
//!
//! 0x0006 NotifyFlow (24)
//!   0 u32 flow id   4 u32 operation (QOS_NOTIFY_FLOW, 0..=2)   8 u8 threshold present
//!   9 zero [7]     16 u64 threshold (bit/s)
//!
//! 0x0008 AddRule (136):          RULE SPEC
//! 0x0009 RemoveRule (68):        NAME
//! 0x000C SetTrafficTable (40):   TRAFFIC TABLE
//! 0x000D ListFlows (8):          0 u32 after (flow id; 0 = from the first)   4 zero [4]
//! 0x000E ReplaceRules (8 + 136n): 0 u32 n (<= 4096)   4 zero [4]   8 n x RULE SPEC
//! 0x000F WatchFlow (16):  0 u32 flow id   4 u8 known present   5 FLOW STATE known (zero if
//!                         absent)   10 zero [6]
//!
//! FLOW STATE (5 bytes): u8 alive (0|1), u8 DSCP present, u8 DSCP (0..=63), u8 802.1p present,
//!                       u8 802.1p (0..=7); a state that is not alive has no mark (all zero)
//! ```
//!
//! # Answers
//!
//! ```text
//! 0x8001 Done (0)
//! 0x8002 Status (208)
//!   0 u16 protocol version   2 zero [2]   4 u32 handles   8 u32 flows   12 u32 sockets
//!  16 u32 rules   20 u32 shapers   24 u64 packets   32 u64 marked   40 u64 already marked
//!  48 u64 skipped[10], indexed by SkipReason value
//! 128 u64 fail_open[8], indexed by FailOpen value
//! 192 u64 delayed (packets held by a shaper)   200 u64 non-conformant (packets a shaper
//!     gave the non-conformant mark)
//! 0x8003 FlowId (4):          0 u32 flow id (never 0)
//! 0x8004 PacketPriority (16): 0 u32 conformant DSCP  4 u32 non-conformant DSCP
//!                             8 u32 conformant 802.1p  12 u32 non-conformant 802.1p
//! 0x8005 OutgoingRate (8):    0 u64 bit/s
//! 0x8006 FlowIds (8 + 4n):    0 u32 n (<= 65536)  4 zero [4]  8 n x u32 flow id (never 0)
//! 0x8007 Rules (8 + 168n):    0 u32 n (<= 4096)   4 zero [4]  8 n x { RULE SPEC, COUNTERS }
//! 0x8008 TrafficTable (40):   TRAFFIC TABLE
//! 0x800A FlowState (8):      FLOW STATE   5 zero [3]
//! 0x8009 Flows (8 + sum of FLOW):
//!   0 u32 n (<= 512)   4 u32 next_after (0 = last page, else = the last flow's id)
//!   8 n x FLOW, ids non-zero and strictly ascending
//!
//! FLOW (56 + 72m)
//!   0 u32 flow id     4 u32 pid     8 u8 traffic type (0..=5)     9 u8 adaptive (0|1)
//!  10 u8 custom DSCP present   11 u8 custom DSCP (0..=63)
//!  12 u8 mark DSCP present     13 u8 mark DSCP   14 u8 mark PCP present   15 u8 mark PCP (0..=7)
//!  16 u32 sockets total (the flow's entries)     20 u32 m listed (m <= 16, m <= total)
//!  24 COUNTERS      56 m x FLOW SOCKET
//!
//! FLOW SOCKET (72)
//!   0 u64 socket    8 u8 protocol 6|17    9 u8 binding: 0 not bound, 1 any address, 2 address
//!  10 u16 local port (binding 1; else zero)   12 zero [4]
//!  16 ADDRESS local (binding 2; else zero)    44 ADDRESS remote
//!
//! 0x80FF Error (8)
//!   0 u32 Win32 error code (non-zero)
//!   4 u32 required size: the record length that would fit; non-zero only with 122
//! ```
//!
//! Which answer a request may get ([`answers`]): QueryStatus → Status; AddSocketToFlow →
//! FlowId; QueryFlow → PacketPriority or OutgoingRate; EnumerateFlows → FlowIds; ListRules →
//! Rules; GetTrafficTable → TrafficTable; ListFlows → Flows; WatchFlow → FlowState; every other
//! request → Done. Any
//! request may get Error.
//!
//! **ListFlows is paged** so that a Flows record always fits [`MAX_RECORD_LEN`] (one IOCTL
//! output buffer, one stream record): at most [`MAX_FLOWS_PER_PAGE`] (512) flows per page and
//! at most [`MAX_LISTED_SOCKETS`] (16) socket entries per flow (`sockets total` still says how
//! many the flow has). The largest page is 16 + 8 + 512 × (56 + 16 × 72) = 618 520 bytes. A
//! client asks with `after` = 0, then with `after` = `next_after` until `next_after` is 0;
//! flows created or destroyed meanwhile may or may not appear (each page is consistent).
//!
//! # QOS2 answers (`FLAG_QOS2_ANSWER`)
//!
//! On Windows an overlapped `QOSSetFlow` / `QOSQueryFlow` / `QOSNotifyFlow` must complete
//! through the application's own `OVERLAPPED` (its event, or its I/O completion port) with the
//! QOS2 result already in the application's `Buffer`: no shim code runs at completion. So the
//! shim passes the application's `Buffer` (and `*Size`) as the IOCTL output buffer and its
//! `OVERLAPPED` straight to `DeviceIoControl`, and sets [`FLAG_QOS2_ANSWER`] in the request
//! header. The back end then answers a success with the bare QOS2 output structure instead of
//! a record ([`encode_qos2_answer`]):
//!
//! * SetFlow → 0 bytes;
//! * QueryFlow(PacketPriority) → `QOS_PACKET_PRIORITY`, 16 bytes: u32 ConformantDSCPValue,
//!   u32 NonConformantDSCPValue, u32 ConformantL2Value, u32 NonConformantL2Value (LE);
//! * QueryFlow(OutgoingRate) → the `UINT64` rate, 8 bytes LE;
//! * NotifyFlow → 0 bytes (QOS2 writes nothing back for a completed notification; qosmark
//!   answers every NotifyFlow with 50 today anyway);
//! * WatchFlow → 0 bytes: an overlapped GQoS wait (`QmWaitSocketQosChange`) is a notification,
//!   like `FD_QOS`; the application reads the new state with `QmGetSocketQos`.
//!
//! An error completes with the NTSTATUS of its Win32 code ([`crate::status::ntstatus_for`]) and
//! no bytes. A QOS2 structure has a fixed size, so the shim checks `*Size` before issuing
//! the IOCTL (122 with the required size, no IOCTL); a driver that still gets a smaller output
//! buffer completes with `STATUS_BUFFER_TOO_SMALL` (122) and no bytes. The flag is refused on
//! every other request, and [`decode_request`] refuses it everywhere (a back end that has not
//! opted in with [`decode_request_with_flags`] answers 87, never a record the caller cannot
//! read).
//!
//! # Errors and limits
//!
//! Checks run in this order: buffer shorter than a header → [`AbiError::Truncated`]; magic →
//! `BadMagic`; version → `BadVersion`; header length ≠ buffer length → `BadLength`; length above
//! [`MAX_RECORD_LEN`] → `TooLarge`; unknown kind, or a kind not allowed here → `BadKind`; flags
//! not allowed ([`flags_allowed`]; answers: ≠ 0) → `ReservedNotZero`; then the payload field by field: payload too short → `Truncated`,
//! too long → `TrailingBytes`, a value out of range → `BadValue`, a reserved byte or absent slot
//! not zero → `ReservedNotZero`, a list count above its cap → `TooLarge`.
//!
//! Lists are capped: at most [`MAX_FLOW_IDS`] (65 536) flow ids and [`MAX_RULES`] (4 096) rules
//! per answer, so a record is never longer than [`MAX_RECORD_LEN`] (655 384 bytes) and decoding
//! never allocates more than the input's own size. Allocation is fallible
//! ([`AbiError::OutOfMemory`]).
//!
//! Every [`AbiError`] is reported to the caller as `ERROR_INVALID_PARAMETER` (87) — a malformed
//! record is a bad parameter, whatever the detail — except `OutOfMemory`, which is
//! `ERROR_NOT_ENOUGH_MEMORY` (8) because the record was fine.
//!
//! The encoding is canonical: each value has exactly one encoding, so a record that decodes
//! re-encodes to the same bytes. Encoders refuse values that would not decode (an invalid
//! [`RuleSpec`], flow id 0 in an answer, too many list entries).
//!
//! # Short output buffers (size protocol)
//!
//! With `METHOD_BUFFERED`, the I/O manager copies `IoStatus.Information` bytes from the system
//! buffer to the caller's output buffer only when the IRP completes with a success or a warning
//! status; after an error status nothing is copied and `Information` is not reported (Microsoft,
//! "Handling IRPs: What Every Driver Writer Needs to Know", I/O status).
//!
//! * **Fixed-size answers** (QueryFlow results, FlowId, Status, TrafficTable): the shim checks the
//!   QOS2 caller's `*Size` before it sends the request (122 with `*Size` = required, no IOCTL),
//!   and always gives the driver an output buffer large enough for the whole answer record.
//! * **Variable answers** (EnumerateFlows, ListRules) and, uniformly, any answer that does not fit
//!   ([`encode_response_for_buffer`]):
//!   1. answer fits → `STATUS_SUCCESS`, `Information` = record length.
//!   2. does not fit, but the buffer holds [`ERROR_RECORD_LEN`] (24) bytes → the driver writes an
//!      Error record { 122 `ERROR_INSUFFICIENT_BUFFER`, required size = full answer record
//!      length } and completes with **`STATUS_BUFFER_OVERFLOW` (0x8000_0005)**, `Information` =
//!      24. It is a warning, so the I/O manager copies the 24 bytes; `RtlNtStatusToDosError`
//!      maps it to `ERROR_MORE_DATA` (234), so `DeviceIoControl` / `GetOverlappedResult`
//!      return `FALSE` with 234 and the byte count 24. The shim decodes the Error record and
//!      reports **122 (`ERROR_INSUFFICIENT_BUFFER`) with `*Size` = the QOS2 size** derived from
//!      `required_size` (for EnumerateFlows: (`required_size` − 24) bytes of `QOS_FLOWID`).
//!   3. buffer smaller than 24 bytes → `STATUS_BUFFER_TOO_SMALL` (→ 122), nothing copied. The
//!      shim never does this: it always passes at least [`MIN_OUTPUT_LEN`] bytes.
//!
//!   The `DeviceIoControl` reference documents this outcome ("some drivers will return as much
//!   data as fits. In this case, the call fails, `GetLastError` returns `ERROR_MORE_DATA`, and
//!   `lpBytesReturned` indicates the amount of data received"); it is the pattern of Doron
//!   Holan's "How to return the number of bytes required for a subsequent operation". The shim
//!   need not trust the byte count: [`record_len`] reads the record's own length from its header.
//!
//!   `STATUS_BUFFER_TOO_SMALL` cannot carry the size: it is an error status, so no bytes reach
//!   the caller.
//!
//!   **I/O completion ports.** A warning status (and every success) completes the IRP through
//!   the normal path even when `DeviceIoControl` returns `FALSE` synchronously: the event is set
//!   and, on a handle associated with a completion port, a completion packet is queued. QOS2
//!   applications may associate the qosmark handle with their own port, so every request the
//!   shim issues on its own behalf (the size probe of `QOSEnumerateFlows`, synchronous calls)
//!   must use an `OVERLAPPED` whose `hEvent` has its low-order bit set, which tells the I/O
//!   manager not to queue a packet to the port (documented for `GetQueuedCompletionStatus`):
//!   otherwise the application would dequeue a packet for an `OVERLAPPED` it never owned. Linux transports send the same records over the socket: a successful answer, or
//!   an Error record (required size 0 unless the code is 122).
//!
//! Stream transports (the Linux unix socket) frame records with [`record_len`]: read
//! [`HEADER_LEN`] bytes, learn the record length, read the rest, then decode.
//!
//! Every other failure is completed on Windows with [`crate::status::ntstatus_for`] of the Win32
//! code and no data.

#![allow(
    clippy::doc_markdown,
    reason = "record and field names in the prose and diagrams are protocol names, not code"
)]

use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::ioctl::RequestKind;
use crate::status::{NtStatus, Win32Error};
use crate::types::heapless_name::RuleName;
use crate::types::{
    CounterSnapshot, Dscp, FailOpen, Family, FlowPage, FlowRate, FlowRecord, FlowSocket, FlowState,
    Mark, NotifyFlow, OutOfRange, PacketPriority, Pcp, PortRange, Prefix, Protocol, QueryFlow,
    Request, Response, RuleAction, RuleEntry, RuleProtocol, RuleSpec, ServiceMark, ServiceType,
    SetFlow, Shaping, SkipReason, SocketBinding, SocketInfo, StatusInfo, TrafficTable, TrafficType,
    TrafficTypeMark, MAX_RULE_NAME_LEN,
};
use crate::PROTOCOL_VERSION;

/// Record magic: the bytes `51 4D 52 4B` ("QMRK") read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"QMRK");
/// Length of the record header.
pub const HEADER_LEN: u32 = 16;
/// Length of an ADDRESS field.
pub const ADDRESS_LEN: u32 = 28;
/// Length of a PREFIX field.
pub const PREFIX_LEN: u32 = 20;
/// Length of a NAME field.
pub const NAME_LEN: u32 = 68;
/// Length of a RULE SPEC field.
pub const RULE_SPEC_LEN: u32 = 136;
/// Length of a COUNTERS field.
pub const COUNTERS_LEN: u32 = 32;
/// Length of one entry of a Rules answer (RULE SPEC + COUNTERS).
pub const RULE_ENTRY_LEN: u32 = RULE_SPEC_LEN + COUNTERS_LEN;
/// Length of a TRAFFIC TABLE field.
pub const TRAFFIC_TABLE_LEN: u32 = 40;
/// Length of the count + reserved prefix of a list answer.
pub const LIST_HEADER_LEN: u32 = 8;
/// Length of a whole Error record.
pub const ERROR_RECORD_LEN: u32 = HEADER_LEN + 8;
/// Smallest output buffer a client must offer: room for an Error record.
pub const MIN_OUTPUT_LEN: u32 = ERROR_RECORD_LEN;
/// Most flow ids in one FlowIds answer.
pub const MAX_FLOW_IDS: u32 = 65_536;
/// Most rules in one Rules answer.
pub const MAX_RULES: u32 = 4_096;
/// Length of the fixed part of a FLOW entry of a Flows answer.
pub const FLOW_LEN: u32 = 56;
/// Length of a FLOW SOCKET entry.
pub const FLOW_SOCKET_LEN: u32 = 72;
/// Most flows in one Flows answer (one ListFlows page).
pub const MAX_FLOWS_PER_PAGE: u32 = 512;
/// Most socket entries listed per flow in a Flows answer.
pub const MAX_LISTED_SOCKETS: u32 = 16;
/// Header flag bit 0: answer with the bare QOS2 output structure (module docs, *QOS2 answers*).
pub const FLAG_QOS2_ANSWER: u32 = 0x0000_0001;
/// Longest record (a Rules answer with [`MAX_RULES`] entries): 655 384 bytes.
pub const MAX_RECORD_LEN: u32 = HEADER_LEN + LIST_HEADER_LEN + MAX_RULES * RULE_ENTRY_LEN;

/// Why bytes are not a valid record, or a value cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbiError {
    /// Fewer bytes than the header or the payload layout needs.
    Truncated,
    /// The magic is not [`MAGIC`].
    BadMagic,
    /// The version is not [`crate::PROTOCOL_VERSION`].
    BadVersion,
    /// The header length differs from the buffer length.
    BadLength,
    /// Unknown record kind, or a kind not valid here (a response where a request is expected,
    /// an answer that does not answer this request, a request for another IOCTL).
    BadKind,
    /// A reserved field, padding byte or absent-value slot is not zero.
    ReservedNotZero,
    /// A field is out of range: enum value, DSCP > 63, PCP > 7, family, prefix length or host
    /// bits, port range with first > last, mixed prefix families, presence flag other than 0/1,
    /// bad rule name, flow id 0 in an answer, bad error record.
    BadValue,
    /// The payload is longer than its layout.
    TrailingBytes,
    /// A length or list count above its limit.
    TooLarge,
    /// An allocation failed.
    OutOfMemory,
}

impl AbiError {
    /// The Win32 code reported for this error: `ERROR_INVALID_PARAMETER` (87) for every malformed
    /// record, `ERROR_NOT_ENOUGH_MEMORY` (8) for [`AbiError::OutOfMemory`].
    #[must_use]
    pub const fn win32(self) -> Win32Error {
        match self {
            AbiError::OutOfMemory => Win32Error::NOT_ENOUGH_MEMORY,
            AbiError::Truncated
            | AbiError::BadMagic
            | AbiError::BadVersion
            | AbiError::BadLength
            | AbiError::BadKind
            | AbiError::ReservedNotZero
            | AbiError::BadValue
            | AbiError::TrailingBytes
            | AbiError::TooLarge => Win32Error::INVALID_PARAMETER,
        }
    }
}

/// The `kind` field of a record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RecordKind {
    /// Request [`Request::QueryStatus`].
    QueryStatus = 0x0001,
    /// Request [`Request::AddSocketToFlow`].
    AddSocketToFlow = 0x0002,
    /// Request [`Request::RemoveSocketFromFlow`].
    RemoveSocketFromFlow = 0x0003,
    /// Request [`Request::SetFlow`].
    SetFlow = 0x0004,
    /// Request [`Request::QueryFlow`].
    QueryFlow = 0x0005,
    /// Request [`Request::NotifyFlow`].
    NotifyFlow = 0x0006,
    /// Request [`Request::EnumerateFlows`].
    EnumerateFlows = 0x0007,
    /// Request [`Request::AddRule`].
    AddRule = 0x0008,
    /// Request [`Request::RemoveRule`].
    RemoveRule = 0x0009,
    /// Request [`Request::ListRules`].
    ListRules = 0x000A,
    /// Request [`Request::GetTrafficTable`].
    GetTrafficTable = 0x000B,
    /// Request [`Request::SetTrafficTable`].
    SetTrafficTable = 0x000C,
    /// Request [`Request::ListFlows`].
    ListFlows = 0x000D,
    /// Request [`Request::ReplaceRules`].
    ReplaceRules = 0x000E,
    /// Request [`Request::WatchFlow`].
    WatchFlow = 0x000F,
    /// Answer [`Response::Done`].
    Done = 0x8001,
    /// Answer [`Response::Status`].
    Status = 0x8002,
    /// Answer [`Response::FlowId`].
    FlowId = 0x8003,
    /// Answer [`Response::PacketPriority`].
    PacketPriority = 0x8004,
    /// Answer [`Response::OutgoingRate`].
    OutgoingRate = 0x8005,
    /// Answer [`Response::FlowIds`].
    FlowIds = 0x8006,
    /// Answer [`Response::Rules`].
    Rules = 0x8007,
    /// Answer [`Response::TrafficTable`].
    TrafficTable = 0x8008,
    /// Answer [`Response::Flows`].
    Flows = 0x8009,
    /// Answer [`Response::FlowState`].
    FlowState = 0x800A,
    /// Error answer ([`ErrorReply`]).
    Error = 0x80FF,
}

impl RecordKind {
    /// The kind with this wire value.
    #[must_use]
    pub const fn from_u16(value: u16) -> Option<RecordKind> {
        Some(match value {
            0x0001 => RecordKind::QueryStatus,
            0x0002 => RecordKind::AddSocketToFlow,
            0x0003 => RecordKind::RemoveSocketFromFlow,
            0x0004 => RecordKind::SetFlow,
            0x0005 => RecordKind::QueryFlow,
            0x0006 => RecordKind::NotifyFlow,
            0x0007 => RecordKind::EnumerateFlows,
            0x0008 => RecordKind::AddRule,
            0x0009 => RecordKind::RemoveRule,
            0x000A => RecordKind::ListRules,
            0x000B => RecordKind::GetTrafficTable,
            0x000C => RecordKind::SetTrafficTable,
            0x000D => RecordKind::ListFlows,
            0x000E => RecordKind::ReplaceRules,
            0x000F => RecordKind::WatchFlow,
            0x8001 => RecordKind::Done,
            0x8002 => RecordKind::Status,
            0x8003 => RecordKind::FlowId,
            0x8004 => RecordKind::PacketPriority,
            0x8005 => RecordKind::OutgoingRate,
            0x8006 => RecordKind::FlowIds,
            0x8007 => RecordKind::Rules,
            0x8008 => RecordKind::TrafficTable,
            0x8009 => RecordKind::Flows,
            0x800A => RecordKind::FlowState,
            0x80FF => RecordKind::Error,
            _ => return None,
        })
    }

    /// The wire value.
    #[must_use]
    pub const fn value(self) -> u16 {
        self as u16
    }

    /// The record kind of a request kind.
    #[must_use]
    pub const fn of_request(kind: RequestKind) -> RecordKind {
        match kind {
            RequestKind::QueryStatus => RecordKind::QueryStatus,
            RequestKind::AddSocketToFlow => RecordKind::AddSocketToFlow,
            RequestKind::RemoveSocketFromFlow => RecordKind::RemoveSocketFromFlow,
            RequestKind::SetFlow => RecordKind::SetFlow,
            RequestKind::QueryFlow => RecordKind::QueryFlow,
            RequestKind::NotifyFlow => RecordKind::NotifyFlow,
            RequestKind::EnumerateFlows => RecordKind::EnumerateFlows,
            RequestKind::AddRule => RecordKind::AddRule,
            RequestKind::RemoveRule => RecordKind::RemoveRule,
            RequestKind::ListRules => RecordKind::ListRules,
            RequestKind::GetTrafficTable => RecordKind::GetTrafficTable,
            RequestKind::SetTrafficTable => RecordKind::SetTrafficTable,
            RequestKind::ListFlows => RecordKind::ListFlows,
            RequestKind::ReplaceRules => RecordKind::ReplaceRules,
            RequestKind::WatchFlow => RecordKind::WatchFlow,
        }
    }

    /// The record kind of an answer.
    #[must_use]
    pub const fn of_response(response: &Response) -> RecordKind {
        match response {
            Response::Done => RecordKind::Done,
            Response::Status(_) => RecordKind::Status,
            Response::FlowId(_) => RecordKind::FlowId,
            Response::PacketPriority(_) => RecordKind::PacketPriority,
            Response::OutgoingRate(_) => RecordKind::OutgoingRate,
            Response::FlowIds(_) => RecordKind::FlowIds,
            Response::Rules(_) => RecordKind::Rules,
            Response::TrafficTable(_) => RecordKind::TrafficTable,
            Response::Flows(_) => RecordKind::Flows,
            Response::FlowState(_) => RecordKind::FlowState,
        }
    }
}

/// Whether an answer of kind `record` is a valid answer to a request of kind `request`
/// (an Error record answers every request).
#[must_use]
pub const fn answers(request: RequestKind, record: RecordKind) -> bool {
    matches!(
        (request, record),
        (_, RecordKind::Error)
            | (RequestKind::QueryStatus, RecordKind::Status)
            | (RequestKind::AddSocketToFlow, RecordKind::FlowId)
            | (
                RequestKind::QueryFlow,
                RecordKind::PacketPriority | RecordKind::OutgoingRate
            )
            | (RequestKind::EnumerateFlows, RecordKind::FlowIds)
            | (RequestKind::ListRules, RecordKind::Rules)
            | (RequestKind::GetTrafficTable, RecordKind::TrafficTable)
            | (RequestKind::ListFlows, RecordKind::Flows)
            | (RequestKind::WatchFlow, RecordKind::FlowState)
            | (
                RequestKind::RemoveSocketFromFlow
                    | RequestKind::SetFlow
                    | RequestKind::NotifyFlow
                    | RequestKind::AddRule
                    | RequestKind::RemoveRule
                    | RequestKind::SetTrafficTable
                    | RequestKind::ReplaceRules,
                RecordKind::Done
            )
    )
}

/// An error answer: what the Linux transport sends for a failed request, and what the driver
/// writes (with `STATUS_BUFFER_OVERFLOW`) when an answer does not fit the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorReply {
    /// The Win32 error code (never 0).
    pub win32: Win32Error,
    /// With `ERROR_INSUFFICIENT_BUFFER` (122): the length of the answer record that would fit;
    /// 0 otherwise.
    pub required_size: u32,
}

/// A decoded answer: a response or an error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a Reply is decoded once per answer and moved a few times; boxing the 216-byte \
              status answer would add an allocation to every QueryStatus for no gain"
)]
pub enum Reply {
    /// The request succeeded.
    Response(Response),
    /// The request failed.
    Error(ErrorReply),
}

// ------------------------------------------------------------------------------------------
// Sizes

fn payload_len_of_request(request: &Request) -> u32 {
    match request {
        Request::ReplaceRules(rules) => LIST_HEADER_LEN
            .saturating_add(list_count_u32(rules.len()).saturating_mul(RULE_SPEC_LEN)),
        Request::QueryStatus
        | Request::EnumerateFlows
        | Request::ListRules
        | Request::GetTrafficTable => 0,
        Request::AddSocketToFlow { .. } => 24 + 3 * ADDRESS_LEN,
        Request::RemoveSocketFromFlow { .. } | Request::WatchFlow { .. } => 16,
        Request::SetFlow { .. } | Request::NotifyFlow { .. } => 24,
        Request::QueryFlow { .. } | Request::ListFlows { .. } => 8,
        Request::AddRule(_) => RULE_SPEC_LEN,
        Request::RemoveRule(_) => NAME_LEN,
        Request::SetTrafficTable(_) => TRAFFIC_TABLE_LEN,
    }
}

/// Length of the encoded record of `request` (saturating at `u32::MAX` for a rule list too long
/// to encode).
#[must_use]
pub fn request_size(request: &Request) -> u32 {
    HEADER_LEN.saturating_add(payload_len_of_request(request))
}

fn list_count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Length of one FLOW entry with its listed sockets, saturating.
fn flow_len(flow: &FlowRecord) -> u32 {
    FLOW_LEN.saturating_add(list_count_u32(flow.sockets.len()).saturating_mul(FLOW_SOCKET_LEN))
}

/// Bytes of a list answer of `count` entries of `entry` bytes, saturating.
fn list_len(count: usize, entry: u32) -> u32 {
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    HEADER_LEN
        .saturating_add(LIST_HEADER_LEN)
        .saturating_add(count.saturating_mul(entry))
}

/// Length of the encoded record of `response` (header included): the `required_size` of the
/// size protocol. Saturates at `u32::MAX` for lists too long to encode.
#[must_use]
pub fn required_size(response: &Response) -> u32 {
    match response {
        Response::Done => HEADER_LEN,
        Response::Status(_) => HEADER_LEN + STATUS_LEN,
        Response::FlowId(_) => HEADER_LEN + 4,
        Response::PacketPriority(_) => HEADER_LEN + 16,
        Response::OutgoingRate(_) | Response::FlowState(_) => HEADER_LEN + 8,
        Response::FlowIds(ids) => list_len(ids.len(), 4),
        Response::Rules(rules) => list_len(rules.len(), RULE_ENTRY_LEN),
        Response::TrafficTable(_) => HEADER_LEN + TRAFFIC_TABLE_LEN,
        Response::Flows(page) => page
            .flows
            .iter()
            .fold(HEADER_LEN + LIST_HEADER_LEN, |acc, f| {
                acc.saturating_add(flow_len(f))
            }),
    }
}

const STATUS_LEN: u32 = 48 + 8 * SkipReason::COUNT as u32 + 8 * FailOpen::COUNT as u32 + 16;

/// A state that is not alive has no mark (it would not decode).
fn check_flow_state(state: FlowState) -> Result<(), AbiError> {
    if state.alive || state.mark.is_empty() {
        Ok(())
    } else {
        Err(AbiError::BadValue)
    }
}

// ------------------------------------------------------------------------------------------
// Writer

/// Appends fields to a vector whose capacity was reserved up front, so no write allocates.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }
    fn zeros(&mut self, n: usize) {
        self.out.extend(core::iter::repeat_n(0u8, n));
    }
    fn flag(&mut self, present: bool) {
        self.u8(u8::from(present));
    }

    fn address(&mut self, a: Option<&SocketAddr>) {
        match a {
            None => self.zeros(ADDRESS_LEN as usize),
            Some(SocketAddr::V4(a)) => {
                self.u8(4);
                self.u8(0);
                self.u16(a.port());
                self.u32(0);
                self.u32(0);
                self.bytes(&a.ip().octets());
                self.zeros(12);
            }
            Some(SocketAddr::V6(a)) => {
                self.u8(6);
                self.u8(0);
                self.u16(a.port());
                self.u32(a.flowinfo());
                self.u32(a.scope_id());
                self.bytes(&a.ip().octets());
            }
        }
    }

    fn prefix(&mut self, p: Option<&Prefix>) {
        match p {
            None => self.zeros(PREFIX_LEN as usize),
            Some(p) => match p.addr {
                IpAddr::V4(a) => {
                    self.u8(4);
                    self.u8(p.len);
                    self.u16(0);
                    self.bytes(&a.octets());
                    self.zeros(12);
                }
                IpAddr::V6(a) => {
                    self.u8(6);
                    self.u8(p.len);
                    self.u16(0);
                    self.bytes(&a.octets());
                }
            },
        }
    }

    fn ports(&mut self, r: Option<&PortRange>) {
        match r {
            None => self.u32(0),
            Some(r) => {
                self.u16(r.first);
                self.u16(r.last);
            }
        }
    }

    fn name(&mut self, name: &RuleName) {
        let bytes = name.as_str().as_bytes();
        // `RuleName` holds at most MAX_RULE_NAME_LEN (64) bytes.
        self.u8(bytes.len() as u8);
        self.zeros(3);
        self.bytes(bytes);
        self.zeros(MAX_RULE_NAME_LEN.saturating_sub(bytes.len()));
    }

    fn rule_spec(&mut self, spec: &RuleSpec) -> Result<(), AbiError> {
        spec.validate().map_err(|_| AbiError::BadValue)?;
        self.name(&spec.name);
        self.u8(spec.precedence);
        self.u8(match spec.protocol {
            RuleProtocol::Any => 0,
            RuleProtocol::Tcp => 6,
            RuleProtocol::Udp => 17,
        });
        match spec.action {
            RuleAction::Dscp(d) => {
                self.u8(0);
                self.u8(d.value());
            }
            RuleAction::TrafficType(t) => {
                self.u8(1);
                self.u8(t as u8);
            }
        }
        self.flag(spec.pcp.is_some());
        self.u8(spec.pcp.map_or(0, Pcp::value));
        self.flag(spec.local_prefix.is_some());
        self.flag(spec.remote_prefix.is_some());
        self.flag(spec.local_ports.is_some());
        self.flag(spec.remote_ports.is_some());
        self.u16(0);
        self.prefix(spec.local_prefix.as_ref());
        self.prefix(spec.remote_prefix.as_ref());
        self.ports(spec.local_ports.as_ref());
        self.ports(spec.remote_ports.as_ref());
        self.u64(spec.throttle_bps.unwrap_or(0));
        Ok(())
    }

    fn counters(&mut self, c: &CounterSnapshot) {
        self.u64(c.packets);
        self.u64(c.bytes);
        self.u64(c.marked);
        self.u64(c.already_marked);
    }

    /// The operation and value of a SetFlow request (20 bytes after the flow id).
    fn set_flow_op(&mut self, op: &SetFlow) {
        match op {
            SetFlow::TrafficType(t) => {
                self.u32(0);
                self.u32(*t as u32);
                self.zeros(12);
            }
            SetFlow::OutgoingRate(r) => {
                self.u32(1);
                self.u64(r.bandwidth);
                self.u32(r.shaping as u32);
                self.u32(r.reason);
            }
            SetFlow::OutgoingDscp(d) => {
                self.u32(2);
                self.u32(*d);
                self.zeros(12);
            }
            SetFlow::Service(m) => {
                self.u32(3);
                self.u32(m.service as u32);
                self.flag(m.dscp.is_some());
                self.u8(m.dscp.map_or(0, Dscp::value));
                self.flag(m.pcp.is_some());
                self.u8(m.pcp.map_or(0, Pcp::value));
                self.zeros(8);
            }
            SetFlow::ClearOutgoingRate => {
                self.u32(4);
                self.zeros(16);
            }
        }
    }

    fn flow_state(&mut self, s: FlowState) {
        self.flag(s.alive);
        self.flag(s.mark.dscp.is_some());
        self.u8(s.mark.dscp.map_or(0, Dscp::value));
        self.flag(s.mark.pcp.is_some());
        self.u8(s.mark.pcp.map_or(0, Pcp::value));
    }

    fn traffic_table(&mut self, t: &TrafficTable) {
        for m in &t.marks {
            self.flag(m.dscp.is_some());
            self.u8(m.dscp.map_or(0, Dscp::value));
            self.flag(m.pcp.is_some());
            self.u8(m.pcp.map_or(0, Pcp::value));
        }
        self.u64(t.user_dscp_allow);
        self.flag(t.tag_adaptive_flows);
        self.u8(t.non_conformant_dscp.value());
        self.u8(t.non_conformant_pcp.value());
        self.zeros(5);
    }

    fn opt_byte(&mut self, v: Option<u8>) {
        self.flag(v.is_some());
        self.u8(v.unwrap_or(0));
    }

    fn flow(&mut self, f: &FlowRecord) {
        self.u32(f.id);
        self.u32(f.pid);
        self.u8(f.traffic_type as u8);
        self.flag(f.adaptive);
        self.opt_byte(f.custom_dscp.map(Dscp::value));
        self.opt_byte(f.mark.dscp.map(Dscp::value));
        self.opt_byte(f.mark.pcp.map(Pcp::value));
        self.u32(f.sockets_total);
        // Checked by `check_flow_page` (≤ MAX_LISTED_SOCKETS).
        self.u32(f.sockets.len() as u32);
        self.counters(&f.counters);
        for s in &f.sockets {
            self.u64(s.socket);
            self.u8(s.protocol.number());
            match s.binding {
                SocketBinding::NotBound => {
                    self.u8(0);
                    self.u16(0);
                    self.zeros(4);
                    self.address(None);
                }
                SocketBinding::AnyAddress { port } => {
                    self.u8(1);
                    self.u16(port);
                    self.zeros(4);
                    self.address(None);
                }
                SocketBinding::Address(a) => {
                    self.u8(2);
                    self.u16(0);
                    self.zeros(4);
                    self.address(Some(&a));
                }
            }
            self.address(Some(&s.remote));
        }
    }

    fn status(&mut self, s: &StatusInfo) {
        self.u16(s.protocol_version);
        self.u16(0);
        self.u32(s.handles);
        self.u32(s.flows);
        self.u32(s.sockets);
        self.u32(s.rules);
        self.u32(s.shapers);
        self.u64(s.packets);
        self.u64(s.marked);
        self.u64(s.already_marked);
        for v in s.skipped {
            self.u64(v);
        }
        for v in s.fail_open {
            self.u64(v);
        }
        self.u64(s.delayed);
        self.u64(s.non_conformant);
    }
}

/// Reserves `len` bytes, writes a header of `kind` and runs `body`; on any error `out` is left
/// as it was.
fn encode_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    flags: u32,
    len: u32,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), AbiError>,
) -> Result<(), AbiError> {
    if len > MAX_RECORD_LEN {
        return Err(AbiError::TooLarge);
    }
    let start = out.len();
    out.try_reserve_exact(len as usize)
        .map_err(|_| AbiError::OutOfMemory)?;
    let mut w = Writer { out };
    w.u32(MAGIC);
    w.u16(PROTOCOL_VERSION);
    w.u16(kind.value());
    w.u32(flags);
    w.u32(len);
    let result = body(&mut w);
    debug_assert!(result.is_err() || out.len() - start == len as usize);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Appends the record of `request` to `out`.
///
/// # Errors
/// [`AbiError::BadValue`] for an invalid [`RuleSpec`] (see [`RuleSpec::validate`]);
/// [`AbiError::OutOfMemory`]. On error `out` is unchanged.
pub fn encode_request(request: &Request, out: &mut Vec<u8>) -> Result<(), AbiError> {
    encode_request_with_flags(request, 0, out)
}

/// Whether header `flags` are allowed on a request of `kind`: 0 always, [`FLAG_QOS2_ANSWER`]
/// on SetFlow, QueryFlow and NotifyFlow only.
#[must_use]
pub const fn flags_allowed(kind: RequestKind, flags: u32) -> bool {
    flags == 0
        || (flags == FLAG_QOS2_ANSWER
            && matches!(
                kind,
                RequestKind::SetFlow
                    | RequestKind::QueryFlow
                    | RequestKind::NotifyFlow
                    | RequestKind::WatchFlow
            ))
}

/// [`encode_request`] with header `flags` ([`FLAG_QOS2_ANSWER`] or 0).
///
/// # Errors
/// [`AbiError::ReservedNotZero`] when the flags are not allowed on this request
/// ([`flags_allowed`]); [`AbiError::TooLarge`] for more than [`MAX_RULES`] rules; otherwise as
/// [`encode_request`]. On error `out` is unchanged.
pub fn encode_request_with_flags(
    request: &Request,
    flags: u32,
    out: &mut Vec<u8>,
) -> Result<(), AbiError> {
    let request_kind = RequestKind::of(request);
    if !flags_allowed(request_kind, flags) {
        return Err(AbiError::ReservedNotZero);
    }
    if let Request::ReplaceRules(rules) = request {
        if rules.len() > MAX_RULES as usize {
            return Err(AbiError::TooLarge);
        }
    }
    let kind = RecordKind::of_request(request_kind);
    encode_record(out, kind, flags, request_size(request), |w| {
        match request {
            Request::ListFlows { after } => {
                w.u32(*after);
                w.u32(0);
            }
            Request::ReplaceRules(rules) => {
                // Count checked above (≤ MAX_RULES).
                w.u32(rules.len() as u32);
                w.u32(0);
                for r in rules {
                    w.rule_spec(r)?;
                }
            }
            Request::QueryStatus
            | Request::EnumerateFlows
            | Request::ListRules
            | Request::GetTrafficTable => {}
            Request::AddSocketToFlow {
                socket,
                dest,
                traffic_type,
                flags,
                flow_id,
            } => {
                w.u64(socket.socket);
                w.u8(match socket.family {
                    Family::V4 => 4,
                    Family::V6 => 6,
                });
                w.u8(socket.protocol.number());
                w.flag(socket.peer.is_some());
                w.flag(dest.is_some());
                w.u32(*traffic_type as u32);
                w.u32(*flags);
                w.u32(*flow_id);
                w.address(Some(&socket.local));
                w.address(socket.peer.as_ref());
                w.address(dest.as_ref());
            }
            Request::RemoveSocketFromFlow { socket, flow_id } => {
                w.u64(socket.unwrap_or(0));
                w.flag(socket.is_some());
                w.zeros(3);
                w.u32(*flow_id);
            }
            Request::SetFlow { flow_id, op } => {
                w.u32(*flow_id);
                w.set_flow_op(op);
            }
            Request::QueryFlow { flow_id, op } => {
                w.u32(*flow_id);
                w.u32(*op as u32);
            }
            Request::NotifyFlow {
                flow_id,
                op,
                threshold,
            } => {
                w.u32(*flow_id);
                w.u32(*op as u32);
                w.flag(threshold.is_some());
                w.zeros(7);
                w.u64(threshold.unwrap_or(0));
            }
            Request::AddRule(spec) => w.rule_spec(spec)?,
            Request::RemoveRule(name) => w.name(name),
            Request::SetTrafficTable(t) => w.traffic_table(t),
            Request::WatchFlow { flow_id, known } => {
                if let Some(k) = known {
                    check_flow_state(*k)?;
                }
                w.u32(*flow_id);
                w.flag(known.is_some());
                w.flow_state(known.unwrap_or_default());
                w.zeros(6);
            }
        }
        Ok(())
    })
}

/// Appends the record of a successful `response` to `out`.
///
/// # Errors
/// [`AbiError::BadValue`] for flow id 0 or an invalid [`RuleSpec`]; [`AbiError::TooLarge`] for
/// more than [`MAX_FLOW_IDS`] flow ids or [`MAX_RULES`] rules; [`AbiError::OutOfMemory`]. On
/// error `out` is unchanged.
pub fn encode_response(response: &Response, out: &mut Vec<u8>) -> Result<(), AbiError> {
    let kind = RecordKind::of_response(response);
    match response {
        Response::FlowIds(ids) if ids.len() > MAX_FLOW_IDS as usize => {
            return Err(AbiError::TooLarge);
        }
        Response::Rules(rules) if rules.len() > MAX_RULES as usize => {
            return Err(AbiError::TooLarge);
        }
        Response::Flows(page) => check_flow_page(page)?,
        _ => {}
    }
    encode_record(out, kind, 0, required_size(response), |w| {
        match response {
            Response::Done => {}
            Response::Status(s) => w.status(s),
            Response::FlowId(id) => {
                if *id == 0 {
                    return Err(AbiError::BadValue);
                }
                w.u32(*id);
            }
            Response::PacketPriority(p) => {
                w.u32(p.conformant_dscp);
                w.u32(p.non_conformant_dscp);
                w.u32(p.conformant_l2);
                w.u32(p.non_conformant_l2);
            }
            Response::OutgoingRate(r) => w.u64(*r),
            Response::FlowIds(ids) => {
                // Count checked above (≤ MAX_FLOW_IDS).
                w.u32(ids.len() as u32);
                w.u32(0);
                for id in ids {
                    if *id == 0 {
                        return Err(AbiError::BadValue);
                    }
                    w.u32(*id);
                }
            }
            Response::Rules(rules) => {
                // Count checked above (≤ MAX_RULES).
                w.u32(rules.len() as u32);
                w.u32(0);
                for r in rules {
                    w.rule_spec(&r.spec)?;
                    w.counters(&r.counters);
                }
            }
            Response::TrafficTable(t) => w.traffic_table(t),
            Response::FlowState(state) => {
                check_flow_state(*state)?;
                w.flow_state(*state);
                w.zeros(3);
            }
            Response::Flows(page) => {
                // Count checked by `check_flow_page` (≤ MAX_FLOWS_PER_PAGE).
                w.u32(page.flows.len() as u32);
                w.u32(page.next_after);
                for f in &page.flows {
                    w.flow(f);
                }
            }
        }
        Ok(())
    })
}

/// The invariants of a Flows answer (module docs) that the types do not carry.
fn check_flow_page(page: &FlowPage) -> Result<(), AbiError> {
    if page.flows.len() > MAX_FLOWS_PER_PAGE as usize {
        return Err(AbiError::TooLarge);
    }
    let mut last = 0u32;
    for f in &page.flows {
        if f.id <= last {
            return Err(AbiError::BadValue);
        }
        last = f.id;
        if f.sockets.len() > MAX_LISTED_SOCKETS as usize {
            return Err(AbiError::TooLarge);
        }
        if list_count_u32(f.sockets.len()) > f.sockets_total {
            return Err(AbiError::BadValue);
        }
    }
    if page.next_after != 0 && page.next_after != last {
        return Err(AbiError::BadValue);
    }
    Ok(())
}

/// Length of the bare QOS2 answer of a successful `response` ([`FLAG_QOS2_ANSWER`]): 0 for
/// `Done`, 16 for `PacketPriority`, 8 for `OutgoingRate`; `None` for every answer that has no
/// QOS2 form.
#[must_use]
pub const fn qos2_answer_len(response: &Response) -> Option<u32> {
    match response {
        // A WatchFlow answer is a notification (GQoS `FD_QOS`): the state is read afterwards.
        Response::Done | Response::FlowState(_) => Some(0),
        Response::PacketPriority(_) => Some(16),
        Response::OutgoingRate(_) => Some(8),
        Response::Status(_)
        | Response::FlowId(_)
        | Response::FlowIds(_)
        | Response::Rules(_)
        | Response::TrafficTable(_)
        | Response::Flows(_) => None,
    }
}

/// Appends the bare QOS2 output structure of a successful `response` to `out`, for a request
/// that carried [`FLAG_QOS2_ANSWER`] (module docs, *QOS2 answers*): nothing for `Done`
/// (SetFlow, NotifyFlow), `QOS_PACKET_PRIORITY` (16 bytes) for `PacketPriority`, a `UINT64`
/// (8 bytes) for `OutgoingRate`. Little-endian, no header.
///
/// # Errors
/// [`AbiError::BadKind`] for an answer that has no QOS2 form ([`qos2_answer_len`] is `None`);
/// [`AbiError::OutOfMemory`]. On error `out` is unchanged.
pub fn encode_qos2_answer(response: &Response, out: &mut Vec<u8>) -> Result<(), AbiError> {
    let len = qos2_answer_len(response).ok_or(AbiError::BadKind)?;
    out.try_reserve_exact(len as usize)
        .map_err(|_| AbiError::OutOfMemory)?;
    let mut w = Writer { out };
    match response {
        Response::PacketPriority(p) => {
            w.u32(p.conformant_dscp);
            w.u32(p.non_conformant_dscp);
            w.u32(p.conformant_l2);
            w.u32(p.non_conformant_l2);
        }
        Response::OutgoingRate(r) => w.u64(*r),
        _ => {}
    }
    Ok(())
}

/// Appends an Error record to `out`.
///
/// # Errors
/// [`AbiError::BadValue`] when the code is 0, or `required_size` is non-zero with a code other
/// than 122; [`AbiError::OutOfMemory`]. On error `out` is unchanged.
pub fn encode_error(error: ErrorReply, out: &mut Vec<u8>) -> Result<(), AbiError> {
    check_error(error)?;
    encode_record(out, RecordKind::Error, 0, ERROR_RECORD_LEN, |w| {
        w.u32(error.win32.0);
        w.u32(error.required_size);
        Ok(())
    })
}

/// Appends the record of `reply` to `out` ([`encode_response`] or [`encode_error`]).
///
/// # Errors
/// As those functions.
pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) -> Result<(), AbiError> {
    match reply {
        Reply::Response(r) => encode_response(r, out),
        Reply::Error(e) => encode_error(*e, out),
    }
}

/// Encodes a successful `response` for an output buffer of `capacity` bytes, following the
/// size protocol (module docs), and returns the NTSTATUS to complete the IRP with;
/// `IoStatus.Information` = the number of bytes appended to `out`.
///
/// * fits → the answer record, `STATUS_SUCCESS`;
/// * does not fit, `capacity` ≥ [`ERROR_RECORD_LEN`] → Error record { 122, required size },
///   `STATUS_BUFFER_OVERFLOW`;
/// * `capacity` < [`ERROR_RECORD_LEN`] → nothing, `STATUS_BUFFER_TOO_SMALL`.
///
/// # Errors
/// As [`encode_response`]. On error `out` is unchanged.
pub fn encode_response_for_buffer(
    response: &Response,
    capacity: u32,
    out: &mut Vec<u8>,
) -> Result<NtStatus, AbiError> {
    let start = out.len();
    encode_response(response, out)?;
    let need = required_size(response);
    if need <= capacity {
        return Ok(NtStatus::SUCCESS);
    }
    out.truncate(start);
    if capacity < ERROR_RECORD_LEN {
        return Ok(NtStatus::BUFFER_TOO_SMALL);
    }
    encode_error(
        ErrorReply {
            win32: Win32Error::INSUFFICIENT_BUFFER,
            required_size: need,
        },
        out,
    )?;
    Ok(NtStatus::BUFFER_OVERFLOW)
}

// ------------------------------------------------------------------------------------------
// Reader

/// A cursor over untrusted bytes; every read is checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], AbiError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(AbiError::Truncated)?;
        self.buf = rest;
        Ok(*head)
    }
    fn slice(&mut self, n: usize) -> Result<&'a [u8], AbiError> {
        if self.buf.len() < n {
            return Err(AbiError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, AbiError> {
        Ok(u8::from_le_bytes(self.take()?))
    }
    fn u16(&mut self) -> Result<u16, AbiError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, AbiError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, AbiError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn zeros(&mut self, n: usize) -> Result<(), AbiError> {
        if self.slice(n)?.iter().all(|b| *b == 0) {
            Ok(())
        } else {
            Err(AbiError::ReservedNotZero)
        }
    }
    fn flag(&mut self) -> Result<bool, AbiError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(AbiError::BadValue),
        }
    }
    fn finish(&self) -> Result<(), AbiError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(AbiError::TrailingBytes)
        }
    }

    /// An ADDRESS slot: `Some` when `present`, else it must be all zero.
    fn address(&mut self, present: bool) -> Result<Option<SocketAddr>, AbiError> {
        if !present {
            self.zeros(ADDRESS_LEN as usize)?;
            return Ok(None);
        }
        let family = self.u8()?;
        if self.u8()? != 0 {
            return Err(AbiError::ReservedNotZero);
        }
        let port = self.u16()?;
        let flowinfo = self.u32()?;
        let scope_id = self.u32()?;
        let octets: [u8; 16] = self.take()?;
        match family {
            4 => {
                let (v4, rest) = split_v4(&octets);
                if flowinfo != 0 || scope_id != 0 || rest.iter().any(|b| *b != 0) {
                    return Err(AbiError::ReservedNotZero);
                }
                Ok(Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(v4),
                    port,
                ))))
            }
            6 => Ok(Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                flowinfo,
                scope_id,
            )))),
            _ => Err(AbiError::BadValue),
        }
    }

    fn prefix(&mut self, present: bool) -> Result<Option<Prefix>, AbiError> {
        if !present {
            self.zeros(PREFIX_LEN as usize)?;
            return Ok(None);
        }
        let family = self.u8()?;
        let len = self.u8()?;
        if self.u16()? != 0 {
            return Err(AbiError::ReservedNotZero);
        }
        let octets: [u8; 16] = self.take()?;
        let addr = match family {
            4 => {
                let (v4, rest) = split_v4(&octets);
                if rest.iter().any(|b| *b != 0) {
                    return Err(AbiError::ReservedNotZero);
                }
                IpAddr::V4(Ipv4Addr::from(v4))
            }
            6 => IpAddr::V6(Ipv6Addr::from(octets)),
            _ => return Err(AbiError::BadValue),
        };
        // Length and host bits are checked by `RuleSpec::validate` once the spec is complete.
        Ok(Some(Prefix { addr, len }))
    }

    fn ports(&mut self, present: bool) -> Result<Option<PortRange>, AbiError> {
        if !present {
            self.zeros(4)?;
            return Ok(None);
        }
        let first = self.u16()?;
        let last = self.u16()?;
        // first <= last is checked by `RuleSpec::validate`.
        Ok(Some(PortRange { first, last }))
    }

    fn name(&mut self) -> Result<RuleName, AbiError> {
        let len = usize::from(self.u8()?);
        self.zeros(3)?;
        let slot = self.slice(MAX_RULE_NAME_LEN)?;
        if len == 0 || len > MAX_RULE_NAME_LEN {
            return Err(AbiError::BadValue);
        }
        let (name, padding) = slot.split_at(len);
        if padding.iter().any(|b| *b != 0) {
            return Err(AbiError::ReservedNotZero);
        }
        RuleName::from_utf8(name).map_err(|_| AbiError::BadValue)
    }

    fn rule_spec(&mut self) -> Result<RuleSpec, AbiError> {
        let name = self.name()?;
        let precedence = self.u8()?;
        let protocol = match self.u8()? {
            0 => RuleProtocol::Any,
            6 => RuleProtocol::Tcp,
            17 => RuleProtocol::Udp,
            _ => return Err(AbiError::BadValue),
        };
        let action_kind = self.u8()?;
        let action_value = self.u8()?;
        let action = match action_kind {
            0 => RuleAction::Dscp(Dscp::try_new(action_value).map_err(|_| AbiError::BadValue)?),
            1 => RuleAction::TrafficType(traffic_type(u32::from(action_value))?),
            _ => return Err(AbiError::BadValue),
        };
        let pcp_present = self.flag()?;
        let pcp = self.optional_byte(pcp_present, Pcp::try_new)?;
        let local_prefix_present = self.flag()?;
        let remote_prefix_present = self.flag()?;
        let local_ports_present = self.flag()?;
        let remote_ports_present = self.flag()?;
        self.zeros(2)?;
        let local_prefix = self.prefix(local_prefix_present)?;
        let remote_prefix = self.prefix(remote_prefix_present)?;
        let local_ports = self.ports(local_ports_present)?;
        let remote_ports = self.ports(remote_ports_present)?;
        let throttle_bps = match self.u64()? {
            0 => None,
            bps => Some(bps),
        };
        let spec = RuleSpec {
            name,
            precedence,
            protocol,
            local_prefix,
            remote_prefix,
            local_ports,
            remote_ports,
            action,
            pcp,
            throttle_bps,
        };
        spec.validate().map_err(|_| AbiError::BadValue)?;
        Ok(spec)
    }

    /// A bounded byte (DSCP, PCP) after its presence flag: checked by `make` when present, zero
    /// when absent.
    fn optional_byte<T>(
        &mut self,
        present: bool,
        make: fn(u8) -> Result<T, OutOfRange>,
    ) -> Result<Option<T>, AbiError> {
        let v = self.u8()?;
        if present {
            make(v).map(Some).map_err(|_| AbiError::BadValue)
        } else if v == 0 {
            Ok(None)
        } else {
            Err(AbiError::ReservedNotZero)
        }
    }

    fn counters(&mut self) -> Result<CounterSnapshot, AbiError> {
        Ok(CounterSnapshot {
            packets: self.u64()?,
            bytes: self.u64()?,
            marked: self.u64()?,
            already_marked: self.u64()?,
        })
    }

    /// The payload of a WatchFlow request.
    fn watch_flow(&mut self) -> Result<Request, AbiError> {
        let flow_id = self.u32()?;
        let present = self.flag()?;
        let state = self.flow_state()?;
        self.zeros(6)?;
        if !present && state != FlowState::default() {
            return Err(AbiError::ReservedNotZero);
        }
        Ok(Request::WatchFlow {
            flow_id,
            known: present.then_some(state),
        })
    }

    /// The payload of a FlowState answer.
    fn flow_state_answer(&mut self) -> Result<FlowState, AbiError> {
        let state = self.flow_state()?;
        self.zeros(3)?;
        Ok(state)
    }

    /// FLOW STATE (5 bytes); a state that is not alive carries no mark.
    fn flow_state(&mut self) -> Result<FlowState, AbiError> {
        let alive = self.flag()?;
        let dscp_present = self.flag()?;
        let dscp = self.optional_byte(dscp_present, Dscp::try_new)?;
        let pcp_present = self.flag()?;
        let pcp = self.optional_byte(pcp_present, Pcp::try_new)?;
        let mark = Mark { dscp, pcp };
        if !alive && !mark.is_empty() {
            return Err(AbiError::BadValue);
        }
        Ok(FlowState { alive, mark })
    }

    fn traffic_table(&mut self) -> Result<TrafficTable, AbiError> {
        let empty = TrafficTypeMark {
            dscp: None,
            pcp: None,
        };
        let mut marks = [empty; 6];
        for m in &mut marks {
            let dscp_present = self.flag()?;
            let dscp = self.optional_byte(dscp_present, Dscp::try_new)?;
            let pcp_present = self.flag()?;
            let pcp = self.optional_byte(pcp_present, Pcp::try_new)?;
            *m = TrafficTypeMark { dscp, pcp };
        }
        let user_dscp_allow = self.u64()?;
        let tag_adaptive_flows = self.flag()?;
        let non_conformant_dscp = Dscp::try_new(self.u8()?).map_err(|_| AbiError::BadValue)?;
        let non_conformant_pcp = Pcp::try_new(self.u8()?).map_err(|_| AbiError::BadValue)?;
        self.zeros(5)?;
        Ok(TrafficTable {
            marks,
            user_dscp_allow,
            tag_adaptive_flows,
            non_conformant_dscp,
            non_conformant_pcp,
        })
    }

    fn flow(&mut self) -> Result<FlowRecord, AbiError> {
        let id = self.u32()?;
        let pid = self.u32()?;
        let traffic_type = traffic_type(u32::from(self.u8()?))?;
        let adaptive = self.flag()?;
        let custom_present = self.flag()?;
        let custom_dscp = self.optional_byte(custom_present, Dscp::try_new)?;
        let dscp_present = self.flag()?;
        let dscp = self.optional_byte(dscp_present, Dscp::try_new)?;
        let pcp_present = self.flag()?;
        let pcp = self.optional_byte(pcp_present, Pcp::try_new)?;
        let sockets_total = self.u32()?;
        let listed = self.u32()?;
        if listed > MAX_LISTED_SOCKETS {
            return Err(AbiError::TooLarge);
        }
        if listed > sockets_total || id == 0 {
            return Err(AbiError::BadValue);
        }
        let counters = self.counters()?;
        // listed ≤ 16: a tiny bounded allocation, and only once the bytes are there.
        if self.buf.len() < listed as usize * FLOW_SOCKET_LEN as usize {
            return Err(AbiError::Truncated);
        }
        let mut sockets = try_vec(listed as usize)?;
        for _ in 0..listed {
            let socket = self.u64()?;
            let protocol = match self.u8()? {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                _ => return Err(AbiError::BadValue),
            };
            let binding_kind = self.u8()?;
            let port = self.u16()?;
            self.zeros(4)?;
            let binding = match binding_kind {
                0 | 2 if port != 0 => return Err(AbiError::ReservedNotZero),
                0 => {
                    self.address(false)?;
                    SocketBinding::NotBound
                }
                1 => {
                    self.address(false)?;
                    SocketBinding::AnyAddress { port }
                }
                2 => SocketBinding::Address(self.address(true)?.ok_or(AbiError::BadValue)?),
                _ => return Err(AbiError::BadValue),
            };
            let remote = self.address(true)?.ok_or(AbiError::BadValue)?;
            sockets.push(FlowSocket {
                socket,
                protocol,
                binding,
                remote,
            });
        }
        Ok(FlowRecord {
            id,
            pid,
            traffic_type,
            adaptive,
            custom_dscp,
            mark: Mark { dscp, pcp },
            counters,
            sockets_total,
            sockets,
        })
    }

    fn status(&mut self) -> Result<StatusInfo, AbiError> {
        let protocol_version = self.u16()?;
        self.zeros(2)?;
        let handles = self.u32()?;
        let flows = self.u32()?;
        let sockets = self.u32()?;
        let rules = self.u32()?;
        let shapers = self.u32()?;
        let packets = self.u64()?;
        let marked = self.u64()?;
        let already_marked = self.u64()?;
        let mut skipped = [0u64; SkipReason::COUNT];
        for s in &mut skipped {
            *s = self.u64()?;
        }
        let mut fail_open = [0u64; FailOpen::COUNT];
        for f in &mut fail_open {
            *f = self.u64()?;
        }
        let delayed = self.u64()?;
        let non_conformant = self.u64()?;
        Ok(StatusInfo {
            protocol_version,
            handles,
            flows,
            sockets,
            rules,
            shapers,
            packets,
            marked,
            already_marked,
            skipped,
            fail_open,
            delayed,
            non_conformant,
        })
    }

    fn add_socket_to_flow(&mut self) -> Result<Request, AbiError> {
        let socket = self.u64()?;
        let family = match self.u8()? {
            4 => Family::V4,
            6 => Family::V6,
            _ => return Err(AbiError::BadValue),
        };
        let protocol = match self.u8()? {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return Err(AbiError::BadValue),
        };
        let peer_present = self.flag()?;
        let dest_present = self.flag()?;
        let traffic_type = traffic_type(self.u32()?)?;
        let flags = self.u32()?;
        let flow_id = self.u32()?;
        let local = self.address(true)?.ok_or(AbiError::BadValue)?;
        let peer = self.address(peer_present)?;
        let dest = self.address(dest_present)?;
        Ok(Request::AddSocketToFlow {
            socket: SocketInfo {
                socket,
                family,
                protocol,
                local,
                peer,
            },
            dest,
            traffic_type,
            flags,
            flow_id,
        })
    }

    fn set_flow(&mut self) -> Result<Request, AbiError> {
        let flow_id = self.u32()?;
        let op = match self.u32()? {
            0 => {
                let t = traffic_type(self.u32()?)?;
                self.zeros(12)?;
                SetFlow::TrafficType(t)
            }
            1 => {
                let bandwidth = self.u64()?;
                let shaping = match self.u32()? {
                    0 => Shaping::ShapeOnly,
                    1 => Shaping::ShapeAndMark,
                    2 => Shaping::UseNonConformantMarkings,
                    _ => return Err(AbiError::BadValue),
                };
                let reason = self.u32()?;
                SetFlow::OutgoingRate(FlowRate {
                    bandwidth,
                    shaping,
                    reason,
                })
            }
            2 => {
                let d = self.u32()?;
                self.zeros(12)?;
                SetFlow::OutgoingDscp(d)
            }
            3 => {
                let service =
                    ServiceType::try_from_u32(self.u32()?).map_err(|_| AbiError::BadValue)?;
                let dscp_present = self.flag()?;
                let dscp = self.optional_byte(dscp_present, Dscp::try_new)?;
                let pcp_present = self.flag()?;
                let pcp = self.optional_byte(pcp_present, Pcp::try_new)?;
                self.zeros(8)?;
                SetFlow::Service(ServiceMark { service, dscp, pcp })
            }
            4 => {
                self.zeros(16)?;
                SetFlow::ClearOutgoingRate
            }
            _ => return Err(AbiError::BadValue),
        };
        Ok(Request::SetFlow { flow_id, op })
    }

    /// The count of a list answer: ≤ `max` (else `TooLarge`), and the rest of the payload must
    /// be exactly `count * entry` bytes (else `Truncated` / `TrailingBytes`).
    fn list_count(&mut self, max: u32, entry: u32) -> Result<usize, AbiError> {
        let count = self.u32()?;
        self.zeros(4)?;
        if count > max {
            return Err(AbiError::TooLarge);
        }
        // count ≤ 65 536 and entry ≤ 168: no overflow.
        let need = count as usize * entry as usize;
        match self.buf.len().cmp(&need) {
            core::cmp::Ordering::Less => Err(AbiError::Truncated),
            core::cmp::Ordering::Greater => Err(AbiError::TrailingBytes),
            core::cmp::Ordering::Equal => Ok(count as usize),
        }
    }
}

/// The IPv4 octets at the start of a 16-byte address slot, and the 12 bytes after them.
fn split_v4(octets: &[u8; 16]) -> ([u8; 4], [u8; 12]) {
    let [a, b, c, d, rest @ ..] = *octets;
    ([a, b, c, d], rest)
}

fn traffic_type(v: u32) -> Result<TrafficType, AbiError> {
    TrafficType::try_from_u32(v).map_err(|_| AbiError::BadValue)
}

fn try_vec<T>(count: usize) -> Result<Vec<T>, AbiError> {
    let mut v = Vec::new();
    v.try_reserve_exact(count)
        .map_err(|_| AbiError::OutOfMemory)?;
    Ok(v)
}

/// Checks the header and returns the record kind, the flags and the payload; the caller checks
/// the flags.
fn decode_header(bytes: &[u8]) -> Result<(RecordKind, u32, Reader<'_>), AbiError> {
    let mut r = Reader { buf: bytes };
    if bytes.len() < HEADER_LEN as usize {
        return Err(AbiError::Truncated);
    }
    if r.u32()? != MAGIC {
        return Err(AbiError::BadMagic);
    }
    if r.u16()? != PROTOCOL_VERSION {
        return Err(AbiError::BadVersion);
    }
    let kind = r.u16()?;
    let flags = r.u32()?;
    let length = r.u32()?;
    if usize::try_from(length).ok() != Some(bytes.len()) {
        return Err(AbiError::BadLength);
    }
    if length > MAX_RECORD_LEN {
        return Err(AbiError::TooLarge);
    }
    let kind = RecordKind::from_u16(kind).ok_or(AbiError::BadKind)?;
    Ok((kind, flags, r))
}

/// The length of the record whose header starts `bytes` (at least [`HEADER_LEN`] bytes; more are
/// ignored), for stream framing and for output buffers with an unknown byte count. Checks the
/// magic, the version and [`HEADER_LEN`] ≤ length ≤ [`MAX_RECORD_LEN`]; the kind and the rest are
/// left to the decoders.
///
/// # Errors
/// [`AbiError::Truncated`] (fewer than 16 bytes), `BadMagic`, `BadVersion`, `BadLength` (length
/// below 16), `TooLarge` (above [`MAX_RECORD_LEN`]).
pub fn record_len(bytes: &[u8]) -> Result<u32, AbiError> {
    let mut r = Reader { buf: bytes };
    let magic = r.u32()?;
    let version = r.u16()?;
    let _kind = r.u16()?;
    let _flags = r.u32()?;
    let length = r.u32()?;
    if magic != MAGIC {
        return Err(AbiError::BadMagic);
    }
    if version != PROTOCOL_VERSION {
        return Err(AbiError::BadVersion);
    }
    if length < HEADER_LEN {
        return Err(AbiError::BadLength);
    }
    if length > MAX_RECORD_LEN {
        return Err(AbiError::TooLarge);
    }
    Ok(length)
}

fn check_error(e: ErrorReply) -> Result<(), AbiError> {
    if e.win32.0 == 0 || (e.required_size != 0 && e.win32 != Win32Error::INSUFFICIENT_BUFFER) {
        Err(AbiError::BadValue)
    } else {
        Ok(())
    }
}

/// Decodes one request record; `bytes` must be exactly the record.
///
/// # Errors
/// The first problem found, in the order given in the module docs; never panics.
pub fn decode_request(bytes: &[u8]) -> Result<Request, AbiError> {
    match decode_request_with_flags(bytes)? {
        (request, 0) => Ok(request),
        _ => Err(AbiError::ReservedNotZero),
    }
}

/// Decodes one request record and returns it with its header flags: 0, or
/// [`FLAG_QOS2_ANSWER`] on SetFlow, QueryFlow and NotifyFlow (the back end then answers a
/// success with [`encode_qos2_answer`]). Any other flag → [`AbiError::ReservedNotZero`] (87).
///
/// # Errors
/// As [`decode_request`], with the flag rule of [`flags_allowed`].
pub fn decode_request_with_flags(bytes: &[u8]) -> Result<(Request, u32), AbiError> {
    let (kind, flags, mut r) = decode_header(bytes)?;
    let flag_ok = flags == 0
        || (flags == FLAG_QOS2_ANSWER
            && matches!(
                kind,
                RecordKind::SetFlow
                    | RecordKind::QueryFlow
                    | RecordKind::NotifyFlow
                    | RecordKind::WatchFlow
            ));
    if !flag_ok {
        return Err(AbiError::ReservedNotZero);
    }
    let request = match kind {
        RecordKind::ListFlows => {
            let after = r.u32()?;
            r.zeros(4)?;
            Request::ListFlows { after }
        }
        RecordKind::ReplaceRules => {
            let count = r.list_count(MAX_RULES, RULE_SPEC_LEN)?;
            let mut rules = try_vec(count)?;
            for _ in 0..count {
                rules.push(r.rule_spec()?);
            }
            Request::ReplaceRules(rules)
        }
        RecordKind::QueryStatus => Request::QueryStatus,
        RecordKind::EnumerateFlows => Request::EnumerateFlows,
        RecordKind::ListRules => Request::ListRules,
        RecordKind::GetTrafficTable => Request::GetTrafficTable,
        RecordKind::AddSocketToFlow => r.add_socket_to_flow()?,
        RecordKind::RemoveSocketFromFlow => {
            let socket = r.u64()?;
            let present = r.flag()?;
            r.zeros(3)?;
            let flow_id = r.u32()?;
            if !present && socket != 0 {
                return Err(AbiError::ReservedNotZero);
            }
            Request::RemoveSocketFromFlow {
                socket: present.then_some(socket),
                flow_id,
            }
        }
        RecordKind::SetFlow => r.set_flow()?,
        RecordKind::QueryFlow => {
            let flow_id = r.u32()?;
            let op = match r.u32()? {
                0 => QueryFlow::Fundamentals,
                1 => QueryFlow::PacketPriority,
                2 => QueryFlow::OutgoingRate,
                _ => return Err(AbiError::BadValue),
            };
            Request::QueryFlow { flow_id, op }
        }
        RecordKind::NotifyFlow => {
            let flow_id = r.u32()?;
            let op = match r.u32()? {
                0 => NotifyFlow::Congested,
                1 => NotifyFlow::Uncongested,
                2 => NotifyFlow::Available,
                _ => return Err(AbiError::BadValue),
            };
            let present = r.flag()?;
            r.zeros(7)?;
            let threshold = r.u64()?;
            if !present && threshold != 0 {
                return Err(AbiError::ReservedNotZero);
            }
            Request::NotifyFlow {
                flow_id,
                op,
                threshold: present.then_some(threshold),
            }
        }
        RecordKind::AddRule => Request::AddRule(r.rule_spec()?),
        RecordKind::RemoveRule => Request::RemoveRule(r.name()?),
        RecordKind::SetTrafficTable => Request::SetTrafficTable(r.traffic_table()?),
        RecordKind::WatchFlow => r.watch_flow()?,
        RecordKind::Done
        | RecordKind::Status
        | RecordKind::FlowId
        | RecordKind::PacketPriority
        | RecordKind::OutgoingRate
        | RecordKind::FlowIds
        | RecordKind::Rules
        | RecordKind::TrafficTable
        | RecordKind::Flows
        | RecordKind::FlowState
        | RecordKind::Error => return Err(AbiError::BadKind),
    };
    debug_assert!(flags_allowed(RequestKind::of(&request), flags));
    r.finish()?;
    Ok((request, flags))
}

/// Decodes one request record that arrived with the IOCTL of `kind`: as [`decode_request`],
/// and [`AbiError::BadKind`] when the record is of another kind.
///
/// # Errors
/// As [`decode_request`].
pub fn decode_request_for(kind: RequestKind, bytes: &[u8]) -> Result<Request, AbiError> {
    let request = decode_request(bytes)?;
    if RequestKind::of(&request) == kind {
        Ok(request)
    } else {
        Err(AbiError::BadKind)
    }
}

/// Decodes the answer to a request of kind `kind`; `bytes` must be exactly the record.
///
/// # Errors
/// The first problem found, in the order given in the module docs; [`AbiError::BadKind`] when
/// the record is not a valid answer to `kind` ([`answers`]). Never panics.
pub fn decode_response(kind: RequestKind, bytes: &[u8]) -> Result<Reply, AbiError> {
    let (record, flags, mut r) = decode_header(bytes)?;
    if !answers(kind, record) {
        return Err(AbiError::BadKind);
    }
    if flags != 0 {
        return Err(AbiError::ReservedNotZero);
    }
    let reply = match record {
        RecordKind::Error => {
            let e = ErrorReply {
                win32: Win32Error(r.u32()?),
                required_size: r.u32()?,
            };
            r.finish()?;
            check_error(e)?;
            return Ok(Reply::Error(e));
        }
        RecordKind::Done => Response::Done,
        RecordKind::Status => Response::Status(r.status()?),
        RecordKind::FlowId => {
            let id = r.u32()?;
            if id == 0 {
                return Err(AbiError::BadValue);
            }
            Response::FlowId(id)
        }
        RecordKind::PacketPriority => Response::PacketPriority(PacketPriority {
            conformant_dscp: r.u32()?,
            non_conformant_dscp: r.u32()?,
            conformant_l2: r.u32()?,
            non_conformant_l2: r.u32()?,
        }),
        RecordKind::OutgoingRate => Response::OutgoingRate(r.u64()?),
        RecordKind::FlowIds => {
            let count = r.list_count(MAX_FLOW_IDS, 4)?;
            let mut ids = try_vec(count)?;
            for _ in 0..count {
                let id = r.u32()?;
                if id == 0 {
                    return Err(AbiError::BadValue);
                }
                ids.push(id);
            }
            Response::FlowIds(ids)
        }
        RecordKind::Rules => {
            let count = r.list_count(MAX_RULES, RULE_ENTRY_LEN)?;
            let mut rules = try_vec(count)?;
            for _ in 0..count {
                let spec = r.rule_spec()?;
                let counters = r.counters()?;
                rules.push(RuleEntry { spec, counters });
            }
            Response::Rules(rules)
        }
        RecordKind::TrafficTable => Response::TrafficTable(r.traffic_table()?),
        RecordKind::FlowState => Response::FlowState(r.flow_state_answer()?),
        RecordKind::Flows => {
            let count = r.u32()?;
            let next_after = r.u32()?;
            if count > MAX_FLOWS_PER_PAGE {
                return Err(AbiError::TooLarge);
            }
            // Each flow takes at least FLOW_LEN bytes: refuse a count the bytes cannot hold
            // before allocating for it.
            if r.buf.len() < count as usize * FLOW_LEN as usize {
                return Err(AbiError::Truncated);
            }
            let mut flows = try_vec(count as usize)?;
            let mut last = 0u32;
            for _ in 0..count {
                let f = r.flow()?;
                if f.id <= last {
                    return Err(AbiError::BadValue);
                }
                last = f.id;
                flows.push(f);
            }
            if next_after != 0 && next_after != last {
                return Err(AbiError::BadValue);
            }
            Response::Flows(FlowPage { flows, next_after })
        }
        RecordKind::QueryStatus
        | RecordKind::AddSocketToFlow
        | RecordKind::RemoveSocketFromFlow
        | RecordKind::SetFlow
        | RecordKind::QueryFlow
        | RecordKind::NotifyFlow
        | RecordKind::EnumerateFlows
        | RecordKind::AddRule
        | RecordKind::RemoveRule
        | RecordKind::ListRules
        | RecordKind::GetTrafficTable
        | RecordKind::SetTrafficTable
        | RecordKind::ListFlows
        | RecordKind::ReplaceRules
        | RecordKind::WatchFlow => return Err(AbiError::BadKind),
    };
    r.finish()?;
    Ok(Reply::Response(reply))
}
