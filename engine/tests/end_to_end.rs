//! The whole engine through its public API, as a back end drives it: open a handle, register
//! sockets with `apply`, classify real packets built by an independent builder (etherparse),
//! rewrite them, and check the result with etherparse again (DSCP, ECN, IPv4 header checksum).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests: a panic is a failed test"
)]

use core::net::SocketAddr;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket};
use qosmark_engine::abi::{
    Caller, Dscp, Family, Mark, Pcp, Privilege, Protocol, Request, Response, SetFlow, SkipReason,
    SocketInfo, TrafficTable, TrafficType, TrafficTypeMark,
};
use qosmark_engine::wire::Rewrite;
use qosmark_engine::{Engine, EngineError, Limits, PacketMeta, Verdict};

const USER: Caller = Caller {
    pid: 4242,
    privilege: Privilege::User,
};
const ADMIN: Caller = Caller {
    pid: 1,
    privilege: Privilege::Admin,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An IPv4 UDP packet from etherparse's builder, with the given TOS byte (DSCP << 2 | ECN).
fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, tos: u8) -> Vec<u8> {
    let payload = [0x5au8; 32];
    let mut ip = etherparse::Ipv4Header::new(
        (8 + payload.len()) as u16,
        64,
        etherparse::IpNumber::UDP,
        src,
        dst,
    )
    .unwrap();
    ip.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
    ip.ecn = etherparse::IpEcn::try_new(tos & 3).unwrap();
    // etherparse computes the IPv4 header checksum itself when writing.
    let builder = PacketBuilder::ip(etherparse::IpHeaders::Ipv4(
        ip,
        etherparse::Ipv4Extensions::default(),
    ))
    .udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

/// An IPv6 TCP packet from etherparse's builder with the given Traffic Class.
fn tcp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, tclass: u8) -> Vec<u8> {
    let ip = etherparse::Ipv6Header {
        traffic_class: tclass,
        flow_label: etherparse::Ipv6FlowLabel::try_new(0x1_2345).unwrap(),
        payload_length: 0,
        next_header: etherparse::IpNumber::TCP,
        hop_limit: 64,
        source: src,
        destination: dst,
    };
    let builder = PacketBuilder::ip(etherparse::IpHeaders::Ipv6(
        ip,
        etherparse::Ipv6Extensions::default(),
    ))
    .tcp(sport, dport, 1000, 64240);
    let payload = [0x11u8; 20];
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).unwrap();
    out
}

/// (DSCP, ECN, IPv4 header checksum valid) as etherparse reads them.
fn oracle(packet: &[u8]) -> (u8, u8, bool) {
    let sliced = SlicedPacket::from_ip(packet).unwrap();
    match sliced.net.unwrap() {
        NetSlice::Ipv4(v4) => {
            let h = v4.header().to_header();
            let valid = h.calc_header_checksum() == h.header_checksum;
            (h.dscp.value(), h.ecn.value(), valid)
        }
        NetSlice::Ipv6(v6) => {
            let tc = v6.header().traffic_class();
            (tc >> 2, tc & 3, true)
        }
        NetSlice::Arp(_) => panic!("not IP"),
    }
}

/// Classify and, on a mark, rewrite in place: what a back end does per packet.
fn run(engine: &Engine, packet: &mut [u8]) -> Verdict {
    let verdict = engine.classify(packet, &PacketMeta::default(), 0);
    if let Verdict::Mark(mark) = verdict {
        assert_eq!(Engine::rewrite(packet, mark).unwrap(), Rewrite::Changed);
    }
    verdict
}

