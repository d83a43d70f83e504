//! Bad-input matrix (issue 9, hardening 2): every request kind, damaged every way the wire
//! format documents (`qosmark_abi::codec` module docs), through the path a back end uses —
//! `decode_request` → `Engine::apply` → an answer record:
//!
//! * truncated at every length (header length left as it was → `BadLength`, or patched to the
//!   short length → `Truncated`; under 16 bytes → `Truncated`);
//! * oversized (trailing bytes, length patched → `TrailingBytes`; not patched → `BadLength`;
//!   a length above `MAX_RECORD_LEN` → `TooLarge`);
//! * wrong magic → `BadMagic`; every other version → `BadVersion`; unknown or answer kinds →
//!   `BadKind`; any header flag bit not allowed → `ReservedNotZero`;
//! * every reserved byte or absent-value slot non-zero → `ReservedNotZero`;
//! * out-of-range enum values, presence flags, DSCP/PCP, names, prefixes → `BadValue`;
//!   list counts above their caps → `TooLarge`.
//!
//! Every answer must be the documented error: an Error record with `ERROR_INVALID_PARAMETER`
//! (87, `AbiError::win32`), which the Windows driver completes as `STATUS_INVALID_PARAMETER`;
//! and the engine state (handles, flows, table, rules, counters) must be unchanged. A second
//! part sends well-formed records the engine must refuse (flags, DSCP > 63, foreign flow ids,
//! privileges) and checks their documented codes and the unchanged state the same way.
//!
//! The expectations come from the format's documentation (offsets written out here from the
//! record diagrams), not from the decoder.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::too_many_lines,
    clippy::cast_possible_truncation,
    reason = "test code: a panic is a failed test"
)]

use core::net::SocketAddr;
use qosmark_engine::abi::codec::{
    self, AbiError, ErrorReply, Reply, HEADER_LEN, MAGIC, MAX_RECORD_LEN, MAX_RULES,
};
use qosmark_engine::abi::ioctl::RequestKind;
use qosmark_engine::abi::status::{ntstatus_for, NtStatus, Win32Error};
use qosmark_engine::abi::{
    heapless_name::RuleName, Caller, Dscp, Family, FlowRate, NotifyFlow, PortRange, Prefix,
    Privilege, Protocol, QueryFlow, Request, Response, RuleAction, RuleProtocol, RuleSpec, SetFlow,
    Shaping, SocketInfo, TrafficType, PROTOCOL_VERSION, QOS_NON_ADAPTIVE_FLOW,
};
use qosmark_engine::control::ControlSnapshot;
use qosmark_engine::shaper::ShaperConfig;
use qosmark_engine::{Engine, HandleId, Limits};

