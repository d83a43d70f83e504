//! `IRP_MJ_DEVICE_CONTROL` as plain Rust over byte slices: input bytes, output capacity and the
//! 32-bit control code in, an NTSTATUS and the answer bytes out.
//!
//! Nothing here touches an IRP, a lock or a kernel routine, so the whole request path — code
//! matching, decoding, the engine call, the short-buffer protocol and the status mapping — is
//! unit-tested on the host against the real engine. The dispatch routine (`device` module,
//! Windows only) only copies `SystemBuffer` in and out and holds the engine lock around
//! [`execute`].
//!
//! # Steps, in the order the driver runs them
//!
//! 1. [`decode`] (no lock): the full 32-bit code must be one of
//!    [`qosmark_abi::ioctl::request_kind`]'s codes, else `STATUS_INVALID_DEVICE_REQUEST`; the
//!    input must be one whole record of that kind
//!    ([`qosmark_abi::codec::decode_request_with_flags`], then the kind check), else the
//!    Win32 code of the [`AbiError`] (87, or 8 on allocation
//!    failure) as an NTSTATUS. Without `FLAG_QOS2_ANSWER`, an output buffer smaller than
//!    [`MIN_OUTPUT_LEN`] is refused with
//!    `STATUS_BUFFER_TOO_SMALL` *before* the engine runs, so a request that changes state is
//!    never committed when its answer could not even say "too small". With the flag (SetFlow,
//!    QueryFlow, NotifyFlow only, the codec refuses it elsewhere) the output buffer is the
//!    application's own QOS2 buffer and may be as small as the QOS2 structure (0 bytes for
//!    SetFlow): it is checked after the engine ran, against
//!    [`qos2_answer_len`] — SetFlow needs 0 bytes, so a
//!    committed SetFlow can never be answered "too small".
//! 2. [`execute`] (engine lock held by the caller): [`Engine::apply`]. The decoded request is an
//!    owned value, so with `METHOD_BUFFERED` (input and output share one system buffer) the
//!    input has been consumed before any output byte is written.
//! 3. [`encode`] (no lock): a successful response goes through
//!    [`encode_response_for_buffer`] — the size protocol documented in `abi/src/codec.rs`:
//!    fits → `STATUS_SUCCESS` with the record; does not fit → an Error record { 122, required
//!    size } with `STATUS_BUFFER_OVERFLOW`. With `FLAG_QOS2_ANSWER`: the bare QOS2 structure
//!    ([`encode_qos2_answer`]) and `STATUS_SUCCESS`, or `STATUS_BUFFER_TOO_SMALL` and nothing
//!    when it does not fit. An engine error completes with [`ntstatus_for`] of its Win32 code
//!    and no data.
//!
//! 4. `WatchFlow` (GQoS `FD_QOS`): [`finish`] says [`Outcome::Hold`] when the flow's state is
//!    the one the caller knows; the dispatch routine queues the IRP (`pending`) and returns
//!    `STATUS_PENDING`. After every request that changed something, after `IRP_MJ_CLEANUP`
//!    and right after queueing, the driver runs [`recheck`] on each queued IRP (under the
//!    engine lock) and completes those whose flow ended or changed mark, or whose handle
//!    closed (`STATUS_CANCELLED`, 995).
//!
//! `Information` (the byte count the I/O manager copies back) is always `bytes.len()` of the
//! returned [`Completion`], and never more than the output capacity: every path is checked by
//! the tests below.
//!
//! Memory: decoding allocates at most the input's own size (bounded by
//! [`MAX_RECORD_LEN`](qosmark_abi::codec::MAX_RECORD_LEN) through the record's length check),
//! encoding at most one answer record (also bounded by `MAX_RECORD_LEN`: the engine clamps its
//! list sizes to what one record can carry). Every allocation is fallible.

#![allow(
    clippy::doc_markdown,
    reason = "request names (SetFlow, QueryFlow, ...) are wire-protocol names, not code items"
)]

use alloc::vec::Vec;

use qosmark_abi::codec::{
    decode_request_with_flags, encode_qos2_answer, encode_response_for_buffer, qos2_answer_len,
    AbiError, FLAG_QOS2_ANSWER, MIN_OUTPUT_LEN,
};
use qosmark_abi::ioctl::{request_kind, RequestKind};
use qosmark_abi::status::{ntstatus_for, NtStatus, Win32Error};
use qosmark_abi::{Request, Response};
use qosmark_engine::{Engine, EngineError, HandleId};

/// A decoded control request, ready for [`execute`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The request kind the control code named.
    pub kind: RequestKind,
    /// The request itself.
    pub request: Request,
    /// The header carried `FLAG_QOS2_ANSWER`: a success is answered with the bare QOS2
    /// structure, not a record.
    pub qos2_answer: bool,
}

/// How to complete the IRP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// `IoStatus.Status`.
    pub status: NtStatus,
    /// The bytes to copy to the start of `SystemBuffer`; `IoStatus.Information` is their count.
    /// Empty for every error status (the I/O manager copies nothing then).
    pub bytes: Vec<u8>,
}

impl Completion {
    /// A completion that carries no data.
    #[must_use]
    pub const fn status_only(status: NtStatus) -> Self {
        Completion {
            status,
            bytes: Vec::new(),
        }
    }
}

