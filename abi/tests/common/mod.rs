//! Shared test material: the golden cases (expected values written out) and proptest strategies
//! for every request and answer type.
#![allow(
    dead_code,
    reason = "each integration-test crate uses a different part of this module"
)]
#![allow(clippy::unwrap_used, reason = "test code: a failure is a test failure")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;

use proptest::prelude::*;
use qosmark_abi::codec::{self, ErrorReply, Reply};
use qosmark_abi::heapless_name::RuleName;
use qosmark_abi::ioctl::RequestKind;
use qosmark_abi::status::Win32Error;
use qosmark_abi::{
    CounterSnapshot, Dscp, FailOpen, Family, FlowPage, FlowRate, FlowRecord, FlowSocket, FlowState,
    Mark, NotifyFlow, PacketPriority, Pcp, PortRange, Prefix, Protocol, QueryFlow, Request,
    Response, RuleAction, RuleEntry, RuleProtocol, RuleSpec, ServiceMark, ServiceType, SetFlow,
    Shaping, SkipReason, SocketBinding, SocketInfo, StatusInfo, TrafficTable, TrafficType,
    TrafficTypeMark,
};

/// One golden vector: a request, or an answer to a request of the given kind.
#[derive(Clone, Debug)]
pub enum Golden {
    /// A request record.
    Request(Request),
    /// An answer record and the request kind it answers.
    Reply(RequestKind, Reply),
}

impl Golden {
    /// Encodes the expected value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Golden::Request(r) => codec::encode_request(r, &mut out).unwrap(),
            Golden::Reply(_, r) => codec::encode_reply(r, &mut out).unwrap(),
        }
        out
    }

    /// Decodes bytes as this case's record type; `Ok(())` when they decode to a value that
    /// re-encodes to exactly `bytes`.
    pub fn decode_reencodes(&self, bytes: &[u8]) -> Result<(), codec::AbiError> {
        let mut out = Vec::new();
        match self {
            Golden::Request(_) => {
                let r = codec::decode_request(bytes)?;
                codec::encode_request(&r, &mut out).unwrap();
            }
            Golden::Reply(kind, _) => {
                let r = codec::decode_response(*kind, bytes)?;
                codec::encode_reply(&r, &mut out).unwrap();
            }
        }
        assert_eq!(
            out, bytes,
            "decoded value does not re-encode to the same bytes"
        );
        Ok(())
    }
}

/// Directory of the golden vectors.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

fn name(s: &str) -> RuleName {
    RuleName::try_new(s).unwrap()
}

fn dscp(v: u8) -> Dscp {
    Dscp::try_new(v).unwrap()
}

fn pcp(v: u8) -> Pcp {
    Pcp::try_new(v).unwrap()
}

/// The rule used by the AddRule and Rules vectors.
pub fn sample_rule() -> RuleSpec {
    RuleSpec {
        name: name("voip-rtp"),
        precedence: 200,
        protocol: RuleProtocol::Udp,
        local_prefix: Some(Prefix {
            addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)),
            len: 16,
        }),
        remote_prefix: Some(Prefix {
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)),
            len: 24,
        }),
        local_ports: Some(PortRange {
            first: 16384,
            last: 32767,
        }),
        remote_ports: None,
        action: RuleAction::Dscp(dscp(46)),
        pcp: Some(pcp(6)),
        throttle_bps: None,
    }
}

/// The second rule of the Rules vector: IPv6, traffic-type action, no PCP.
pub fn sample_rule_v6() -> RuleSpec {
    RuleSpec {
        name: name("backup-Ω"),
        precedence: 10,
        protocol: RuleProtocol::Tcp,
        local_prefix: None,
        remote_prefix: Some(Prefix {
            addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x42, 0, 0, 0, 0, 0)),
            len: 48,
        }),
        local_ports: None,
        remote_ports: Some(PortRange {
            first: 873,
            last: 873,
        }),
        action: RuleAction::TrafficType(TrafficType::Background),
        pcp: None,
        // ThrottleRateActionBitsPerSecond: 2.5 Mbit/s (RULE SPEC offset 128).
        throttle_bps: Some(2_500_000),
    }
}