const USER: Caller = Caller {
    pid: 100,
    privilege: Privilege::User,
};
const ADMIN: Caller = Caller {
    pid: 1,
    privilege: Privilege::Admin,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn spec(name: &str) -> RuleSpec {
    RuleSpec {
        name: RuleName::try_new(name).unwrap(),
        precedence: 7,
        protocol: RuleProtocol::Udp,
        local_prefix: Some(Prefix {
            addr: "10.0.0.0".parse().unwrap(),
            len: 8,
        }),
        remote_prefix: Some(Prefix {
            addr: "192.0.2.0".parse().unwrap(),
            len: 24,
        }),
        local_ports: Some(PortRange {
            first: 1000,
            last: 2000,
        }),
        remote_ports: Some(PortRange {
            first: 53,
            last: 53,
        }),
        action: RuleAction::Dscp(Dscp::EF),
        pcp: Some(qosmark_engine::abi::Pcp::try_new(5).unwrap()),
        throttle_bps: None,
    }
}

/// One well-formed request per kind and per operation (the samples the matrix damages).
fn samples() -> Vec<(&'static str, Request, u32)> {
    let add = Request::AddSocketToFlow {
        socket: SocketInfo {
            socket: 77,
            family: Family::V4,
            protocol: Protocol::Udp,
            local: sa("10.0.0.1:5000"),
            peer: None,
        },
        dest: Some(sa("192.0.2.1:53")),
        traffic_type: TrafficType::Voice,
        flags: QOS_NON_ADAPTIVE_FLOW,
        flow_id: 0,
    };
    vec![
        ("QueryStatus", Request::QueryStatus, 0),
        ("AddSocketToFlow", add, 0),
        (
            "RemoveSocketFromFlow",
            Request::RemoveSocketFromFlow {
                socket: Some(77),
                flow_id: 1,
            },
            0,
        ),
        (
            "SetFlow(TrafficType)",
            Request::SetFlow {
                flow_id: 1,
                op: SetFlow::TrafficType(TrafficType::AudioVideo),
            },
            0,
        ),
        (
            "SetFlow(OutgoingRate)",
            Request::SetFlow {
                flow_id: 1,
                op: SetFlow::OutgoingRate(FlowRate {
                    bandwidth: 1_000_000,
                    shaping: Shaping::ShapeAndMark,
                    reason: 0,
                }),
            },
            0,
        ),
        (
            "SetFlow(OutgoingDscp)",
            Request::SetFlow {
                flow_id: 1,
                op: SetFlow::OutgoingDscp(46),
            },
            0,
        ),
        (
            "QueryFlow",
            Request::QueryFlow {
                flow_id: 1,
                op: QueryFlow::PacketPriority,
            },
            0,
        ),
        (
            "NotifyFlow",
            Request::NotifyFlow {
                flow_id: 1,
                op: NotifyFlow::Available,
                threshold: Some(5_000),
            },
            0,
        ),
        ("EnumerateFlows", Request::EnumerateFlows, 0),
        ("AddRule", Request::AddRule(spec("new-rule")), 0),
        (
            "RemoveRule",
            Request::RemoveRule(RuleName::try_new("dns").unwrap()),
            0,
        ),
        ("ListRules", Request::ListRules, 0),
        ("GetTrafficTable", Request::GetTrafficTable, 0),
        (
            "SetTrafficTable",
            Request::SetTrafficTable(qosmark_engine::traffic::default_table()),
            0,
        ),
        ("ListFlows", Request::ListFlows { after: 0 }, 0),
        (
            "ReplaceRules",
            Request::ReplaceRules(vec![spec("a"), spec("b")]),
            0,
        ),
    ]
}

fn encode(req: &Request, flags: u32) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode_request_with_flags(req, flags, &mut out).unwrap();
    out
}

fn set_len(bytes: &mut [u8]) {
    let n = bytes.len() as u32;
    bytes[12..16].copy_from_slice(&n.to_le_bytes());
}

/// An engine with state to lose: two handles, flows, a rule, counters.
struct World {
    engine: Engine,
    user: HandleId,
    admin: HandleId,
}

impl World {
    fn new() -> World {
        let mut engine = Engine::new(Limits::default());
        let user = engine.open_handle(USER).unwrap();
        let admin = engine.open_handle(ADMIN).unwrap();
        let add = |socket: u64, local: &str, dest: &str| Request::AddSocketToFlow {
            socket: SocketInfo {
                socket,
                family: Family::V4,
                protocol: Protocol::Udp,
                local: sa(local),
                peer: None,
            },
            dest: Some(sa(dest)),
            traffic_type: TrafficType::Voice,
            flags: QOS_NON_ADAPTIVE_FLOW,
            flow_id: 0,
        };
        for (s, l, d) in [
            (1, "10.0.0.1:4000", "192.0.2.9:9"),
            (2, "10.0.0.1:4001", "192.0.2.9:9"),
        ] {
            assert!(matches!(
                engine.apply(user, &add(s, l, d)),
                Ok(Response::FlowId(_))
            ));
        }
        let mut dns = spec("dns");
        dns.local_prefix = None;
        assert_eq!(
            engine.apply(admin, &Request::AddRule(dns)),
            Ok(Response::Done)
        );
        World {
            engine,
            user,
            admin,
        }
    }

