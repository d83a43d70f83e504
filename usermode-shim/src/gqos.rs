//! GQoS (Winsock QoS) compatibility: per-socket QoS from a `QOS` structure — a sending and a
//! receiving `FLOWSPEC` plus provider-specific objects — with the GQoS semantics of
//! `SIO_SET_QOS` / `SIO_GET_QOS` / `FD_QOS` (qos-api.md §11), served by qosmark's QOS2
//! machinery. The C ABI is `QmSetSocketQos`, `QmGetSocketQos`, `QmWaitSocketQosChange`
//! (`include/qosmark.h`); the Rust API is [`GqosSession`].
//!
//! # How it maps
//!
//! A [`GqosSession`] is one hidden QOS2 handle (the C ABI keeps one per process). The first
//! `set` of a socket with a marking service type registers it in a new **non-adaptive** flow
//! of that handle (`AddSocketToFlow`; non-adaptive so that one flow may hold several
//! destinations), then sends `SetFlow(Service)`: the back end maps the service type to its
//! documented default DSCP / 802.1p and applies the overrides (`engine::control` docs):
//!
//! | sending `ServiceType` | effect |
//! |---|---|
//! | `SERVICETYPE_QUALITATIVE` (0xD) | DSCP 0, 802.1p 0 |
//! | `SERVICETYPE_CONTROLLEDLOAD` (2) | DSCP 24, 802.1p 4 |
//! | `SERVICETYPE_GUARANTEED` (3) | DSCP 40, 802.1p 5 |
//! | `SERVICETYPE_NETWORK_CONTROL` (0xA) | DSCP 48, 802.1p 7 |
//! | `SERVICETYPE_BESTEFFORT` (1), `SERVICETYPE_NOTRAFFIC` (0) | sending QoS ends: the flow is removed (GQoS "closing QoS", qos-api.md §11.4) |
//! | `SERVICETYPE_NOCHANGE` (6) | sending side untouched (with objects: `WSA_QOS_BAD_OBJECT`) |
//!
//! `SERVICE_NO_QOS_SIGNALING` (`0x4000_0000`) may be or-ed in and is ignored (qosmark does no
//! signalling). The receiving flowspec is validated and otherwise ignored: qosmark marks only
//! what a host sends.
//!
//! Provider-specific objects (one contiguous buffer, each object `QOS_OBJECT_HDR` +
//! payload, `ObjectLength` including the header, up to the buffer's end or
//! `QOS_OBJECT_END_OF_LIST`):
//! * `QOS_DS_CLASS` (4001): DSCP override (0..=63); `QOS_TRAFFIC_CLASS` (4002): 802.1p
//!   override (0..=7). Privileges as in the engine: an override that differs from the
//!   service type's default needs an administrator (or, for DSCP, a value on the
//!   administrator's user allow-list), else 5 `ERROR_ACCESS_DENIED`.
//! * `QOS_DESTADDR` (2004): the destination of an unconnected UDP sender. Each `set` with a
//!   `QOS_DESTADDR` adds that destination to the socket's flow; earlier destinations stay
//!   (qosmark choice: a GQoS sender talking to several peers marks them all).
//! * `QOS_SD_MODE` (2002) with `TC_NONCONF_SHAPE` (1): shape the sending flow to `TokenRate`
//!   bytes/s (or `QOS_SHAPING_RATE`'s `ShapingRate`, 2003, when given), sent as
//!   `SetFlow(OutgoingRate { rate × 8 bit/s, QOSShapeAndMark })`. `TC_NONCONF_BORROW` (0) is
//!   sent as `QOSUseNonConformantMarkings` with the same rate. `TC_NONCONF_DISCARD` (2) and
//!   `TC_NONCONF_BORROW_PLUS` (3) are not supported: `WSA_QOS_ESDMODEOBJ`. Without a
//!   `QOS_SD_MODE` object `TokenRate` is informational (no shaping).
//! * A back end without shaping answers `SetFlow(OutgoingRate)` with 50: the whole `set`
//!   then fails with `WSA_QOS_TRAFFIC_CTRL_ERROR` (11014, "a problem with some part of
//!   Traffic Control") and is undone, so the socket keeps what it had. With a back end that
//!   shapes, the same call succeeds; nothing here depends on which one runs. A rate the
//!   shaper refuses (87: outside its range, 12 000 bit/s ..= 100 Gbit/s today, i.e. a
//!   `TokenRate` below 1 500 bytes/s) is `WSA_QOS_EFLOWSPEC`, also undone.
//! * Each `set` replaces the sending side's shaping: one without `QOS_SD_MODE` ends it (the
//!   flow's shaper is removed with `SetFlow(ClearOutgoingRate)`, a qosmark extension; packets
//!   it held leave at once).
//! * Under `TC_NONCONF_BORROW` the non-conforming packets get the back end's non-conformant
//!   mark: the traffic table's, by default DSCP 0 / 802.1p 1 — GQoS's documented
//!   non-conforming values and the Windows packet scheduler's defaults (qos-api.md §11.4). An
//!   administrator may change them for every flow (`qosmarkctl table set non-conformant`).
//! * With `SERVICETYPE_NOCHANGE` every object is refused (`WSA_QOS_BAD_OBJECT`): they all
//!   describe the sending side, which NOCHANGE keeps (a qosmark choice; GQoS documents no
//!   rule).
//! * `SERVICETYPE_NOTRAFFIC` / `SERVICETYPE_BESTEFFORT` end the sending side whatever objects
//!   come with them (they are validated, then have nothing left to act on).
//!
//! # A `set` on a socket that already marks
//!
//! The steps: the service mark; the rate (set, or cleared when the `set` has no
//! `QOS_SD_MODE` and the flow has one); last the registration, the one step that cannot be
//! taken back (a new `QOS_DESTADDR` joins the flow, and the wire can remove a socket only
//! with all of its destinations). A refused step changes nothing in the back end, and the
//! steps before it are restored: the previous mark, the previous rate (a rate the failed
//! `set` had cleared comes back as a new shaper of the same rate; packets the old one held
//! have then left early). So a refused `set` leaves the socket as it was — unless a
//! restoring request is refused too (the process's hidden handle out of request budget,
//! 1450, or the back end gone): the session then records what the flow really has, and the
//! next `set` applies in full. A flow that ended just before the `set` (1168) is started
//! over, as GQoS does once QoS has ended. A failed `set` on a socket without a live flow
//! removes the flow it made.
//!
//! # Which socket
//!
//! The session keys its state by socket value and also records which socket the value named
//! (Linux: `SO_COOKIE`; Windows cannot tell and only checks that the value is still a socket).
//! A value that was closed — or, on Linux, closed and given to another socket — reads as never
//! set, and records of closed sockets are dropped whenever the record map has doubled since
//! the last sweep, so it stays within about twice the number of open sockets.
//!
//! # Errors (checked before anything is sent; nothing changes on error)
//!
//! | input | code |
//! |---|---|
//! | a `ServiceType` (sending or receiving) other than 0, 1, 2, 3, 6, 0xA, 0xD (with or without `SERVICE_NO_QOS_SIGNALING`) | `WSA_QOS_ESERVICETYPE` 11016 |
//! | shaping asked (`QOS_SD_MODE` shape/borrow) with a sending `TokenRate` of 0 (even when `QOS_SHAPING_RATE` names the rate), or with no rate (`TokenRate` `QOS_NOT_SPECIFIED` and no `QOS_SHAPING_RATE`); `PeakBandwidth` below `TokenRate` (both specified, `PeakBandwidth` not `POSITIVE_INFINITY_RATE`), in either flowspec | `WSA_QOS_EFLOWSPEC` 11017 |
//! | `ProviderSpecific` with a length but no buffer, or fewer bytes left than a header that are not all zero (zeros there are struct padding and end the list) | `WSA_QOS_EPROVSPECBUF` 11018 |
//! | an `ObjectLength` below the header, beyond the buffer, or not the object's size | `WSA_QOS_EOBJLENGTH` 11022 |
//! | an unknown `ObjectType` (an `RSVP_STATUS_INFO`, as `QmGetSocketQos` returns it, is accepted and ignored) | `WSA_QOS_EUNKOWNPSOBJ` 11024 (sic) |
//! | `ShapeDiscardMode` above 3, or 2 / 3 (not supported) | `WSA_QOS_ESDMODEOBJ` 11029 |
//! | `ShapingRate` 0 or `QOS_NOT_SPECIFIED` | `WSA_QOS_ESHAPERATEOBJ` 11030 |
//! | any object with a sending `SERVICETYPE_NOCHANGE` (every object describes the sending side, which NOCHANGE leaves alone); the same object twice; `DSField` above 63; `TrafficClass` above 7; a `QOS_DESTADDR` that is not an `AF_INET` / `AF_INET6` address of its stated length | `WSA_QOS_BAD_OBJECT` 11013 |
//!
//! Errors of the back end pass through with their QOS2 codes (87 for an unconnected socket
//! without `QOS_DESTADDR`, 5 for an override the caller may not use, 183, 1450, 1068 when no
//! back end runs, ...); nothing changes on them either (see "A `set` on a socket that
//! already marks").
//!
//! # Reading the state back ([`GqosSession::get`])
//!
//! The answer has the sending flowspec as last set, whose `ServiceType` reads
//! `SERVICETYPE_NOTRAFFIC` once the back end ended the flow (socket closed, `shutdown` of the
//! sending side, TCP or UDP disconnect — each detected by `qosmarkd` on Linux; the Windows
//! driver detects a close and a TCP disconnect, not yet `shutdown` nor a UDP disconnect) and
//! `SERVICETYPE_BESTEFFORT` / `SERVICETYPE_NOTRAFFIC` after the application ended it itself.
//! The receiving flowspec carries `SERVICETYPE_NOCHANGE` (GQoS: one direction per answer;
//! qosmark only ever reports the sending one) and `QOS_NOT_SPECIFIED` elsewhere. The
//! provider-specific part is one `RSVP_STATUS_INFO`: `StatusCode` `WSA_QOS_REQUEST_CONFIRMED`
//! (11009) while the sending flow marks, `WSA_QOS_NO_RECEIVERS` (11008) when it does not;
//! `ExtendedStatus1` / `ExtendedStatus2` = the DSCP / 802.1p the back end applies (0 when
//! none) — a qosmark choice: RSVP put its error details there.
//!
//! # Waiting for a change ([`GqosSession::wait_change`], `FD_QOS`)
//!
//! Opens a **second** handle of the same process (the back end shows a `WatchFlow` the
//! flows of the caller's process) and sends `WatchFlow` with the state last seen; the back
//! end holds it until the flow ends or its mark changes. A socket without a live flow has
//! nothing to wait for: 1168 `ERROR_NOT_FOUND`.