/// The traffic table of the vectors: the documented qWAVE defaults, EF allowed for users.
pub fn sample_table() -> TrafficTable {
    let m = |d: Option<u8>, p: Option<u8>| TrafficTypeMark {
        dscp: d.map(dscp),
        pcp: p.map(pcp),
    };
    TrafficTable {
        marks: [
            m(None, None),
            m(Some(8), Some(2)),
            m(Some(40), Some(5)),
            m(Some(40), Some(5)),
            m(Some(56), Some(7)),
            m(Some(56), Some(7)),
        ],
        user_dscp_allow: 1 << 46,
        tag_adaptive_flows: true,
        non_conformant_dscp: dscp(8),
        non_conformant_pcp: pcp(1),
    }
}

/// Every golden vector: file stem and expected value.
pub fn golden_cases() -> Vec<(&'static str, Golden)> {
    use Golden::{Reply as A, Request as R};
    vec![
        ("req_query_status", R(Request::QueryStatus)),
        (
            "req_add_socket_to_flow",
            R(Request::AddSocketToFlow {
                socket: SocketInfo {
                    socket: 0x0000_0000_0000_01A4,
                    family: Family::V6,
                    protocol: Protocol::Udp,
                    local: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 50000, 0, 0)),
                    peer: None,
                },
                dest: Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0207),
                    5004,
                    0,
                    0,
                ))),
                traffic_type: TrafficType::Voice,
                flags: qosmark_abi::QOS_NON_ADAPTIVE_FLOW,
                flow_id: 0,
            }),
        ),
        (
            "req_add_socket_to_flow_v4_connected",
            R(Request::AddSocketToFlow {
                socket: SocketInfo {
                    socket: 0x1234_5678_9ABC_DEF0,
                    family: Family::V4,
                    protocol: Protocol::Tcp,
                    local: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 49152)),
                    peer: Some(SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::new(192, 0, 2, 80),
                        443,
                    ))),
                },
                dest: None,
                traffic_type: TrafficType::AudioVideo,
                flags: 0,
                flow_id: 7,
            }),
        ),
        (
            "req_remove_socket_from_flow",
            R(Request::RemoveSocketFromFlow {
                socket: Some(0x1A4),
                flow_id: 3,
            }),
        ),
        (
            "req_remove_flow",
            R(Request::RemoveSocketFromFlow {
                socket: None,
                flow_id: 3,
            }),
        ),
        (
            "req_set_flow_traffic_type",
            R(Request::SetFlow {
                flow_id: 3,
                op: SetFlow::TrafficType(TrafficType::Control),
            }),
        ),
        (
            "req_set_flow_outgoing_rate",
            R(Request::SetFlow {
                flow_id: 3,
                op: SetFlow::OutgoingRate(FlowRate {
                    bandwidth: 2_000_000,
                    shaping: Shaping::UseNonConformantMarkings,
                    reason: 1,
                }),
            }),
        ),
        (
            "req_set_flow_dscp",
            R(Request::SetFlow {
                flow_id: 3,
                op: SetFlow::OutgoingDscp(46),
            }),
        ),
        (
            "req_query_flow",
            R(Request::QueryFlow {
                flow_id: 3,
                op: QueryFlow::PacketPriority,
            }),
        ),
        (
            "req_notify_flow",
            R(Request::NotifyFlow {
                flow_id: 3,
                op: NotifyFlow::Available,
                threshold: Some(1_000_000),
            }),
        ),
        ("req_enumerate_flows", R(Request::EnumerateFlows)),
        ("req_add_rule", R(Request::AddRule(sample_rule()))),
        ("req_remove_rule", R(Request::RemoveRule(name("voip-rtp")))),
        ("req_list_rules", R(Request::ListRules)),
        ("req_get_traffic_table", R(Request::GetTrafficTable)),
        (
            "req_set_traffic_table",
            R(Request::SetTrafficTable(sample_table())),
        ),
        (
            "resp_done",
            A(RequestKind::SetFlow, Reply::Response(Response::Done)),
        ),
        (
            "resp_status",
            A(
                RequestKind::QueryStatus,
                Reply::Response(Response::Status(StatusInfo {
                    protocol_version: 1,
                    handles: 2,
                    flows: 3,
                    sockets: 4,
                    rules: 5,
                    shapers: 6,
                    packets: 1_000_500,
                    marked: 600_000,
                    already_marked: 1_000,
                    skipped: [300_000, 50_000, 10, 2, 1, 30, 4, 48_953, 0, 17],
                    fail_open: [3, 0, 1, 0, 2, 0, 7, 9],
                    delayed: 500,
                    non_conformant: 40,
                })),
            ),
        ),
        (
            "resp_flow_id",
            A(
                RequestKind::AddSocketToFlow,
                Reply::Response(Response::FlowId(7)),
            ),
        ),
        (
            "resp_packet_priority",
            A(
                RequestKind::QueryFlow,
                Reply::Response(Response::PacketPriority(PacketPriority {
                    conformant_dscp: 46,
                    non_conformant_dscp: 0,
                    conformant_l2: 6,
                    non_conformant_l2: 0,
                })),
            ),
        ),
        (
            "resp_outgoing_rate",
            A(
                RequestKind::QueryFlow,
                Reply::Response(Response::OutgoingRate(2_000_000)),
            ),
        ),
        (
            "resp_flow_ids",
            A(
                RequestKind::EnumerateFlows,
                Reply::Response(Response::FlowIds(vec![3, 7, 0xFFFF_FFFF])),
            ),
        ),
        (
            "resp_rules",
            A(
                RequestKind::ListRules,
                Reply::Response(Response::Rules(vec![
                    RuleEntry {
                        spec: sample_rule(),
                        counters: CounterSnapshot {
                            packets: 10_000,
                            bytes: 1_720_000,
                            marked: 9_990,
                            already_marked: 10,
                        },
                    },
                    RuleEntry {
                        spec: sample_rule_v6(),
                        counters: CounterSnapshot::default(),
                    },
                ])),
            ),
        ),
        (
            "resp_traffic_table",
            A(
                RequestKind::GetTrafficTable,
                Reply::Response(Response::TrafficTable(sample_table())),
            ),
        ),
        ("req_list_flows", R(Request::ListFlows { after: 3 })),
        (
            "req_replace_rules",
            R(Request::ReplaceRules(vec![sample_rule(), sample_rule_v6()])),
        ),
        (
            "resp_flows",
            A(
                RequestKind::ListFlows,
                Reply::Response(Response::Flows(sample_flow_page())),
            ),
        ),
        (
            "req_set_flow_service",
            R(Request::SetFlow {
                flow_id: 7,
                op: SetFlow::Service(ServiceMark {
                    service: ServiceType::ControlledLoad,
                    dscp: Some(dscp(46)),
                    pcp: None,
                }),
            }),
        ),
        (
            "req_set_flow_clear_rate",
            R(Request::SetFlow {
                flow_id: 7,
                op: SetFlow::ClearOutgoingRate,
            }),
        ),
        (
            "req_watch_flow",
            R(Request::WatchFlow {
                flow_id: 7,
                known: Some(FlowState {
                    alive: true,
                    mark: Mark {
                        dscp: Some(dscp(24)),
                        pcp: Some(pcp(4)),
                    },
                }),
            }),
        ),
        (
            "resp_flow_state_ended",
            A(
                RequestKind::WatchFlow,
                Reply::Response(Response::FlowState(FlowState::default())),
            ),
        ),
        (
            "resp_error",
            A(
                RequestKind::RemoveSocketFromFlow,
                Reply::Error(ErrorReply {
                    win32: Win32Error::NOT_FOUND,
                    required_size: 0,
                }),
            ),
        ),
        (
            "resp_error_insufficient_buffer",
            A(
                RequestKind::EnumerateFlows,
                Reply::Error(ErrorReply {
                    win32: Win32Error::INSUFFICIENT_BUFFER,
                    required_size: 36,
                }),
            ),
        ),
    ]
}