    /// Everything observable: control state, rules with counters, global status, and the
    /// rate of every flow's shaper.
    fn state(
        &mut self,
    ) -> (
        ControlSnapshot,
        Response,
        Response,
        Vec<Option<ShaperConfig>>,
    ) {
        let snapshot = self.engine.control_snapshot().unwrap();
        let rules = self.engine.apply(self.admin, &Request::ListRules).unwrap();
        let status = self
            .engine
            .apply(self.admin, &Request::QueryStatus)
            .unwrap();
        let rates = snapshot
            .flows
            .iter()
            .map(|f| f.shaper.and_then(|s| self.engine.shaper_config(s)))
            .collect();
        (snapshot, rules, status, rates)
    }

    /// What a back end does with a request record on `handle`: decode, apply, answer.
    fn serve(&mut self, handle: HandleId, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let reply = match codec::decode_request(bytes) {
            Err(e) => Err(e.win32()),
            Ok(req) => self
                .engine
                .apply(handle, &req)
                .map_err(qosmark_engine::EngineError::win32),
        };
        match reply {
            Ok(resp) => codec::encode_response(&resp, &mut out).unwrap(),
            Err(code) => codec::encode_error(
                ErrorReply {
                    win32: code,
                    required_size: 0,
                },
                &mut out,
            )
            .unwrap(),
        }
        out
    }
}

/// `bytes` (claiming to be a request of `kind`) must decode to `want`, and serving it on
/// both handles must answer an Error record with 87 and change nothing.
fn expect_refused(world: &mut World, kind: RequestKind, what: &str, bytes: &[u8], want: AbiError) {
    assert_eq!(codec::decode_request(bytes), Err(want), "{what}");
    assert_eq!(want.win32(), Win32Error::INVALID_PARAMETER, "{what}");
    for handle in [world.user, world.admin] {
        let before = world.state();
        let answer = world.serve(handle, bytes);
        assert_eq!(
            codec::decode_response(kind, &answer),
            Ok(Reply::Error(ErrorReply {
                win32: Win32Error::INVALID_PARAMETER,
                required_size: 0
            })),
            "{what}"
        );
        // A status query counts nothing, so the states compare equal.
        assert_eq!(world.state(), before, "{what} changed the engine state");
    }
}

#[test]
fn the_documented_error_codes() {
    // Every malformed record is 87, which the driver completes with STATUS_INVALID_PARAMETER
    // (RtlNtStatusToDosError gives 87 back).
    assert_eq!(
        ntstatus_for(Win32Error::INVALID_PARAMETER),
        NtStatus::INVALID_PARAMETER
    );
    assert_eq!(NtStatus::INVALID_PARAMETER.bits(), 0xC000_000D);
    assert_eq!(AbiError::OutOfMemory.win32(), Win32Error::NOT_ENOUGH_MEMORY);
}

#[test]
fn truncated_at_every_length() {
    let mut w = World::new();
    for (what, req, flags) in samples() {
        let kind = RequestKind::of(&req);
        let good = encode(&req, flags);
        for n in 0..good.len() {
            let short = &good[..n];
            let want = if n < HEADER_LEN as usize {
                AbiError::Truncated
            } else {
                AbiError::BadLength
            };
            expect_refused(&mut w, kind, &format!("{what} cut at {n}"), short, want);
            if n >= HEADER_LEN as usize {
                let mut patched = short.to_vec();
                set_len(&mut patched);
                expect_refused(
                    &mut w,
                    kind,
                    &format!("{what} cut at {n}, length patched"),
                    &patched,
                    AbiError::Truncated,
                );
            }
        }
    }
}