use crate::client::Client;
use crate::error::{QosError, Result};
use crate::ffi::SocketIdentity;
use crate::qos2::QosHandle;
use crate::socket::{self, AsQosSocket, RawSock};
use core::net::SocketAddr;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{
    Dscp, FlowId, FlowRate, FlowState, Pcp, Request, Response, ServiceMark, ServiceType, SetFlow,
    Shaping, TrafficType, QOS_NON_ADAPTIVE_FLOW,
};
use std::collections::HashMap;
use std::sync::Mutex;

/// `SERVICETYPE_NOTRAFFIC`.
pub const SERVICETYPE_NOTRAFFIC: u32 = 0x0000_0000;
/// `SERVICETYPE_BESTEFFORT`.
pub const SERVICETYPE_BESTEFFORT: u32 = 0x0000_0001;
/// `SERVICETYPE_CONTROLLEDLOAD`.
pub const SERVICETYPE_CONTROLLEDLOAD: u32 = 0x0000_0002;
/// `SERVICETYPE_GUARANTEED`.
pub const SERVICETYPE_GUARANTEED: u32 = 0x0000_0003;
/// `SERVICETYPE_NETWORK_UNAVAILABLE` (reported by RSVP, never valid in a request).
pub const SERVICETYPE_NETWORK_UNAVAILABLE: u32 = 0x0000_0004;
/// `SERVICETYPE_GENERAL_INFORMATION` (never valid in a request).
pub const SERVICETYPE_GENERAL_INFORMATION: u32 = 0x0000_0005;
/// `SERVICETYPE_NOCHANGE`.
pub const SERVICETYPE_NOCHANGE: u32 = 0x0000_0006;
/// `SERVICETYPE_NONCONFORMING` (Traffic Control's class of non-conforming packets; never
/// valid in a request).
pub const SERVICETYPE_NONCONFORMING: u32 = 0x0000_0009;
/// `SERVICETYPE_NETWORK_CONTROL`.
pub const SERVICETYPE_NETWORK_CONTROL: u32 = 0x0000_000A;
/// `SERVICETYPE_QUALITATIVE`.
pub const SERVICETYPE_QUALITATIVE: u32 = 0x0000_000D;
/// `SERVICE_NO_QOS_SIGNALING`: may be or-ed into a `ServiceType`; ignored.
pub const SERVICE_NO_QOS_SIGNALING: u32 = 0x4000_0000;
/// `QOS_NOT_SPECIFIED`.
pub const QOS_NOT_SPECIFIED: u32 = 0xFFFF_FFFF;
/// `POSITIVE_INFINITY_RATE`.
pub const POSITIVE_INFINITY_RATE: u32 = 0xFFFF_FFFE;

/// `RSVP_OBJECT_STATUS_INFO` (`qossp.h`).
pub const RSVP_OBJECT_STATUS_INFO: u32 = 1000;
/// `QOS_OBJECT_END_OF_LIST`.
pub const QOS_OBJECT_END_OF_LIST: u32 = 2001;
/// `QOS_OBJECT_SD_MODE`.
pub const QOS_OBJECT_SD_MODE: u32 = 2002;
/// `QOS_OBJECT_SHAPING_RATE`.
pub const QOS_OBJECT_SHAPING_RATE: u32 = 2003;
/// `QOS_OBJECT_DESTADDR`.
pub const QOS_OBJECT_DESTADDR: u32 = 2004;
/// `QOS_OBJECT_DS_CLASS` (`traffic.h`).
pub const QOS_OBJECT_DS_CLASS: u32 = 4001;
/// `QOS_OBJECT_TRAFFIC_CLASS` (`traffic.h`).
pub const QOS_OBJECT_TRAFFIC_CLASS: u32 = 4002;