fn add_flow(
    engine: &mut Engine,
    handle: qosmark_engine::HandleId,
    socket: SocketInfo,
    dest: Option<&str>,
    tt: TrafficType,
) -> u32 {
    let req = Request::AddSocketToFlow {
        socket,
        dest: dest.map(sa),
        traffic_type: tt,
        flags: 0,
        flow_id: 0,
    };
    match engine.apply(handle, &req).unwrap() {
        Response::FlowId(id) => id,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn dual_stack_socket_marks_ipv4_packets_and_keeps_ecn() {
    let mut engine = Engine::new(Limits::default());
    let h = engine.open_handle(USER).unwrap();
    // An AF_INET6 socket bound to [::]:5004 sending to ::ffff:198.51.100.7:40000 (qWAVE: 87).
    let socket = SocketInfo {
        socket: 10,
        family: Family::V6,
        protocol: Protocol::Udp,
        local: sa("[::]:5004"),
        peer: None,
    };
    add_flow(
        &mut engine,
        h,
        socket,
        Some("[::ffff:198.51.100.7]:40000"),
        TrafficType::AudioVideo,
    );

    // The packet leaves as IPv4, ECN = CE (3).
    let mut p = udp4([192, 0, 2, 10], 5004, [198, 51, 100, 7], 40000, 0b11);
    let before = p.clone();
    let v = run(&engine, &mut p);
    // AudioVideo = CS5 (40), 802.1p 5 for an adaptive flow.
    assert_eq!(
        v,
        Verdict::Mark(Mark {
            dscp: Some(Dscp::try_new(40).unwrap()),
            pcp: Some(Pcp::try_new(5).unwrap()),
        })
    );
    assert_eq!(oracle(&p), (40, 3, true));
    // Only the TOS byte and the header checksum changed.
    for (i, (a, b)) in before.iter().zip(&p).enumerate() {
        if ![1, 10, 11].contains(&i) {
            assert_eq!(a, b, "byte {i} changed");
        }
    }
    // Sent again: the DSCP is there, but the 802.1p request is not known to be, so the back
    // end must still act; once it reports the priority as present, nothing is left to do.
    assert!(matches!(
        engine.classify(&p, &PacketMeta::default(), 0),
        Verdict::Mark(_)
    ));
    let tagged = PacketMeta {
        self_injected: false,
        current_pcp: Some(Pcp::try_new(5).unwrap()),
    };
    assert_eq!(engine.classify(&p, &tagged, 0), Verdict::AlreadyMarked);
    // Another destination of the same socket is not registered.
    let mut other = udp4([192, 0, 2, 10], 5004, [198, 51, 100, 8], 40000, 0);
    assert_eq!(run(&engine, &mut other), Verdict::Skip(SkipReason::NoMatch));
}

#[test]
fn ipv6_tcp_flow_custom_dscp_needs_privilege_or_allow_list() {
    let mut engine = Engine::new(Limits::default());
    let user = engine.open_handle(USER).unwrap();
    let admin = engine.open_handle(ADMIN).unwrap();
    let local = "[2001:db8::1]:5060";
    let peer = "[2001:db8::2]:5061";
    let socket = SocketInfo {
        socket: 3,
        family: Family::V6,
        protocol: Protocol::Tcp,
        local: sa(local),
        peer: Some(sa(peer)),
    };
    let flow = add_flow(&mut engine, user, socket, None, TrafficType::Voice);
    let src = sa(local).ip();
    let dst = sa(peer).ip();
    let (core::net::IpAddr::V6(src), core::net::IpAddr::V6(dst)) = (src, dst) else {
        panic!("v6");
    };
    let packet = tcp6(src.octets(), 5060, dst.octets(), 5061, 0b01);

    // Voice = CS7 (56) by default.
    let mut p = packet.clone();
    run(&engine, &mut p);
    assert_eq!(oracle(&p), (56, 1, true));

    // EF for a user: refused (qWAVE: Administrators / Network Configuration Operators only).
    let set_ef = Request::SetFlow {
        flow_id: flow,
        op: SetFlow::OutgoingDscp(46),
    };
    assert_eq!(engine.apply(user, &set_ef), Err(EngineError::AccessDenied));
    let mut p = packet.clone();
    run(&engine, &mut p);
    assert_eq!(oracle(&p).0, 56, "a refused request changes nothing");

    // The administrator opens EF to everyone; now the user may.
    let Response::TrafficTable(mut table) = engine.apply(admin, &Request::GetTrafficTable).unwrap()
    else {
        panic!("table");
    };
    table.user_dscp_allow |= 1 << 46;
    engine
        .apply(admin, &Request::SetTrafficTable(table))
        .unwrap();
    engine.apply(user, &set_ef).unwrap();
    let mut p = packet.clone();
    run(&engine, &mut p);
    assert_eq!(oracle(&p), (46, 1, true));

    // Out of range: 87, whoever asks.
    let bad = Request::SetFlow {
        flow_id: flow,
        op: SetFlow::OutgoingDscp(64),
    };
    assert_eq!(
        engine.apply(admin, &bad),
        Err(EngineError::NotFound),
        "another handle's flow is invisible"
    );
    assert_eq!(engine.apply(user, &bad), Err(EngineError::InvalidParameter));
}

#[test]
fn table_remap_and_handle_close_take_effect_on_live_packets() {
    let mut engine = Engine::new(Limits::default());
    let user = engine.open_handle(USER).unwrap();
    let admin = engine.open_handle(ADMIN).unwrap();
    let socket = SocketInfo {
        socket: 5,
        family: Family::V4,
        protocol: Protocol::Udp,
        local: sa("192.0.2.10:16384"),
        peer: Some(sa("203.0.113.5:16384")),
    };
    add_flow(&mut engine, user, socket, None, TrafficType::Voice);
    let packet = udp4([192, 0, 2, 10], 16384, [203, 0, 113, 5], 16384, 0);

    // Administrator: Voice → EF 46 (the usual VoIP remap).
    let mut marks = [TrafficTypeMark {
        dscp: None,
        pcp: None,
    }; 6];
    marks[TrafficType::Voice.index()] = TrafficTypeMark {
        dscp: Some(Dscp::EF),
        pcp: Some(Pcp::try_new(6).unwrap()),
    };
    let table = TrafficTable {
        marks,
        user_dscp_allow: 0,
        tag_adaptive_flows: true,
        non_conformant_dscp: Dscp::CS0,
        non_conformant_pcp: Pcp::ZERO,
    };
    // A user may not change the table, and the refusal changes nothing.
    assert_eq!(
        engine.apply(user, &Request::SetTrafficTable(table)),
        Err(EngineError::AccessDenied)
    );
    let mut p = packet.clone();
    run(&engine, &mut p);
    assert_eq!(oracle(&p).0, 56);

    engine
        .apply(admin, &Request::SetTrafficTable(table))
        .unwrap();
    let mut p = packet.clone();
    assert_eq!(
        run(&engine, &mut p),
        Verdict::Mark(Mark {
            dscp: Some(Dscp::EF),
            pcp: Some(Pcp::try_new(6).unwrap()),
        })
    );
    assert_eq!(oracle(&p), (46, 0, true));

    // Closing the handle removes its flows at once.
    engine.close_handle(user).unwrap();
    let mut p = packet.clone();
    assert_eq!(run(&engine, &mut p), Verdict::Skip(SkipReason::NoMatch));
    assert_eq!(p, packet);
    // The closed handle is gone: 6.
    assert_eq!(
        engine.apply(user, &Request::EnumerateFlows),
        Err(EngineError::InvalidHandle)
    );

    // Status counts what happened: 3 packets, 2 marked, 1 unmatched.
    let Response::Status(s) = engine.apply(admin, &Request::QueryStatus).unwrap() else {
        panic!("status");
    };
    assert_eq!((s.packets, s.marked, s.already_marked), (3, 2, 0));
    assert_eq!(s.skipped[SkipReason::NoMatch as usize], 1);
    assert_eq!((s.handles, s.flows), (1, 0));
}

/// A user's TCP socket registered before `connect` must not re-mark other processes' traffic
/// to the same server, nor override an administrator's rule for it (qos-api.md §8): until the
/// back end pins the socket's local port, it marks nothing; afterwards only its own 5-tuple.
#[test]
fn unbound_tcp_registration_cannot_capture_other_traffic() {
    use qosmark_engine::abi::heapless_name::RuleName;
    use qosmark_engine::abi::{RuleAction, RuleProtocol, RuleSpec};
    let mut engine = Engine::new(Limits::default());
    let admin = engine.open_handle(ADMIN).unwrap();
    let rule = RuleSpec {
        name: RuleName::try_new("https-ef").unwrap(),
        precedence: 127,
        protocol: RuleProtocol::Tcp,
        local_prefix: None,
        remote_prefix: None,
        local_ports: None,
        remote_ports: Some(qosmark_engine::abi::PortRange {
            first: 443,
            last: 443,
        }),
        action: RuleAction::Dscp(Dscp::EF),
        pcp: None,
        throttle_bps: None,
    };
    engine.apply(admin, &Request::AddRule(rule)).unwrap();
    let user = engine.open_handle(USER).unwrap();
    let socket = SocketInfo {
        socket: 9,
        family: Family::V4,
        protocol: Protocol::Tcp,
        local: sa("0.0.0.0:0"),
        peer: None,
    };
    add_flow(
        &mut engine,
        user,
        socket,
        Some("192.0.2.9:443"),
        TrafficType::BestEffort,
    );
    // Another process's connection to the same server keeps the administrator's mark.
    let theirs = tcp4_to_server([10, 0, 0, 5], 50000);
    let meta = PacketMeta::default();
    assert_eq!(
        engine.classify(&theirs, &meta, 0),
        Verdict::Mark(Mark {
            dscp: Some(Dscp::EF),
            pcp: None,
        })
    );
    // Once the back end reports the socket's local port, exactly that 5-tuple is the socket's.
    assert_eq!(engine.socket_bound(user, 9, sa("10.0.0.7:40000")), Ok(1));
    let mine = tcp4_to_server([10, 0, 0, 7], 40000);
    assert_eq!(
        engine.classify(&mine, &meta, 0),
        Verdict::Skip(SkipReason::NoMarkConfigured)
    );
    assert!(matches!(
        engine.classify(&theirs, &meta, 0),
        Verdict::Mark(_)
    ));
    // The user's flow counted its one packet as matched but not marked (best effort).
    let flows = engine.flow_details().unwrap();
    let c = flows[0].counters;
    assert_eq!(
        (c.packets, c.marked, c.already_marked, c.not_marked()),
        (1, 0, 0, 1)
    );
}

/// An IPv4 TCP packet from `src:sport` to 192.0.2.9:443, built by etherparse.
fn tcp4_to_server(src: [u8; 4], sport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src, [192, 0, 2, 9], 64).tcp(sport, 443, 1, 64240);
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).unwrap();
    out
}