#[test]
fn oversized_and_header_damage() {
    let mut w = World::new();
    for (what, req, flags) in samples() {
        let kind = RequestKind::of(&req);
        let good = encode(&req, flags);
        for extra in [1usize, 3, 8, 128] {
            let mut long = good.clone();
            long.extend(std::iter::repeat_n(0u8, extra));
            expect_refused(
                &mut w,
                kind,
                &format!("{what} +{extra}"),
                &long,
                AbiError::BadLength,
            );
            set_len(&mut long);
            expect_refused(
                &mut w,
                kind,
                &format!("{what} +{extra}, length patched"),
                &long,
                AbiError::TrailingBytes,
            );
        }
        // The header's length disagrees with the buffer, both ways.
        let len = good.len() as u32;
        for claimed in [len - 1, len + 1, len + (1 << 20)] {
            let mut bad = good.clone();
            bad[12..16].copy_from_slice(&claimed.to_le_bytes());
            expect_refused(
                &mut w,
                kind,
                &format!("{what} length {claimed}"),
                &bad,
                AbiError::BadLength,
            );
        }
        let mut magic = good.clone();
        magic[0] ^= 0x20;
        expect_refused(
            &mut w,
            kind,
            &format!("{what} magic"),
            &magic,
            AbiError::BadMagic,
        );
        assert_ne!(u32::from_le_bytes(magic[0..4].try_into().unwrap()), MAGIC);
        for version in [0u16, PROTOCOL_VERSION + 1, 0x0100, u16::MAX] {
            let mut v = good.clone();
            v[4..6].copy_from_slice(&version.to_le_bytes());
            expect_refused(
                &mut w,
                kind,
                &format!("{what} version {version}"),
                &v,
                AbiError::BadVersion,
            );
        }
        for bit in 0..32 {
            let flag = 1u32 << bit;
            let mut f = good.clone();
            f[8..12].copy_from_slice(&flag.to_le_bytes());
            // `decode_request` refuses every flag (bit 0 only with decode_request_with_flags).
            expect_refused(
                &mut w,
                kind,
                &format!("{what} flag bit {bit}"),
                &f,
                AbiError::ReservedNotZero,
            );
            let allowed = bit == 0
                && matches!(
                    kind,
                    RequestKind::SetFlow | RequestKind::QueryFlow | RequestKind::NotifyFlow
                );
            assert_eq!(
                codec::decode_request_with_flags(&f).is_ok(),
                allowed,
                "{what} flag bit {bit} with decode_request_with_flags"
            );
        }
        for other in [0u16, 0x0010, 0x0100, 0x7FFF, 0x8001, 0x8007, 0x80FF, 0xFFFF] {
            let mut k = good.clone();
            k[6..8].copy_from_slice(&other.to_le_bytes());
            expect_refused(
                &mut w,
                kind,
                &format!("{what} kind {other:#x}"),
                &k,
                AbiError::BadKind,
            );
        }
    }
    // A record longer than MAX_RECORD_LEN, length field honest: too large.
    let mut huge = encode(&Request::ListRules, 0);
    huge.resize(MAX_RECORD_LEN as usize + 1, 0);
    set_len(&mut huge);
    expect_refused(
        &mut w,
        RequestKind::ListRules,
        "huge",
        &huge,
        AbiError::TooLarge,
    );
}