/// The page of the Flows vector: a two-socket non-adaptive flow with every binding kind, and
/// an adaptive flow with a custom DSCP; more pages follow.
pub fn sample_flow_page() -> FlowPage {
    let v4 = |a: [u8; 4], p| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), p));
    FlowPage {
        flows: vec![
            FlowRecord {
                id: 3,
                pid: 4242,
                traffic_type: TrafficType::Voice,
                adaptive: false,
                custom_dscp: None,
                mark: Mark {
                    dscp: Some(dscp(56)),
                    pcp: None,
                },
                counters: CounterSnapshot {
                    packets: 100,
                    bytes: 17_200,
                    marked: 99,
                    already_marked: 1,
                },
                sockets_total: 3,
                sockets: vec![
                    FlowSocket {
                        socket: 0x1A4,
                        protocol: Protocol::Udp,
                        binding: SocketBinding::AnyAddress { port: 50000 },
                        remote: v4([192, 0, 2, 7], 5004),
                    },
                    FlowSocket {
                        socket: 0x1A4,
                        protocol: Protocol::Udp,
                        binding: SocketBinding::AnyAddress { port: 50000 },
                        remote: v4([192, 0, 2, 8], 5004),
                    },
                    FlowSocket {
                        socket: 0x1B0,
                        protocol: Protocol::Tcp,
                        binding: SocketBinding::NotBound,
                        remote: SocketAddr::V6(SocketAddrV6::new(
                            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
                            443,
                            0,
                            0,
                        )),
                    },
                ],
            },
            FlowRecord {
                id: 7,
                pid: 99,
                traffic_type: TrafficType::AudioVideo,
                adaptive: true,
                custom_dscp: Some(dscp(46)),
                mark: Mark {
                    dscp: Some(dscp(46)),
                    pcp: Some(pcp(5)),
                },
                counters: CounterSnapshot::default(),
                sockets_total: 20,
                sockets: vec![FlowSocket {
                    socket: 9,
                    protocol: Protocol::Tcp,
                    binding: SocketBinding::Address(v4([10, 1, 2, 3], 49152)),
                    remote: v4([192, 0, 2, 80], 443),
                }],
            },
        ],
        next_after: 7,
    }
}