/// `TC_NONCONF_BORROW`.
pub const TC_NONCONF_BORROW: u32 = 0;
/// `TC_NONCONF_SHAPE`.
pub const TC_NONCONF_SHAPE: u32 = 1;
/// `TC_NONCONF_DISCARD`.
pub const TC_NONCONF_DISCARD: u32 = 2;
/// `TC_NONCONF_BORROW_PLUS`.
pub const TC_NONCONF_BORROW_PLUS: u32 = 3;

/// `WSAENOBUFS`: `QmGetSocketQos` with a buffer too small.
pub const WSAENOBUFS: u32 = 10055;
/// `WSA_QOS_NO_RECEIVERS`.
pub const WSA_QOS_NO_RECEIVERS: u32 = 11008;
/// `WSA_QOS_REQUEST_CONFIRMED`.
pub const WSA_QOS_REQUEST_CONFIRMED: u32 = 11009;
/// `WSA_QOS_BAD_OBJECT`.
pub const WSA_QOS_BAD_OBJECT: u32 = 11013;
/// `WSA_QOS_TRAFFIC_CTRL_ERROR`.
pub const WSA_QOS_TRAFFIC_CTRL_ERROR: u32 = 11014;
/// `WSA_QOS_ESERVICETYPE`.
pub const WSA_QOS_ESERVICETYPE: u32 = 11016;
/// `WSA_QOS_EFLOWSPEC`.
pub const WSA_QOS_EFLOWSPEC: u32 = 11017;
/// `WSA_QOS_EPROVSPECBUF`.
pub const WSA_QOS_EPROVSPECBUF: u32 = 11018;
/// `WSA_QOS_EOBJLENGTH`.
pub const WSA_QOS_EOBJLENGTH: u32 = 11022;
/// `WSA_QOS_EUNKOWNPSOBJ` (the header's spelling).
pub const WSA_QOS_EUNKOWNPSOBJ: u32 = 11024;
/// `WSA_QOS_ESDMODEOBJ`.
pub const WSA_QOS_ESDMODEOBJ: u32 = 11029;
/// `WSA_QOS_ESHAPERATEOBJ`.
pub const WSA_QOS_ESHAPERATEOBJ: u32 = 11030;

/// Length of `QOS_OBJECT_HDR`.
pub const OBJECT_HDR_LEN: usize = 8;
/// Length of the one-`ULONG` objects (`QOS_SD_MODE`, `QOS_SHAPING_RATE`, `QOS_DS_CLASS`,
/// `QOS_TRAFFIC_CLASS`).
pub const ULONG_OBJECT_LEN: usize = 12;
/// Length of `RSVP_STATUS_INFO`.
pub const RSVP_STATUS_INFO_LEN: usize = 20;

fn err(code: u32) -> QosError {
    QosError::new(Win32Error(code))
}

/// `FLOWSPEC` (`qos.h`): eight `ULONG`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flowspec {
    /// Bytes per second.
    pub token_rate: u32,
    /// Bytes.
    pub token_bucket_size: u32,
    /// Bytes per second.
    pub peak_bandwidth: u32,
    /// Microseconds.
    pub latency: u32,
    /// Microseconds.
    pub delay_variation: u32,
    /// `SERVICETYPE_*`.
    pub service_type: u32,
    /// Bytes.
    pub max_sdu_size: u32,
    /// Bytes.
    pub minimum_policed_size: u32,
}

impl Flowspec {
    /// Every field `QOS_NOT_SPECIFIED`, with this service type.
    #[must_use]
    pub const fn unspecified(service_type: u32) -> Flowspec {
        Flowspec {
            token_rate: QOS_NOT_SPECIFIED,
            token_bucket_size: QOS_NOT_SPECIFIED,
            peak_bandwidth: QOS_NOT_SPECIFIED,
            latency: QOS_NOT_SPECIFIED,
            delay_variation: QOS_NOT_SPECIFIED,
            service_type,
            max_sdu_size: QOS_NOT_SPECIFIED,
            minimum_policed_size: QOS_NOT_SPECIFIED,
        }
    }

    /// The eight fields in `FLOWSPEC` order.
    #[must_use]
    pub const fn to_array(&self) -> [u32; 8] {
        [
            self.token_rate,
            self.token_bucket_size,
            self.peak_bandwidth,
            self.latency,
            self.delay_variation,
            self.service_type,
            self.max_sdu_size,
            self.minimum_policed_size,
        ]
    }

    /// From the eight fields in `FLOWSPEC` order.
    #[must_use]
    pub const fn from_array(a: [u32; 8]) -> Flowspec {
        Flowspec {
            token_rate: a[0],
            token_bucket_size: a[1],
            peak_bandwidth: a[2],
            latency: a[3],
            delay_variation: a[4],
            service_type: a[5],
            max_sdu_size: a[6],
            minimum_policed_size: a[7],
        }
    }

    /// The service type without `SERVICE_NO_QOS_SIGNALING`.
    #[must_use]
    pub const fn base_service(&self) -> u32 {
        self.service_type & !SERVICE_NO_QOS_SIGNALING
    }
}

/// One provider-specific object, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderObject {
    /// `QOS_SD_MODE.ShapeDiscardMode`.
    SdMode(u32),
    /// `QOS_SHAPING_RATE.ShapingRate` (bytes/s).
    ShapingRate(u32),
    /// `QOS_DESTADDR`: the destination.
    DestAddr(SocketAddr),
    /// `QOS_DS_CLASS.DSField`.
    DsClass(u32),
    /// `QOS_TRAFFIC_CLASS.TrafficClass`.
    TrafficClass(u32),
}

/// A provider-specific object as the bytes carry it: `QOS_DESTADDR` still holds the caller's
/// pointer, which only the C layer may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RawObject {
    /// A fully decoded object.
    Object(ProviderObject),
    /// `QOS_DESTADDR { SocketAddress, SocketAddressLength }`.
    DestAddr {
        /// `SocketAddress` (a pointer in the caller's address space).
        address: u64,
        /// `SocketAddressLength`.
        length: u32,
    },
}

/// Size of `QOS_DESTADDR` for pointers of `pointer_bytes` (4 or 8): header, pointer at its
/// natural alignment, `ULONG`, tail padding to the pointer's alignment.
#[must_use]
pub const fn destaddr_len(pointer_bytes: usize) -> usize {
    // 8 (header) is a multiple of 4 and 8, so the pointer follows the header directly.
    let unpadded = OBJECT_HDR_LEN + pointer_bytes + 4;
    unpadded.div_ceil(pointer_bytes) * pointer_bytes
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at.checked_add(4)?)
        .and_then(|b| b.first_chunk::<4>())
        .map(|b| u32::from_ne_bytes(*b))
}