/// Payload offsets (after the 16-byte header) of reserved bytes and absent-value slots, from
/// the record diagrams, per sample.
fn reserved_offsets(what: &str) -> Vec<usize> {
    // ADDRESS slot (28): byte 1 zero; for an IPv4 address, flowinfo/scope 4..12 and octets
    // 4..16 of the address (slot bytes 16..28) are zero; an absent slot is all zero.
    let v4_address = |base: usize| {
        let mut v = vec![base + 1];
        v.extend(base + 4..base + 12);
        v.extend(base + 16..base + 28);
        v
    };
    // NAME (68): bytes 1..4, then the bytes after the name's length.
    let name = |base: usize, len: usize| {
        let mut v: Vec<usize> = (base + 1..base + 4).collect();
        v.extend(base + 4 + len..base + 68);
        v
    };
    // PREFIX (20), IPv4: bytes 2..4 and address bytes 4..16 after the octets (8..20).
    let v4_prefix = |base: usize| {
        let mut v = vec![base + 2, base + 3];
        v.extend(base + 8..base + 20);
        v
    };
    let rule = |base: usize, name_len: usize| {
        let mut v = name(base, name_len);
        v.extend([base + 78, base + 79]);
        v.extend(v4_prefix(base + 80));
        v.extend(v4_prefix(base + 100));
        v
    };
    match what {
        "AddSocketToFlow" => {
            let mut v = v4_address(24);
            v.extend(52..80); // peer absent
            v.extend(v4_address(80));
            v
        }
        "RemoveSocketFromFlow" => vec![9, 10, 11],
        "SetFlow(TrafficType)" | "SetFlow(OutgoingDscp)" => (12..24).collect(),
        "NotifyFlow" => (9..16).collect(),
        "AddRule" => rule(0, "new-rule".len()),
        "RemoveRule" => name(0, "dns".len()),
        // Best effort (type 0) has neither DSCP nor PCP: its value bytes 1 and 3 are absent
        // slots; then 35..40 (33 and 34 are the non-conformant DSCP and 802.1p).
        "SetTrafficTable" => {
            let mut v = vec![1, 3];
            v.extend(35..40);
            v
        }
        "ListFlows" => (4..8).collect(),
        "ReplaceRules" => {
            let mut v: Vec<usize> = (4..8).collect();
            v.extend(rule(8, 1));
            v.extend(rule(8 + 136, 1));
            v
        }
        _ => Vec::new(),
    }
}