/// The request kind a response answers (one of them, for `Done`).
pub fn kind_for(response: &Response) -> RequestKind {
    match response {
        Response::Done => RequestKind::SetFlow,
        Response::Status(_) => RequestKind::QueryStatus,
        Response::FlowId(_) => RequestKind::AddSocketToFlow,
        Response::PacketPriority(_) | Response::OutgoingRate(_) => RequestKind::QueryFlow,
        Response::FlowIds(_) => RequestKind::EnumerateFlows,
        Response::Rules(_) => RequestKind::ListRules,
        Response::TrafficTable(_) => RequestKind::GetTrafficTable,
        Response::Flows(_) => RequestKind::ListFlows,
        Response::FlowState(_) => RequestKind::WatchFlow,
    }
}

// ------------------------------------------------------------------------------------------
// Strategies

pub fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(a, p)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), p))),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(a, p, f, s)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(a), p, f, s))
        }),
    ]
}

pub fn traffic_type() -> impl Strategy<Value = TrafficType> {
    (0u32..6).prop_map(|v| TrafficType::try_from_u32(v).unwrap())
}

pub fn opt_dscp() -> impl Strategy<Value = Option<Dscp>> {
    proptest::option::of((0u8..64).prop_map(dscp))
}

pub fn opt_pcp() -> impl Strategy<Value = Option<Pcp>> {
    proptest::option::of((0u8..8).prop_map(pcp))
}

pub fn rule_name() -> impl Strategy<Value = RuleName> {
    // Up to 20 characters of at most 3 bytes each: always ≤ 64 bytes, never a control character.
    "[a-zA-Z0-9 _.:/é€Ω-]{1,20}".prop_map(|s| name(&s))
}

fn masked_prefix(v6: bool) -> impl Strategy<Value = Prefix> {
    let max = if v6 { 128u8 } else { 32 };
    (any::<u128>(), 0..=max).prop_map(move |(bits, len)| {
        if v6 {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            Prefix {
                addr: IpAddr::V6(Ipv6Addr::from(bits & mask)),
                len,
            }
        } else {
            let b = bits as u32;
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            Prefix {
                addr: IpAddr::V4(Ipv4Addr::from(b & mask)),
                len,
            }
        }
    })
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(a, b)| PortRange {
        first: a.min(b),
        last: a.max(b),
    })
}

pub fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    any::<bool>().prop_flat_map(|v6| {
        (
            rule_name(),
            any::<u8>(),
            prop_oneof![
                Just(RuleProtocol::Any),
                Just(RuleProtocol::Tcp),
                Just(RuleProtocol::Udp)
            ],
            proptest::option::of(masked_prefix(v6)),
            proptest::option::of(masked_prefix(v6)),
            proptest::option::of(port_range()),
            proptest::option::of(port_range()),
            prop_oneof![
                (0u8..64).prop_map(|d| RuleAction::Dscp(dscp(d))),
                traffic_type().prop_map(RuleAction::TrafficType),
            ],
            opt_pcp(),
            proptest::option::of(qosmark_abi::MIN_RATE_BPS..=qosmark_abi::MAX_RATE_BPS),
        )
            .prop_map(
                |(
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
                )| RuleSpec {
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
                },
            )
    })
}