/// Decodes a `ProviderSpecific` buffer (native byte order, as the caller's memory holds it)
/// whose pointers are `pointer_bytes` (4 or 8) wide. Stops at the end or at
/// `QOS_OBJECT_END_OF_LIST`. Never panics; every malformed buffer is one of the codes of the
/// module docs.
///
/// # Errors
/// `WSA_QOS_EPROVSPECBUF`, `WSA_QOS_EOBJLENGTH`, `WSA_QOS_EUNKOWNPSOBJ` (module docs).
pub fn parse_provider_specific(bytes: &[u8], pointer_bytes: usize) -> Result<Vec<RawObject>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = bytes.get(at..).unwrap_or_default();
        if rest.len() < OBJECT_HDR_LEN {
            // Zeros shorter than a header are the padding a C compiler puts after a struct of
            // objects that ends with a 12-byte one (64-bit: structs align to 8) when the
            // caller passes `sizeof` the struct; anything else there is a cut-off header.
            if rest.iter().all(|b| *b == 0) {
                break;
            }
            return Err(err(WSA_QOS_EPROVSPECBUF));
        }
        let kind = u32_at(rest, 0).ok_or_else(|| err(WSA_QOS_EPROVSPECBUF))?;
        let len = u32_at(rest, 4).ok_or_else(|| err(WSA_QOS_EPROVSPECBUF))? as usize;
        if len < OBJECT_HDR_LEN || len > rest.len() {
            return Err(err(WSA_QOS_EOBJLENGTH));
        }
        let object = rest.get(..len).unwrap_or_default();
        let want = match kind {
            QOS_OBJECT_END_OF_LIST => OBJECT_HDR_LEN,
            QOS_OBJECT_SD_MODE
            | QOS_OBJECT_SHAPING_RATE
            | QOS_OBJECT_DS_CLASS
            | QOS_OBJECT_TRAFFIC_CLASS => ULONG_OBJECT_LEN,
            QOS_OBJECT_DESTADDR => destaddr_len(pointer_bytes),
            // What `QmGetSocketQos` returns; a get → modify → set round trip passes it back.
            RSVP_OBJECT_STATUS_INFO => RSVP_STATUS_INFO_LEN,
            _ => return Err(err(WSA_QOS_EUNKOWNPSOBJ)),
        };
        if len != want {
            return Err(err(WSA_QOS_EOBJLENGTH));
        }
        let value = u32_at(object, OBJECT_HDR_LEN);
        let raw = match (kind, value) {
            (QOS_OBJECT_END_OF_LIST, _) => break,
            (RSVP_OBJECT_STATUS_INFO, _) => {
                // A report, not a request: ignored.
                at = at.saturating_add(len);
                continue;
            }
            (QOS_OBJECT_SD_MODE, Some(v)) => RawObject::Object(ProviderObject::SdMode(v)),
            (QOS_OBJECT_SHAPING_RATE, Some(v)) => RawObject::Object(ProviderObject::ShapingRate(v)),
            (QOS_OBJECT_DS_CLASS, Some(v)) => RawObject::Object(ProviderObject::DsClass(v)),
            (QOS_OBJECT_TRAFFIC_CLASS, Some(v)) => {
                RawObject::Object(ProviderObject::TrafficClass(v))
            }
            (QOS_OBJECT_DESTADDR, _) => {
                let address = match pointer_bytes {
                    4 => u32_at(object, OBJECT_HDR_LEN).map(u64::from),
                    _ => object
                        .get(OBJECT_HDR_LEN..OBJECT_HDR_LEN + 8)
                        .and_then(|b| b.first_chunk::<8>())
                        .map(|b| u64::from_ne_bytes(*b)),
                };
                let length = u32_at(object, OBJECT_HDR_LEN + pointer_bytes);
                match (address, length) {
                    (Some(address), Some(length)) => RawObject::DestAddr { address, length },
                    _ => return Err(err(WSA_QOS_EOBJLENGTH)),
                }
            }
            _ => return Err(err(WSA_QOS_EOBJLENGTH)),
        };
        out.try_reserve(1).map_err(|_| QosError::NO_MEMORY)?;
        out.push(raw);
        at = at.saturating_add(len);
    }
    Ok(out)
}

/// A `QOS` structure as the Rust API takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qos {
    /// `SendingFlowspec`.
    pub sending: Flowspec,
    /// `ReceivingFlowspec`.
    pub receiving: Flowspec,
    /// The decoded `ProviderSpecific` objects.
    pub objects: Vec<ProviderObject>,
}

/// What a validated `set` does to the sending side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendPlan {
    /// `SERVICETYPE_NOCHANGE`.
    Keep,
    /// `SERVICETYPE_NOTRAFFIC` / `SERVICETYPE_BESTEFFORT` (the value is kept for `get`).
    End(u32),
    /// Mark (and maybe shape).
    Mark {
        /// Service type and overrides for the back end.
        service: ServiceMark,
        /// Destination from `QOS_DESTADDR`.
        dest: Option<SocketAddr>,
        /// `SetFlow(OutgoingRate)` to send, if shaping was asked.
        rate: Option<FlowRate>,
    },
}

fn valid_service(st: u32) -> bool {
    matches!(
        st & !SERVICE_NO_QOS_SIGNALING,
        SERVICETYPE_NOTRAFFIC
            | SERVICETYPE_BESTEFFORT
            | SERVICETYPE_CONTROLLEDLOAD
            | SERVICETYPE_GUARANTEED
            | SERVICETYPE_NOCHANGE
            | SERVICETYPE_NETWORK_CONTROL
            | SERVICETYPE_QUALITATIVE
    )
}

fn specified(v: u32) -> bool {
    v != QOS_NOT_SPECIFIED
}

/// `PeakBandwidth ≥ TokenRate` when both are given (qos-api.md §11.3).
fn peak_ok(f: &Flowspec) -> bool {
    !(specified(f.token_rate)
        && specified(f.peak_bandwidth)
        && f.peak_bandwidth != POSITIVE_INFINITY_RATE
        && f.peak_bandwidth < f.token_rate)
}