#[test]
fn reserved_bytes_not_zero() {
    let mut w = World::new();
    let mut checked = 0;
    for (what, req, flags) in samples() {
        let kind = RequestKind::of(&req);
        let good = encode(&req, flags);
        for off in reserved_offsets(what) {
            let at = HEADER_LEN as usize + off;
            assert_eq!(good[at], 0, "{what}: payload byte {off} is not reserved");
            for value in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[at] = value;
                expect_refused(
                    &mut w,
                    kind,
                    &format!("{what} reserved byte {off} = {value:#x}"),
                    &bad,
                    AbiError::ReservedNotZero,
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 400, "{checked}");
}

/// (sample, payload offset, width in bytes, value, expected error).
fn value_cases() -> Vec<(&'static str, usize, usize, u32, AbiError)> {
    use AbiError::{BadValue, TooLarge};
    let mut v = vec![
        // AddSocketToFlow: family, protocol, presence flags, traffic type, address family.
        ("AddSocketToFlow", 8, 1, 0, BadValue),
        ("AddSocketToFlow", 8, 1, 5, BadValue),
        ("AddSocketToFlow", 8, 1, 255, BadValue),
        ("AddSocketToFlow", 9, 1, 0, BadValue),
        ("AddSocketToFlow", 9, 1, 1, BadValue),
        ("AddSocketToFlow", 9, 1, 255, BadValue),
        ("AddSocketToFlow", 10, 1, 2, BadValue),
        ("AddSocketToFlow", 11, 1, 2, BadValue),
        ("AddSocketToFlow", 12, 4, 6, BadValue),
        ("AddSocketToFlow", 12, 4, u32::MAX, BadValue),
        ("AddSocketToFlow", 24, 1, 0, BadValue),
        ("AddSocketToFlow", 24, 1, 5, BadValue),
        ("AddSocketToFlow", 80, 1, 7, BadValue),
        // RemoveSocketFromFlow: presence flag.
        ("RemoveSocketFromFlow", 8, 1, 2, BadValue),
        // SetFlow: operation, traffic type, shaping.
        ("SetFlow(TrafficType)", 4, 4, 5, BadValue),
        ("SetFlow(TrafficType)", 4, 4, u32::MAX, BadValue),
        ("SetFlow(TrafficType)", 8, 4, 6, BadValue),
        ("SetFlow(OutgoingRate)", 16, 4, 3, BadValue),
        // QueryFlow / NotifyFlow: operation; NotifyFlow presence flag.
        ("QueryFlow", 4, 4, 3, BadValue),
        ("QueryFlow", 4, 4, u32::MAX, BadValue),
        ("NotifyFlow", 4, 4, 3, BadValue),
        ("NotifyFlow", 8, 1, 2, BadValue),
        // RemoveRule: name length 0 and 65, a byte that is not UTF-8, a control character.
        ("RemoveRule", 0, 1, 0, BadValue),
        ("RemoveRule", 0, 1, 65, BadValue),
        ("RemoveRule", 4, 1, 0xff, BadValue),
        ("RemoveRule", 4, 1, 0x07, BadValue),
        // SetTrafficTable: presence flags, DSCP 64, PCP 8, tag flag.
        ("SetTrafficTable", 4, 1, 2, BadValue),
        ("SetTrafficTable", 5, 1, 64, BadValue),
        ("SetTrafficTable", 7, 1, 8, BadValue),
        ("SetTrafficTable", 6, 1, 2, BadValue),
        ("SetTrafficTable", 32, 1, 2, BadValue),
        ("SetTrafficTable", 33, 1, 64, BadValue),
        ("SetTrafficTable", 34, 1, 8, BadValue),
        // ReplaceRules: a count above the cap.
        ("ReplaceRules", 0, 4, MAX_RULES + 1, TooLarge),
        ("ReplaceRules", 0, 4, u32::MAX, TooLarge),
    ];
    // RULE SPEC fields, in AddRule and in the second rule of ReplaceRules.
    for (what, base) in [("AddRule", 0usize), ("ReplaceRules", 8 + 136)] {
        for (off, width, value) in [
            (0usize, 1usize, 0u32), // name length 0
            (0, 1, 65),             // name length above 64
            (69, 1, 1),             // protocol
            (69, 1, 255),
            (70, 1, 2),     // action kind
            (71, 1, 64),    // DSCP 64
            (72, 1, 2),     // pcp present flag
            (73, 1, 8),     // PCP 8
            (74, 1, 2),     // local prefix flag
            (77, 1, 2),     // remote ports flag
            (80, 1, 5),     // prefix family
            (81, 1, 33),    // IPv4 prefix length 33
            (101, 1, 1),    // 192.0.2.0/1 has host bits set
            (120, 2, 3000), // local first 3000 > last 2000
            (128, 4, 1),    // throttle 1 bit/s (below 12 000)
            (128, 4, 11_999),
            (132, 4, 24), // throttle above 10^11 (24 · 2^32)
        ] {
            v.push((what, base + off, width, value, BadValue));
        }
    }
    v
}

#[test]
fn out_of_range_values() {
    let mut w = World::new();
    let samples = samples();
    for (what, off, width, value, want) in value_cases() {
        let (_, req, flags) = samples.iter().find(|s| s.0 == what).unwrap();
        let kind = RequestKind::of(req);
        let mut bad = encode(req, *flags);
        let at = HEADER_LEN as usize + off;
        bad[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        expect_refused(
            &mut w,
            kind,
            &format!("{what} payload {off} = {value}"),
            &bad,
            want,
        );
    }
}

/// Well-formed records the engine refuses: the documented QOS2 code, nothing changed.
#[test]
fn well_formed_but_refused() {
    let mut w = World::new();
    let flow_of_user = match w.engine.apply(w.user, &Request::EnumerateFlows).unwrap() {
        Response::FlowIds(ids) => ids[0],
        other => panic!("{other:?}"),
    };
    let bad_flags = Request::AddSocketToFlow {
        socket: SocketInfo {
            socket: 9,
            family: Family::V4,
            protocol: Protocol::Udp,
            local: sa("10.0.0.1:6000"),
            peer: None,
        },
        dest: Some(sa("192.0.2.1:53")),
        traffic_type: TrafficType::Voice,
        flags: 0x10,
        flow_id: 0,
    };
    let v6_dest_on_v4 = Request::AddSocketToFlow {
        socket: SocketInfo {
            socket: 9,
            family: Family::V4,
            protocol: Protocol::Udp,
            local: sa("10.0.0.1:6000"),
            peer: None,
        },
        dest: Some(sa("[2001:db8::1]:53")),
        traffic_type: TrafficType::Voice,
        flags: 0,
        flow_id: 0,
    };
    // The user's flow has a rate, so a refused rate must leave it (and its shaper id) alone.
    let rate = |bandwidth| Request::SetFlow {
        flow_id: flow_of_user,
        op: SetFlow::OutgoingRate(FlowRate {
            bandwidth,
            shaping: Shaping::ShapeOnly,
            reason: 0,
        }),
    };
    assert_eq!(w.engine.apply(w.user, &rate(1_000_000)), Ok(Response::Done));
    let cases: Vec<(bool, Request, Win32Error)> = vec![
        // Rates: 0, below one 1500-byte packet per second, above 100 Gbit/s → 87; another
        // handle's flow → 1168 first.
        (false, rate(0), Win32Error::INVALID_PARAMETER),
        (false, rate(11_999), Win32Error::INVALID_PARAMETER),
        (false, rate(100_000_000_001), Win32Error::INVALID_PARAMETER),
        (false, rate(u64::MAX), Win32Error::INVALID_PARAMETER),
        (true, rate(1_000_000), Win32Error::NOT_FOUND),
        (true, rate(0), Win32Error::NOT_FOUND),
        (false, bad_flags, Win32Error::INVALID_PARAMETER),
        (false, v6_dest_on_v4, Win32Error::INVALID_PARAMETER),
        (
            false,
            Request::SetFlow {
                flow_id: flow_of_user,
                op: SetFlow::OutgoingDscp(64),
            },
            Win32Error::INVALID_PARAMETER,
        ),
        (
            false,
            Request::SetFlow {
                flow_id: flow_of_user,
                op: SetFlow::OutgoingDscp(46),
            },
            Win32Error::ACCESS_DENIED,
        ),
        // Another handle's flow is not found (not revealed).
        (
            true,
            Request::QueryFlow {
                flow_id: flow_of_user,
                op: QueryFlow::PacketPriority,
            },
            Win32Error::NOT_FOUND,
        ),
        (
            false,
            Request::RemoveSocketFromFlow {
                socket: None,
                flow_id: 0,
            },
            Win32Error::NOT_FOUND,
        ),
        (
            false,
            Request::NotifyFlow {
                flow_id: flow_of_user,
                op: NotifyFlow::Congested,
                threshold: Some(1),
            },
            Win32Error::INVALID_PARAMETER,
        ),
        (
            false,
            Request::AddRule(spec("user-rule")),
            Win32Error::ACCESS_DENIED,
        ),
        (
            true,
            Request::AddRule(spec("dns")),
            Win32Error::ALREADY_EXISTS,
        ),
        (
            true,
            Request::RemoveRule(RuleName::try_new("nope").unwrap()),
            Win32Error::NOT_FOUND,
        ),
        (false, Request::ListRules, Win32Error::ACCESS_DENIED),
        (
            false,
            Request::SetTrafficTable(qosmark_engine::traffic::default_table()),
            Win32Error::ACCESS_DENIED,
        ),
        (
            true,
            Request::ReplaceRules(vec![spec("same"), spec("same")]),
            Win32Error::ALREADY_EXISTS,
        ),
    ];
    for (admin, req, code) in cases {
        let handle = if admin { w.admin } else { w.user };
        let bytes = encode(&req, 0);
        let before = w.state();
        let answer = w.serve(handle, &bytes);
        assert_eq!(
            codec::decode_response(RequestKind::of(&req), &answer),
            Ok(Reply::Error(ErrorReply {
                win32: code,
                required_size: 0
            })),
            "{req:?}"
        );
        assert_eq!(w.state(), before, "{req:?} changed the state");
        w.engine.check_control_invariants().unwrap();
    }
}