/// Whether a successful request of this kind changed the persisted configuration (admin
/// rules, traffic table, user DSCP allow-list), so the driver must write the `Parameters`
/// key afterwards (`config` module).
#[must_use]
pub const fn changes_configuration(kind: RequestKind) -> bool {
    match kind {
        RequestKind::AddRule
        | RequestKind::RemoveRule
        | RequestKind::SetTrafficTable
        | RequestKind::ReplaceRules => true,
        RequestKind::QueryStatus
        | RequestKind::AddSocketToFlow
        | RequestKind::RemoveSocketFromFlow
        | RequestKind::SetFlow
        | RequestKind::QueryFlow
        | RequestKind::NotifyFlow
        | RequestKind::EnumerateFlows
        | RequestKind::ListRules
        | RequestKind::GetTrafficTable
        | RequestKind::ListFlows
        | RequestKind::WatchFlow => false,
    }
}

/// Step 1: matches the code, decodes the input record and checks the output capacity.
///
/// # Errors
/// The completion to finish the IRP with at once: `STATUS_INVALID_DEVICE_REQUEST` for a code
/// that is not ours, the NTSTATUS of the decoding error's Win32 code for a bad record (a
/// record of another kind is 87), `STATUS_BUFFER_TOO_SMALL` for an output buffer that cannot
/// hold an Error record (record answers only).
pub fn decode(code: u32, input: &[u8], output_capacity: u32) -> Result<Decoded, Completion> {
    let Some(kind) = request_kind(code) else {
        return Err(Completion::status_only(NtStatus::INVALID_DEVICE_REQUEST));
    };
    let refuse = |error: AbiError| Completion::status_only(ntstatus_for(error.win32()));
    let (request, flags) = decode_request_with_flags(input).map_err(refuse)?;
    if RequestKind::of(&request) != kind {
        return Err(refuse(AbiError::BadKind));
    }
    let qos2_answer = flags & FLAG_QOS2_ANSWER != 0;
    if !qos2_answer && output_capacity < MIN_OUTPUT_LEN {
        return Err(Completion::status_only(NtStatus::BUFFER_TOO_SMALL));
    }
    Ok(Decoded {
        kind,
        request,
        qos2_answer,
    })
}

/// Step 1b: charges the request to `handle`'s request rate (`Engine::charge_request`, time
/// in nanoseconds of the interrupt-time clock). A refusal (1450, or 6 for a closed handle) is
/// the completion to send; nothing else changes. Every `IRP_MJ_DEVICE_CONTROL` request that
/// decoded is charged once, before [`execute`].
///
/// # Errors
/// The completion of a refused request (status only).
pub fn charge(engine: &mut Engine, handle: HandleId, now_ns: u64) -> Result<(), Completion> {
    engine
        .charge_request(handle, now_ns)
        .map_err(|error| Completion::status_only(status_for_engine_error(error)))
}

/// Step 2: runs the request on the engine for `handle` (the caller holds the engine lock).
///
/// # Errors
/// The engine's refusal; the engine state is then unchanged (engine contract).
pub fn execute(
    engine: &mut Engine,
    handle: HandleId,
    decoded: &Decoded,
) -> Result<Response, EngineError> {
    engine.apply(handle, &decoded.request)
}

/// What the dispatch routine does with a request it executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Complete the IRP with this.
    Complete(Completion),
    /// A `WatchFlow` whose state is the one the caller knows ([`would_hold`]): queue the IRP
    /// in the cancel-safe queue (`pending`) and return `STATUS_PENDING`; [`recheck`] decides
    /// later, after every request that may change a flow (GQoS `FD_QOS`, `engine::control`
    /// docs). `IRP_MJ_CLEANUP` and `CancelIoEx` complete it with `STATUS_CANCELLED` (995).
    Hold,
}

/// Step 3, with holding: [`Outcome::Hold`] for a `WatchFlow` to hold, else [`encode`].
#[must_use]
pub fn finish(
    decoded: &Decoded,
    result: &Result<Response, EngineError>,
    output_capacity: u32,
) -> Outcome {
    match result {
        Ok(response) if would_hold(&decoded.request, response) => Outcome::Hold,
        _ => Outcome::Complete(encode(result, decoded.qos2_answer, output_capacity)),
    }
}

/// Re-evaluates a held `WatchFlow` IRP (the caller holds the engine lock): `code`, `input`
/// and `output_capacity` are the IRP's (its input record is still at the start of its system
/// buffer: nothing was written there yet), `handle` its file object's engine handle (`None`
/// once `IRP_MJ_CLEANUP` ran). `None`: still unchanged, keep holding. `Some`: complete it
/// with this — the new state, or `STATUS_CANCELLED` for a closed handle.
#[must_use]
pub fn recheck(
    engine: &mut Engine,
    handle: Option<HandleId>,
    code: u32,
    input: &[u8],
    output_capacity: u32,
) -> Option<Completion> {
    let Some(handle) = handle else {
        return Some(Completion::status_only(NtStatus::CANCELLED));
    };
    let decoded = match decode(code, input, output_capacity) {
        Ok(decoded) => decoded,
        Err(completion) => return Some(completion),
    };
    let result = execute(engine, handle, &decoded);
    match finish(&decoded, &result, output_capacity) {
        Outcome::Hold => None,
        Outcome::Complete(completion) => Some(completion),
    }
}