/// Checks a `QOS` (module docs, in the order of its error table) and says what it does to the
/// sending side. Pure: nothing is sent.
///
/// # Errors
/// The `WSA_QOS_*` code of the first problem.
pub fn plan(qos: &Qos) -> Result<SendPlan> {
    if !valid_service(qos.sending.service_type) || !valid_service(qos.receiving.service_type) {
        return Err(err(WSA_QOS_ESERVICETYPE));
    }
    let mut sd_mode = None;
    let mut shaping_rate = None;
    let mut dest = None;
    let mut ds = None;
    let mut tc = None;
    for o in &qos.objects {
        let dup = match *o {
            ProviderObject::SdMode(v) => sd_mode.replace(v).is_some(),
            ProviderObject::ShapingRate(v) => shaping_rate.replace(v).is_some(),
            ProviderObject::DestAddr(a) => dest.replace(a).is_some(),
            ProviderObject::DsClass(v) => ds.replace(v).is_some(),
            ProviderObject::TrafficClass(v) => tc.replace(v).is_some(),
        };
        if dup {
            return Err(err(WSA_QOS_BAD_OBJECT));
        }
    }
    let shaping = match sd_mode {
        None => None,
        Some(TC_NONCONF_SHAPE) => Some(Shaping::ShapeAndMark),
        Some(TC_NONCONF_BORROW) => Some(Shaping::UseNonConformantMarkings),
        Some(_) => return Err(err(WSA_QOS_ESDMODEOBJ)),
    };
    if shaping_rate.is_some_and(|r| r == 0 || !specified(r)) {
        return Err(err(WSA_QOS_ESHAPERATEOBJ));
    }
    let dscp = ds
        .map(|v| {
            u8::try_from(v)
                .ok()
                .and_then(|v| Dscp::try_new(v).ok())
                .ok_or_else(|| err(WSA_QOS_BAD_OBJECT))
        })
        .transpose()?;
    let pcp = tc
        .map(|v| {
            u8::try_from(v)
                .ok()
                .and_then(|v| Pcp::try_new(v).ok())
                .ok_or_else(|| err(WSA_QOS_BAD_OBJECT))
        })
        .transpose()?;
    if !peak_ok(&qos.sending) || !peak_ok(&qos.receiving) {
        return Err(err(WSA_QOS_EFLOWSPEC));
    }
    let rate = match shaping {
        None => None,
        Some(shaping) => {
            // A zero TokenRate in a sending flowspec that asks for shaping is invalid even
            // when QOS_SHAPING_RATE names the rate (qos-api.md §11.3: sending TokenRate ≠ 0).
            if qos.sending.token_rate == 0 {
                return Err(err(WSA_QOS_EFLOWSPEC));
            }
            let bytes = shaping_rate.unwrap_or(qos.sending.token_rate);
            if !specified(bytes) {
                return Err(err(WSA_QOS_EFLOWSPEC));
            }
            Some(FlowRate {
                bandwidth: u64::from(bytes) * 8,
                shaping,
                reason: 0,
            })
        }
    };
    let service = match qos.sending.base_service() {
        // The objects all describe the sending side, which NOCHANGE says to leave alone.
        SERVICETYPE_NOCHANGE if !qos.objects.is_empty() => return Err(err(WSA_QOS_BAD_OBJECT)),
        SERVICETYPE_NOCHANGE => return Ok(SendPlan::Keep),
        st @ (SERVICETYPE_NOTRAFFIC | SERVICETYPE_BESTEFFORT) => return Ok(SendPlan::End(st)),
        st => ServiceType::try_from_u32(st).map_err(|_| err(WSA_QOS_ESERVICETYPE))?,
    };
    Ok(SendPlan::Mark {
        service: ServiceMark { service, dscp, pcp },
        dest,
        rate,
    })
}

/// What `QmGetSocketQos` reports for a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QosReport {
    /// The sending flowspec (module docs: its `ServiceType` tells whether QoS still holds).
    pub sending: Flowspec,
    /// Always `SERVICETYPE_NOCHANGE`, everything else `QOS_NOT_SPECIFIED`.
    pub receiving: Flowspec,
    /// `RSVP_STATUS_INFO.StatusCode`.
    pub status_code: u32,
    /// `ExtendedStatus1`: the DSCP applied (0 when none).
    pub dscp: u32,
    /// `ExtendedStatus2`: the 802.1p requested (0 when none).
    pub pcp: u32,
}

impl QosReport {
    fn new(sending: Flowspec, state: FlowState) -> QosReport {
        let mut sending = sending;
        if !state.alive
            && !matches!(
                sending.base_service(),
                SERVICETYPE_NOTRAFFIC | SERVICETYPE_BESTEFFORT
            )
        {
            sending.service_type = SERVICETYPE_NOTRAFFIC;
        }
        QosReport {
            sending,
            receiving: Flowspec::unspecified(SERVICETYPE_NOCHANGE),
            status_code: if state.alive {
                WSA_QOS_REQUEST_CONFIRMED
            } else {
                WSA_QOS_NO_RECEIVERS
            },
            dscp: state.mark.dscp.map_or(0, |d| u32::from(d.value())),
            pcp: state.mark.pcp.map_or(0, |p| u32::from(p.value())),
        }
    }
}

/// What the session remembers of one socket.
#[derive(Clone, Copy, Debug)]
struct SocketQos {
    /// The socket value, as the application named it.
    raw: RawSock,
    /// Which socket that value named at the last `set` (a value closed and reused for another
    /// socket is a new socket, module docs).
    identity: SocketIdentity,
    /// The flow, while qosmark marks for the socket (as far as this session knows).
    flow: Option<FlowId>,
    /// The sending flowspec last set (its service type says how it ended).
    sending: Flowspec,
    /// The service mark last applied to `flow`.
    service: Option<ServiceMark>,
    /// The rate last applied to `flow` (`None`: not shaped).
    rate: Option<FlowRate>,
}

impl SocketQos {
    /// Still the socket `raw` names now (not closed, not replaced by another socket).
    fn current(&self) -> bool {
        self.identity.same_as(socket::identity(self.raw))
    }
}

/// The session's sockets, swept of closed ones as the map grows (module docs).
#[derive(Debug, Default)]
struct Sockets {
    map: HashMap<u64, SocketQos>,
    /// Sweep when the map reaches this size.
    sweep_at: usize,
}

/// The smallest size at which the socket map is swept.
const SWEEP_MIN: usize = 64;

impl Sockets {
    /// The record of `key` if it still names the same socket; a stale one is dropped.
    fn get(&mut self, key: u64) -> Option<SocketQos> {
        let known = self.map.get(&key).copied()?;
        if known.current() {
            Some(known)
        } else {
            self.map.remove(&key);
            None
        }
    }

    /// Records `q` for `key`, first dropping every record whose socket is gone once the map
    /// has doubled since the last sweep (so each `set` costs O(1) system calls on average,
    /// and the map holds at most about twice the sockets that are open).
    fn insert(&mut self, key: u64, q: SocketQos) {
        if self.map.len() >= self.sweep_at.max(SWEEP_MIN) {
            self.map.retain(|_, k| k.current());
            self.sweep_at = self.map.len().saturating_mul(2);
        }
        self.map.insert(key, q);
    }
}

/// Opens another client of the same back end, for waits.
pub type Connector = Box<dyn Fn() -> Result<Client> + Send + Sync>;

/// GQoS on one hidden QOS2 handle (module docs).
pub struct GqosSession {
    handle: QosHandle,
    connect: Connector,
    sockets: Mutex<Sockets>,
}

impl core::fmt::Debug for GqosSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GqosSession").finish_non_exhaustive()
    }
}

/// What `create` / `remark` are asked to make of the socket's flow.
#[derive(Clone, Copy, Debug)]
struct Target {
    service: ServiceMark,
    dest: Option<SocketAddr>,
    rate: Option<FlowRate>,
}

impl GqosSession {
    /// A session on the platform's back end (`Client::connect`); waits open further
    /// connections the same way.
    ///
    /// # Errors
    /// As [`Client::connect`] (1068 when no back end runs).
    pub fn connect() -> Result<GqosSession> {
        Ok(Self::with_client(
            Client::connect()?,
            Box::new(Client::connect),
        ))
    }

    /// A session over `client`, opening wait connections with `connect`.
    #[must_use]
    pub fn with_client(client: Client, connect: Connector) -> GqosSession {
        GqosSession {
            handle: QosHandle::with_client(client),
            connect,
            sockets: Mutex::new(Sockets::default()),
        }
    }

    /// The hidden QOS2 handle.
    #[must_use]
    pub fn handle(&self) -> &QosHandle {
        &self.handle
    }

    /// How many sockets the session remembers (closed ones go at the next sweep, module
    /// docs).
    #[must_use]
    pub fn remembered(&self) -> usize {
        crate::client::lock(&self.sockets).map.len()
    }

    /// `QmSetSocketQos` for a Rust socket.
    ///
    /// # Errors
    /// As [`GqosSession::set_raw`].
    pub fn set<S: AsQosSocket + ?Sized>(&self, socket: &S, qos: &Qos) -> Result<()> {
        self.set_raw(socket.raw_socket(), qos)
    }