pub fn traffic_table() -> impl Strategy<Value = TrafficTable> {
    (
        proptest::array::uniform6(
            (opt_dscp(), opt_pcp()).prop_map(|(dscp, pcp)| TrafficTypeMark { dscp, pcp }),
        ),
        any::<u64>(),
        any::<bool>(),
        0u8..=63,
        0u8..=7,
    )
        .prop_map(
            |(marks, user_dscp_allow, tag_adaptive_flows, nc_dscp, nc_pcp)| TrafficTable {
                marks,
                user_dscp_allow,
                tag_adaptive_flows,
                non_conformant_dscp: Dscp::try_new(nc_dscp).unwrap(),
                non_conformant_pcp: Pcp::try_new(nc_pcp).unwrap(),
            },
        )
}

fn socket_info() -> impl Strategy<Value = SocketInfo> {
    (
        any::<u64>(),
        prop_oneof![Just(Family::V4), Just(Family::V6)],
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        socket_addr(),
        proptest::option::of(socket_addr()),
    )
        .prop_map(|(socket, family, protocol, local, peer)| SocketInfo {
            socket,
            family,
            protocol,
            local,
            peer,
        })
}

fn set_flow() -> impl Strategy<Value = SetFlow> {
    prop_oneof![
        traffic_type().prop_map(SetFlow::TrafficType),
        (
            any::<u64>(),
            prop_oneof![
                Just(Shaping::ShapeOnly),
                Just(Shaping::ShapeAndMark),
                Just(Shaping::UseNonConformantMarkings)
            ],
            any::<u32>()
        )
            .prop_map(
                |(bandwidth, shaping, reason)| SetFlow::OutgoingRate(FlowRate {
                    bandwidth,
                    shaping,
                    reason
                })
            ),
        any::<u32>().prop_map(SetFlow::OutgoingDscp),
        (
            prop_oneof![
                Just(ServiceType::ControlledLoad),
                Just(ServiceType::Guaranteed),
                Just(ServiceType::NetworkControl),
                Just(ServiceType::Qualitative)
            ],
            opt_dscp(),
            opt_pcp()
        )
            .prop_map(|(service, dscp, pcp)| SetFlow::Service(ServiceMark {
                service,
                dscp,
                pcp
            })),
        Just(SetFlow::ClearOutgoingRate),
    ]
}

pub fn flow_state() -> impl Strategy<Value = FlowState> {
    prop_oneof![
        Just(FlowState::default()),
        (opt_dscp(), opt_pcp()).prop_map(|(dscp, pcp)| FlowState {
            alive: true,
            mark: Mark { dscp, pcp },
        }),
    ]
}

pub fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::QueryStatus),
        (
            socket_info(),
            proptest::option::of(socket_addr()),
            traffic_type(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(socket, dest, traffic_type, flags, flow_id)| {
                Request::AddSocketToFlow {
                    socket,
                    dest,
                    traffic_type,
                    flags,
                    flow_id,
                }
            }),
        (proptest::option::of(any::<u64>()), any::<u32>())
            .prop_map(|(socket, flow_id)| Request::RemoveSocketFromFlow { socket, flow_id }),
        (any::<u32>(), set_flow()).prop_map(|(flow_id, op)| Request::SetFlow { flow_id, op }),
        (
            any::<u32>(),
            prop_oneof![
                Just(QueryFlow::Fundamentals),
                Just(QueryFlow::PacketPriority),
                Just(QueryFlow::OutgoingRate)
            ]
        )
            .prop_map(|(flow_id, op)| Request::QueryFlow { flow_id, op }),
        (
            any::<u32>(),
            prop_oneof![
                Just(NotifyFlow::Congested),
                Just(NotifyFlow::Uncongested),
                Just(NotifyFlow::Available)
            ],
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(flow_id, op, threshold)| Request::NotifyFlow {
                flow_id,
                op,
                threshold
            }),
        Just(Request::EnumerateFlows),
        rule_spec().prop_map(Request::AddRule),
        rule_name().prop_map(Request::RemoveRule),
        Just(Request::ListRules),
        Just(Request::GetTrafficTable),
        traffic_table().prop_map(Request::SetTrafficTable),
        any::<u32>().prop_map(|after| Request::ListFlows { after }),
        proptest::collection::vec(rule_spec(), 0..5).prop_map(Request::ReplaceRules),
        (any::<u32>(), proptest::option::of(flow_state()))
            .prop_map(|(flow_id, known)| Request::WatchFlow { flow_id, known }),
    ]
}