#[test]
fn limits_are_clamped_to_what_answers_can_carry() {
    let engine = Engine::new(Limits {
        max_flows: usize::MAX,
        max_rules: usize::MAX,
        ..Limits::default()
    });
    assert_eq!(engine.limits().max_flows, 65_536);
    assert_eq!(engine.limits().max_rules, 4_096);
    let small = Limits {
        max_flows: 10,
        ..Limits::default()
    };
    assert_eq!(Engine::new(small).limits().max_flows, 10);
}

/// A seeded engine remembers first fragments like the default one: the later fragments of a
/// marked datagram get its mark.
#[test]
fn seeded_engine_marks_later_fragments() {
    let mut engine = Engine::with_seed(Limits::default(), 0x1234_5678_9abc_def0);
    let h = engine.open_handle(USER).unwrap();
    let socket = SocketInfo {
        socket: 1,
        family: Family::V4,
        protocol: Protocol::Udp,
        local: sa("192.0.2.10:5004"),
        peer: Some(sa("198.51.100.7:40000")),
    };
    add_flow(&mut engine, h, socket, None, TrafficType::Voice);
    // A 3000-byte UDP datagram fragmented by hand: first fragment (offset 0, MF) and the
    // next one (offset 1480 bytes = 185 units), both from etherparse's IPv4 header.
    let frag = |offset_units: u16, more: bool, payload: &[u8]| {
        let mut ip = etherparse::Ipv4Header::new(
            payload.len() as u16,
            64,
            etherparse::IpNumber::UDP,
            [192, 0, 2, 10],
            [198, 51, 100, 7],
        )
        .unwrap();
        ip.identification = 0x4242;
        ip.more_fragments = more;
        ip.fragment_offset = etherparse::IpFragOffset::try_new(offset_units).unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        let mut out = ip.to_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    };
    // UDP header: 5004 -> 40000, length 3008.
    let mut first_payload = vec![0u8; 1480];
    first_payload[..8].copy_from_slice(&[0x13, 0x8c, 0x9c, 0x40, 0x0b, 0xc0, 0, 0]);
    let mut first = frag(0, true, &first_payload);
    let mut later = frag(185, false, &[0x77; 1528]);
    let cs7 = Mark {
        dscp: Some(Dscp::try_new(56).unwrap()),
        pcp: Some(Pcp::try_new(7).unwrap()),
    };
    assert_eq!(run(&engine, &mut first), Verdict::Mark(cs7));
    assert_eq!(run(&engine, &mut later), Verdict::Mark(cs7));
    assert_eq!(oracle(&later), (56, 0, true));
}