    /// `QmSetSocketQos` (module docs). All or nothing.
    ///
    /// # Errors
    /// The `WSA_QOS_*` codes of [`plan`], `WSA_QOS_TRAFFIC_CTRL_ERROR` when shaping was asked
    /// and the back end cannot shape, or the back end's QOS2 code.
    pub fn set_raw(&self, raw: RawSock, qos: &Qos) -> Result<()> {
        let plan = plan(qos)?;
        let key = socket::socket_value(raw);
        let mut sockets = crate::client::lock(&self.sockets);
        let known = sockets.get(key);
        // A flow this session made may have been ended by the back end meanwhile.
        let live_flow = match known.and_then(|k| k.flow) {
            Some(f) if self.state(f)?.alive => Some(f),
            _ => None,
        };
        let identity = socket::identity(raw);
        match plan {
            SendPlan::Keep => Ok(()),
            SendPlan::End(st) => {
                if let Some(f) = live_flow {
                    match self.handle.remove_raw_socket_from_flow(None, f) {
                        // Gone meanwhile: ended all the same.
                        Ok(()) => {}
                        Err(e) if e.code() == Win32Error::NOT_FOUND => {}
                        Err(e) => return Err(e),
                    }
                }
                let mut sending = known.map_or(qos.sending, |k| k.sending);
                sending.service_type = st;
                sockets.insert(
                    key,
                    SocketQos {
                        raw,
                        identity,
                        flow: None,
                        sending,
                        service: None,
                        rate: None,
                    },
                );
                Ok(())
            }
            SendPlan::Mark {
                service,
                dest,
                rate,
            } => {
                let target = Target {
                    service,
                    dest,
                    rate,
                };
                let flow = match (live_flow, known) {
                    (Some(f), Some(k)) => {
                        let mut now = k;
                        match self.remark(raw, f, &mut now, target) {
                            Ok(Some(id)) => id,
                            // The flow ended between the check and the first step: start
                            // over, as GQoS does once QoS has ended.
                            Ok(None) => self.create(raw, target)?,
                            Err(e) => {
                                // What the flow has now (all restored, unless a restoring
                                // request failed too), so the next `set` starts from the
                                // truth.
                                sockets.insert(key, now);
                                return Err(e);
                            }
                        }
                    }
                    _ => self.create(raw, target)?,
                };
                sockets.insert(
                    key,
                    SocketQos {
                        raw,
                        identity,
                        flow: Some(flow),
                        sending: qos.sending,
                        service: Some(service),
                        rate,
                    },
                );
                Ok(())
            }
        }
    }

    /// The code a refused `SetFlow(OutgoingRate)` gives the GQoS caller.
    fn rate_error(e: QosError) -> QosError {
        match e.code() {
            Win32Error::NOT_SUPPORTED => err(WSA_QOS_TRAFFIC_CTRL_ERROR),
            // A rate the shaper does not take (out of its range).
            Win32Error::INVALID_PARAMETER => err(WSA_QOS_EFLOWSPEC),
            _ => e,
        }
    }

    /// Sets `flow`'s rate to `rate`: `None` clears it.
    fn apply_rate(&self, flow: FlowId, rate: Option<FlowRate>) -> Result<()> {
        match rate {
            Some(r) => self.handle.set_flow(flow, SetFlow::OutgoingRate(r)),
            None => self.handle.set_flow(flow, SetFlow::ClearOutgoingRate),
        }
    }

    /// A new flow for the socket: registered, then its service mark and rate; on any error
    /// the flow is removed again, so nothing is left.
    fn create(&self, raw: RawSock, t: Target) -> Result<FlowId> {
        let h = &self.handle;
        let flow = h.add_raw_socket_to_flow(
            raw,
            t.dest,
            TrafficType::BestEffort,
            QOS_NON_ADAPTIVE_FLOW,
            0,
        )?;
        let result = h
            .set_flow(flow, SetFlow::Service(t.service))
            .and_then(|()| match t.rate {
                Some(r) => h
                    .set_flow(flow, SetFlow::OutgoingRate(r))
                    .map_err(Self::rate_error),
                None => Ok(()),
            });
        if let Err(e) = result {
            // Best effort: the flow is ours and new; if this fails too, the handle's close
            // removes it.
            let _ = h.remove_raw_socket_from_flow(None, flow);
            return Err(e);
        }
        Ok(flow)
    }

    /// A new `set` on the socket's live flow `flow`, whose record is `k`. Steps: the service
    /// mark, then the rate (set, or cleared when the new `set` asks for no shaping and the
    /// flow has one), then the registration — last, because it is the one step that cannot be
    /// taken back (a destination is added, and the wire removes a socket only with all of its
    /// destinations). A refused step changes nothing in the back end; the steps before it are
    /// then restored (the previous mark; the previous rate — a rate that had been cleared comes
    /// back as a new shaper, so packets the cleared one held have left). `k` follows what the
    /// flow really has after every request, including a restoring request that failed, so the
    /// caller can record it and a later `set` starts from the truth.
    ///
    /// `Ok(None)`: the flow ended before the first step (1168); nothing was changed.
    fn remark(
        &self,
        raw: RawSock,
        flow: FlowId,
        k: &mut SocketQos,
        t: Target,
    ) -> Result<Option<FlowId>> {
        let h = &self.handle;
        let (old_service, old_rate) = (k.service, k.rate);
        match h.set_flow(flow, SetFlow::Service(t.service)) {
            Ok(()) => k.service = Some(t.service),
            Err(e) if e.code() == Win32Error::NOT_FOUND => return Ok(None),
            Err(e) => return Err(e),
        }
        let undo_service = |k: &mut SocketQos| {
            if let Some(previous) = old_service {
                if h.set_flow(flow, SetFlow::Service(previous)).is_ok() {
                    k.service = old_service;
                }
            }
        };
        // Set the new rate, or clear the old one when the new `set` asks for none.
        let rate_step = t.rate.is_some() || old_rate.is_some();
        if rate_step {
            if let Err(e) = self.apply_rate(flow, t.rate) {
                undo_service(k);
                return Err(if t.rate.is_some() {
                    Self::rate_error(e)
                } else {
                    e
                });
            }
            k.rate = t.rate;
        }
        // Registered again in its flow: a new destination joins it, the same socket and
        // destination again is a no-op, and a socket number the application reused for
        // another connected socket (before the back end retired the old one) is added. An
        // unconnected socket without a new QOS_DESTADDR (87) keeps its destinations.
        match h.add_raw_socket_to_flow(
            raw,
            t.dest,
            TrafficType::BestEffort,
            QOS_NON_ADAPTIVE_FLOW,
            flow,
        ) {
            Ok(id) => Ok(Some(id)),
            Err(e) if t.dest.is_none() && e.code() == Win32Error::INVALID_PARAMETER => {
                Ok(Some(flow))
            }
            Err(e) => {
                if rate_step && self.apply_rate(flow, old_rate).is_ok() {
                    k.rate = old_rate;
                }
                undo_service(k);
                Err(e)
            }
        }
    }