/// Whether `response` (the engine's answer to `request`) is a `WatchFlow` state equal to the
/// state the caller already knows: a back end that supports held requests keeps such a
/// request until the state changes.
#[must_use]
pub fn would_hold(request: &Request, response: &Response) -> bool {
    matches!(
        (request, response),
        (Request::WatchFlow { known: Some(known), .. }, Response::FlowState(now)) if known == now
    )
}

/// Step 3: turns the engine's result into the IRP's completion for an output buffer of
/// `output_capacity` bytes.
#[must_use]
pub fn encode(
    result: &Result<Response, EngineError>,
    qos2_answer: bool,
    output_capacity: u32,
) -> Completion {
    match result {
        Ok(response) if qos2_answer => encode_qos2(response, output_capacity),
        Ok(response) => {
            let mut bytes = Vec::new();
            match encode_response_for_buffer(response, output_capacity, &mut bytes) {
                Ok(status) => Completion { status, bytes },
                Err(error) => Completion::status_only(ntstatus_for(error.win32())),
            }
        }
        Err(error) => Completion::status_only(status_for_engine_error(*error)),
    }
}

/// A success answered as the bare QOS2 structure.
fn encode_qos2(response: &Response, output_capacity: u32) -> Completion {
    let refuse = |error: AbiError| Completion::status_only(ntstatus_for(error.win32()));
    let Some(len) = qos2_answer_len(response) else {
        // The codec admits the flag only on requests whose answers have a QOS2 form; an
        // answer without one would be an engine/codec mismatch, reported as a bad request
        // rather than as a record the caller did not ask for.
        return refuse(AbiError::BadKind);
    };
    if len > output_capacity {
        return Completion::status_only(NtStatus::BUFFER_TOO_SMALL);
    }
    let mut bytes = Vec::new();
    match encode_qos2_answer(response, &mut bytes) {
        Ok(()) => Completion {
            status: NtStatus::SUCCESS,
            bytes,
        },
        Err(error) => refuse(error),
    }
}

/// The status an engine refusal completes with.
#[must_use]
pub fn status_for_engine_error(error: EngineError) -> NtStatus {
    ntstatus_for(error.win32())
}

/// The whole request path without locking: [`decode`], [`execute`], [`encode`]. The driver
/// runs the three steps itself so that it holds the engine lock only around `execute`; this
/// composition is what the host tests exercise, and it returns whether the configuration
/// changed (see [`changes_configuration`]).
pub fn process(
    engine: &mut Engine,
    handle: HandleId,
    code: u32,
    input: &[u8],
    output_capacity: u32,
) -> (Completion, bool) {
    let decoded = match decode(code, input, output_capacity) {
        Ok(decoded) => decoded,
        Err(completion) => return (completion, false),
    };
    let result = execute(engine, handle, &decoded);
    let changed = result.is_ok() && changes_configuration(decoded.kind);
    let completion = match finish(&decoded, &result, output_capacity) {
        Outcome::Complete(completion) => completion,
        // The dispatch routine queues the IRP and returns STATUS_PENDING.
        Outcome::Hold => Completion::status_only(NtStatus::PENDING),
    };
    (completion, changed)
}