fn flow_socket() -> impl Strategy<Value = FlowSocket> {
    (
        any::<u64>(),
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        prop_oneof![
            Just(SocketBinding::NotBound),
            any::<u16>().prop_map(|port| SocketBinding::AnyAddress { port }),
            socket_addr().prop_map(SocketBinding::Address),
        ],
        socket_addr(),
    )
        .prop_map(|(socket, protocol, binding, remote)| FlowSocket {
            socket,
            protocol,
            binding,
            remote,
        })
}

fn flow_record() -> impl Strategy<Value = FlowRecord> {
    (
        (any::<u32>(), traffic_type(), any::<bool>(), opt_dscp()),
        (opt_dscp(), opt_pcp(), counters()),
        proptest::collection::vec(flow_socket(), 0..4),
        0u32..40,
    )
        .prop_map(
            |((pid, traffic_type, adaptive, custom_dscp), (d, p, counters), sockets, extra)| {
                FlowRecord {
                    id: 1,
                    pid,
                    traffic_type,
                    adaptive,
                    custom_dscp,
                    mark: Mark { dscp: d, pcp: p },
                    counters,
                    sockets_total: u32::try_from(sockets.len()).unwrap() + extra,
                    sockets,
                }
            },
        )
}

/// A valid Flows page: ids strictly ascending, `next_after` 0 or the last id.
pub fn flow_page() -> impl Strategy<Value = FlowPage> {
    (
        proptest::collection::vec((1u32..1000, flow_record()), 0..5),
        any::<bool>(),
    )
        .prop_map(|(flows, more)| {
            let mut id = 0u32;
            let flows: Vec<FlowRecord> = flows
                .into_iter()
                .map(|(step, mut f)| {
                    id += step;
                    f.id = id;
                    f
                })
                .collect();
            let next_after = if more { id } else { 0 };
            FlowPage { flows, next_after }
        })
}

fn counters() -> impl Strategy<Value = CounterSnapshot> {
    any::<[u64; 4]>().prop_map(|[packets, bytes, marked, already_marked]| CounterSnapshot {
        packets,
        bytes,
        marked,
        already_marked,
    })
}

fn status_info() -> impl Strategy<Value = StatusInfo> {
    (
        any::<u16>(),
        any::<[u32; 5]>(),
        any::<[u64; 5]>(),
        any::<[u64; SkipReason::COUNT]>(),
        any::<[u64; FailOpen::COUNT]>(),
    )
        .prop_map(
            |(
                protocol_version,
                [handles, flows, sockets, rules, shapers],
                [packets, marked, already_marked, delayed, non_conformant],
                skipped,
                fail_open,
            )| {
                StatusInfo {
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
                }
            },
        )
}

pub fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Done),
        status_info().prop_map(Response::Status),
        (1u32..).prop_map(Response::FlowId),
        any::<[u32; 4]>().prop_map(|[a, b, c, d]| Response::PacketPriority(PacketPriority {
            conformant_dscp: a,
            non_conformant_dscp: b,
            conformant_l2: c,
            non_conformant_l2: d,
        })),
        any::<u64>().prop_map(Response::OutgoingRate),
        proptest::collection::vec(1u32.., 0..64).prop_map(Response::FlowIds),
        proptest::collection::vec(
            (rule_spec(), counters()).prop_map(|(spec, counters)| RuleEntry { spec, counters }),
            0..6
        )
        .prop_map(Response::Rules),
        traffic_table().prop_map(Response::TrafficTable),
        flow_page().prop_map(Response::Flows),
        flow_state().prop_map(Response::FlowState),
    ]
}

pub fn error_reply() -> impl Strategy<Value = ErrorReply> {
    prop_oneof![
        (1u32..).prop_map(|c| ErrorReply {
            win32: Win32Error(c),
            required_size: 0
        }),
        any::<u32>().prop_map(|s| ErrorReply {
            win32: Win32Error::INSUFFICIENT_BUFFER,
            required_size: s
        }),
    ]
}