    /// The state of `flow` now (`WatchFlow` without a known state).
    fn state(&self, flow: FlowId) -> Result<FlowState> {
        match self.handle.client().request(&Request::WatchFlow {
            flow_id: flow,
            known: None,
        })? {
            Response::FlowState(s) => Ok(s),
            _ => Err(QosError::GEN_FAILURE),
        }
    }

    /// The socket's flow and state now; `None` flow when it has none (never set, ended, or
    /// the value names another socket now).
    fn current(&self, raw: RawSock) -> Result<(Option<FlowId>, Flowspec, FlowState)> {
        let key = socket::socket_value(raw);
        let known = crate::client::lock(&self.sockets).get(key);
        let Some(known) = known else {
            return Ok((
                None,
                Flowspec::unspecified(SERVICETYPE_NOTRAFFIC),
                FlowState::default(),
            ));
        };
        let state = match known.flow {
            Some(f) => self.state(f)?,
            None => FlowState::default(),
        };
        Ok((known.flow.filter(|_| state.alive), known.sending, state))
    }

    /// `QmGetSocketQos`: the socket's QoS now (module docs). A socket never set reads as
    /// `SERVICETYPE_NOTRAFFIC` with every other field `QOS_NOT_SPECIFIED`.
    ///
    /// # Errors
    /// The back end's code (1164 when the connection is lost, ...).
    pub fn get(&self, raw: RawSock) -> Result<QosReport> {
        let (_, sending, state) = self.current(raw)?;
        Ok(QosReport::new(sending, state))
    }

    /// The flow id of the socket's live flow, if any (the C ABI's overlapped wait).
    ///
    /// # Errors
    /// As [`GqosSession::get`].
    pub fn watch_target(&self, raw: RawSock) -> Result<Option<(FlowId, FlowState)>> {
        let (flow, _, state) = self.current(raw)?;
        Ok(flow.map(|f| (f, state)))
    }