/// The status `IRP_MJ_CREATE` completes with when the engine refuses a new handle.
#[must_use]
pub fn status_for_open_error(error: EngineError) -> NtStatus {
    match error {
        // 1450 → STATUS_INSUFFICIENT_RESOURCES; 8 → STATUS_NO_MEMORY: both through the table.
        EngineError::LimitReached | EngineError::NoMemory => ntstatus_for(error.win32()),
        // open_handle documents no other error; anything else is reported as a failure of the
        // device rather than invented.
        EngineError::InvalidParameter
        | EngineError::NotFound
        | EngineError::AccessDenied
        | EngineError::InvalidHandle
        | EngineError::InsufficientBuffer { .. }
        | EngineError::NotSupported
        | EngineError::AlreadyExists
        | EngineError::Aborted
        | EngineError::NoData => ntstatus_for(Win32Error::GEN_FAILURE),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::too_many_lines,
        clippy::panic,
        reason = "test code: a panic is a test failure"
    )]

    use super::*;
    use alloc::vec;
    use qosmark_abi::codec::{
        decode_response, encode_request, record_len, ErrorReply, Reply, ERROR_RECORD_LEN,
        HEADER_LEN, MAX_RECORD_LEN,
    };
    use qosmark_abi::ioctl::{
        ctl_code, DEVICE_TYPE, FILE_ANY_ACCESS, IOCTL_QOSMARK_ADD_RULE,
        IOCTL_QOSMARK_ENUMERATE_FLOWS, IOCTL_QOSMARK_LIST_RULES, IOCTL_QOSMARK_QUERY_STATUS,
        METHOD_BUFFERED,
    };
    use qosmark_abi::types::heapless_name::RuleName;
    use qosmark_abi::{
        Caller, Dscp, Family, PortRange, Privilege, Protocol, RuleAction, RuleProtocol, RuleSpec,
        SocketInfo, TrafficType,
    };
    use qosmark_engine::Limits;
    use std::net::SocketAddr;

    // Independent oracle: the NTSTATUS values written out from ntstatus.h, not taken from the
    // abi constants.
    const STATUS_SUCCESS: u32 = 0x0000_0000;
    const STATUS_BUFFER_OVERFLOW: u32 = 0x8000_0005;
    const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;
    const STATUS_INVALID_DEVICE_REQUEST: u32 = 0xC000_0010;
    const STATUS_ACCESS_DENIED: u32 = 0xC000_0022;
    const STATUS_BUFFER_TOO_SMALL: u32 = 0xC000_0023;
    const STATUS_OBJECT_NAME_COLLISION: u32 = 0xC000_0035;
    const STATUS_INVALID_HANDLE: u32 = 0xC000_0008;
    const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;
    const STATUS_PENDING: u32 = 0x0000_0103;
    const STATUS_CANCELLED: u32 = 0xC000_0120;
    const STATUS_NOT_FOUND: u32 = 0xC000_0225;

    fn engine_with(privilege: Privilege) -> (Engine, HandleId) {
        let mut engine = Engine::with_seed(Limits::default(), 7);
        let handle = engine
            .open_handle(Caller {
                pid: 1234,
                privilege,
            })
            .unwrap();
        (engine, handle)
    }

    fn record(request: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(request, &mut out).unwrap();
        out
    }

    fn rule(name: &str, dscp: u8) -> RuleSpec {
        RuleSpec {
            name: RuleName::try_new(name).unwrap(),
            precedence: 1,
            protocol: RuleProtocol::Udp,
            local_prefix: None,
            remote_prefix: None,
            local_ports: None,
            remote_ports: Some(PortRange {
                first: 5000,
                last: 5010,
            }),
            action: RuleAction::Dscp(Dscp::try_new(dscp).unwrap()),
            pcp: None,
            throttle_bps: None,
        }
    }

    fn add_udp_flow(engine: &mut Engine, handle: HandleId, port: u16) -> u32 {
        let local: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let dest: SocketAddr = alloc::format!("198.51.100.7:{port}").parse().unwrap();
        let request = Request::AddSocketToFlow {
            socket: SocketInfo {
                socket: u64::from(port),
                family: Family::V4,
                protocol: Protocol::Udp,
                local,
                peer: None,
            },
            dest: Some(dest),
            traffic_type: TrafficType::Voice,
            flags: 0,
            flow_id: 0,
        };
        let (c, _) = process(
            engine,
            handle,
            RequestKind::AddSocketToFlow.code(),
            &record(&request),
            64,
        );
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        match decode_response(RequestKind::AddSocketToFlow, &c.bytes).unwrap() {
            Reply::Response(Response::FlowId(id)) => id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_codes_are_refused_before_decoding() {
        let (mut engine, handle) = engine_with(Privilege::Admin);
        let status_record = record(&Request::QueryStatus);
        for code in [
            0,
            u32::MAX,
            // Right function, wrong access / method.
            ctl_code(DEVICE_TYPE, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS),
            ctl_code(DEVICE_TYPE, 0x800, 3, 1),
            // Another device type.
            ctl_code(0x22, 0x800, METHOD_BUFFERED, 1),
            // First unused function.
            ctl_code(DEVICE_TYPE, 0x800 + 64, METHOD_BUFFERED, 1),
        ] {
            let (c, changed) = process(&mut engine, handle, code, &status_record, 4096);
            assert_eq!(c.status.bits(), STATUS_INVALID_DEVICE_REQUEST, "{code:#x}");
            assert!(c.bytes.is_empty());
            assert!(!changed);
        }
    }

    #[test]
    fn query_status_round_trip() {
        let (mut engine, handle) = engine_with(Privilege::User);
        let (c, changed) = process(
            &mut engine,
            handle,
            IOCTL_QOSMARK_QUERY_STATUS,
            &record(&Request::QueryStatus),
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert!(!changed);
        assert_eq!(record_len(&c.bytes).unwrap() as usize, c.bytes.len());
        match decode_response(RequestKind::QueryStatus, &c.bytes).unwrap() {
            Reply::Response(Response::Status(s)) => {
                assert_eq!(s.handles, 1);
                assert_eq!(s.flows, 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_of_another_kind_is_invalid_parameter() {
        let (mut engine, handle) = engine_with(Privilege::Admin);
        // A ListRules record sent with the QueryStatus code.
        let (c, _) = process(
            &mut engine,
            handle,
            IOCTL_QOSMARK_QUERY_STATUS,
            &record(&Request::ListRules),
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_INVALID_PARAMETER);
        assert!(c.bytes.is_empty());
    }

    #[test]
    fn every_truncation_and_extension_of_a_request_is_invalid_parameter() {
        let (mut engine, handle) = engine_with(Privilege::Admin);
        let full = record(&Request::AddRule(rule("voip", 46)));
        for len in 0..full.len() {
            let (c, changed) = process(
                &mut engine,
                handle,
                IOCTL_QOSMARK_ADD_RULE,
                &full[..len],
                4096,
            );
            assert_eq!(c.status.bits(), STATUS_INVALID_PARAMETER, "len {len}");
            assert!(c.bytes.is_empty());
            assert!(!changed);
        }
        let mut longer = full.clone();
        longer.push(0);
        let (c, _) = process(&mut engine, handle, IOCTL_QOSMARK_ADD_RULE, &longer, 4096);
        assert_eq!(c.status.bits(), STATUS_INVALID_PARAMETER);
        // Nothing was added by any of them.
        let (c, _) = process(
            &mut engine,
            handle,
            IOCTL_QOSMARK_LIST_RULES,
            &record(&Request::ListRules),
            4096,
        );
        match decode_response(RequestKind::ListRules, &c.bytes).unwrap() {
            Reply::Response(Response::Rules(rules)) => assert!(rules.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_single_byte_corruption_is_refused_or_decodes_cleanly() {
        // No panic, and the status is one of the documented outcomes.
        let (mut engine, handle) = engine_with(Privilege::Admin);
        let full = record(&Request::AddRule(rule("video", 34)));
        for i in 0..full.len() {
            for v in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                let mut bytes = full.clone();
                bytes[i] = v;
                let (c, _) = process(&mut engine, handle, IOCTL_QOSMARK_ADD_RULE, &bytes, 4096);
                let s = c.status.bits();
                assert!(
                    [
                        STATUS_SUCCESS,
                        STATUS_INVALID_PARAMETER,
                        STATUS_OBJECT_NAME_COLLISION
                    ]
                    .contains(&s),
                    "byte {i} = {v:#x}: {s:#x}"
                );
                if s != STATUS_SUCCESS {
                    assert!(c.bytes.is_empty());
                }
                // Remove whatever got in so the next iteration starts clean.
                if s == STATUS_SUCCESS {
                    let Request::AddRule(spec) =
                        qosmark_abi::codec::decode_request(&bytes).unwrap()
                    else {
                        panic!("not an AddRule");
                    };
                    let (r, _) = process(
                        &mut engine,
                        handle,
                        RequestKind::RemoveRule.code(),
                        &record(&Request::RemoveRule(spec.name)),
                        64,
                    );
                    assert_eq!(r.status.bits(), STATUS_SUCCESS);
                }
            }
        }
    }

    #[test]
    fn output_smaller_than_an_error_record_is_refused_before_the_engine_runs() {
        let (mut engine, handle) = engine_with(Privilege::Admin);
        let add = record(&Request::AddRule(rule("voip", 46)));
        for capacity in 0..ERROR_RECORD_LEN {
            let (c, changed) = process(&mut engine, handle, IOCTL_QOSMARK_ADD_RULE, &add, capacity);
            assert_eq!(c.status.bits(), STATUS_BUFFER_TOO_SMALL, "cap {capacity}");
            assert!(c.bytes.is_empty());
            assert!(!changed);
        }
        // The rule was never added: adding it now with room succeeds (not 183).
        let (c, changed) = process(&mut engine, handle, IOCTL_QOSMARK_ADD_RULE, &add, 24);
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert!(changed);
        assert_eq!(c.bytes.len(), HEADER_LEN as usize);
    }

    #[test]
    fn short_buffer_protocol_for_a_list_answer_at_every_capacity() {
        let (mut engine, handle) = engine_with(Privilege::Admin);
        let ids: Vec<u32> = (0..5)
            .map(|i| add_udp_flow(&mut engine, handle, 6000 + i))
            .collect();
        // 16 header + 8 list header + 5 x 4.
        let need = 16 + 8 + 5 * 4;
        let enumerate = record(&Request::EnumerateFlows);
        for capacity in 0..=(need + 8) {
            let (c, changed) = process(
                &mut engine,
                handle,
                IOCTL_QOSMARK_ENUMERATE_FLOWS,
                &enumerate,
                capacity,
            );
            assert!(!changed);
            assert!(c.bytes.len() <= capacity as usize, "cap {capacity}");
            if capacity < 24 {
                assert_eq!(c.status.bits(), STATUS_BUFFER_TOO_SMALL);
                assert!(c.bytes.is_empty());
            } else if capacity < need {
                assert_eq!(c.status.bits(), STATUS_BUFFER_OVERFLOW, "cap {capacity}");
                assert_eq!(c.bytes.len(), 24);
                assert_eq!(
                    decode_response(RequestKind::EnumerateFlows, &c.bytes).unwrap(),
                    Reply::Error(ErrorReply {
                        win32: Win32Error::INSUFFICIENT_BUFFER,
                        required_size: need,
                    })
                );
            } else {
                assert_eq!(c.status.bits(), STATUS_SUCCESS, "cap {capacity}");
                assert_eq!(c.bytes.len(), need as usize);
                assert_eq!(
                    decode_response(RequestKind::EnumerateFlows, &c.bytes).unwrap(),
                    Reply::Response(Response::FlowIds(ids.clone()))
                );
            }
        }
    }

    #[test]
    fn engine_errors_map_to_their_statuses_without_data() {
        let (mut engine, user) = engine_with(Privilege::User);
        // A user may not add rules: 5 → STATUS_ACCESS_DENIED.
        let (c, changed) = process(
            &mut engine,
            user,
            IOCTL_QOSMARK_ADD_RULE,
            &record(&Request::AddRule(rule("voip", 46))),
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_ACCESS_DENIED);
        assert!(c.bytes.is_empty());
        assert!(!changed);
        // Unknown flow: 1168 → STATUS_NOT_FOUND.
        let query = Request::QueryFlow {
            flow_id: 99,
            op: qosmark_abi::QueryFlow::PacketPriority,
        };
        let (c, _) = process(
            &mut engine,
            user,
            RequestKind::QueryFlow.code(),
            &record(&query),
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_NOT_FOUND);
        assert!(c.bytes.is_empty());
        // NotifyFlow on a live flow: 50 → STATUS_NOT_SUPPORTED.
        let flow = add_udp_flow(&mut engine, user, 7000);
        let notify = Request::NotifyFlow {
            flow_id: flow,
            op: qosmark_abi::NotifyFlow::Congested,
            threshold: None,
        };
        let (c, _) = process(
            &mut engine,
            user,
            RequestKind::NotifyFlow.code(),
            &record(&notify),
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_NOT_SUPPORTED);
        // A closed handle: 6 → STATUS_INVALID_HANDLE.
        engine.close_handle(user).unwrap();
        let (c, _) = process(
            &mut engine,
            user,
            IOCTL_QOSMARK_QUERY_STATUS,
            &record(&Request::QueryStatus),
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_INVALID_HANDLE);
    }

    #[test]
    fn duplicate_rule_is_a_name_collision_and_configuration_changes_are_flagged() {
        let (mut engine, admin) = engine_with(Privilege::Admin);
        let add = record(&Request::AddRule(rule("voip", 46)));
        let (c, changed) = process(&mut engine, admin, IOCTL_QOSMARK_ADD_RULE, &add, 64);
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert!(changed);
        let (c, changed) = process(&mut engine, admin, IOCTL_QOSMARK_ADD_RULE, &add, 64);
        assert_eq!(c.status.bits(), STATUS_OBJECT_NAME_COLLISION);
        assert!(!changed);
        let table = Request::SetTrafficTable(qosmark_engine::traffic::default_table());
        let (c, changed) = process(
            &mut engine,
            admin,
            RequestKind::SetTrafficTable.code(),
            &record(&table),
            64,
        );
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert!(changed);
        for kind in RequestKind::ALL {
            let expected = matches!(
                kind,
                RequestKind::AddRule
                    | RequestKind::RemoveRule
                    | RequestKind::SetTrafficTable
                    | RequestKind::ReplaceRules
            );
            assert_eq!(changes_configuration(kind), expected, "{kind:?}");
        }
    }

    #[test]
    fn huge_inputs_are_refused_without_allocating_their_size() {
        let (mut engine, handle) = engine_with(Privilege::Admin);
        // A header that claims the maximum length over a buffer one byte longer than that.
        let mut bytes = vec![0u8; MAX_RECORD_LEN as usize + 1];
        let header = record(&Request::ListRules);
        bytes[..12].copy_from_slice(&header[..12]);
        bytes[12..16].copy_from_slice(&(MAX_RECORD_LEN + 1).to_le_bytes());
        let (c, _) = process(&mut engine, handle, IOCTL_QOSMARK_LIST_RULES, &bytes, 4096);
        assert_eq!(c.status.bits(), STATUS_INVALID_PARAMETER);
    }

    /// The record of `request` with `FLAG_QOS2_ANSWER` set by hand in the header's flags
    /// field (bytes 8..12, little-endian), independently of the codec's flag encoder.
    fn flagged(request: &Request) -> Vec<u8> {
        let mut bytes = record(request);
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes
    }

    /// WatchFlow: a changed (or ended) state answers at once, as a record or, flagged, as a
    /// 0-byte notification; an unchanged state is held (`STATUS_PENDING` from `process`), and
    /// `recheck` keeps holding it until the flow's mark changes or the flow ends, and cancels
    /// it once the handle is closed.
    #[test]
    fn watch_flow_answers_changes_and_refuses_to_hold() {
        use qosmark_abi::{FlowState, Mark};
        let (mut engine, handle) = engine_with(Privilege::User);
        let flow = add_udp_flow(&mut engine, handle, 8100);
        let code = RequestKind::WatchFlow.code();
        let voice = FlowState {
            alive: true,
            mark: Mark {
                dscp: Some(Dscp::try_new(56).unwrap()),
                pcp: engine
                    .socket_lookup(&qosmark_engine::FiveTuple::new(
                        Protocol::Udp,
                        "192.0.2.1:40000".parse().unwrap(),
                        "198.51.100.7:8100".parse().unwrap(),
                    ))
                    .unwrap()
                    .1
                    .pcp,
            },
        };
        let watch = |known| Request::WatchFlow {
            flow_id: flow,
            known,
        };
        // No known state: the state now, as a record.
        let (c, _) = process(&mut engine, handle, code, &record(&watch(None)), 64);
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert_eq!(
            decode_response(RequestKind::WatchFlow, &c.bytes).unwrap(),
            Reply::Response(Response::FlowState(voice))
        );
        // Known = now: held, nothing written.
        let held = flagged(&watch(Some(voice)));
        let (c, _) = process(&mut engine, handle, code, &held, 0);
        assert_eq!(c.status.bits(), STATUS_PENDING);
        assert!(c.bytes.is_empty());
        assert_eq!(recheck(&mut engine, Some(handle), code, &held, 0), None);
        // The mark changes: the recheck completes it, 0 bytes (flagged) or the new state.
        let set = record(&Request::SetFlow {
            flow_id: flow,
            op: qosmark_abi::SetFlow::OutgoingDscp(46),
        });
        let admin = engine
            .open_handle(Caller {
                pid: 1234,
                privilege: Privilege::Admin,
            })
            .unwrap();
        // (Another handle cannot set it: the flow is `handle`'s; `handle` is a user's, so the
        // allow-list opens 46 first.)
        let mut table = qosmark_engine::traffic::default_table();
        table.user_dscp_allow = 1 << 46;
        engine
            .apply(admin, &Request::SetTrafficTable(table))
            .unwrap();
        let (c, _) = process(&mut engine, handle, RequestKind::SetFlow.code(), &set, 64);
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        let done = recheck(&mut engine, Some(handle), code, &held, 0).unwrap();
        assert_eq!((done.status.bits(), done.bytes.len()), (STATUS_SUCCESS, 0));
        let unflagged = record(&watch(Some(voice)));
        let done = recheck(&mut engine, Some(handle), code, &unflagged, 64).unwrap();
        let Reply::Response(Response::FlowState(now)) =
            decode_response(RequestKind::WatchFlow, &done.bytes).unwrap()
        else {
            panic!("a FlowState record")
        };
        assert_eq!(now.mark.dscp.map(Dscp::value), Some(46));
        // A closed handle: cancelled (995).
        let c = recheck(&mut engine, None, code, &held, 0).unwrap();
        assert_eq!(c.status.bits(), STATUS_CANCELLED);
        // Known differs (ended): at once; flagged → 0 bytes with a 0-byte output buffer.
        let ended = Some(FlowState::default());
        let (c, _) = process(&mut engine, handle, code, &flagged(&watch(ended)), 0);
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert!(c.bytes.is_empty());
        assert!(would_hold(&watch(Some(voice)), &Response::FlowState(voice)));
        assert!(!would_hold(&watch(None), &Response::FlowState(voice)));
    }

    #[test]
    fn qos2_answer_query_flow_is_the_bare_structure() {
        let (mut engine, handle) = engine_with(Privilege::User);
        let flow = add_udp_flow(&mut engine, handle, 8000);
        let query = flagged(&Request::QueryFlow {
            flow_id: flow,
            op: qosmark_abi::QueryFlow::PacketPriority,
        });
        let code = RequestKind::QueryFlow.code();
        // Voice: DSCP 56 (CS7), 802.1p 7 for an adaptive flow (qWAVE's table), as
        // QOS_PACKET_PRIORITY { 56, 0, 7, 0 }, four little-endian u32s.
        let expected: Vec<u8> = [56u32, 0, 7, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for capacity in [16, 17, 64, 4096] {
            let (c, changed) = process(&mut engine, handle, code, &query, capacity);
            assert_eq!(c.status.bits(), STATUS_SUCCESS, "cap {capacity}");
            assert_eq!(c.bytes, expected);
            assert!(!changed);
        }
        for capacity in 0..16 {
            let (c, _) = process(&mut engine, handle, code, &query, capacity);
            assert_eq!(c.status.bits(), STATUS_BUFFER_TOO_SMALL, "cap {capacity}");
            assert!(c.bytes.is_empty());
        }
        // Errors stay errors without data: an unknown flow is 1168.
        let unknown = flagged(&Request::QueryFlow {
            flow_id: flow + 1000,
            op: qosmark_abi::QueryFlow::PacketPriority,
        });
        let (c, _) = process(&mut engine, handle, code, &unknown, 16);
        assert_eq!(c.status.bits(), STATUS_NOT_FOUND);
        assert!(c.bytes.is_empty());
    }

    #[test]
    fn qos2_answer_set_flow_fits_a_zero_byte_buffer() {
        let (mut engine, handle) = engine_with(Privilege::User);
        let flow = add_udp_flow(&mut engine, handle, 8100);
        let set = flagged(&Request::SetFlow {
            flow_id: flow,
            op: qosmark_abi::SetFlow::TrafficType(TrafficType::Background),
        });
        let (c, changed) = process(&mut engine, handle, RequestKind::SetFlow.code(), &set, 0);
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert!(c.bytes.is_empty());
        assert!(!changed);
        // Background: CS1 = DSCP 8 now.
        let query = flagged(&Request::QueryFlow {
            flow_id: flow,
            op: qosmark_abi::QueryFlow::PacketPriority,
        });
        let (c, _) = process(
            &mut engine,
            handle,
            RequestKind::QueryFlow.code(),
            &query,
            16,
        );
        assert_eq!(c.bytes[..4], 8u32.to_le_bytes());
        // The same SetFlow without the flag needs room for an Error record first.
        let plain = record(&Request::SetFlow {
            flow_id: flow,
            op: qosmark_abi::SetFlow::TrafficType(TrafficType::Voice),
        });
        let (c, _) = process(&mut engine, handle, RequestKind::SetFlow.code(), &plain, 0);
        assert_eq!(c.status.bits(), STATUS_BUFFER_TOO_SMALL);
    }

    #[test]
    fn qos2_flag_is_refused_where_the_codec_refuses_it() {
        let (mut engine, handle) = engine_with(Privilege::Admin);
        let (c, _) = process(
            &mut engine,
            handle,
            IOCTL_QOSMARK_QUERY_STATUS,
            &flagged(&Request::QueryStatus),
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_INVALID_PARAMETER);
        // Another flag bit on a QueryFlow is refused too.
        let mut bytes = record(&Request::QueryFlow {
            flow_id: 1,
            op: qosmark_abi::QueryFlow::PacketPriority,
        });
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let (c, _) = process(
            &mut engine,
            handle,
            RequestKind::QueryFlow.code(),
            &bytes,
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_INVALID_PARAMETER);
    }

    #[test]
    fn replace_rules_changes_configuration_and_list_flows_pages() {
        let (mut engine, admin) = engine_with(Privilege::Admin);
        let replace = record(&Request::ReplaceRules(vec![rule("a", 10), rule("b", 12)]));
        let (c, changed) = process(
            &mut engine,
            admin,
            RequestKind::ReplaceRules.code(),
            &replace,
            24,
        );
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert!(changed);
        let flow = add_udp_flow(&mut engine, admin, 9000);
        let (c, changed) = process(
            &mut engine,
            admin,
            RequestKind::ListFlows.code(),
            &record(&Request::ListFlows { after: 0 }),
            4096,
        );
        assert_eq!(c.status.bits(), STATUS_SUCCESS);
        assert!(!changed);
        match decode_response(RequestKind::ListFlows, &c.bytes).unwrap() {
            Reply::Response(Response::Flows(page)) => {
                assert_eq!(page.flows.len(), 1);
                assert_eq!(page.flows[0].id, flow);
                assert_eq!(page.flows[0].pid, 1234);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fixed_size_answer_overflows_into_an_error_record() {
        let (mut engine, handle) = engine_with(Privilege::User);
        let status = record(&Request::QueryStatus);
        let (full, _) = process(
            &mut engine,
            handle,
            IOCTL_QOSMARK_QUERY_STATUS,
            &status,
            MAX_RECORD_LEN,
        );
        assert_eq!(full.status.bits(), STATUS_SUCCESS);
        // The Status record's own header states its length (offset 12, u32 LE).
        let need = u32::from_le_bytes(full.bytes[12..16].try_into().unwrap());
        assert_eq!(need as usize, full.bytes.len());
        for capacity in [24, need / 2, need - 1] {
            let (c, _) = process(
                &mut engine,
                handle,
                IOCTL_QOSMARK_QUERY_STATUS,
                &status,
                capacity,
            );
            assert_eq!(c.status.bits(), STATUS_BUFFER_OVERFLOW, "cap {capacity}");
            assert_eq!(
                decode_response(RequestKind::QueryStatus, &c.bytes).unwrap(),
                Reply::Error(ErrorReply {
                    win32: Win32Error::INSUFFICIENT_BUFFER,
                    required_size: need,
                })
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever the bytes, code and capacity: no panic, never more bytes than the
        /// capacity, data only with a success or warning status, and a state change is
        /// reported only for a success.
        #[test]
        fn any_input_is_answered_within_bounds(
            kind_index in 0usize..RequestKind::ALL.len(),
            raw_code in proptest::prelude::any::<u32>(),
            use_raw_code in proptest::prelude::any::<bool>(),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            keep_header in proptest::prelude::any::<bool>(),
            capacity in 0u32..400,
            admin in proptest::prelude::any::<bool>(),
        ) {
            let privilege = if admin { Privilege::Admin } else { Privilege::User };
            let (mut engine, handle) = engine_with(privilege);
            let kind = RequestKind::ALL[kind_index];
            let code = if use_raw_code { raw_code } else { kind.code() };
            // Half the inputs start with a valid header of the right kind and length, so the
            // payload decoder (not only the header check) sees random bytes.
            let mut input = Vec::new();
            if keep_header {
                let total = u32::try_from(16 + body.len()).unwrap();
                input.extend_from_slice(b"QMRK");
                input.extend_from_slice(&qosmark_abi::PROTOCOL_VERSION.to_le_bytes());
                let record_kind = qosmark_abi::codec::RecordKind::of_request(kind).value();
                input.extend_from_slice(&record_kind.to_le_bytes());
                input.extend_from_slice(&0u32.to_le_bytes());
                input.extend_from_slice(&total.to_le_bytes());
            }
            input.extend_from_slice(&body);
            let (c, changed) = process(&mut engine, handle, code, &input, capacity);
            proptest::prop_assert!(c.bytes.len() <= capacity as usize);
            if !c.bytes.is_empty() {
                proptest::prop_assert!(!c.status.is_error());
            }
            if changed {
                proptest::prop_assert_eq!(c.status.bits(), STATUS_SUCCESS);
            }
            proptest::prop_assert!(engine.check_control_invariants().is_ok());
        }
    }

    #[test]
    fn open_errors() {
        assert_eq!(
            status_for_open_error(EngineError::LimitReached).bits(),
            0xC000_009A
        );
        assert_eq!(
            status_for_open_error(EngineError::NoMemory).bits(),
            0xC000_0017
        );
        assert_eq!(
            status_for_open_error(EngineError::NotFound).bits(),
            0xC000_0001
        );
    }

    #[test]
    fn charge_refuses_past_the_rate_and_changes_nothing() {
        use qosmark_engine::control::rate::RateLimit;
        let mut engine = Engine::new(qosmark_engine::Limits::default());
        engine.set_rate_limit(RateLimit {
            burst: 2,
            per_second: 1,
        });
        let handle = engine
            .open_handle(qosmark_abi::Caller {
                pid: 7,
                privilege: qosmark_abi::Privilege::User,
            })
            .unwrap();
        let before = engine.control_snapshot().unwrap();
        assert!(charge(&mut engine, handle, 1_000).is_ok());
        assert!(charge(&mut engine, handle, 1_000).is_ok());
        let refused = charge(&mut engine, handle, 1_000).unwrap_err();
        assert_eq!(
            refused.status,
            ntstatus_for(Win32Error::NO_SYSTEM_RESOURCES),
            "1450 once the burst is spent"
        );
        assert!(refused.bytes.is_empty());
        assert_eq!(engine.control_snapshot().unwrap(), before);
        // One second later one token has refilled.
        assert!(charge(&mut engine, handle, 1_000_001_000).is_ok());
        // A closed handle: 6.
        engine.close_handle(handle).unwrap();
        assert_eq!(
            charge(&mut engine, handle, 2_000_000_000)
                .unwrap_err()
                .status,
            ntstatus_for(Win32Error::INVALID_HANDLE)
        );
    }
}