    /// Blocks until the socket's QoS state changes (the flow ends or its mark changes) and
    /// returns the new report, through a second connection the back end holds the request on
    /// (module docs, `FD_QOS`).
    ///
    /// # Errors
    /// 1168 when the socket has no live flow; the back end's code otherwise (the in-process
    /// transport cannot hold a request: 997 when it would have to).
    pub fn wait_change(&self, raw: RawSock) -> Result<QosReport> {
        let key = socket::socket_value(raw);
        let Some((flow, state)) = self.watch_target(raw)? else {
            return Err(QosError::new(Win32Error::NOT_FOUND));
        };
        let waiter = (self.connect)()?;
        let Response::FlowState(now) = waiter.request(&Request::WatchFlow {
            flow_id: flow,
            known: Some(state),
        })?
        else {
            return Err(QosError::GEN_FAILURE);
        };
        let sending = crate::client::lock(&self.sockets)
            .map
            .get(&key)
            .map_or(Flowspec::unspecified(SERVICETYPE_NOTRAFFIC), |k| k.sending);
        Ok(QosReport::new(sending, now))
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::panic,
        reason = "test code"
    )]
    use super::*;

    fn obj(kind: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = kind.to_ne_bytes().to_vec();
        v.extend_from_slice(&u32::try_from(8 + payload.len()).unwrap().to_ne_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn destaddr_sizes_are_the_c_layouts() {
        // x64: hdr 8, pointer at 8, ULONG at 16, padded to 24; x86: 8 + 4 + 4 = 16.
        assert_eq!(destaddr_len(8), 24);
        assert_eq!(destaddr_len(4), 16);
    }

    #[test]
    fn objects_decode_and_every_truncation_is_an_error() {
        let mut buf = obj(QOS_OBJECT_DS_CLASS, &46u32.to_ne_bytes());
        buf.extend(obj(QOS_OBJECT_TRAFFIC_CLASS, &6u32.to_ne_bytes()));
        let mut dest = 0x1122_3344_5566_7788u64.to_ne_bytes().to_vec();
        dest.extend_from_slice(&16u32.to_ne_bytes());
        dest.extend_from_slice(&[0; 4]);
        buf.extend(obj(QOS_OBJECT_DESTADDR, &dest));
        buf.extend(obj(QOS_OBJECT_SD_MODE, &1u32.to_ne_bytes()));
        buf.extend(obj(QOS_OBJECT_SHAPING_RATE, &125_000u32.to_ne_bytes()));
        let all = parse_provider_specific(&buf, 8).unwrap();
        assert_eq!(
            all,
            vec![
                RawObject::Object(ProviderObject::DsClass(46)),
                RawObject::Object(ProviderObject::TrafficClass(6)),
                RawObject::DestAddr {
                    address: 0x1122_3344_5566_7788,
                    length: 16
                },
                RawObject::Object(ProviderObject::SdMode(1)),
                RawObject::Object(ProviderObject::ShapingRate(125_000)),
            ]
        );
        // Object boundaries: 0, 12, 24, 48, 60, 72.
        let bounds = [0usize, 12, 24, 48, 60, 72];
        for cut in 1..buf.len() {
            let r = parse_provider_specific(&buf[..cut], 8);
            if bounds.contains(&cut) {
                assert!(r.is_ok(), "cut {cut}");
                continue;
            }
            let code = r.unwrap_err().raw();
            let within = cut - bounds.iter().copied().filter(|b| *b < cut).max().unwrap();
            let want = if within < 8 {
                WSA_QOS_EPROVSPECBUF
            } else {
                WSA_QOS_EOBJLENGTH
            };
            assert_eq!(code, want, "cut {cut}");
        }
        // End of list stops parsing: garbage after it is not read.
        let mut end = obj(QOS_OBJECT_DS_CLASS, &10u32.to_ne_bytes());
        end.extend(obj(QOS_OBJECT_END_OF_LIST, &[]));
        end.extend_from_slice(&[0xff; 5]);
        assert_eq!(
            parse_provider_specific(&end, 8).unwrap(),
            vec![RawObject::Object(ProviderObject::DsClass(10))]
        );
    }

    /// `RSVP_OBJECT_RESERVE_INFO` (qossp.h): a request object qosmark does not support.
    const RSVP_OBJECT_RESERVE_INFO_ID: u32 = 1001;

    #[test]
    fn malformed_objects_get_their_codes() {
        let code = |b: &[u8]| parse_provider_specific(b, 8).unwrap_err().raw();
        // Unknown type.
        assert_eq!(
            code(&obj(RSVP_OBJECT_RESERVE_INFO_ID, &[0; 12])),
            WSA_QOS_EUNKOWNPSOBJ
        );
        assert_eq!(code(&obj(4003, &[0; 4])), WSA_QOS_EUNKOWNPSOBJ);
        // Length below the header, beyond the buffer, or not the object's size.
        let mut b = obj(QOS_OBJECT_DS_CLASS, &1u32.to_ne_bytes());
        b[4..8].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(code(&b), WSA_QOS_EOBJLENGTH);
        b[4..8].copy_from_slice(&13u32.to_ne_bytes());
        assert_eq!(code(&b), WSA_QOS_EOBJLENGTH);
        b[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(code(&b), WSA_QOS_EOBJLENGTH);
        assert_eq!(code(&obj(QOS_OBJECT_SD_MODE, &[0; 8])), WSA_QOS_EOBJLENGTH);
        // A 32-bit QOS_DESTADDR in a 64-bit buffer is the wrong size.
        assert_eq!(code(&obj(QOS_OBJECT_DESTADDR, &[0; 8])), WSA_QOS_EOBJLENGTH);
        assert!(parse_provider_specific(&obj(QOS_OBJECT_DESTADDR, &[0; 8]), 4).is_ok());
        // An RSVP_STATUS_INFO (what a get returns) is accepted and ignored; one of another
        // length is not.
        let mut round_trip = obj(RSVP_OBJECT_STATUS_INFO, &[0; 12]);
        round_trip.extend(obj(QOS_OBJECT_DS_CLASS, &8u32.to_ne_bytes()));
        assert_eq!(
            parse_provider_specific(&round_trip, 8).unwrap(),
            vec![RawObject::Object(ProviderObject::DsClass(8))]
        );
        assert_eq!(
            code(&obj(RSVP_OBJECT_STATUS_INFO, &[0; 8])),
            WSA_QOS_EOBJLENGTH
        );
        // Fewer bytes than a header.
        assert_eq!(code(&[1, 2, 3]), WSA_QOS_EPROVSPECBUF);
        // ... unless they are zeros: the padding after a C struct of objects that ends with a
        // 12-byte one (sizeof rounds it up to 8 on 64-bit).
        let mut padded = obj(QOS_OBJECT_DS_CLASS, &46u32.to_ne_bytes());
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(
            parse_provider_specific(&padded, 8).unwrap(),
            vec![RawObject::Object(ProviderObject::DsClass(46))]
        );
        *padded.last_mut().unwrap() = 1;
        assert_eq!(code(&padded), WSA_QOS_EPROVSPECBUF);
        assert_eq!(parse_provider_specific(&[], 8).unwrap(), vec![]);
    }

    fn qos(st: u32, objects: Vec<ProviderObject>) -> Qos {
        Qos {
            sending: Flowspec::unspecified(st),
            receiving: Flowspec::unspecified(SERVICETYPE_NOCHANGE),
            objects,
        }
    }

    fn code_of(q: &Qos) -> u32 {
        plan(q).unwrap_err().raw()
    }

    #[test]
    fn flowspec_and_object_rules() {
        use ProviderObject::{DsClass, SdMode, ShapingRate, TrafficClass};
        for st in [4, 5, 7, 8, 9, 0xB, 0xC, 0xE, 0x8001_0000, u32::MAX] {
            assert_eq!(code_of(&qos(st, vec![])), WSA_QOS_ESERVICETYPE, "{st:#x}");
            let mut q = qos(SERVICETYPE_GUARANTEED, vec![]);
            q.receiving.service_type = st;
            assert_eq!(code_of(&q), WSA_QOS_ESERVICETYPE, "receiving {st:#x}");
        }
        // The signalling flag is accepted and ignored.
        assert!(matches!(
            plan(&qos(
                SERVICETYPE_GUARANTEED | SERVICE_NO_QOS_SIGNALING,
                vec![]
            )),
            Ok(SendPlan::Mark { .. })
        ));
        assert_eq!(
            code_of(&qos(2, vec![DsClass(1), DsClass(2)])),
            WSA_QOS_BAD_OBJECT
        );
        assert_eq!(code_of(&qos(2, vec![DsClass(64)])), WSA_QOS_BAD_OBJECT);
        assert_eq!(code_of(&qos(2, vec![TrafficClass(8)])), WSA_QOS_BAD_OBJECT);
        for m in [2, 3, 4, u32::MAX] {
            assert_eq!(code_of(&qos(2, vec![SdMode(m)])), WSA_QOS_ESDMODEOBJ);
        }
        assert_eq!(
            code_of(&qos(2, vec![ShapingRate(0)])),
            WSA_QOS_ESHAPERATEOBJ
        );
        // Shaping without a rate, or with rate 0.
        assert_eq!(code_of(&qos(2, vec![SdMode(1)])), WSA_QOS_EFLOWSPEC);
        let mut q = qos(2, vec![SdMode(1)]);
        q.sending.token_rate = 0;
        assert_eq!(code_of(&q), WSA_QOS_EFLOWSPEC);
        // Peak below the token rate, either direction; infinity and unspecified are fine.
        let mut q = qos(2, vec![]);
        q.sending.token_rate = 1000;
        q.sending.peak_bandwidth = 999;
        assert_eq!(code_of(&q), WSA_QOS_EFLOWSPEC);
        q.sending.peak_bandwidth = POSITIVE_INFINITY_RATE;
        assert!(plan(&q).is_ok());
        q.receiving.token_rate = 10;
        q.receiving.peak_bandwidth = 9;
        assert_eq!(code_of(&q), WSA_QOS_EFLOWSPEC);
        // A valid shaped set: rate in bit/s, ShapingRate wins over TokenRate.
        let mut q = qos(3, vec![SdMode(1), DsClass(46), TrafficClass(6)]);
        q.sending.token_rate = 16_000;
        let Ok(SendPlan::Mark { service, rate, .. }) = plan(&q) else {
            panic!("{:?}", plan(&q));
        };
        assert_eq!(service.service, ServiceType::Guaranteed);
        assert_eq!(service.dscp.map(Dscp::value), Some(46));
        assert_eq!(service.pcp.map(Pcp::value), Some(6));
        let rate = rate.unwrap();
        assert_eq!(
            (rate.bandwidth, rate.shaping),
            (128_000, Shaping::ShapeAndMark)
        );
        q.objects = vec![SdMode(0), ShapingRate(1000)];
        let Ok(SendPlan::Mark { rate, .. }) = plan(&q) else {
            panic!()
        };
        let rate = rate.unwrap();
        assert_eq!(
            (rate.bandwidth, rate.shaping),
            (8000, Shaping::UseNonConformantMarkings)
        );
        // Ending and keeping.
        assert_eq!(plan(&qos(0, vec![])), Ok(SendPlan::End(0)));
        assert_eq!(plan(&qos(1, vec![])), Ok(SendPlan::End(1)));
        assert_eq!(plan(&qos(6, vec![])), Ok(SendPlan::Keep));
        // Objects are validated even when the sending side does not change, and a valid one
        // is refused there too: it would change the side NOCHANGE keeps.
        assert_eq!(code_of(&qos(6, vec![DsClass(99)])), WSA_QOS_BAD_OBJECT);
        assert_eq!(code_of(&qos(6, vec![DsClass(46)])), WSA_QOS_BAD_OBJECT);
        assert_eq!(code_of(&qos(6, vec![TrafficClass(5)])), WSA_QOS_BAD_OBJECT);
        // Ending ignores valid objects.
        assert_eq!(plan(&qos(1, vec![DsClass(46)])), Ok(SendPlan::End(1)));
        // A zero TokenRate asking for shaping is invalid even when QOS_SHAPING_RATE gives the
        // rate; an unspecified one is not.
        let mut z = qos(3, vec![SdMode(1), ShapingRate(1000)]);
        z.sending.token_rate = 0;
        assert_eq!(code_of(&z), WSA_QOS_EFLOWSPEC);
        z.sending.token_rate = QOS_NOT_SPECIFIED;
        assert!(matches!(
            plan(&z),
            Ok(SendPlan::Mark {
                rate: Some(FlowRate {
                    bandwidth: 8000,
                    ..
                }),
                ..
            })
        ));
    }
}
